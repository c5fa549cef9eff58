"""Query benchmark: latency and recall of the retriever layer (text -> image, top-10).

For each corpus size (default 10k and 100k points, vectors of the embedder's size,
512 for ViT-B/32) the store is filled directly with random unit vectors and
realistic payloads, then this measures, each over >= 200 timed queries after a
warm-up:

* query embedding (random-init ViT-B/32 text tower loaded through `load_embedder`),
* store search: exact (recall checked against a numpy brute force) and HNSW
  after `optimize()` for several `hnsw_ef` (recall@10 against the brute force),
  each without and with a keyword filter selecting ~10% of the points,
* end-to-end `MultimodalRetriever.invoke` (embedding + search + Documents),
* EdgeStore (default) and, for `--client-sizes`, QdrantClientStore(":memory:"),
* the optimize (HNSW build) time and the reopen time of the edge stores.

Stores are cached under `--cache-dir`, keyed by size and data parameters: the
raw (as ingested, never optimized) store and an optimized copy, so a rerun
skips building; `--rebuild` builds (and times) both again.

    python -m bench.query --json bench-query.json

Store-level queries are random unit vectors, like the stored ones. Uniform random
512-d data (the default) has no neighbourhood structure: HNSW recall and build time
are a pessimistic bound for real CLIP embeddings. `--data powerlaw` draws vectors
with a decaying spectrum instead, which behaves much more like real embeddings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import default_cache_dir, make_clip_dir, mixed_captions, peak_rss_mb, write_json

K = 10
COLLECTION = "bench"
FILTER_TAG = "beach"
OTHER_TAGS = ("city", "family", "food", "pets", "travel", "night", "snow")
FORMATS = ("JPEG", "PNG", "WEBP")
STORE_VERSION = 1  # bump when the generated data changes: invalidates cached stores
INGESTED_AT = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


# --------------------------------------------------------------------------- statistics


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / mean / max in milliseconds over per-call wall-clock times."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no samples")
    p50, p95 = np.percentile(ms, [50, 95])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "mean_ms": float(ms.mean()), "max_ms": float(ms.max()), "n": int(ms.size)}


def brute_force_topk(matrix: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Row indices of the k highest dot products per query, best first (cosine for unit rows).

    With `mask`, only rows where it is True compete (the filtered ground truth).
    """
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 64):  # bounded memory for large corpora
        scores = queries[start : start + 64] @ matrix.T
        if mask is not None:
            scores[:, ~mask] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start : start + 64] = np.take_along_axis(top, order, axis=1)
    return out


