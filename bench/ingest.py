"""Ingestion throughput against the model's own limit.

For each model architecture and corpus, in one run:

- model-only:   preprocessed tensors in memory -> `embed_pixels` at the ingest batch size;
- decode-only:  the decode + preprocess pool alone (no model), on all cores;
- end-to-end:   `run_ingest` into a fresh `EdgeStore` (or, with --no-store, the same
                decode -> embed pipeline without a store), with a time breakdown;
- naive:        tutorial loop: open one image -> image processor -> get_image_features -> next;
- re-run:       `run_ingest` again on the unchanged corpus (must embed nothing);
- text:         captions/s padded to the longest in the batch vs padded to 77.

Every measurement runs in its own subprocess, so each peak RSS is its own.
Options add an int8 / fast-preprocess fidelity report, a CUDA path with
`--batch-size auto`, and RSS scaling of ingestion with corpus size.

    python -m bench.ingest --json out.json
    python -m bench.ingest --device cuda --no-store --arch b32,l14 --batch-size auto
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    cosine_stats,
    default_cache_dir,
    list_images,
    make_clip_dir,
    make_mixed_corpus,
    make_photo_corpus,
    make_small_corpus,
    mixed_captions,
    peak_rss_mb,
    rate,
    run_phase,
    timed,
    write_json,
)

MODULE = "bench.ingest"
CLIP_RETRIEVAL_IPS = 1500.0  # clip-retrieval's published figure: ViT-B/32 on one RTX 3080
TARGET_VS_MODEL = 0.85
TARGET_VS_NAIVE = 4.0
FAST_COSINE_THRESHOLD = 0.999
REFERENCE_MODEL = Path(__file__).resolve().parents[1] / "mmrag" / "assets" / "reference" / "clip-shapes-en"


# =========================================================================== helpers used by phases


def _quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_bench_embedder(p: dict[str, Any], *, quantize: str | None | bool = False, fast: bool | None = None) -> Any:
    """The product's embedder for a phase's parameters (`quantize=False`: take it from `p`)."""
    from mmrag.embedders import load_embedder
    from mmrag.embedders.hf import quiet_transformers

    with quiet_transformers():
        return load_embedder(
            str(p["model_dir"]),
            device=p.get("device", "cpu"),
            quantize=p.get("quantize") if quantize is False else quantize,
            fast_preprocess=bool(p.get("fast")) if fast is None else fast,
            batch_size=int(p.get("batch_size", 32)),
            text_batch_size=int(p.get("text_batch_size", 128)),
            backend=p.get("backend", "auto"),
            threads=int(p.get("threads") or 0),
        )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _warm_up(embedder: Any) -> None:
    size = embedder.info.image_size
    embedder.embed_pixels(np.zeros((min(embedder.batch_size, 8), 3, size, size), dtype=np.float32))


def preprocess_files(embedder: Any, files: list[Path], *, draft_size: int | None = None) -> np.ndarray:
    """Decode (product rules) + preprocess `files` into an (N, 3, S, S) array, in order."""
    from mmrag.corpus.decode import decode_image
    from mmrag.corpus.types import CorpusItem, DecodedImage

    out = []
    for f in files:
        st = f.stat()
        item = CorpusItem(path=f, rel_path=f.name, file_size=st.st_size, mtime=st.st_mtime)
        res = decode_image(item, max_file_bytes=1 << 30, max_image_pixels=1 << 31, preprocess=embedder.preprocess, draft_size=draft_size)
        if not isinstance(res, DecodedImage):
            raise RuntimeError(f"benchmark image failed to decode: {res}")
        out.append(res.pixels)
    return np.stack(out)


class TimedEmbedder:
    """Delegating embedder that counts and times calls (preprocess runs on decode threads)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.calls = {"preprocess": 0, "embed_pixels": 0, "embed_texts": 0, "embed_images": 0}
        self.seconds = {"preprocess": 0.0, "embed_pixels": 0.0, "embed_texts": 0.0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _record(self, name: str, start: float) -> None:
        with self._lock:
            self.calls[name] += 1
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def preprocess(self, image: Any) -> np.ndarray:
        start = time.perf_counter()
        try:
            return self._inner.preprocess(image)
        finally:
            self._record("preprocess", start)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        try:
            return self._inner.embed_pixels(pixels)
        finally:
            self._record("embed_pixels", start)

    def embed_texts(self, texts: Any) -> np.ndarray:
        start = time.perf_counter()
        try:
            return self._inner.embed_texts(texts)
        finally:
            self._record("embed_texts", start)

    def embed_images(self, images: Any) -> np.ndarray:
        with self._lock:
            self.calls["embed_images"] += 1
        return self._inner.embed_images(images)

    @property
    def model_calls(self) -> int:
        return self.calls["embed_pixels"] + self.calls["embed_texts"] + self.calls["embed_images"]


class TimedStore:
    """Delegating store that times upserts (they run on ingestion's writer thread)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.upsert_s = 0.0
        self.upserts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def upsert(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._inner.upsert(*args, **kwargs)
        finally:
            self.upsert_s += time.perf_counter() - start
            self.upserts += 1


def _breakdown(wall: float, emb: TimedEmbedder, workers: int, executor: str) -> dict[str, Any]:
    """Where the time went: model share of the wall clock, and the decode pool's preprocess time.

    Worker processes' preprocess time is not visible from here: None for them.
    """
    return {
        "model_s": round(emb.seconds["embed_pixels"], 3),
        "model_busy": round(emb.seconds["embed_pixels"] / wall, 3) if wall else 0.0,
        "preprocess_thread_s": round(emb.seconds["preprocess"], 3) if executor == "thread" else None,
        "decode_workers": workers,
        "decode_executor": executor,
    }


def _decode_plan(p: dict[str, Any], emb: TimedEmbedder) -> tuple[str, Any]:
    """The product's choice of decode pool; thread pools get the timed preprocess."""
    from mmrag.ingest import decode_plan

    executor, preprocess = decode_plan(p.get("executor", "auto"), emb._inner)
    return executor, (emb.preprocess if executor == "thread" else preprocess)


def _ingest_options(p: dict[str, Any], embedder: Any) -> Any:
    from mmrag.ingest import IngestOptions

    return IngestOptions(
        batch_size=int(p["batch_size"]),
        workers=int(p.get("workers", 0)),
        decode_executor=p.get("executor", "auto"),
        draft_size=embedder.draft_size if p.get("fast") else None,
        overlap_decode=p.get("overlap"),
    )


def _result(**fields: Any) -> dict[str, Any]:
    return {**fields, "peak_rss_mb": round(peak_rss_mb(), 1)}


# =========================================================================== phases (one process each)


def phase_model_only(p: dict[str, Any]) -> dict[str, Any]:
    """embed_pixels throughput on preprocessed tensors already in memory.

    Cost does not depend on pixel values, so a batch of real preprocessed images
    is tiled up to `n` tensors; passes repeat until `min_seconds` is spent.
    """
    emb = load_bench_embedder(p)
    files = [Path(f) for f in p["files"]]
    n = int(p.get("n") or len(files))
    real = preprocess_files(emb, files[: min(len(files), int(p["batch_size"]), 16)])
    pixels = np.ascontiguousarray(np.resize(real, (n, *real.shape[1:])))
    _warm_up(emb)
    done, elapsed = 0, 0.0
    while elapsed < float(p.get("min_seconds", 0.0)) or done == 0:
        with timed() as t:
            emb.embed_pixels(pixels)
            _sync(emb.device)
        done += n
        elapsed += t["s"]
    return _result(images=done, seconds=round(elapsed, 3), images_per_s=round(rate(done, elapsed), 2))


def phase_decode_only(p: dict[str, Any]) -> dict[str, Any]:
    """The decode + preprocess pool alone: the rate the model could at most be fed at."""
    from mmrag.corpus import decode_stream, iter_corpus
    from mmrag.corpus.types import DecodedImage

    emb = TimedEmbedder(load_bench_embedder(p))
    items = list(iter_corpus(Path(p["corpus"])))
    draft = emb.draft_size if p.get("fast") else None
    executor, preprocess = _decode_plan(p, emb)
    with timed() as t:  # a process pool's start-up is inside: ingestion pays it too
        ok = sum(
            isinstance(r, DecodedImage)
            for r in decode_stream(items, workers=int(p.get("workers", 0)), executor=executor, max_file_bytes=1 << 30,
                                   max_image_pixels=1 << 31, preprocess=preprocess, draft_size=draft)
        )
    return _result(images=ok, seconds=round(t["s"], 3), images_per_s=round(rate(ok, t["s"]), 2),
                   preprocess_thread_s=round(emb.seconds["preprocess"], 3) if executor == "thread" else None,
                   decode_executor=executor)


def phase_e2e(p: dict[str, Any]) -> dict[str, Any]:
    """`run_ingest` into a fresh EdgeStore at p["home"], timed around the whole call."""
    from mmrag.ingest import run_ingest
    from mmrag.store import EdgeStore

    inner = load_bench_embedder(p)
    _warm_up(inner)
    emb = TimedEmbedder(inner)
    store = TimedStore(EdgeStore(p["home"]))
    opts = _ingest_options(p, inner)
    with timed() as t:
        report = run_ingest(store, emb, root=Path(p["corpus"]), collection="bench", options=opts, progress=False)
    if not report.ok or report.failed:
        raise RuntimeError(f"ingest failed: {report.summary()}")
    workers = opts.workers or os.cpu_count() or 1
    return _result(
        images=report.embedded, seconds=round(t["s"], 3), images_per_s=round(rate(report.embedded, t["s"]), 2),
        upsert_s=round(store.upsert_s, 3), upserts=store.upserts,
        **_breakdown(t["s"], emb, workers, report.decode_executor or "thread"),
    )


def phase_e2e_ray(p: dict[str, Any]) -> dict[str, Any]:
    """`run_ingest_ray` into a fresh EdgeStore (driver writes) on a local Ray with all cores.

    Times the Ray runtime start apart from the run; the run includes the actors' model load,
    which local ingest pays before its clock starts (the phase loads its model first).
    """
    import functools

    import ray

    from mmrag.embedders import load_embedder
    from mmrag.ingest.ray_engine import RayOptions, run_ingest_ray
    from mmrag.store import EdgeStore

    inner = load_bench_embedder(p)
    with timed() as t_init:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    factory = functools.partial(load_embedder, str(p["model_dir"]), device=p.get("device", "cpu"),
                                fast_preprocess=bool(p.get("fast")), batch_size=int(p["batch_size"]))
    opts = _ingest_options(p, inner)
    store = TimedStore(EdgeStore(p["home"]))
    sampler = RaySampler()
    with sampler, timed() as t:
        report = run_ingest_ray(store, inner, root=Path(p["corpus"]), collection="bench", options=opts, progress=False,
                                ray_options=RayOptions(embedder_factory=factory))
    if not report.ok or report.failed:
        raise RuntimeError(f"ray ingest failed: {report.summary()}")
    ray.shutdown()
    return _result(images=report.embedded, seconds=round(t["s"], 3), images_per_s=round(rate(report.embedded, t["s"]), 2),
                   ray_init_s=round(t_init["s"], 3), upsert_s=round(store.upsert_s, 3), upserts=store.upserts,
                   worker_peak_rss_mb=round(sampler.peak_one_mb, 1), workers_peak_total_rss_mb=round(sampler.peak_total_mb, 1))


class RaySampler(threading.Thread):
    """Samples the RSS of this node's Ray worker and actor processes ("ray::..."), every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_one_mb = self.peak_total_mb = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._halt.wait(0.2):
            rss = []
            for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
                cmd = " ".join(proc.info.get("cmdline") or [])
                if cmd.startswith("ray::") and proc.info.get("memory_info") is not None:
                    rss.append(proc.info["memory_info"].rss / (1024 * 1024))
            if rss:
                self.peak_one_mb = max(self.peak_one_mb, max(rss))
                self.peak_total_mb = max(self.peak_total_mb, sum(rss))

    def __enter__(self) -> RaySampler:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._halt.set()
        self.join()


def phase_rerun(p: dict[str, Any]) -> dict[str, Any]:
    """`run_ingest` again over the unchanged corpus: no decode, no model call."""
    from mmrag.ingest import run_ingest
    from mmrag.store import EdgeStore

    emb = TimedEmbedder(load_bench_embedder(p))
    store = EdgeStore(p["home"])
    with timed() as t:
        report = run_ingest(store, emb, root=Path(p["corpus"]), collection="bench", options=_ingest_options(p, emb._inner), progress=False)
    return _result(seconds=round(t["s"], 3), unchanged=report.unchanged, embedded=report.embedded,
                   model_calls=emb.model_calls, preprocess_calls=emb.calls["preprocess"])


def phase_pipeline(p: dict[str, Any]) -> dict[str, Any]:
    """decode pool -> batches -> embed_pixels, as run_ingest does, with no store at all."""
    from mmrag.corpus import decode_stream, iter_corpus
    from mmrag.corpus.types import DecodedImage

    inner = load_bench_embedder(p)
    _warm_up(inner)
    emb = TimedEmbedder(inner)
    items = list(iter_corpus(Path(p["corpus"])))
    workers = int(p.get("workers", 0)) or os.cpu_count() or 1
    draft = inner.draft_size if p.get("fast") else None
    executor, preprocess = _decode_plan(p, emb)
    size, done, batch = int(p["batch_size"]), 0, []
    with timed() as t:
        for r in decode_stream(items, workers=workers, executor=executor, max_file_bytes=1 << 30, max_image_pixels=1 << 31,
                               preprocess=preprocess, draft_size=draft, max_in_flight=max(4 * workers, 2 * size)):
            if isinstance(r, DecodedImage):
                batch.append(r.pixels)
            if len(batch) >= size:
                emb.embed_pixels(np.stack(batch))
                done, batch = done + len(batch), []
        if batch:
            emb.embed_pixels(np.stack(batch))
            done += len(batch)
        _sync(inner.device)
    return _result(images=done, seconds=round(t["s"], 3), images_per_s=round(rate(done, t["s"]), 2),
                   **_breakdown(t["s"], emb, workers, executor))


def phase_naive(p: dict[str, Any]) -> dict[str, Any]:
    """The tutorial loop: one image at a time through the processor and the model."""
    import torch
    from PIL import Image

    from mmrag.embedders.hf import projected_features, quiet_transformers

    with quiet_transformers():
        from transformers import AutoProcessor, CLIPModel

        model = CLIPModel.from_pretrained(str(p["model_dir"])).eval()
        processor = AutoProcessor.from_pretrained(str(p["model_dir"]))
    device = p.get("device", "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = model.to(device=device, dtype=dtype)
    files = [Path(f) for f in p["files"]][: int(p.get("limit") or len(p["files"]))]

    def one(path: Path) -> np.ndarray:
        image = Image.open(path)
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            feats = projected_features(model.get_image_features(pixel_values=inputs["pixel_values"].to(device, dtype)))
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return feats.float().cpu().numpy()

    one(files[0])  # warm-up, untimed
    with timed() as t:
        for f in files:
            one(f)
    return _result(images=len(files), seconds=round(t["s"], 3), images_per_s=round(rate(len(files), t["s"]), 2))


def phase_text(p: dict[str, Any]) -> dict[str, Any]:
    """Caption throughput: the product's pad-to-longest vs padding every batch to the full context."""
    import torch

    from mmrag.embedders.hf import l2_normalize, projected_features

    # The padded-to-77 reference drives the transformers model directly: torch, whatever the default runtime.
    emb = load_bench_embedder({**p, "backend": "torch"})
    texts = mixed_captions(int(p["n_texts"]), seed=1)
    bsz = emb.text_batch_size
    def best_of_two(fn: Any) -> tuple[np.ndarray, float]:
        # The first pass meets every new sequence length (kernel selection, allocator
        # growth), so it is a warm-up; the faster of two passes is the figure.
        times, out = [], None
        for _ in range(2):
            with timed() as t:
                out = fn()
                _sync(emb.device)
            times.append(t["s"])
        return out, min(times)

    longest, t_longest = best_of_two(lambda: emb.embed_texts(texts))

    def padded_full(batch: list[str]) -> np.ndarray:
        enc = emb.tokenizer(batch, padding="max_length", truncation=True, max_length=emb.max_text_length, return_tensors="pt")
        with torch.inference_mode():
            out = emb.model.get_text_features(input_ids=enc["input_ids"].to(emb.device), attention_mask=enc["attention_mask"].to(emb.device))
        return l2_normalize(projected_features(out))

    full, t_full = best_of_two(lambda: np.concatenate([padded_full(texts[i : i + bsz]) for i in range(0, len(texts), bsz)]))
    lengths = [len(x) for x in emb.tokenizer(texts, truncation=True, max_length=emb.max_text_length)["input_ids"]]
    return _result(
        texts=len(texts), batch_size=bsz, context=emb.max_text_length,
        tokens_mean=round(float(np.mean(lengths)), 1), tokens_max=int(max(lengths)),
        longest_texts_per_s=round(rate(len(texts), t_longest), 1),
        pad77_texts_per_s=round(rate(len(texts), t_full), 1),
        speedup=round(t_full / t_longest, 2) if t_longest else 0.0,
        same_vectors_min_cosine=round(cosine_stats(longest, full)["min"], 6),
    )


def phase_fidelity(p: dict[str, Any]) -> dict[str, Any]:
    """Cosine between int8 and fp32 embeddings, and between fast (draft) and reference preprocessing."""
    ref = load_bench_embedder(p, quantize=None, fast=False)
    out: dict[str, Any] = {}
    for corpus, files in p["files"].items():
        paths = [Path(f) for f in files]
        pixels = preprocess_files(ref, paths)
        base = ref.embed_pixels(pixels)
        entry: dict[str, Any] = {}
        if p.get("int8"):
            q = load_bench_embedder(p, quantize="int8", fast=False)
            entry["int8_vs_fp32"] = cosine_stats(q.embed_pixels(pixels), base)
            del q
        if p.get("fast"):
            fast_pixels = preprocess_files(ref, paths, draft_size=ref.info.image_size)
            entry["fast_vs_reference"] = cosine_stats(ref.embed_pixels(fast_pixels), base)
        out[corpus] = entry
    return _result(**out)


def _t2i_recall(img: np.ndarray, txt: np.ndarray, captions: list[str], ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """text -> image recall@k; a query is its unique caption, relevant = every image with that caption."""
    unique = sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    mask = np.zeros((len(unique), len(captions)), dtype=bool)
    for j, c in enumerate(captions):
        mask[index[c], j] = True
    first = [captions.index(c) for c in unique]
    sim = txt[first] @ img.T
    best = np.where(mask, sim, -np.inf).max(axis=1)
    rank = 1 + ((sim > best[:, None]) & ~mask).sum(axis=1)
    return {f"r@{k}": float(np.mean(rank <= k)) for k in ks}


def phase_recall(p: dict[str, Any]) -> dict[str, Any]:
    """t2i recall of the bundled reference model, fp32 vs int8, on its own held-out recipe."""
    from mmrag.training.synthetic import generate

    model_dir = Path(p["model_dir"])
    metrics = json.loads((model_dir / "metrics.json").read_text())
    held = metrics.get("held_out", {})
    seed, n = int(held.get("seed", 20240917)), int(p.get("n") or held.get("gallery_size", 500))
    fp32 = load_bench_embedder({**p, "device": "cpu"}, quantize=None, fast=False)
    samples = generate(n, seed=seed, image_size=fp32.info.image_size)
    images, captions = [s.image for s in samples], [s.caption_en for s in samples]
    result = {}
    for name, quant in (("fp32", None), ("int8", "int8")):
        emb = fp32 if quant is None else load_bench_embedder({**p, "device": "cpu"}, quantize=quant, fast=False)
        result[name] = _t2i_recall(emb.embed_images(images), emb.embed_texts(captions), captions)
    result["delta_r@1"] = round(result["int8"]["r@1"] - result["fp32"]["r@1"], 4)
    return _result(n=n, seed=seed, **result)


def phase_batch_auto(p: dict[str, Any]) -> dict[str, Any]:
    """The product's batch tuning: double until out of memory or less than 5% gain."""
    from mmrag.embedders.tuning import tune_batch_size

    emb = load_bench_embedder({**p, "batch_size": 1})
    tuned = tune_batch_size(emb, start=int(p.get("start", 16)), limit=int(p.get("max", 1024)),
                            min_seconds=float(p.get("min_seconds", 1.0)))
    return _result(best=tuned.best, best_images_per_s=round(tuned.best_images_per_s, 2), trials=tuned.trials)


def phase_rss_ingest(p: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of one ingest of a corpus of small images (tiny model): memory must stay bounded."""
    from mmrag.ingest import IngestOptions, run_ingest
    from mmrag.store import EdgeStore

    emb = load_bench_embedder(p)
    _warm_up(emb)
    before = peak_rss_mb()
    with timed() as t:
        report = run_ingest(EdgeStore(p["home"]), emb, root=Path(p["corpus"]), collection="bench",
                            options=IngestOptions(batch_size=int(p["batch_size"])), progress=False)
    return _result(images=report.embedded, failed=len(report.failed), seconds=round(t["s"], 3),
                   rss_before_mb=round(before, 1))


PHASES = {
    "model_only": phase_model_only,
    "decode_only": phase_decode_only,
    "e2e": phase_e2e,
    "e2e_ray": phase_e2e_ray,
    "rerun": phase_rerun,
    "pipeline": phase_pipeline,
    "naive": phase_naive,
    "text": phase_text,
    "fidelity": phase_fidelity,
    "recall": phase_recall,
    "batch_auto": phase_batch_auto,
    "rss_ingest": phase_rss_ingest,
}


def run_child(phase: str, params: dict[str, Any]) -> dict[str, Any]:
    """Entry point inside the subprocess."""
    _quiet()
    if params.get("threads"):
        import torch

        torch.set_num_threads(int(params["threads"]))
    return PHASES[phase](params)


# =========================================================================== orchestration


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="b32", help="comma list of b32, l14, tiny (default b32)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    ap.add_argument("--quantize", choices=["int8"], default=None, help="CPU dynamic int8 quantisation (adds a fidelity report)")
    ap.add_argument("--fast-preprocess", action="store_true", help="JPEG draft decoding (adds a fidelity report and verdict)")
    ap.add_argument("--batch-size", default="32", help="ingest batch size, or 'auto' (double until OOM or <5%% gain)")
    ap.add_argument("--workers", type=int, default=0, help="decode workers (0 = one per core)")
    ap.add_argument("--decode-executor", default="auto", metavar="auto|thread|process[,...]",
                    help="decode pool(s) to measure; the first is the one the ratios use, others are compared (default auto)")
    ap.add_argument("--photos", type=int, default=64, help="12-MP JPEGs in the photo corpus (0 skips it)")
    ap.add_argument("--mixed", type=int, default=256, help="images in the mixed small/medium corpus (0 skips it)")
    ap.add_argument("--photo-size", default="4000x3000", help="photo size WxH (default 4000x3000)")
    ap.add_argument("--naive-limit", type=int, default=32, help="images through the naive loop per corpus (0 = all)")
    ap.add_argument("--texts", type=int, default=512, help="captions for the text throughput phase (0 skips it)")
    ap.add_argument("--fidelity-limit", type=int, default=64, help="images per corpus in fidelity reports")
    ap.add_argument("--model-min-seconds", type=float, default=3.0, help="repeat model-only passes for at least this long")
    ap.add_argument("--engine", default="local", metavar="local[,ray]",
                    help="ingest engines measured end-to-end; 'local,ray' adds run_ingest_ray on a local Ray (same corpora)")
    ap.add_argument("--no-store", action="store_true", help="measure decode->embed without the store (imports nothing store-related)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    ap.add_argument("--rss-scaling", default=None, metavar="N,N,...",
                    help="also measure ingest peak RSS at these corpus sizes (tiny model), e.g. 500,2000,8000")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads in each phase (0 = torch default)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="models and corpora cache (default: $TMPDIR/mmrag-bench-cache)")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--phase-args", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quantize and args.device != "cpu":
        ap.error("--quantize int8 runs on CPU only")
    if args.batch_size != "auto" and (not args.batch_size.isdigit() or int(args.batch_size) < 1):
        ap.error("--batch-size must be a positive integer or 'auto'")
    return args


def _check(checks: list[dict[str, Any]], name: str, value: float | None, target: float) -> None:
    ok = value is not None and value >= target
    checks.append({"check": name, "value": None if value is None else round(value, 3), "target": target, "pass": ok})


def measure_arch(args: argparse.Namespace, arch: str, corpora: dict[str, Path], cache: Path, log: Any) -> dict[str, Any]:
    model_dir = make_clip_dir(cache, arch)
    executors = [e.strip() for e in args.decode_executor.split(",") if e.strip()]
    base = {"model_dir": str(model_dir), "device": args.device, "quantize": args.quantize,
            "fast": args.fast_preprocess, "workers": args.workers, "threads": args.threads, "executor": executors[0]}
    res: dict[str, Any] = {"model_dir": str(model_dir)}
    if args.batch_size == "auto":
        log(f"[{arch}] batch size: auto")
        gpu = args.device != "cpu"
        auto = run_phase(MODULE, "batch_auto", {**base, "start": 32 if gpu else 8, "max": 2048 if gpu else 128,
                                                 "min_seconds": 1.5 if gpu else 2.0})
        res["batch_auto"] = auto
        batch = auto["best"]
    else:
        batch = int(args.batch_size)
    base["batch_size"] = res["batch_size"] = batch
    res["corpora"] = {}
    for name, folder in corpora.items():
        files = [str(f) for f in list_images(folder)]
        r: dict[str, Any] = {"images": len(files)}
        log(f"[{arch}/{name}] model-only")
        r["model_only"] = run_phase(MODULE, "model_only", {**base, "files": files, "n": max(len(files), 2 * batch),
                                                            "min_seconds": args.model_min_seconds})
        log(f"[{arch}/{name}] decode-only")
        r["decode_only"] = run_phase(MODULE, "decode_only", {**base, "corpus": str(folder)})
        if args.no_store:
            log(f"[{arch}/{name}] pipeline (no store)")
            r["e2e"] = run_phase(MODULE, "pipeline", {**base, "corpus": str(folder)})
            r["e2e"]["kind"] = "pipeline (no store)"
        else:
            home = Path(tempfile.mkdtemp(prefix="mmrag-bench-home-"))
            try:
                log(f"[{arch}/{name}] end-to-end run_ingest")
                r["e2e"] = run_phase(MODULE, "e2e", {**base, "corpus": str(folder), "home": str(home)})
                r["e2e"]["kind"] = "run_ingest -> EdgeStore"
                if "ray" in args.engine.split(","):
                    ray_home = Path(tempfile.mkdtemp(prefix="mmrag-bench-ray-"))
                    try:
                        log(f"[{arch}/{name}] end-to-end run_ingest_ray (local Ray)")
                        r["e2e_ray"] = run_phase(MODULE, "e2e_ray", {**base, "corpus": str(folder), "home": str(ray_home)})
                        local_ips = r["e2e"]["images_per_s"]
                        r["ray_vs_local"] = round(r["e2e_ray"]["images_per_s"] / local_ips, 3) if local_ips else None
                    finally:
                        shutil.rmtree(ray_home, ignore_errors=True)
                log(f"[{arch}/{name}] re-run on the unchanged corpus")
                r["rerun"] = run_phase(MODULE, "rerun", {**base, "corpus": str(folder), "home": str(home)})
            finally:
                shutil.rmtree(home, ignore_errors=True)
        for other in executors[1:]:
            log(f"[{arch}/{name}] decode pool: {other}")
            alt = r.setdefault("other_executors", {})[other] = {
                "decode_only": run_phase(MODULE, "decode_only", {**base, "executor": other, "corpus": str(folder)}),
                "e2e": run_phase(MODULE, "pipeline", {**base, "executor": other, "corpus": str(folder)}),
            }
            alt["e2e"]["kind"] = "pipeline (no store)"
        if not args.no_naive:
            log(f"[{arch}/{name}] naive loop")
            r["naive"] = run_phase(MODULE, "naive", {**base, "files": files, "limit": args.naive_limit})
        model_ips, e2e_ips = r["model_only"]["images_per_s"], r["e2e"]["images_per_s"]
        dec_ips = r["decode_only"]["images_per_s"]
        r["e2e_vs_model"] = round(e2e_ips / model_ips, 3) if model_ips else None
        r["e2e_vs_naive"] = round(e2e_ips / r["naive"]["images_per_s"], 2) if r.get("naive", {}).get("images_per_s") else None
        # Both stages share the CPU cores on a CPU run: the best a perfect pipeline can do is
        # the harmonic combination; on a GPU they overlap, so the slower stage bounds it.
        if dec_ips and model_ips:
            bound = min(dec_ips, model_ips) if args.device != "cpu" else 1.0 / (1.0 / dec_ips + 1.0 / model_ips)
            r["pipeline_bound_ips"] = round(bound, 2)
            r["e2e_vs_bound"] = round(e2e_ips / bound, 3)
        res["corpora"][name] = r
    if args.texts:
        log(f"[{arch}] text throughput")
        res["text"] = run_phase(MODULE, "text", {**base, "n_texts": args.texts, "text_batch_size": 128})
    if args.quantize or args.fast_preprocess:
        log(f"[{arch}] fidelity")
        fid_files = {name: [str(f) for f in list_images(folder)[: args.fidelity_limit]] for name, folder in corpora.items()}
        res["fidelity"] = run_phase(MODULE, "fidelity", {**base, "files": fid_files, "int8": bool(args.quantize), "fast": args.fast_preprocess})
    return res


def run_rss_scaling(sizes: list[int], cache: Path, log: Any, *, ray: bool = False) -> list[dict[str, Any]]:
    model_dir = make_clip_dir(cache, "tiny")
    rows = []
    for n in sizes:
        folder = make_small_corpus(cache / f"small-{n}", n)
        home = Path(tempfile.mkdtemp(prefix="mmrag-bench-rss-"))
        try:
            log(f"[rss] ingest of {n} small images")
            r = run_phase(MODULE, "rss_ingest", {"model_dir": str(model_dir), "device": "cpu", "corpus": str(folder),
                                                 "home": str(home), "batch_size": 32})
            if ray:
                shutil.rmtree(home, ignore_errors=True)
                log(f"[rss] ray ingest of {n} small images")
                r["ray"] = run_phase(MODULE, "e2e_ray", {"model_dir": str(model_dir), "device": "cpu", "corpus": str(folder),
                                                         "home": str(home), "batch_size": 32})
        finally:
            shutil.rmtree(home, ignore_errors=True)
        rows.append({"n": n, **r})
    return rows


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def render(results: dict[str, Any]) -> str:
    lines = []
    cfg = results["config"]
    lines.append(f"mmrag ingest benchmark  device={cfg['device']} ({cfg['device_name']})  cores={cfg['cpu_count']}  "
                 f"quantize={cfg['quantize']}  fast_preprocess={cfg['fast_preprocess']}  store={'no' if cfg['no_store'] else 'EdgeStore'}  decode={cfg.get('decode_executor', 'auto')}")
    head = f"{'arch/corpus':<14}{'n':>5}{'batch':>6}{'model':>9}{'decode':>9}{'e2e':>9}{'naive':>8}{'e2e/mdl':>9}{'e2e/bnd':>9}{'e2e/nv':>8}{'rerun s':>9}  peak RSS MiB (model/e2e/naive)"
    lines += ["", "images/s", head, "-" * len(head)]
    for arch, res in results["archs"].items():
        for name, r in res["corpora"].items():
            rss = "/".join(_fmt(r.get(k, {}).get("peak_rss_mb"), ".0f") for k in ("model_only", "e2e", "naive"))
            lines.append(
                f"{arch + '/' + name:<14}{r['images']:>5}{res['batch_size']:>6}{_fmt(r['model_only']['images_per_s']):>9}"
                f"{_fmt(r['decode_only']['images_per_s']):>9}{_fmt(r['e2e']['images_per_s']):>9}"
                f"{_fmt(r.get('naive', {}).get('images_per_s')):>8}{_fmt(r['e2e_vs_model'], '.2f'):>9}"
                f"{_fmt(r.get('e2e_vs_bound'), '.2f'):>9}{_fmt(r['e2e_vs_naive'], '.1f'):>8}"
                f"{_fmt(r.get('rerun', {}).get('seconds'), '.2f'):>9}  {rss}"
            )
    for arch, res in results["archs"].items():
        for name, r in res["corpora"].items():
            if r.get("e2e_ray"):
                er = r["e2e_ray"]
                lines.append(f"[{arch}/{name}] run_ingest_ray on a local Ray: {er['images_per_s']:.1f} images/s, "
                             f"{r['ray_vs_local']:.2f}x local; Ray start {er['ray_init_s']:.1f} s (not in the run), "
                             f"driver peak {er['peak_rss_mb']:.0f} MiB, largest worker {er['worker_peak_rss_mb']:.0f} MiB")
    lines.append("")
    for arch, res in results["archs"].items():
        for name, r in res["corpora"].items():
            e = r["e2e"]
            lines.append(f"[{arch}/{name}] {e['kind']}: model busy {e['model_busy']:.0%} of the wall clock "
                         f"({e['model_s']:.1f} s of {e['seconds']:.1f} s); {_pool_text(e)}"
                         + (f"; store upserts {e['upsert_s']:.2f} s (writer thread)" if "upsert_s" in e else ""))
            for other, alt in r.get("other_executors", {}).items():
                lines.append(f"[{arch}/{name}] {other} pool instead: decode-only {alt['decode_only']['images_per_s']:.1f}, "
                             f"{alt['e2e']['kind']} {alt['e2e']['images_per_s']:.1f} images/s "
                             f"(model busy {alt['e2e']['model_busy']:.0%}); {e.get('decode_executor', 'thread')} pool: "
                             f"decode-only {r['decode_only']['images_per_s']:.1f}, e2e {e['images_per_s']:.1f}")
            if "rerun" in r:
                rr = r["rerun"]
                lines.append(f"[{arch}/{name}] re-run: {rr['seconds']:.2f} s, {rr['unchanged']} unchanged, "
                             f"{rr['embedded']} embedded, {rr['model_calls']} model calls, {rr['preprocess_calls']} decodes")
        if "batch_auto" in res:
            trials = ", ".join(f"{t['batch_size']}:{'OOM' if t.get('oom') else _fmt(t['images_per_s'])}" for t in res["batch_auto"]["trials"])
            lines.append(f"[{arch}] batch auto -> {res['batch_size']}  ({trials})")
        if "text" in res:
            t = res["text"]
            lines.append(f"[{arch}] text: {t['longest_texts_per_s']:.1f} texts/s length-bucketed, padded to longest (mean {t['tokens_mean']} / max "
                         f"{t['tokens_max']} tokens) vs {t['pad77_texts_per_s']:.1f} padded to {t['context']}: x{t['speedup']:.2f}; "
                         f"same vectors (min cosine {t['same_vectors_min_cosine']:.6f})")
        fid = res.get("fidelity", {})
        for name, entry in fid.items():
            if not isinstance(entry, dict):
                continue
            for key, label in (("int8_vs_fp32", "int8 vs fp32"), ("fast_vs_reference", "fast preprocess vs reference")):
                if key in entry:
                    s = entry[key]
                    lines.append(f"[{arch}/{name}] {label}: cosine mean {s['mean']:.5f}, min {s['min']:.5f} over {s['n']} images")
        if cfg["device"] != "cpu":
            for name, r in res["corpora"].items():
                lines.append(f"[{arch}/{name}] vs clip-retrieval's ~{CLIP_RETRIEVAL_IPS:.0f} images/s (ViT-B/32, one RTX 3080): "
                             f"model-only {r['model_only']['images_per_s']:.0f}, pipeline {r['e2e']['images_per_s']:.0f} images/s")
    if "recall" in results:
        rc = results["recall"]
        if rc.get("skipped"):
            lines.append(f"reference-model recall: skipped ({rc['skipped']})")
        else:
            lines.append(f"reference-model t2i recall@1 fp32 {rc['fp32']['r@1']:.3f} -> int8 {rc['int8']['r@1']:.3f} "
                         f"(delta {rc['delta_r@1']:+.3f}); recall@5 {rc['fp32']['r@5']:.3f} -> {rc['int8']['r@5']:.3f} over {rc['n']} images")
    if results.get("rss_scaling"):
        lines.append("")
        lines.append("ingest peak RSS vs corpus size (tiny model, small images):")
        for row in results["rss_scaling"]:
            lines.append(f"  {row['n']:>7} images: peak {row['peak_rss_mb']:.0f} MiB (after model load {row['rss_before_mb']:.0f} MiB), "
                         f"{row['images'] / row['seconds']:.0f} images/s")
            if row.get("ray"):
                rr = row["ray"]
                lines.append(f"  {'':>7}   ray: driver peak {rr['peak_rss_mb']:.0f} MiB, largest worker {rr['worker_peak_rss_mb']:.0f} MiB, "
                             f"all workers {rr['workers_peak_total_rss_mb']:.0f} MiB, {rr['images_per_s']:.0f} images/s")
    if results.get("verdicts"):
        lines.append("")
        lines += results["verdicts"]
    lines.append("")
    for c in results["checks"]:
        target = f"target {c['target']}" if c["target"] == 0 else f"target >= {c['target']}"
        lines.append(f"{'PASS' if c['pass'] else 'FAIL'}  {c['check']}: {_fmt(c['value'], '.3f')} ({target})")
    if cfg.get("note"):
        lines.append(cfg["note"])
    return "\n".join(lines)


def _pool_text(e: dict[str, Any]) -> str:
    if e.get("decode_executor", "thread") == "thread":
        return f"preprocess on {e['decode_workers']} decode threads {e['preprocess_thread_s']:.1f} thread-s"
    return f"decode + preprocess in {e['decode_workers']} worker processes (start-up included)"


def _device_name(device: str) -> str:
    if device == "cpu":
        return platform.processor() or platform.machine()
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase:
        print(json.dumps(run_child(args.phase, json.loads(args.phase_args or "{}"))))
        return 0
    started = time.perf_counter()
    log = lambda msg: print(f"  .. {msg}", file=sys.stderr, flush=True)  # noqa: E731
    cache = args.cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.photo_size.lower().split("x"))
    corpora: dict[str, Path] = {}
    if args.photos:
        log(f"photo corpus: {args.photos} x {width}x{height} JPEG (cached)")
        corpora["photos"] = make_photo_corpus(cache / f"photos-{args.photos}-{width}x{height}", args.photos, size=(width, height))
    if args.mixed:
        log(f"mixed corpus: {args.mixed} images (cached)")
        corpora["mixed"] = make_mixed_corpus(cache / f"mixed-{args.mixed}", args.mixed)

    import torch

    results: dict[str, Any] = {
        "config": {
            "device": args.device, "device_name": _device_name(args.device), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "quantize": args.quantize,
            "fast_preprocess": args.fast_preprocess, "no_store": args.no_store, "workers": args.workers,
            "decode_executor": args.decode_executor,
            "threads": args.threads, "batch_size": args.batch_size, "argv": sys.argv[1:] if argv is None else argv,
        },
        "archs": {},
        "checks": [],
        "verdicts": [],
    }
    checks = results["checks"]
    for arch in [a.strip() for a in args.arch.split(",") if a.strip()]:
        res = results["archs"][arch] = measure_arch(args, arch, corpora, cache, log)
        for name, r in res["corpora"].items():
            _check(checks, f"{arch}/{name} end-to-end >= {TARGET_VS_MODEL:.0%} of model-only", r["e2e_vs_model"], TARGET_VS_MODEL)
            if name == "photos" and r.get("e2e_vs_naive") is not None:
                _check(checks, f"{arch}/{name} end-to-end >= {TARGET_VS_NAIVE:.0f}x the naive loop (12-MP JPEGs)", r["e2e_vs_naive"], TARGET_VS_NAIVE)
            if "rerun" in r:
                checks.append({"check": f"{arch}/{name} re-run touches no model", "value": r["rerun"]["model_calls"],
                               "target": 0, "pass": r["rerun"]["model_calls"] == 0 and r["rerun"]["embedded"] == 0})
        fast = res.get("fidelity", {}).get("photos", {}).get("fast_vs_reference")
        if fast:
            ok = fast["min"] >= FAST_COSINE_THRESHOLD
            results["verdicts"].append(
                f"[{arch}] fast-preprocess verdict: min cosine {fast['min']:.5f} on the photo corpus "
                + (f">= {FAST_COSINE_THRESHOLD}: the draft path is faithful enough to be the default"
                   if ok else f"< {FAST_COSINE_THRESHOLD}: the default stays the accurate path"))
    if args.quantize:
        if (REFERENCE_MODEL / "config.json").is_file():
            log("reference-model recall fp32 vs int8")
            results["recall"] = run_phase(MODULE, "recall", {"model_dir": str(REFERENCE_MODEL), "threads": args.threads})
        else:
            results["recall"] = {"skipped": f"reference model not found at {REFERENCE_MODEL}"}
    if args.rss_scaling:
        if args.no_store:
            results["rss_scaling_note"] = "skipped: --no-store"
        else:
            results["rss_scaling"] = run_rss_scaling([int(v) for v in args.rss_scaling.split(",")], cache, log,
                                                     ray="ray" in args.engine.split(","))
    results["config"]["elapsed_s"] = round(time.perf_counter() - started, 1)
    results["config"]["note"] = f"total benchmark time {results['config']['elapsed_s']:.0f} s"
    print(render(results))
    if args.json:
        write_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
