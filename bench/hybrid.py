"""Hybrid search benchmark: quality on the reference models and query latency, in one run.

Quality (held-out 500-image gallery, 40 captions carrying a rare catalogue number):

* text->caption top-1 of the 63-or-so colour/shape prompts: dense caption search vs hybrid,
* rare codes: top-1 share for dense caption search and hybrid,
* caption->image recall@1/@5: dense image, fused and hybrid,
* the same in Chinese with `mmrag-shapes-zh`.

Latency (embedded EdgeStore, exact search, random unit vectors + BM25 of random captions):
p50/p95 of dense, fused, hybrid and hybrid+MMR at each size, against the old Python RRF
(two dense searches merged in Python). This machine is shared: figures are noisy.

    python -m bench.hybrid --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_json

N_GALLERY = 500


def quality(lang: str, model: str, workdir: Path) -> dict[str, Any]:
    from mmrag.embedders import load_embedder
    from mmrag.ingest import IngestOptions, run_ingest
    from mmrag.retrieval import MultimodalRetriever
    from mmrag.store import EdgeStore
    from mmrag.testing import hybrid_eval as he

    w = he.build_world(workdir / f"gallery-{lang}", N_GALLERY, lang=lang, n_codes=40)
    emb = load_embedder(model, device="cpu")
    store = EdgeStore(workdir / f"home-{lang}")
    run_ingest(store, emb, root=w.root, manifest=w.root / "manifest.jsonl", collection="q", progress=False,
               options=IngestOptions(batch_size=64, workers=2))
    r = MultimodalRetriever(store=store, embedder=emb, collection="q")
    out: dict[str, Any] = {"lang": lang, "model": model, "gallery": len(w.rows)}
    for target in ("text", "hybrid"):
        hits, n = he.colour_shape_hits(r, w, target=target)
        codes, n_codes = he.code_hits(r, w, target=target)
        out[f"prompts_top1_{target}"] = f"{hits}/{n}"
        out[f"codes_top1_{target}"] = f"{codes}/{n_codes}"
    for target in ("image", "fused", "hybrid"):
        rec = he.caption_recall(r, w, target=target)
        out[f"recall_{target}"] = {f"@{k}": round(v, 3) for k, v in rec.items()}
    store.close()
    return out


def _python_rrf(store: Any, vec: list[float], k: int) -> list[Any]:
    """The old fused mode: two dense searches, merged by RRF in Python (k=2)."""
    fused: dict[Any, float] = {}
    for using in ("image", "text"):
        for rank, h in enumerate(store.search("lat", vec, using=using, limit=max(3 * k, 10))):
            fused[h.id] = fused.get(h.id, 0.0) + 1.0 / (2 + rank)
    return sorted(fused, key=lambda i: -fused[i])[:k]


def latency(n: int, workdir: Path, queries: int, dim: int = 512) -> dict[str, Any]:
    from qdrant_client import models

    from mmrag.store import EdgeStore
    from mmrag.store.base import MmrParams
    from mmrag.store.schema import CollectionSpec

    rng = np.random.default_rng(n)
    words = [f"w{i}" for i in range(2000)]
    store = EdgeStore(workdir / f"lat-{n}")
    store.create_collection(CollectionSpec(name="lat", dim=dim, model_id="bench/random", payload_indexes={}))
    t0 = time.perf_counter()
    for start in range(0, n, 2000):
        m = min(2000, n - start)
        img = rng.normal(size=(m, dim)).astype(np.float32)
        txt = rng.normal(size=(m, dim)).astype(np.float32)
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        caps = [" ".join(rng.choice(words, size=10)) for _ in range(m)]
        store.upsert("lat", [models.PointStruct(id=start + i, vector={
            "image": img[i].tolist(), "text": txt[i].tolist(), "bm25": models.Document(text=caps[i], model="Qdrant/bm25")},
            payload={"caption": caps[i]}) for i in range(m)])
    fill_s = time.perf_counter() - t0
    qv = rng.normal(size=(queries, dim)).astype(np.float32)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    qt = [" ".join(rng.choice(words, size=3)) for _ in range(queries)]
    modes = {
        "dense": lambda v, t: store.search("lat", v, using="image", limit=10),
        "python_rrf": lambda v, t: _python_rrf(store, v, 10),
        "fused": lambda v, t: store.search_fused("lat", {"image": v, "text": v}, limit=10),
        "hybrid": lambda v, t: store.search_fused("lat", {"image": v, "text": v}, text=t, limit=10,
                                                  weights={"image": 0.5, "text": 0.5, "bm25": 3.0}),
        "hybrid_mmr": lambda v, t: store.search_fused("lat", {"image": v, "text": v}, text=t, limit=10,
                                                      mmr=MmrParams(0.5, 50)),
    }
    out: dict[str, Any] = {"points": n, "fill_s": round(fill_s, 1)}
    for name, fn in modes.items():
        fn(qv[0].tolist(), qt[0])  # warm-up
        times = []
        for v, t in zip(qv, qt):
            s = time.perf_counter()
            fn(v.tolist(), t)
            times.append((time.perf_counter() - s) * 1000)
        out[name] = {"p50_ms": round(float(np.percentile(times, 50)), 2), "p95_ms": round(float(np.percentile(times, 95)), 2)}
    out["fused_vs_python_rrf_p50"] = round(out["fused"]["p50_ms"] / out["python_rrf"]["p50_ms"], 2)
    store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"quality": [], "latency": []}
    with tempfile.TemporaryDirectory(prefix="mmrag-bench-hybrid-") as tmp:
        work = Path(tmp)
        if not args.skip_quality:
            for lang, model in (("en", "mmrag-shapes-en"), ("zh", "mmrag-shapes-zh")):
                res = quality(lang, model, work)
                results["quality"].append(res)
                print(json.dumps(res, ensure_ascii=False), flush=True)
        for n in args.sizes:
            res = latency(n, work, args.queries)
            results["latency"].append(res)
            print(json.dumps(res), flush=True)
    if args.json:
        write_json(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
