"""Ingestion on Ray Data: the job of `run_ingest`, spread over CPU decode tasks and model actors.

Stages, each a Ray Data operation (Ray does the scheduling, backpressure and retries):

1. the plan, on the driver, from the store's state (`plan_ingest`: the same incremental
   rules, and a model mismatch raises before Ray is even started);
2. decode + preprocess as CPU tasks: the safe decoder with the embedder's picklable
   `ClipTransform`; a file whose stored sha256 and annotations match is flagged here and
   never reaches a model;
3. embedding in an actor pool: one model per actor, `num_gpus=1` each when the cluster
   has GPUs, CPU actors otherwise;
4. writing: with a store factory (a Qdrant server) upsert actors write batched, retried
   upserts straight from the workers; without one (the embedded store allows one process
   per shard) vectors come back to the driver and go through the same `StoreWriter`.

Faults: actors restart and re-run their batch (Ray Data's defaults for actor pools);
decode tasks get `decode_retries` retries. A block whose decode task keeps dying is
dropped (`max_errored_blocks`), and its files are re-run one per task, so only the file
that kills its worker again is skipped, with the local pool's reason (DECODER_DIED).
A killed driver loses nothing either: ids are uuid5 of the path and the next plan skips
what the store already holds.
"""

from __future__ import annotations

import functools
import logging
import math
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mmrag.corpus.decode import DECODER_DIED, decode_image
from mmrag.corpus.types import CorpusItem, DecodedImage, SkippedFile
from mmrag.embedders.base import Embedder
from mmrag.errors import RunFailed, UsageError
from mmrag.ingest.run import (
    IngestOptions,
    IngestReport,
    build_points,
    count_embedded,
    decode_plan,
    embed_vectors,
    list_corpus,
    plan_ingest,
    prune_stale,
    refresh_stat,
    refuse_non_finite,
)
from mmrag.ingest.state import same_annotations
from mmrag.ingest.writer import StoreWriter
from mmrag.store.base import Store
from mmrag.store.convert import point_id

log = logging.getLogger(__name__)

OK, SKIP, SAME, ERROR = "ok", "skip", "same", "error"


class RayUnavailable(RunFailed):
    """`--engine ray` without Ray installed (`pip install 'mmrag[ray]'`)."""


@dataclass
class RayOptions:
    address: str | None = None  # None: attach to a running local runtime, else start one; "auto"; "ray://..."
    embed_actors: int = 0  # 0: one per GPU of the cluster, or 1 CPU actor without GPUs
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_actor: float = 1.0
    decode_retries: int = 1  # a decode task survives this many worker deaths before its files run alone
    write_streams: int = 2  # upsert actors when writing from the workers (Qdrant: 2-4 parallel streams)
    embedder_factory: Callable[[], Embedder] | None = None  # builds the model inside each actor
    store_factory: Callable[[], Store] | None = None  # None: write through the driver

    @classmethod
    def from_settings(cls, settings: Any, *, model: str, address: str | None = None) -> RayOptions:
        remote = bool(settings.qdrant_url) and settings.qdrant_url != ":memory:"
        return cls(
            address=address or settings.ray_address,
            embed_actors=settings.ray_embed_actors,
            write_streams=settings.ray_write_streams,
            embedder_factory=embedder_factory(model, settings),
            store_factory=functools.partial(_open_retrying_store, settings) if remote else None,
        )


def embedder_factory(model: str, settings: Any) -> Callable[[], Embedder]:
    """A picklable loader of `model` with the settings' device and preprocessing, for the actors."""
    from mmrag.embedders import load_embedder

    return functools.partial(
        load_embedder,
        model,
        device=settings.device,
        quantize=settings.quantize,
        fast_preprocess=settings.fast_preprocess,
        batch_size=settings.batch_size,
        text_batch_size=settings.text_batch_size,
    )


def _open_retrying_store(settings: Any) -> Store:
    from mmrag.store.factory import open_store
    from mmrag.store.retry import RetryingStore, RetryPolicy

    return RetryingStore(open_store(settings), RetryPolicy.from_settings(settings))


