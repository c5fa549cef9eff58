"""Smoke run of `bench.query` on a tiny store and model, plus its statistics helpers.

No timing assertions: latencies only have to exist and be ordered (p50 <= p95).
What is asserted exactly is what the bench computes: recall against a brute force,
filter selectivity, cache reuse.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

# `bench` is not an installed package (only mmrag* is); make the repo root importable.
# (`pythonpath = ["."]` under [tool.pytest.ini_options] would do the same for every bench test.)
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.query import (  # noqa: E402
    FILTER_TAG,
    SyntheticCorpus,
    brute_force_topk,
    latency_stats,
    main,
    recall_at_k,
    unit_rows,
)
from mmrag.store.convert import point_id  # noqa: E402


def test_latency_stats_are_percentiles_in_ms() -> None:
    stats = latency_stats([i / 1000 for i in range(1, 11)])  # 1..10 ms
    assert stats["p50_ms"] == pytest.approx(5.5)
    assert stats["p95_ms"] == pytest.approx(9.55)  # linear interpolation between 9 and 10
    assert stats["mean_ms"] == pytest.approx(5.5)
    assert stats["max_ms"] == pytest.approx(10.0)
    assert stats["n"] == 10
    with pytest.raises(ValueError, match="no samples"):
        latency_stats([])


def test_recall_at_k_counts_overlap() -> None:
    assert recall_at_k([["a", "b", "c"]], [["a", "c", "d"]], 3) == pytest.approx(2 / 3)
    assert recall_at_k([["a", "b"], ["x", "y"]], [["b", "a"], ["z", "w"]], 2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 results for 1 queries"):
        recall_at_k([["a"], ["b"]], [["a"]], 1)


def test_brute_force_topk_matches_full_sort() -> None:
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(500, 8)).astype(np.float32)
    queries = rng.normal(size=(70, 8)).astype(np.float32)  # > one 64-query chunk
    mask = rng.random(500) < 0.2
    scores = queries @ matrix.T
    expected = np.argsort(-scores, axis=1)[:, :5]
    np.testing.assert_array_equal(brute_force_topk(matrix, queries, 5), expected)
    masked = np.where(mask, scores, -np.inf)
    expected_masked = np.argsort(-masked, axis=1)[:, :5]
    got = brute_force_topk(matrix, queries, 5, mask)
    np.testing.assert_array_equal(got, expected_masked)
    assert mask[got].all()


def test_synthetic_corpus_payloads_and_filter_selectivity() -> None:
    corpus = SyntheticCorpus(n=250, dim=8, seed=1, caption_fraction=0.5, filter_fraction=0.1)
    mask = corpus.filter_mask()
    assert mask.sum() == 25
    np.testing.assert_array_equal(mask, corpus.filter_mask())  # deterministic: ground truth is rebuilt from it
    points = [p for batch in corpus.batches(100) for p in batch]
    assert [len(b) for b in corpus.batches(100)] == [100, 100, 50]
    assert [str(p.id) for p in points] == corpus.point_ids()
    assert points[7].id == point_id(corpus.rel_path(7))
    tagged = np.array([FILTER_TAG in p.payload["tags"] for p in points])
    np.testing.assert_array_equal(tagged, mask)
    image = np.array([p.vector["image"] for p in points], dtype=np.float32)
    np.testing.assert_allclose(image, corpus.image_vectors(), atol=0)
    # a text vector exactly on the captioned points
    for p in points:
        assert ("text" in p.vector) == (p.payload["has_caption"] == "yes")


def test_unit_rows_distributions() -> None:
    uniform = unit_rows(np.random.default_rng(0), 4000, 64)
    powerlaw = unit_rows(np.random.default_rng(0), 4000, 64, "powerlaw")
    for rows in (uniform, powerlaw):
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    # uniform: every axis carries ~1/dim of the energy; power law: the first axes dominate
    assert np.allclose((uniform**2).mean(axis=0), 1 / 64, rtol=0.15)
    energy = (powerlaw**2).mean(axis=0)
    assert energy[:4].sum() > 4 * energy[-4:].sum()
    with pytest.raises(ValueError, match="unknown distribution 'gauss'"):
        unit_rows(np.random.default_rng(0), 2, 4, "gauss")


def _ops(run: dict) -> dict[str, dict]:
    return {row["op"]: row for row in run["ops"]}


def test_query_bench_smoke(tmp_path: Path, tiny_clip_dir: Path) -> None:
    out = tmp_path / "report.json"
    common = ["--model-dir", str(tiny_clip_dir), "--sizes", "300", "--queries", "10", "--warmup", "1",
              "--cache-dir", str(tmp_path / "cache")]
    report = main([*common, "--client-sizes", "300", "--efs", "32", "--e2e-ef", "32", "--json", str(out)])
    assert json.loads(out.read_text())["runs"] == json.loads(json.dumps(report["runs"]))

    assert report["embedder"]["dim"] == 32
    assert report["embedder"]["text_embed"]["n"] == 10
    edge, client = report["runs"]
    assert (edge["backend"], client["backend"]) == ("edge", "qdrant-memory")
    assert set(_ops(edge)) == {
        "search exact", "search exact +filter", "e2e exact, vector given", "e2e exact", "e2e exact +filter",
        "search exact (optimized)", "search exact (optimized) +filter",
        "search hnsw ef=32", "search hnsw ef=32 +filter", "e2e hnsw ef=32",
    }
    assert set(_ops(client)) == {"search exact", "search exact +filter", "e2e exact"}
    for run in (edge, client):
        assert run["filter_matches"] == 30
        assert run["exact_score_max_abs_err"] < 1e-5
        assert run["build"]["cached"] is False
        for name, row in _ops(run).items():
            assert row["n"] == 10 and 0 < row["p50_ms"] <= row["p95_ms"] <= row["max_ms"], name
            if name.startswith("search exact"):
                assert row["recall_at_10"] == 1.0, name  # exact search equals the numpy brute force
            elif name.startswith("search hnsw"):
                assert 0.0 <= row["recall_at_10"] <= 1.0
            else:
                assert row["documents_ok"] is True, name  # k Documents, all matching the filter
    # invoke() with the store queries' own vectors returns exactly the brute-force top-10
    assert _ops(edge)["e2e exact, vector given"]["recall_at_10"] == 1.0
    assert edge["optimize"]["cached"] is False
    assert edge["reopen"]["raw"]["points"] == edge["reopen"]["optimized"]["points"] == 300

    # A second run reuses both cached edge stores and finds the same answers.
    again = main([*common, "--client-sizes", "--efs", "--e2e-ef", "0"])
    (edge2,) = again["runs"]
    assert edge2["build"]["cached"] is True and edge2["optimize"]["cached"] is True
    assert edge2["build"]["build_s"] == edge["build"]["build_s"]
    assert _ops(edge2)["search exact +filter"]["recall_at_10"] == 1.0
    assert set(_ops(edge2)) == {
        "search exact", "search exact +filter", "e2e exact, vector given", "e2e exact", "e2e exact +filter",
        "search exact (optimized)", "search exact (optimized) +filter",
    }
