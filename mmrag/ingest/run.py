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
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mmrag.corpus import decode_stream, iter_corpus
from mmrag.corpus.formats import format_counts
from mmrag.corpus.types import CorpusItem, DecodedImage, SkippedFile
from mmrag.embedders.base import Embedder
from mmrag.errors import UsageError
from mmrag.ingest.state import load_state, same_annotations, unchanged_by_stat
from mmrag.ingest.writer import StoreWriter
from mmrag.store.base import Store
from mmrag.store.convert import build_payload, build_point, point_id
from mmrag.store.integrity import record_points
from mmrag.store.schema import (
    DEFAULT_SPARSE_FIELDS,
    DRAFT_SIZE_KEY,
    CollectionSpec,
    SchemaMismatch,
    check_compatible,
    sparse_text,
)

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
    allow_outside_root: bool = False  # index symlinks / manifest rows that leave the corpus root
    # manifest text fields indexed by BM25 beside the caption (e.g. ("tags", "keywords"))
    sparse_fields: tuple[str, ...] = ()
    # decode the next batch while the model runs: None decides by the model's device (see
    # decode_window); the benchmark sets it to measure both schedules in one run
    overlap_decode: bool | None = None

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
            allow_outside_root=getattr(settings, "allow_outside_root", False),
            sparse_fields=tuple(getattr(settings, "sparse_fields", ()) or ()),
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
    ignored: dict[str, int] = field(default_factory=dict)  # files passed over as not images, by extension
    notes: list[str] = field(default_factory=list)  # advice for the user (e.g. a model that does not fit)

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
            "ignored": dict(self.ignored),
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        lines = [
            f"collection {self.collection}  (model {self.model_id})",
            f"  indexed   {self.indexed}",
            f"  updated   {self.updated}",
            f"  unchanged {self.unchanged}",
            f"  failed    {len(self.failed)}",
            f"  pruned    {self.pruned}",
            *([f"  ignored   {format_counts(self.ignored)}"] if self.ignored else []),
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


def check_corpus(root: Path | None, manifest: Path | None) -> None:
    """UsageError, before anything is created or loaded, for a corpus that cannot be read."""
    if root is None and manifest is None:
        raise UsageError("give a corpus folder, --manifest, or both")
    if root is not None:
        if not Path(root).exists():
            raise UsageError(f"corpus folder not found: {root}")
        if not Path(root).is_dir():
            raise UsageError(f"corpus root is not a folder: {root} (give the folder that holds the images)")
    if manifest is not None and not Path(manifest).is_file():
        raise UsageError(f"manifest not found: {manifest}")


# `mmrag synth` names its images img_00000.png ...: the corpus the reference models were trained on.
_SYNTHETIC_NAME = re.compile(r"(?:.*/)?img_\d{5}\.png")
SHAPES_MODEL_PREFIX = "mmrag-shapes-"


def shapes_model_note(model_id: str, rel_paths: Sequence[str]) -> str | None:
    """The warning for a reference model (trained on synthetic shapes) meeting other images."""
    if not model_id.startswith(SHAPES_MODEL_PREFIX):
        return None
    if not rel_paths or all(_SYNTHETIC_NAME.fullmatch(p) for p in rel_paths):
        return None
    return (
        f"{model_id} is a small reference model trained only on mmrag's synthetic shapes; on other "
        f"images (photos) its rankings are close to random. Use a real CLIP for them, e.g. "
        f"--model clip-vit-b32 (downloaded once) or a local directory."
    )


def ensure_collection(store: Store, embedder: Embedder, collection: str, *, sparse_fields: Sequence[str] = ()) -> str:
    """Create the collection for this model, or check that the existing one matches.

    Returns the physical collection name (an alias is resolved).
    """
    target = store.resolve(collection)
    info = embedder.info
    # The runtime is recorded for the record only: torch and ONNX fp32 vectors agree within 1e-5.
    wanted = CollectionSpec(name=target, dim=info.dim, model_id=info.model_id, quantization=info.quantization,
                            sparse_fields=bm25_fields(sparse_fields), extra={"runtime": getattr(info, "runtime", "torch")})
    existing = store.get_spec(target)
    if existing is None:
        store.create_collection(wanted)
    else:
        check_compatible(existing, wanted)
        if existing.has_sparse and sparse_fields and existing.sparse_fields != wanted.sparse_fields:
            raise SchemaMismatch(
                f"collection {target!r} indexes {list(existing.sparse_fields or ())} with BM25, but "
                f"{list(wanted.sparse_fields or ())} was requested. Rebuild it: `mmrag reindex {target} --rebuild`."
            )
    return target



@dataclass
class IngestPlan:
    """What a run must do, decided on the driver from the store's state before any decode."""

    target: str  # physical collection
    state: dict[str, dict[str, Any]]  # point id -> stored payload
    seen: set[str]  # point ids of every file present (skipped ones included: never pruned)
    todo: list[CorpusItem]  # new or changed by stat: to decode
    # payload keys BM25 indexes; None: an older collection without the sparse vector (dense only)
    bm25_keys: tuple[str, ...] | None = None


def list_corpus(
    store: Store,
    *,
    root: Path | None,
    collection: str,
    manifest: Path | None,
    include_unlisted: bool,
    allow_outside_root: bool,
    prune: bool,
    report: IngestReport,
) -> tuple[Path | None, list[CorpusItem | SkippedFile]]:
    """The whole corpus, listed before the collection exists (the corpus root and its entries).

    A missing, wrong or empty folder fails here (UsageError) and leaves no empty collection
    locked to a model behind.
    """
    check_corpus(root, manifest)
    corpus_root = root if root is not None else (manifest.parent if manifest is not None else None)
    if corpus_root is None:  # check_corpus has refused this already; for the type checker
        raise UsageError("give a corpus folder, --manifest, or both")
    ignored: Counter[str] = Counter()
    try:
        entries = list(iter_corpus(corpus_root, manifest=manifest, include_unlisted=include_unlisted, ignored=ignored,
                                   allow_outside_root=allow_outside_root))
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise UsageError(str(exc)) from exc
    report.ignored = dict(ignored)
    existing = store.get_spec(store.resolve(collection))
    if not entries and not (prune and existing is not None):
        extra = f" (ignored: {format_counts(ignored)})" if ignored else ""
        raise UsageError(f"no images found under {corpus_root}{extra}")
    if existing is None:
        note = shapes_model_note(report.model_id, [e.rel_path for e in entries])
        if note:
            report.notes.append(note)
    return corpus_root, entries


def plan_ingest(
    store: Store,
    embedder: Embedder,
    *,
    collection: str,
    corpus_root: Path | None,
    entries: Sequence[CorpusItem | SkippedFile],
    report: IngestReport,
    sparse_fields: Sequence[str] = (),
    draft_size: int | None = None,
) -> IngestPlan:
    """Check/create the collection (a model mismatch raises here, before any work), then plan.

    Files the reader rejected go into `report.failed`; unchanged ones (by stat) into `report.unchanged`.
    """
    target = ensure_collection(store, embedder, collection, sparse_fields=sparse_fields)
    report.collection = target
    spec = store.get_spec(target)
    # Retrievers decode query JPEGs with the same draft size, so a stored file finds itself.
    meta: dict[str, Any] = {DRAFT_SIZE_KEY: draft_size or 0}
    if corpus_root is not None:
        # Lets retrievers hand out image paths/data URIs without being told where the corpus lives.
        meta["corpus_root"] = str(Path(corpus_root).resolve())
    store.update_metadata(target, meta)
    state = load_state(store, target)
    plan = IngestPlan(target=target, state=state, seen=set(), todo=[],
                      bm25_keys=tuple(spec.sparse_fields) if spec is not None and spec.sparse_fields else None)
    for entry in entries:
        if isinstance(entry, SkippedFile):
            report.failed.append(entry)
            plan.seen.add(point_id(entry.rel_path))  # the file exists: don't prune its old point
            continue
        pid = point_id(entry.rel_path)
        plan.seen.add(pid)
        old = state.get(pid)
        if old is not None and unchanged_by_stat(entry, old):
            report.unchanged += 1
        else:
            plan.todo.append(entry)
    return plan


def prune_stale(store: Store, plan: IngestPlan, batch: int) -> int:
    """Delete the points of files that are gone; returns how many."""
    stale = [pid for pid in plan.state if pid not in plan.seen]
    for i in range(0, len(stale), batch):
        ids = stale[i : i + batch]
        # Lower the record first: a kill between the two steps must not look like lost points.
        record_points(store, plan.target, store.count(plan.target) - len(ids))
        store.delete_points(plan.target, ids)
    if stale:
        record_points(store, plan.target)
    return len(stale)


def same_content(result: DecodedImage, old: dict[str, Any] | None) -> bool:
    """Touched but identical (bytes and annotations): only the stat fields need refreshing."""
    return old is not None and old.get("sha256") == result.sha256 and same_annotations(result.item, old)


def refresh_stat(store: Store, collection: str, item: CorpusItem) -> None:
    store.set_payload(collection, {"mtime": item.mtime, "file_size": item.file_size}, [point_id(item.rel_path)])


def bm25_fields(extra: Sequence[str]) -> tuple[str, ...]:
    """The caption first, then the named manifest fields, each once."""
    return tuple(dict.fromkeys((*DEFAULT_SPARSE_FIELDS, *extra)))


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
    check_space = getattr(store, "check_free_space", None)  # the embedded store: a full disk is a SIGBUS
    if check_space is not None:
        check_space(f"ingest into {collection!r}")  # DiskFull before anything is written

    corpus_root, entries = list_corpus(store, root=root, collection=collection, manifest=manifest,
                                       include_unlisted=include_unlisted, allow_outside_root=opts.allow_outside_root,
                                       prune=prune, report=report)
    plan = plan_ingest(store, embedder, collection=collection, corpus_root=corpus_root, entries=entries, report=report,
                       sparse_fields=opts.sparse_fields, draft_size=opts.draft_size)
    target, state = plan.target, plan.state
    todo = plan.todo

    overlap, window = decode_window(embedder.device, opts.batch_size, opts.workers, opts.overlap_decode)
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
            max_in_flight=window,
        )
        for batch in _batched_decoded(stream, opts.batch_size, report, state, store, target, bar,
                                      small_first=overlap):
            points = _embed_batch(batch, embedder, opts, state, tagger, report, plan.bm25_keys)
            writer.add(points)
            bar.update(len(batch))
        writer.flush()
        if prune:
            report.pruned = prune_stale(store, plan, opts.write_batch_size)
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