def run_ingest_ray(
    store: Store,
    embedder: Embedder,
    *,
    root: Path | None,
    collection: str,
    manifest: Path | None = None,
    prune: bool = False,
    options: IngestOptions | None = None,
    ray_options: RayOptions | None = None,
    progress: bool = True,
    include_unlisted: bool = False,
    tagger: Callable[[np.ndarray], list[dict[str, Any]]] | None = None,
) -> IngestReport:
    """`run_ingest` on Ray Data: same arguments, same report (`decode_executor` is "ray")."""
    opts = options or IngestOptions()
    ropts = ray_options or RayOptions()
    t0 = time.perf_counter()
    report = IngestReport(collection=collection, model_id=embedder.info.model_id, decode_executor="ray")
    _, preprocess = decode_plan("process", embedder)  # the decode tasks need a picklable preprocess
    if ropts.store_factory is not None and tagger is not None:
        raise UsageError("auto-tagging while ingesting on Ray needs the driver to write: drop --tag-labels, "
                         "or tag afterwards with `mmrag tag`")
    factory = ropts.embedder_factory or _reuse(embedder)

    corpus_root, entries = list_corpus(store, root=root, collection=collection, manifest=manifest,
                                       include_unlisted=include_unlisted, allow_outside_root=opts.allow_outside_root,
                                       prune=prune, report=report)
    plan = plan_ingest(store, embedder, collection=collection, corpus_root=corpus_root, entries=entries, report=report,
                       sparse_fields=opts.sparse_fields, draft_size=opts.draft_size)
    target, state = plan.target, plan.state

    writer = StoreWriter(store, target, opts.write_batch_size)
    bar = tqdm(total=len(plan.todo), unit="img", desc="embedding (ray)", disable=not progress, dynamic_ncols=True)
    started = _connect(ropts.address) if plan.todo else False
    try:
        rows = [_input_row(item, state) for item in plan.todo]
        # Nothing to decode (an unchanged corpus): no Ray at all.
        stages = _Stages(opts, ropts, preprocess, factory, embedder.info.fingerprint(), target,
                         embedder.info.model_id, plan.bm25_keys) if rows else None
        done: set[str] = set()
        # Pass 1 in blocks of a batch; pass 2 re-runs, one file per task, the files of blocks whose
        # decode task kept dying, so that only the file that kills its worker is skipped.
        for block in (opts.batch_size, 1):
            pending = [r for r in rows if r["rel_path"] not in done]
            if not pending or report.error or stages is None:
                break
            for batch in stages.run(pending, block, progress):
                _settle(batch, report, state, store, target, writer, tagger, embedder.info.model_id, done, bar,
                        plan.bm25_keys)
                if report.error:
                    break
        if not report.error:
            for r in rows:
                if r["rel_path"] not in done:
                    log.warning("a decode worker died on %s; skipping it", r["rel_path"])
                    report.failed.append(SkippedFile(r["rel_path"], DECODER_DIED))
                    bar.update(1)
            writer.flush()
            if prune:
                report.pruned = prune_stale(store, plan, opts.write_batch_size)
    except KeyboardInterrupt:
        try:
            writer.flush()
        finally:
            raise
    except Exception as exc:
        log.error("ray ingest into %s failed after writing %d points: %s", target, writer.written, exc)
        report.error = f"{type(exc).__name__}: {exc}"
    finally:
        bar.close()
        writer.close()
        report.written += writer.written
        report.elapsed_s = time.perf_counter() - t0
        if started:
            import ray

            ray.shutdown()
    return report


def _reuse(embedder: Embedder) -> Callable[[], Embedder]:
    """Ship the driver's own embedder to the actors (fine for a small local model)."""
    return functools.partial(_identity, embedder)


def _identity(x: Any) -> Any:
    return x


