"""Smoke run of `bench.serve_load`: a real `mmrag serve` subprocess, 2 clients, ~1 s, 300 points.

No timing assertions: the figures only have to exist, be consistent and ordered, with 0 errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.serve_load import CLIP_RETRIEVAL, K, latency_stats, main, queries  # noqa: E402
from mmrag.embedders.registry import REFERENCE_DIR  # noqa: E402

pytestmark = pytest.mark.skipif(not (REFERENCE_DIR / "clip-shapes-en" / "config.json").is_file(),
                                reason="reference model not built: run `python pipelines/train_reference.py`")


def test_latency_stats_has_p99() -> None:
    stats = latency_stats([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["max_ms"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no samples"):
        latency_stats([])


def test_queries_are_distinct_shape_phrases() -> None:
    texts = queries(60)
    assert len(set(texts)) == 60 and texts[2] == "a photo of a red triangle."


def test_serve_load_smoke(tmp_path: Path) -> None:
    out = tmp_path / "serve-load.json"
    report = main(["--sizes", "300", "--clients", "2", "--duration", "1", "--lock", "", "--cache-dir",
                   str(tmp_path / "cache"), "--json", str(out)])
    assert json.loads(out.read_text()) == report
    (row,) = report["sizes"]
    assert row["points"] == 300 and row["build"] == {"build_s": row["build"]["build_s"], "points": 300, "dim": 128,
                                                       "cached": False}
    for where in ("in_process", "http"):
        m = row[where]
        assert m["errors"] == 0, m
        assert m["requests"] >= 1 and m["requests_per_s"] == pytest.approx(m["requests"] / m["wall_s"])
        assert 0 < m["p50_ms"] <= m["p95_ms"] <= m["p99_ms"] <= m["max_ms"]
    assert row["http"]["clients"] == 2 and row["http"]["error_samples"] == []
    assert row["ratios"]["http_rps_over_in_process_rps"] == pytest.approx(
        row["http"]["requests_per_s"] / row["in_process"]["requests_per_s"])
    assert row["ratios"]["http_rps_over_clip_retrieval_qps"] == pytest.approx(
        row["http"]["requests_per_s"] / CLIP_RETRIEVAL["queries_per_s"])
    assert "load average" in row["uptime_before"] and report["k"] == K
    # a second run reuses the store
    again = main(["--sizes", "300", "--clients", "1", "--duration", "0.3", "--max-requests", "5", "--lock", "",
                  "--cache-dir", str(tmp_path / "cache")])
    assert again["sizes"][0]["build"]["cached"] is True
    assert again["sizes"][0]["http"]["requests"] == 5 and again["sizes"][0]["http"]["errors"] == 0
