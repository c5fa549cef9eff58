"""Ingestion: corpus reader → decode pool → embedder → store writer.

One job per stage, wired here. Collaborators (store, embedder) are passed in, so
tests use the real ones on tiny models or fakes where that is clearer.

Incremental by design: the store is the source of truth for what is indexed.
A file whose size+mtime (then sha256) and caption/metadata match its stored
point is never decoded or embedded again; point ids are uuid5 of the
corpus-relative path, so a re-run after Ctrl-C or kill -9 overwrites rather
than duplicates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mmrag.corpus import decode_stream, iter_corpus
from mmrag.corpus.types import CorpusItem, DecodedImage, SkippedFile
from mmrag.embedders.base import Embedder
from mmrag.errors import UsageError
from mmrag.ingest.state import load_state, same_annotations, unchanged_by_stat
from mmrag.ingest.writer import StoreWriter
from mmrag.store.base import Store
from mmrag.store.convert import build_payload, build_point, point_id
from mmrag.store.schema import DRAFT_SIZE_KEY, CollectionSpec, SchemaMismatch, check_compatible

log = logging.getLogger(__name__)

@dataclass
class IngestOptions:
    batch_size: int = 32
    text_batch_size: int = 128
    write_batch_size: int = 256
    workers: int = 0
    decode_executor: str = "auto"  # "thread" | "process" | "auto": see decode_plan
    max_file_bytes: int = 100 * 1024 * 1024
    max_image_pixels: int = 89_478_485
    draft_size: int | None = None  # JPEG draft decoding (fast path); None = reference path

    @classmethod
    def from_settings(cls, settings: Any, embedder: Embedder | None = None) -> IngestOptions:
        draft = None
        if getattr(settings, "fast_preprocess", False) and embedder is not None:
            draft = embedder.info.image_size
        return cls(
            # the embedder's own batch: on a GPU it may have been tuned up from the setting
            batch_size=getattr(embedder, "batch_size", settings.batch_size),
            text_batch_size=settings.text_batch_size,
            write_batch_size=settings.write_batch_size,
            workers=settings.workers,
            decode_executor=settings.decode_executor,
            max_file_bytes=settings.max_file_bytes,
            max_image_pixels=settings.max_image_pixels,
            draft_size=draft,
        )


@dataclass
class IngestReport:
    collection: str
    model_id: str
    indexed: int = 0  # new points
    updated: int = 0  # changed files re-embedded in place
    unchanged: int = 0
    pruned: int = 0
    captions: int = 0  # text vectors embedded
    written: int = 0  # points the store confirmed in this run
    failed: list[SkippedFile] = field(default_factory=list)
    elapsed_s: float = 0.0
    error: str | None = None  # a run-level failure (not a per-file one)
    decode_executor: str | None = None  # the decode pool that ran: "thread" or "process"

    @property
    def embedded(self) -> int:
        return self.indexed + self.updated

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "model_id": self.model_id,
            "indexed": self.indexed,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "pruned": self.pruned,
            "captions": self.captions,
            "written": self.written,
            "failed": [{"path": f.rel_path, "reason": f.reason} for f in self.failed],
            "failed_count": len(self.failed),
            "elapsed_s": round(self.elapsed_s, 3),
            "images_per_s": round(self.images_per_s, 2),
            "ok": self.ok,
            "error": self.error,
            "decode_executor": self.decode_executor,
        }

    def summary(self) -> str:
        lines = [
            f"collection {self.collection}  (model {self.model_id})",
            f"  indexed   {self.indexed}",
            f"  updated   {self.updated}",
            f"  unchanged {self.unchanged}",
            f"  failed    {len(self.failed)}",
            f"  pruned    {self.pruned}",
            f"  elapsed   {self.elapsed_s:.2f} s ({self.images_per_s:.1f} images/s)",
        ]
        for f in self.failed:
            lines.append(f"    ! {f.rel_path}: {f.reason}")
        if self.error:
            lines.append(f"  ERROR: {self.error}")
            lines.append(f"  written before the failure: {self.written} points; re-run the same command to finish")
        return "\n".join(lines)


def decode_plan(choice: str, embedder: Embedder) -> tuple[str, Callable[[Any], np.ndarray]]:
    """(executor, preprocess) for the decode pool.

    "process" needs the embedder's `portable_preprocess` (picklable, no model inside);
    "auto" takes processes when the model runs on a GPU and such a preprocess exists,
    threads otherwise: on CPU the decode shares the cores with the model anyway.
    """
    portable = getattr(embedder, "portable_preprocess", None)
    if choice == "auto":
        choice = "process" if portable is not None and embedder.device != "cpu" else "thread"
    if choice == "thread":
        return "thread", embedder.preprocess
    if choice != "process":
        raise ValueError(f"decode_executor must be auto, thread or process, got {choice!r}")
    if portable is None:
        raise ValueError(
            f"decode_executor='process' needs a preprocess that runs without the model, and "
            f"{embedder.info.model_id} ({embedder.info.backend}) has none; use 'thread' or 'auto'"
        )
    return "process", portable


def ensure_collection(store: Store, embedder: Embedder, collection: str) -> str:
    """Create the collection for this model, or check that the existing one matches.

    Returns the physical collection name (an alias is resolved).
    """
    target = store.resolve(collection)
    info = embedder.info
    wanted = CollectionSpec(name=target, dim=info.dim, model_id=info.model_id, quantization=info.quantization)
    existing = store.get_spec(target)
    if existing is None:
        store.create_collection(wanted)
    else:
        check_compatible(existing, wanted)
    return target


def run_ingest(
    store: Store,
    embedder: Embedder,
    *,
    root: Path | None,
    collection: str,
    manifest: Path | None = None,
    prune: bool = False,
    options: IngestOptions | None = None,
    progress: bool = True,
    include_unlisted: bool = False,
    tagger: Callable[[np.ndarray], list[dict[str, Any]]] | None = None,
) -> IngestReport:
    """Index a folder and/or manifest into `collection`. Per-file problems never stop the run.

    A run-level failure while embedding or writing (a store that stays down after its
    retries, say) ends the run with `report.error` set and `report.written` counting the
    points the store confirmed; a schema mismatch raises before anything is written.

    `tagger` maps a batch of image vectors to payload updates ({"tags": [...],
    "tag_scores": {...}}) written with the points; callers build it (e.g.
    `mmrag.tasks.tagging.ingest_tagger`), so ingestion never depends on the tasks.
    """
    opts = options or IngestOptions()
    info = embedder.info
    t0 = time.perf_counter()
    report = IngestReport(collection=collection, model_id=info.model_id)
    executor, preprocess = decode_plan(opts.decode_executor, embedder)  # a bad choice fails before any write
    report.decode_executor = executor

    target = ensure_collection(store, embedder, collection)
    report.collection = target
    corpus_root = root if root is not None else (manifest.parent if manifest is not None else None)
    if corpus_root is None:
        raise UsageError("give a corpus folder, a manifest, or both")
    # Retrievers decode query JPEGs with the same draft size, so a stored file finds itself.
    # corpus_root lets retrievers hand out image paths/data URIs without being told where the corpus lives.
    store.update_metadata(target, {DRAFT_SIZE_KEY: opts.draft_size or 0, "corpus_root": str(Path(corpus_root).resolve())})

    state = load_state(store, target)
    seen: set[str] = set()
    todo: list[CorpusItem] = []
    for entry in iter_corpus(corpus_root, manifest=manifest, include_unlisted=include_unlisted):
        if isinstance(entry, SkippedFile):
            report.failed.append(entry)
            seen.add(point_id(entry.rel_path))  # the file exists: don't prune its old point
            continue
        pid = point_id(entry.rel_path)
        seen.add(pid)
        old = state.get(pid)
        if old is not None and unchanged_by_stat(entry, old):
            report.unchanged += 1
        else:
            todo.append(entry)

    writer = StoreWriter(store, target, opts.write_batch_size)
    bar = tqdm(total=len(todo), unit="img", desc="embedding", disable=not progress, dynamic_ncols=True)
    try:
        stream = decode_stream(
            todo,
            workers=opts.workers,
            executor=executor,
            max_file_bytes=opts.max_file_bytes,
            max_image_pixels=opts.max_image_pixels,
            preprocess=preprocess,
            draft_size=opts.draft_size,
            # Decode the next batch while the model embeds this one: a window smaller than a
            # batch would stall the pool during every model call. Bounded: memory stays flat.
            max_in_flight=2 * opts.batch_size,
        )
        for batch in _batched_decoded(stream, opts.batch_size, report, state, store, target, bar):
            points = _embed_batch(batch, embedder, opts, state, tagger, report)
            writer.add(points)
            bar.update(len(batch))
        writer.flush()
        if prune:
            stale = [pid for pid in state if pid not in seen]
            for i in range(0, len(stale), opts.write_batch_size):
                store.delete_points(target, stale[i : i + opts.write_batch_size])
            report.pruned = len(stale)
    except KeyboardInterrupt:
        # Keep what is already embedded: the next run resumes from there.
        try:
            writer.flush()
        finally:
            raise
    except SchemaMismatch:
        raise
    except Exception as exc:
        # The run failed (e.g. the store stayed unreachable after its retries): report what was
        # written. Ids are deterministic, so re-running the same command finishes the job.
        log.error("ingest into %s failed after writing %d points: %s", target, writer.written, exc)
        report.error = f"{type(exc).__name__}: {exc}"
    finally:
        bar.close()
        writer.close()
        report.written = writer.written
        report.elapsed_s = time.perf_counter() - t0
    return report


def _batched_decoded(
    stream: Iterator[DecodedImage | SkippedFile],
    size: int,
    report: IngestReport,
    state: dict[str, dict[str, Any]],
    store: Store,
    collection: str,
    bar: tqdm,
) -> Iterator[list[DecodedImage]]:
    batch: list[DecodedImage] = []
    # A small first batch starts the model while the pool fills up, instead of idling
    # through a whole batch of decodes.
    target = max(1, size // 4)
    for result in stream:
        if isinstance(result, SkippedFile):
            report.failed.append(result)
            bar.update(1)
            continue
        pid = point_id(result.item.rel_path)
        old = state.get(pid)
        if old is not None and old.get("sha256") == result.sha256 and same_annotations(result.item, old):
            # Touched but identical content: refresh the stat fields only, no embedding.
            store.set_payload(collection, {"mtime": result.item.mtime, "file_size": result.item.file_size}, [pid])
            report.unchanged += 1
            bar.update(1)
            continue
        batch.append(result)
        if len(batch) >= target:
            yield batch
            batch, target = [], size
    if batch:
        yield batch


def _embed_batch(
    batch: list[DecodedImage],
    embedder: Embedder,
    opts: IngestOptions,
    state: dict[str, dict[str, Any]],
    tagger: Callable[[np.ndarray], list[dict[str, Any]]] | None,
    report: IngestReport,
) -> list[Any]:
    pixels = np.stack([d.pixels for d in batch if d.pixels is not None])  # decode ran with a preprocess: all set
    image_vecs = embedder.embed_pixels(pixels)

    captioned = [i for i, d in enumerate(batch) if d.item.caption]
    text_vecs: dict[int, np.ndarray] = {}
    for start in range(0, len(captioned), opts.text_batch_size):
        idx = captioned[start : start + opts.text_batch_size]
        vecs = embedder.embed_texts([batch[i].item.caption for i in idx])  # type: ignore[misc]
        text_vecs.update(zip(idx, vecs))
    report.captions += len(captioned)

    extra = tagger(image_vecs) if tagger is not None else [{} for _ in batch]
    now = datetime.now(timezone.utc)
    points = []
    for i, d in enumerate(batch):
        item = d.item
        metadata = {**item.metadata, **extra[i]}
        payload = build_payload(
            rel_path=item.rel_path,
            caption=item.caption,
            sha256=d.sha256,
            width=d.width,
            height=d.height,
            format=d.format,
            file_size=item.file_size,
            mtime=item.mtime,
            model_id=embedder.info.model_id,
            ingested_at=now,
            metadata=metadata,
        )
        points.append(build_point(item.rel_path, image_vecs[i], text_vecs.get(i), payload))
        if point_id(item.rel_path) in state:
            report.updated += 1
        else:
            report.indexed += 1
    return points