def _connect(address: str | None) -> bool:
    """Attach to Ray (or start a local runtime); True when this call started it."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable("the ray engine needs Ray: pip install 'mmrag[ray]'") from exc
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


def _input_row(item: CorpusItem, state: dict[str, dict[str, Any]]) -> dict[str, Any]:
    old = state.get(point_id(item.rel_path))
    # Only the stored sha256 travels to the workers, and only when the annotations still match.
    old_sha = old.get("sha256") if old is not None and same_annotations(item, old) else None
    return {"rel_path": item.rel_path, "item": pickle.dumps(item), "old_sha": old_sha or ""}


class _Stages:
    """The Ray Data pipeline of one run: decode tasks → embedding actors (→ upsert actors)."""

    def __init__(self, opts: IngestOptions, ropts: RayOptions, preprocess: Any, factory: Callable[[], Embedder],
                 fingerprint: dict[str, Any], target: str, model_id: str,
                 bm25_keys: Sequence[str] | None = None) -> None:
        import ray

        self.opts, self.ropts = opts, ropts
        self.preprocess, self.factory, self.fingerprint = preprocess, factory, fingerprint
        self.target, self.model_id, self.bm25_keys = target, model_id, bm25_keys
        gpus = float(ray.cluster_resources().get("GPU", 0))
        self.gpus_per_actor = ropts.gpus_per_actor if ropts.gpus_per_actor is not None else (1.0 if gpus else 0.0)
        self.actors = ropts.embed_actors or (max(1, int(gpus // self.gpus_per_actor)) if self.gpus_per_actor else 1)

    def run(self, rows: list[dict[str, Any]], block: int, progress: bool):
        import ray
        from ray.data import ActorPoolStrategy, DataContext

        ctx = DataContext.get_current()
        saved = ctx.max_errored_blocks, ctx.enable_progress_bars
        # A decode task that dies past its retries drops its block; the driver re-runs those files.
        ctx.max_errored_blocks, ctx.enable_progress_bars = -1, False
        try:
            ds: Any = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / block)))
            ds = ds.map_batches(
                _decode_rows,
                batch_size=block,
                batch_format="numpy",
                fn_kwargs={"preprocess": self.preprocess, "max_file_bytes": self.opts.max_file_bytes,
                           "max_image_pixels": self.opts.max_image_pixels, "draft_size": self.opts.draft_size},
                num_cpus=1,
                max_retries=self.ropts.decode_retries,
                retry_exceptions=False,  # decode_image never raises; only a dead worker is retried
            )
            ds = ds.map_batches(
                _EmbedActor,
                batch_size=self.opts.batch_size,
                batch_format="numpy",
                fn_constructor_kwargs={"factory": self.factory, "fingerprint": self.fingerprint,
                                       "text_batch_size": self.opts.text_batch_size},
                compute=ActorPoolStrategy(size=self.actors),
                num_cpus=self.ropts.cpus_per_actor,
                num_gpus=self.gpus_per_actor or None,
            )
            if self.ropts.store_factory is not None:
                ds = ds.map_batches(
                    _UpsertActor,
                    batch_size=self.opts.write_batch_size,
                    batch_format="numpy",
                    fn_constructor_kwargs={"factory": self.ropts.store_factory, "collection": self.target,
                                           "model_id": self.model_id, "write_batch": self.opts.write_batch_size,
                                           "bm25_keys": self.bm25_keys},
                    compute=ActorPoolStrategy(size=self.ropts.write_streams),
                    num_cpus=0,  # network-bound: they must not take cores from decode
                )
            yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
        finally:
            ctx.max_errored_blocks, ctx.enable_progress_bars = saved


# --------------------------------------------------------------------------- worker side


def _decode_rows(batch: dict[str, np.ndarray], *, preprocess: Any, max_file_bytes: int, max_image_pixels: int,
                 draft_size: int | None) -> dict[str, np.ndarray]:
    metas, statuses, pixels = [], [], []
    shape: tuple[int, ...] | None = None
    for raw, old_sha in zip(batch["item"], batch["old_sha"]):
        item: CorpusItem = pickle.loads(raw)
        res = decode_image(item, max_file_bytes=max_file_bytes, max_image_pixels=max_image_pixels,
                           preprocess=preprocess, draft_size=draft_size)
        px = None
        if isinstance(res, SkippedFile):
            status = SKIP
        elif old_sha and res.sha256 == old_sha:
            status = SAME
        else:
            status, px = OK, res.pixels
            assert px is not None  # decoded with a preprocess: the pixels are set
            shape = px.shape
            res = DecodedImage(item=res.item, sha256=res.sha256, width=res.width, height=res.height, format=res.format)
        metas.append(pickle.dumps(res))
        statuses.append(status)
        pixels.append(px)
    # Fixed-shape tensor column: rows without pixels carry zeros (rare: skipped or unchanged files).
    shape = shape or (1,)
    stacked = np.stack([p if p is not None else np.zeros(shape, np.float32) for p in pixels]) if pixels else np.zeros((0, *shape), np.float32)
    return {"rel_path": batch["rel_path"], "meta": np.array(metas, dtype=object),
            "status": np.array(statuses, dtype=object), "pixels": stacked}


class _EmbedActor:
    """One model per actor; checks it is the model the collection was planned for."""

    def __init__(self, factory: Callable[[], Embedder], fingerprint: dict[str, Any], text_batch_size: int) -> None:
        self.embedder = factory()
        got = self.embedder.info.fingerprint()
        if got != fingerprint:
            raise RunFailed(f"the actor loaded {got}, but the run was planned for {fingerprint}")
        self.text_batch_size = text_batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        status = np.array(batch["status"], dtype=object)
        n, dim = len(status), self.embedder.info.dim
        image = np.zeros((n, dim), np.float32)
        text = np.zeros((n, dim), np.float32)
        has_text = np.zeros(n, bool)
        error = np.array([""] * n, dtype=object)
        ok = np.flatnonzero(status == OK)
        if ok.size:
            try:
                metas = [pickle.loads(batch["meta"][i]) for i in ok]
                iv, tv = embed_vectors(self.embedder, np.asarray(batch["pixels"][ok]), [m.item.caption for m in metas],
                                       self.text_batch_size)
                image[ok] = iv
                for j, v in tv.items():
                    text[ok[j]], has_text[ok[j]] = v, True
            except Exception as exc:  # a run-level failure: reported by the driver, as run_ingest does
                status[ok], error[ok] = ERROR, f"{type(exc).__name__}: {exc}"
        return {"rel_path": batch["rel_path"], "meta": batch["meta"], "status": status, "error": error,
                "image": image, "text": text, "has_text": has_text}


class _UpsertActor:
    """Batched upserts from a worker to a Qdrant server, through the retrying store."""

    def __init__(self, factory: Callable[[], Store], collection: str, model_id: str, write_batch: int,
                 bm25_keys: Sequence[str] | None = None) -> None:
        self.store, self.collection, self.model_id, self.write_batch = factory(), collection, model_id, write_batch
        self.bm25_keys = bm25_keys

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = upsert_rows(self.store, self.collection, self.model_id, self.write_batch, batch, self.bm25_keys)
        out.pop("image"), out.pop("text")  # nothing heavy goes back to the driver
        return out


def upsert_rows(store: Store, collection: str, model_id: str, write_batch: int,
                batch: dict[str, np.ndarray], bm25_keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Write the embedded rows of `batch`; rows whose write failed come back with status "error"."""
    batch = dict(batch)
    status = np.array(batch["status"], dtype=object)
    error = np.array(batch["error"], dtype=object)
    ok = np.flatnonzero(status == OK)
    decoded, image, text = _embedded(batch, ok)
    try:
        points = build_points(decoded, image, text, model_id, bm25_keys=bm25_keys)
        for i in range(0, len(points), write_batch):
            store.upsert(collection, points[i : i + write_batch])
        status[ok] = "written"
    except Exception as exc:
        status[ok], error[ok] = ERROR, f"{type(exc).__name__}: {exc}"
    batch.update(status=status, error=error)
    return batch


