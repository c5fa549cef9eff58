"""The `mmrag` command line, run in-process against the embedded store and a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmrag.cli import main
from mmrag.store.convert import point_id
from pipeline.conftest import BAD_FILES, GOOD_IMAGES, expected_caption


def run_json(capsys, *argv) -> tuple[int, object]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_ingest_json_report_then_unchanged_rerun(env, capsys):
    code, report = run_json(capsys, "ingest", str(env["corpus"]), "-c", "photos")
    assert code == 0  # per-file failures do not fail the run
    assert report["indexed"] == len(GOOD_IMAGES) and report["failed_count"] == len(BAD_FILES)
    assert sorted(f["path"] for f in report["failed"]) == sorted(BAD_FILES)
    assert all(f["reason"] for f in report["failed"])
    assert report["decode_executor"] == "thread"  # auto, with the model on CPU

    code, again = run_json(capsys, "ingest", str(env["corpus"]), "-c", "photos")
    assert (code, again["indexed"], again["unchanged"]) == (0, 0, len(GOOD_IMAGES))


def test_ingest_decode_executor_flag(env, capsys):
    code, report = run_json(capsys, "ingest", str(env["corpus"]), "-c", "photos", "--decode-executor", "process")
    assert (code, report["decode_executor"], report["indexed"]) == (0, "process", len(GOOD_IMAGES))
    assert sorted(f["path"] for f in report["failed"]) == sorted(BAD_FILES)


def test_ingest_prints_a_human_summary(env, capsys):
    assert main(["ingest", str(env["corpus"]), "-c", "photos", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"indexed   {len(GOOD_IMAGES)}" in out
    assert f"failed    {len(BAD_FILES)}" in out
    for name in BAD_FILES:
        assert name in out


def test_search_text_image_caption_filter_and_k(env, capsys):
    main(["ingest", str(env["corpus"]), "-c", "photos", "--quiet"])
    capsys.readouterr()

    code, res = run_json(capsys, "search", "a red picture", "-c", "photos", "-k", "3")
    assert code == 0 and len(res["hits"]) == 3
    assert [h["rank"] for h in res["hits"]] == [1, 2, 3]
    scores = [h["score"] for h in res["hits"]]
    assert scores == sorted(scores, reverse=True)

    code, res = run_json(capsys, "search", "--image", str(env["corpus"] / "red.png"), "-c", "photos", "-k", "1")
    assert res["hits"][0]["path"] == "red.png" and res["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert res["hits"][0]["id"] == point_id("red.png")

    code, res = run_json(capsys, "search", "a green photo", "-c", "photos", "--target", "text", "-k", "10")
    assert {h["path"] for h in res["hits"]} == {rel for rel in GOOD_IMAGES if expected_caption(rel)}

    code, res = run_json(capsys, "search", "x", "-c", "photos", "--filter", "format=JPEG", "-k", "10")
    assert [h["path"] for h in res["hits"]] == ["sub/green.jpg"]

    code, res = run_json(capsys, "search", "x", "-c", "photos", "--filter", "width>=40", "--filter", "has_caption=yes")
    assert {h["path"] for h in res["hits"]} == {
        rel for rel, (size, _, _) in GOOD_IMAGES.items() if size[0] >= 40 and expected_caption(rel)
    }


def test_search_text_output(env, capsys):
    main(["ingest", str(env["corpus"]), "-c", "photos", "--quiet"])
    capsys.readouterr()
    assert main(["search", "a green photo", "-c", "photos", "--target", "text", "-k", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("1  ") and "sub/green.jpg" in line and "a green photo" in line


def test_errors_are_clear_and_nonzero(env, capsys, tmp_path):
    from mmrag.testing.tiny_models import make_tiny_clip

    assert main(["search", "x", "-c", "nothing-here"]) == 1
    assert "does not exist" in capsys.readouterr().err

    main(["ingest", str(env["corpus"]), "-c", "photos", "--quiet"])
    capsys.readouterr()
    other = make_tiny_clip(tmp_path / "other-model", seed=3)
    assert main(["ingest", str(env["corpus"]), "-c", "photos", "--model", str(other), "--quiet"]) == 2  # a model that does not match the collection is a configuration error
    err = capsys.readouterr().err
    assert "cannot be mixed" in err and "--rebuild" in err

    assert main(["search", "x", "-c", "photos", "--filter", "novalue"]) == 2
    assert "novalue" in capsys.readouterr().err

    assert main(["search", "-c", "photos"]) == 2  # neither text nor --image


def test_console_script_entry_point(env):
    proc = subprocess.run([sys.executable, "-m", "mmrag.cli", "collections", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_torch_threads_setting_reaches_torch(env, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["ingest", str(env["corpus"]), "-c", "photos", "--quiet", "--backend", "torch", "--torch-threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