def recall_at_k(found: Sequence[Sequence[str]], truth: Sequence[Sequence[str]], k: int) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / k."""
    if len(found) != len(truth):
        raise ValueError(f"{len(found)} results for {len(truth)} queries")
    if not found:
        raise ValueError("no queries")
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


DISTRIBUTIONS = ("uniform", "powerlaw")


def unit_rows(rng: np.random.Generator, n: int, dim: int, distribution: str = "uniform") -> np.ndarray:
    """`n` random unit vectors.

    "uniform": uniform on the sphere, the data the brief asks for; it has no neighbourhood
    structure (intrinsic dimension = dim), the worst case for HNSW recall and build time.
    "powerlaw": Gaussian with per-axis scale i**-0.5 (effective dimension ~28 at 512-d),
    closer to the anisotropic, low-intrinsic-dimension spectrum of real CLIP embeddings.
    """
    rows = rng.normal(size=(n, dim)).astype(np.float32)
    if distribution == "powerlaw":
        rows *= np.arange(1, dim + 1, dtype=np.float32) ** -0.5
    elif distribution != "uniform":
        raise ValueError(f"unknown distribution {distribution!r}: expected one of {DISTRIBUTIONS}")
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class SyntheticCorpus:
    """`n` points: random unit image vectors, text vectors on captioned points, real payloads.

    Everything is a pure function of the parameters, so the ground truth can be rebuilt
    from them when a cached store is reused.
    """

    n: int
    dim: int
    seed: int = 0
    caption_fraction: float = 0.5
    filter_fraction: float = 0.1
    model_id: str = "bench-random"
    distribution: str = "uniform"

    def params(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "dim": self.dim,
            "seed": self.seed,
            "caption_fraction": self.caption_fraction,
            "filter_fraction": self.filter_fraction,
            "model_id": self.model_id,
            "distribution": self.distribution,
            "version": STORE_VERSION,
        }

    def rel_path(self, i: int) -> str:
        return f"albums/{i // 1000:03d}/IMG_{i:06d}.jpg"

    def image_vectors(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.n, self.dim, 1])
        return unit_rows(rng, self.n, self.dim, self.distribution)

    def filter_mask(self) -> np.ndarray:
        """Exactly round(n * filter_fraction) points, spread at random, carry FILTER_TAG."""
        order = np.random.default_rng([self.seed, self.n, 3]).permutation(self.n)
        mask = np.zeros(self.n, dtype=bool)
        mask[order[: int(round(self.n * self.filter_fraction))]] = True
        return mask

    def point_ids(self) -> list[str]:
        from mmrag.store.convert import point_id

        return [point_id(self.rel_path(i)) for i in range(self.n)]

    def batches(self, batch_size: int):
        """PointStructs in batches, built with the product's `build_payload` / `build_point`."""
        from mmrag.store.convert import build_payload, build_point

        image = self.image_vectors()
        mask = self.filter_mask()
        rng = np.random.default_rng([self.seed, self.n, 4])
        captioned = rng.random(self.n) < self.caption_fraction
        captions = mixed_captions(self.n, seed=self.seed)
        widths = rng.integers(320, 4033, size=self.n)
        heights = rng.integers(240, 3025, size=self.n)
        formats = rng.choice(len(FORMATS), size=self.n, p=[0.7, 0.2, 0.1])
        sizes = rng.integers(20_000, 6_000_000, size=self.n)
        n_tags = rng.integers(1, 3, size=self.n)
        tag_picks = rng.integers(0, len(OTHER_TAGS), size=(self.n, 2))
        for start in range(0, self.n, batch_size):
            stop = min(self.n, start + batch_size)
            rng_text = np.random.default_rng([self.seed, self.n, 2, start])
            text = unit_rows(rng_text, stop - start, self.dim, self.distribution)
            points = []
            for i in range(start, stop):
                tags = [OTHER_TAGS[t] for t in tag_picks[i, : n_tags[i]]]
                if mask[i]:
                    tags = [FILTER_TAG, *tags]
                rel = self.rel_path(i)
                payload = build_payload(
                    rel_path=rel,
                    caption=captions[i] if captioned[i] else None,
                    sha256=hashlib.sha256(rel.encode()).hexdigest(),
                    width=int(widths[i]),
                    height=int(heights[i]),
                    format=FORMATS[formats[i]],
                    file_size=int(sizes[i]),
                    mtime=1.6e9 + i,
                    model_id=self.model_id,
                    ingested_at=INGESTED_AT,
                    metadata={"tags": tags, "album": f"album {i // 1000:03d}"},
                )
                points.append(build_point(rel, image[i], text[i - start] if captioned[i] else None, payload, dim=self.dim))
            yield points


def fill_store(store: Any, corpus: SyntheticCorpus, batch_size: int) -> float:
    """Create the collection and upsert the corpus; returns the seconds it took."""
    from mmrag.store import CollectionSpec

    start = time.perf_counter()
    store.create_collection(CollectionSpec(name=COLLECTION, dim=corpus.dim, model_id=corpus.model_id))
    for points in corpus.batches(batch_size):
        store.upsert(COLLECTION, points)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- cached stores


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / ".done.json").read_text())
    except (OSError, ValueError):
        return None


def _write_marker(folder: Path, data: dict[str, Any]) -> None:
    (folder / ".done.json").write_text(json.dumps(data, sort_keys=True, indent=1))


def edge_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_search_threads": args.search_threads}


