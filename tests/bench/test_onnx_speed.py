"""bench/onnx_speed.py's pieces that need neither timing nor rclip: the summary and rclip's data folder."""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import pytest

from bench import common
from bench import onnx_speed as bench


def _row(model: float, decode: float, e2e: float) -> dict:
    return {"model_only": {"images_per_s": model}, "decode_only": {"images_per_s": decode},
            "e2e": {"images_per_s": e2e}}


def test_summary_takes_medians_the_shared_core_bound_and_the_rclip_ratio() -> None:
    raw = {"mixed": {
        "onnx": [_row(20.0, 60.0, 14.0), _row(10.0, 30.0, 7.0), _row(16.0, 48.0, 12.0)],
        "rclip": [{"e2e": {"images_per_s": 10.0}}, {"e2e": {"images_per_s": 12.0}}],
    }}
    s = bench.summarize(raw)["mixed"]
    assert s["onnx"]["model_only"] == 16.0 and s["onnx"]["decode_only"] == 48.0 and s["onnx"]["e2e"] == 12.0
    assert s["onnx"]["bound"] == 12.0  # 1 / (1/16 + 1/48)
    assert s["onnx"]["e2e_vs_bound"] == 1.0
    assert s["rclip"] == {"e2e": 11.0}
    assert s["onnx"]["e2e_vs_rclip"] == pytest.approx(12.0 / 11.0, abs=1e-3)


def test_b32_256_is_rclips_shape() -> None:
    spec = common.ARCHS["b32-256"]
    assert spec["vision"] == {**common.ARCHS["b32"]["vision"], "image_size": 256}
    assert spec["text"] == common.ARCHS["b32"]["text"]


def test_rclip_assets_have_its_names_and_a_bpe_file_it_can_parse(tiny_clip_dir: Path, tmp_path: Path) -> None:
    bench._write_rclip_assets(tiny_clip_dir, tmp_path)
    for name in bench.RCLIP_LEGAL:
        assert (tmp_path / name).is_file()
    lines = gzip.open(tmp_path / bench.RCLIP_VOCAB, "rt", encoding="utf-8").read().split("\n")
    merges = (tiny_clip_dir / "merges.txt").read_text(encoding="utf-8").split("\n")
    assert lines == merges and lines[0].startswith("#version")  # rclip skips the first line
    assert all(len(m.split()) == 2 for m in lines[1:] if m)


def test_rclip_is_skipped_with_a_message_when_its_venv_is_absent(tmp_path: Path, monkeypatch) -> None:
    logged: list[str] = []
    monkeypatch.setattr(bench, "make_clip_dir", lambda cache, arch: tmp_path / "model")
    args = argparse.Namespace(photos=0, mixed=0, rounds=1, rclip_venv=tmp_path / "nope", ingest_batch=8,
                              model_min_seconds=0.0)
    result = bench.ingest_comparison(args, logged.append)
    assert logged == [f"rclip: no venv at {tmp_path / 'nope'}; skipping rclip"]
    assert result["rounds"] == {} and result["summary"] == {}