def decode_window(device: str, batch_size: int, workers: int, overlap: bool | None = None) -> tuple[bool, int]:
    """(overlap, max_in_flight): how far the decode pool may run ahead of the model.

    A model on an accelerator leaves the CPU to the pool, so the pool decodes the next
    batch while the model embeds this one (two batches in flight). A model on the CPU
    shares the cores with the pool, and running both at once only makes them fight: the
    model's intra-op threads wait at every operator for the one a decode thread has
    preempted (bench/onnx_speed.py, ViT-B/32 on 2 cores: model calls 30-45 % slower beside
    the pool, which cancels what the overlap hides). So on the CPU the two take turns: the
    pool decodes a batch on every core, a few images ahead to keep each worker busy, then
    the model runs alone, on full batches from the first call.
    """
    if overlap is None:
        overlap = device != "cpu"
    if overlap:
        return True, 2 * batch_size
    n_workers = workers or os.cpu_count() or 1
    return False, 2 * n_workers


def _batched_decoded(
    stream: Iterator[DecodedImage | SkippedFile],
    size: int,
    report: IngestReport,
    state: dict[str, dict[str, Any]],
    store: Store,
    collection: str,
    bar: tqdm,
    *,
    small_first: bool = True,
) -> Iterator[list[DecodedImage]]:
    batch: list[DecodedImage] = []
    # Overlapped, a small first batch starts the model while the pool fills up, instead of
    # idling through a whole batch of decodes; taking turns, it would only be a slow call.
    target = max(1, size // 4) if small_first else size
    for result in stream:
        if isinstance(result, SkippedFile):
            report.failed.append(result)
            bar.update(1)
            continue
        if same_content(result, state.get(point_id(result.item.rel_path))):
            refresh_stat(store, collection, result.item)  # no embedding
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
    bm25_keys: Sequence[str] | None = None,
) -> list[Any]:
    image_vecs, text_vecs = embed_vectors(
        embedder, np.stack([d.pixels for d in batch if d.pixels is not None]), [d.item.caption for d in batch], opts.text_batch_size
    )
    batch, image_vecs, text_vecs = refuse_non_finite(batch, image_vecs, text_vecs, report)
    if not batch:
        return []
    extra = tagger(image_vecs) if tagger is not None else None
    points = build_points(batch, image_vecs, text_vecs, embedder.info.model_id, extra, bm25_keys)
    count_embedded(report, batch, text_vecs, state)
    return points