def raw_edge_store(cache: Path, corpus: SyntheticCorpus, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Home of the as-ingested edge store for `corpus` (built now unless cached) and its build record."""
    from mmrag.store import EdgeStore

    home = cache / f"query-edge-n{corpus.n}-d{corpus.dim}-s{corpus.seed}-{corpus.distribution}" / "raw"
    marker = _read_marker(home)
    if marker is not None and marker.get("params") == corpus.params() and not args.rebuild:
        return home, {**marker["build"], "cached": True}
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    with EdgeStore(home, **edge_options(args)) as store:
        seconds = fill_store(store, corpus, args.batch_size)
        info = store.shard_info(COLLECTION)
    build = {"build_s": seconds, "points_per_s": corpus.n / seconds, "batch_size": args.batch_size, "shard": info}
    _write_marker(home, {"params": corpus.params(), "build": build})
    return home, {**build, "cached": False}


def optimized_edge_store(
    raw_home: Path, corpus: SyntheticCorpus, args: argparse.Namespace
) -> tuple[Path, dict[str, Any]]:
    """A copy of the raw store with HNSW built by `optimize()` (timed), cached beside it."""
    from mmrag.store import EdgeStore

    home = raw_home.parent / "optimized"
    marker = _read_marker(home)
    key = {"params": corpus.params(), "hnsw": "EdgeStore defaults"}
    if marker is not None and marker.get("key") == key and not args.rebuild:
        return home, {**marker["optimize"], "cached": True}
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(raw_home, home, ignore=shutil.ignore_patterns(".done.json"))
    with EdgeStore(home, **edge_options(args)) as store:
        start = time.perf_counter()
        store.optimize(COLLECTION)
        seconds = time.perf_counter() - start
        info = store.shard_info(COLLECTION)
    record = {"optimize_s": seconds, "shard": info}
    _write_marker(home, {"key": key, "optimize": record})
    return home, {**record, "cached": False}


# --------------------------------------------------------------------------- measuring


def time_calls(fn: Callable[[Any], Any], inputs: Sequence[Any], warmup: Sequence[Any]) -> tuple[list[float], list[Any]]:
    """Per-call seconds of fn(x) over `inputs` (after calling it on `warmup`), and the results."""
    for item in warmup:
        fn(item)
    seconds, results = [], []
    for item in inputs:
        start = time.perf_counter()
        result = fn(item)
        seconds.append(time.perf_counter() - start)
        results.append(result)
    return seconds, results


@dataclass
class Workload:
    """Queries of one corpus size and their ground truth."""

    vectors: list[list[float]]  # measured store queries (unit, as Python floats)
    warmup: list[list[float]]
    truth: list[list[str]]  # brute-force top-k point ids per query
    truth_filtered: list[list[str]]
    texts: list[str]  # measured end-to-end queries
    warmup_texts: list[str]
    filter_matches: int


def make_workload(corpus: SyntheticCorpus, n_queries: int, n_warmup: int, seed: int) -> Workload:
    rng = np.random.default_rng([seed, 17])
    queries = unit_rows(rng, n_queries + n_warmup, corpus.dim, corpus.distribution)
    image = corpus.image_vectors()
    mask = corpus.filter_mask()
    ids = np.asarray(corpus.point_ids())
    measured = queries[n_warmup:]
    truth = ids[brute_force_topk(image, measured, K)].tolist()
    truth_filtered = ids[brute_force_topk(image, measured, K, mask)].tolist()
    texts = mixed_captions(n_queries + n_warmup, seed=seed + 1000)
    return Workload(
        vectors=measured.tolist(),
        warmup=queries[:n_warmup].tolist(),
        truth=truth,
        truth_filtered=truth_filtered,
        texts=texts[n_warmup:],
        warmup_texts=texts[:n_warmup],
        filter_matches=int(mask.sum()),
    )


def tag_filter() -> Any:
    from qdrant_client import models

    return models.Filter(must=[models.FieldCondition(key="tags", match=models.MatchValue(value=FILTER_TAG))])


def measure_search(store: Any, work: Workload, *, filtered: bool, **params: Any) -> dict[str, Any]:
    query_filter = tag_filter() if filtered else None

    def run(vector: list[float]) -> list[str]:
        hits = store.search(COLLECTION, vector, using="image", limit=K, query_filter=query_filter, **params)
        return [str(h.id) for h in hits]

    seconds, found = time_calls(run, work.vectors, work.warmup)
    truth = work.truth_filtered if filtered else work.truth
    return {**latency_stats(seconds), "recall_at_10": recall_at_k(found, truth, K)}


def exact_score_error(store: Any, corpus: SyntheticCorpus, work: Workload, n: int = 20) -> float:
    """Largest |store score - numpy cosine| over the top-k of `n` queries (float32 rounding only)."""
    image = corpus.image_vectors()
    index = {pid: i for i, pid in enumerate(corpus.point_ids())}
    worst = 0.0
    for vector in work.vectors[:n]:
        q = np.asarray(vector, dtype=np.float32)
        for hit in store.search(COLLECTION, vector, using="image", limit=K):
            worst = max(worst, abs(float(hit.score) - float(image[index[str(hit.id)]] @ q)))
    return worst


class VectorFeeder:
    """Stands in for the embedder: hands out given vectors in turn, so `invoke` costs no model.

    Timing `invoke` with it isolates the retriever's own cost (search + Documents) and lets
    its results be checked against the brute-force ground truth of those vectors.
    """

    def __init__(self, vectors: Sequence[Sequence[float]], info: Any = None) -> None:
        self._vectors = np.asarray(vectors, dtype=np.float32)
        self._next = 0
        self.info = info  # the collection's model, so the retriever's model check passes

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = self._vectors[self._next : self._next + len(texts)]
        self._next = (self._next + len(texts)) % len(self._vectors)
        return out


def measure_retriever(
    store: Any,
    embedder: Any,
    work: Workload,
    *,
    filtered: bool,
    exact: bool = True,
    hnsw_ef: int | None = None,
    given_vectors: bool = False,
) -> dict[str, Any]:
    """`MultimodalRetriever.invoke` per text query (with `given_vectors`: per store query vector)."""
    from mmrag.retrieval import MultimodalRetriever

    if given_vectors:
        from mmrag.embedders.base import ModelInfo

        spec = store.get_spec(COLLECTION)
        info = ModelInfo(model_id=spec.model_id, dim=spec.dim, backend="hf-clip", image_size=224,
                         quantization=spec.quantization)
        embedder = VectorFeeder(work.warmup + work.vectors, info)  # time_calls runs the warm-up first
    retriever = MultimodalRetriever(
        store=store,
        embedder=embedder,
        collection=COLLECTION,
        k=K,
        target="image",
        exact=exact,
        hnsw_ef=hnsw_ef,
        filter={"tags": FILTER_TAG} if filtered else None,
    )
    seconds, docs = time_calls(retriever.invoke, work.texts, work.warmup_texts)
    # the retriever must have returned what was asked: k Documents, all matching the filter
    ok = all(len(d) == K for d in docs) and (
        not filtered or all(FILTER_TAG in doc.metadata["payload"]["tags"] for batch in docs for doc in batch)
    )
    row: dict[str, Any] = {**latency_stats(seconds), "documents_ok": ok}
    if given_vectors:
        found = [[doc.id for doc in batch] for batch in docs]
        row["recall_at_10"] = recall_at_k(found, work.truth_filtered if filtered else work.truth, K)
    return row


def measure_reopen(home: Path, work: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds to open a closed edge store until it answers (count), then its first search."""
    from mmrag.store import EdgeStore

    start = time.perf_counter()
    store = EdgeStore(home, **edge_options(args))
    count = store.count(COLLECTION)
    opened = time.perf_counter() - start
    start = time.perf_counter()
    store.search(COLLECTION, work.vectors[0], using="image", limit=K)
    first = time.perf_counter() - start
    store.close()
    return {"reopen_s": opened, "first_search_s": first, "points": count}


def search_suite(store: Any, work: Workload, label: str, results: list[dict[str, Any]], **params: Any) -> None:
    for filtered in (False, True):
        row = measure_search(store, work, filtered=filtered, **params)
        results.append({"op": f"search {label}{' +filter' if filtered else ''}", **row})
        log(f"    {results[-1]['op']}: p50 {row['p50_ms']:.2f} ms, recall@10 {row['recall_at_10']:.3f}")


EXACT_E2E = (
    ("exact, vector given", {"filtered": False, "given_vectors": True}),
    ("exact", {"filtered": False}),
    ("exact +filter", {"filtered": True}),
)


def retriever_suite(
    store: Any, embedder: Any, work: Workload, results: list[dict[str, Any]], runs: Sequence[tuple[str, dict[str, Any]]]
) -> None:
    for label, kwargs in runs:
        row = measure_retriever(store, embedder, work, **kwargs)
        results.append({"op": f"e2e {label}", **row})
        log(f"    e2e {label}: p50 {row['p50_ms']:.2f} ms")


def bench_edge(corpus: SyntheticCorpus, work: Workload, embedder: Any, args: argparse.Namespace) -> dict[str, Any]:
    from mmrag.store import EdgeStore

    cache = Path(args.cache_dir)
    log(f"  edge {corpus.n}: build")
    raw_home, build = raw_edge_store(cache, corpus, args)
    ops: list[dict[str, Any]] = []
    out: dict[str, Any] = {"size": corpus.n, "backend": "edge", "build": build, "ops": ops}
    with EdgeStore(raw_home, **edge_options(args)) as store:
        assert store.count(COLLECTION) == corpus.n, "cached store has the wrong number of points"
        out["exact_score_max_abs_err"] = exact_score_error(store, corpus, work)
        search_suite(store, work, "exact", ops)
        retriever_suite(store, embedder, work, ops, EXACT_E2E)
    log(f"  edge {corpus.n}: optimize")
    opt_home, optimize = optimized_edge_store(raw_home, corpus, args)
    out["optimize"] = optimize
    with EdgeStore(opt_home, **edge_options(args)) as store:
        search_suite(store, work, "exact (optimized)", ops)
        for ef in args.efs:
            search_suite(store, work, f"hnsw ef={ef}", ops, exact=False, hnsw_ef=ef)
        if args.e2e_ef is not None:
            hnsw = {"filtered": False, "exact": False, "hnsw_ef": args.e2e_ef}
            retriever_suite(store, embedder, work, ops, [(f"hnsw ef={args.e2e_ef}", hnsw)])
    out["reopen"] = {"raw": measure_reopen(raw_home, work, args), "optimized": measure_reopen(opt_home, work, args)}
    return out


def bench_client(corpus: SyntheticCorpus, work: Workload, embedder: Any, args: argparse.Namespace) -> dict[str, Any]:
    from qdrant_client import QdrantClient

    from mmrag.store import QdrantClientStore

    log(f"  qdrant-client :memory: {corpus.n}: build")
    store = QdrantClientStore(QdrantClient(location=":memory:"))
    try:
        seconds = fill_store(store, corpus, args.batch_size)
        ops: list[dict[str, Any]] = []
        out: dict[str, Any] = {
            "size": corpus.n,
            "backend": "qdrant-memory",
            "build": {"build_s": seconds, "points_per_s": corpus.n / seconds, "cached": False},
            "ops": ops,
            "exact_score_max_abs_err": exact_score_error(store, corpus, work),
        }
        search_suite(store, work, "exact", ops)
        # +filter end-to-end would add little: local mode's filtered search dominates it
        retriever_suite(store, embedder, work, ops, EXACT_E2E[1:2])
    finally:
        store.close()
    return out


def bench_embedding(embedder: Any, n_queries: int, n_warmup: int, seed: int) -> dict[str, Any]:
    texts = mixed_captions(n_queries + n_warmup, seed=seed + 2000)
    seconds, _ = time_calls(lambda text: embedder.embed_texts([text]), texts[n_warmup:], texts[:n_warmup])
    return latency_stats(seconds)


# --------------------------------------------------------------------------- output


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def format_table(report: dict[str, Any]) -> str:
    lines = []
    emb = report["embedder"]
    lines.append(
        f"query embedding ({emb['arch']}, dim {emb['dim']}, torch threads {emb['torch_threads']}): "
        f"p50 {emb['text_embed']['p50_ms']:.2f} ms  p95 {emb['text_embed']['p95_ms']:.2f} ms  (load {emb['load_s']:.1f} s)"
    )
    lines.append("")
    header = f"{'size':>7}  {'backend':<13} {'operation':<34} {'p50 ms':>8} {'p95 ms':>8} {'recall@10':>9}"
    lines.append(header)
    lines.append("-" * len(header))
    for run in report["runs"]:
        for row in run["ops"]:
            recall = f"{row['recall_at_10']:.3f}" if "recall_at_10" in row else ("ok" if row.get("documents_ok") else "BAD")
            lines.append(
                f"{run['size']:>7}  {run['backend']:<13} {row['op']:<34} {row['p50_ms']:>8.2f} {row['p95_ms']:>8.2f} {recall:>9}"
            )
    lines.append("")
    for run in report["runs"]:
        build = run["build"]
        parts = [
            f"{run['size']:>7} {run['backend']:<13} build {build['build_s']:.1f} s ({build['points_per_s']:.0f} pts/s)"
            + (" [cached]" if build.get("cached") else "")
        ]
        if "optimize" in run:
            opt = run["optimize"]
            parts.append(
                f"optimize {opt['optimize_s']:.1f} s ({opt['shard']['indexed_vectors_count']} vectors indexed)"
                + (" [cached]" if opt.get("cached") else "")
            )
        if "reopen" in run:
            parts.append(
                "reopen raw {:.3f} s / optimized {:.3f} s (first search {:.1f} / {:.1f} ms)".format(
                    run["reopen"]["raw"]["reopen_s"],
                    run["reopen"]["optimized"]["reopen_s"],
                    run["reopen"]["raw"]["first_search_s"] * 1e3,
                    run["reopen"]["optimized"]["first_search_s"] * 1e3,
                )
            )
        parts.append(f"exact score err {run['exact_score_max_abs_err']:.1e}")
        lines.append(";  ".join(parts))
    lines.append("")
    lines.append(
        f"data: {report['config']['data']}; filter: tags={FILTER_TAG!r} ({report['config']['filter_fraction']:.0%} of points); "
        f"{report['config']['queries']} timed queries after {report['config']['warmup']} warm-up; "
        f"total {report['total_s']:.0f} s, peak RSS {report['peak_rss_mb']:.0f} MiB"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.query", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="stored points per run")
    parser.add_argument("--client-sizes", type=int, nargs="*", default=[10_000],
                        help="sizes also run on QdrantClientStore(':memory:') (slow local mode)")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per operation")
    parser.add_argument("--warmup", type=int, default=20, help="untimed queries before each operation")
    parser.add_argument("--efs", type=int, nargs="*", default=[64, 128, 256], help="hnsw_ef values to measure")
    parser.add_argument("--e2e-ef", type=int, default=128, help="hnsw_ef of the end-to-end HNSW run (0: skip it)")
    parser.add_argument("--arch", default="b32", help="bench.common model arch for the random-weight CLIP")
    parser.add_argument("--model-dir", type=Path, default=None, help="use this checkpoint instead of building one")
    parser.add_argument("--data", choices=DISTRIBUTIONS, default="uniform",
                        help="stored and query vectors: uniform on the sphere, or a CLIP-like power-law spectrum")
    parser.add_argument("--caption-fraction", type=float, default=0.5, help="points that also store a text vector")
    parser.add_argument("--filter-fraction", type=float, default=0.1, help="points the filter selects")
    parser.add_argument("--batch-size", type=int, default=1024, help="points per upsert")
    parser.add_argument("--search-threads", type=int, default=None, help="EdgeStore max_search_threads")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads for the embedder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--rebuild", action="store_true", help="rebuild (and re-time) cached stores")
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    args = parser.parse_args(argv)
    if args.queries < 1 or args.warmup < 0:
        parser.error("--queries must be >= 1 and --warmup >= 0")
    args.e2e_ef = args.e2e_ef or None
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mmrag.embedders import load_embedder

    started = time.perf_counter()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    model_dir = args.model_dir or make_clip_dir(Path(args.cache_dir), args.arch, seed=args.seed)
    start = time.perf_counter()
    embedder = load_embedder(str(model_dir))
    load_s = time.perf_counter() - start
    dim = int(embedder.info.dim)
    log(f"embedder {model_dir} (dim {dim}) loaded in {load_s:.1f} s; timing query embedding")
    report: dict[str, Any] = {
        "config": {
            "sizes": args.sizes,
            "client_sizes": args.client_sizes,
            "queries": args.queries,
            "warmup": args.warmup,
            "k": K,
            "efs": args.efs,
            "e2e_ef": args.e2e_ef,
            "data": args.data,
            "caption_fraction": args.caption_fraction,
            "filter_fraction": args.filter_fraction,
            "batch_size": args.batch_size,
            "search_threads": args.search_threads,
            "seed": args.seed,
            "argv": sys.argv,
        },
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        },
        "embedder": {
            "model_dir": str(model_dir),
            "arch": args.arch if args.model_dir is None else "custom",
            "dim": dim,
            "load_s": load_s,
            "torch_threads": torch.get_num_threads(),
            "text_embed": bench_embedding(embedder, args.queries, args.warmup, args.seed),
        },
        "runs": [],
    }
    for n in args.sizes:
        corpus = SyntheticCorpus(
            n=n,
            dim=dim,
            seed=args.seed,
            caption_fraction=args.caption_fraction,
            filter_fraction=args.filter_fraction,
            distribution=args.data,
            # the store's vectors stand for this model's: the retriever checks the collection's model
            model_id=embedder.info.model_id,
        )
        log(f"size {n}: ground truth")
        work = make_workload(corpus, args.queries, args.warmup, args.seed)
        runs = [bench_edge(corpus, work, embedder, args)]
        if n in args.client_sizes:
            runs.append(bench_client(corpus, work, embedder, args))
        for item in runs:
            item["filter_matches"] = work.filter_matches
        report["runs"].extend(runs)
    report["total_s"] = time.perf_counter() - started
    report["peak_rss_mb"] = peak_rss_mb()
    report["machine"]["load_avg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    print(format_table(report))
    if args.json is not None:
        write_json(report, args.json)
        log(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