def _embedded(batch: dict[str, np.ndarray], ok: np.ndarray) -> tuple[list[DecodedImage], np.ndarray, dict[int, np.ndarray]]:
    decoded = [pickle.loads(batch["meta"][i]) for i in ok]
    text = {j: batch["text"][i] for j, i in enumerate(ok) if batch["has_text"][i]}
    return decoded, np.asarray(batch["image"][ok]), text


# --------------------------------------------------------------------------- driver side


def _settle(batch: dict[str, np.ndarray], report: IngestReport, state: dict[str, dict[str, Any]], store: Store,
            target: str, writer: StoreWriter, tagger: Callable[[np.ndarray], list[dict[str, Any]]] | None,
            model_id: str, done: set[str], bar: tqdm, bm25_keys: Sequence[str] | None = None) -> None:
    """Account for one batch of results on the driver (and write it, for the embedded store)."""
    status = batch["status"]
    for i, st in enumerate(status):
        if st == ERROR:
            report.error = str(batch["error"][i])
            return
    for i, st in enumerate(status):
        if st == SKIP:
            report.failed.append(pickle.loads(batch["meta"][i]))
        elif st == SAME:
            meta: DecodedImage = pickle.loads(batch["meta"][i])
            refresh_stat(store, target, meta.item)  # no embedding
            report.unchanged += 1
    embedded = np.flatnonzero((status == OK) | (status == "written"))
    if embedded.size:
        decoded, image, text = _embedded(batch, embedded) if "image" in batch else (
            [pickle.loads(batch["meta"][i]) for i in embedded], None, {j: None for j, i in enumerate(embedded)
                                                                       if batch["has_text"][i]})
        if image is not None:  # the driver writes
            decoded, image, text = refuse_non_finite(decoded, image, text, report)  # type: ignore[arg-type]  # text is set when image is
            extra = tagger(image) if tagger is not None and decoded else None
            writer.add(build_points(decoded, image, text, model_id, extra, bm25_keys))
        else:
            report.written += len(decoded)
        count_embedded(report, decoded, text, state)
    done.update(str(r) for r in batch["rel_path"])
    bar.update(len(status))