NON_FINITE_REASON = (
    "the model returned a non-finite {which} vector (NaN or inf): not stored, since it would give impossible "
    "scores; check the model (a broken checkpoint or an fp16 overflow) and re-run"
)


def refuse_non_finite(
    batch: list[DecodedImage], image_vecs: np.ndarray, text_vecs: dict[int, np.ndarray], report: IngestReport
) -> tuple[list[DecodedImage], np.ndarray, dict[int, np.ndarray]]:
    """Drop the items whose image or caption vector is not finite: each becomes a failed file with its reason."""
    bad_image = ~np.isfinite(np.asarray(image_vecs)).all(axis=1)
    bad_text = {i for i, v in text_vecs.items() if not np.isfinite(np.asarray(v)).all()}
    if not bad_image.any() and not bad_text:
        return batch, image_vecs, text_vecs
    keep: list[int] = []
    for i, d in enumerate(batch):
        if bad_image[i] or i in bad_text:
            which = "image" if bad_image[i] else "caption"
            report.failed.append(SkippedFile(d.item.rel_path, NON_FINITE_REASON.format(which=which)))
        else:
            keep.append(i)
    log.warning("refused %d non-finite vectors", len(batch) - len(keep))
    kept_text = {new: text_vecs[old] for new, old in enumerate(keep) if old in text_vecs}
    return [batch[i] for i in keep], np.asarray(image_vecs)[keep], kept_text


def embed_vectors(
    embedder: Embedder, pixels: np.ndarray, captions: Sequence[str | None], text_batch_size: int
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Image vectors for a batch, and text vectors by batch index for the items with a caption."""
    image_vecs = embedder.embed_pixels(pixels)
    captioned = [i for i, c in enumerate(captions) if c]
    text_vecs: dict[int, np.ndarray] = {}
    for start in range(0, len(captioned), text_batch_size):
        idx = captioned[start : start + text_batch_size]
        vecs = embedder.embed_texts([captions[i] for i in idx])  # type: ignore[misc]
        text_vecs.update(zip(idx, vecs))
    return image_vecs, text_vecs


def build_points(
    batch: Sequence[DecodedImage],
    image_vecs: np.ndarray,
    text_vecs: dict[int, np.ndarray],
    model_id: str,
    extra: Sequence[dict[str, Any]] | None = None,
    bm25_keys: Sequence[str] | None = None,
) -> list[Any]:
    """Store points (uuid5 ids, full payload) for an embedded batch."""
    now = datetime.now(timezone.utc)
    points = []
    for i, d in enumerate(batch):
        item = d.item
        metadata = {**item.metadata, **(extra[i] if extra is not None else {})}
        payload = build_payload(
            rel_path=item.rel_path,
            caption=item.caption,
            sha256=d.sha256,
            width=d.width,
            height=d.height,
            format=d.format,
            file_size=item.file_size,
            mtime=item.mtime,
            model_id=model_id,
            ingested_at=now,
            metadata=metadata,
        )
        bm25_text = sparse_text(payload, bm25_keys) if bm25_keys else None
        points.append(build_point(item.rel_path, image_vecs[i], text_vecs.get(i), payload, sparse_text=bm25_text))
    return points


def count_embedded(
    report: IngestReport, batch: Sequence[DecodedImage], text_vecs: dict[int, Any], state: dict[str, dict[str, Any]]
) -> None:
    report.captions += len(text_vecs)
    for d in batch:
        if point_id(d.item.rel_path) in state:
            report.updated += 1
        else:
            report.indexed += 1
