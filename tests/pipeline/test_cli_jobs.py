"""CLI wiring of scheduled jobs: run, reindex, rollback, export/import (job logic: tests/jobs)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mmrag.cli import main
from pipeline.conftest import BAD_FILES, GOOD_IMAGES


@pytest.fixture
def env(monkeypatch, tmp_path, tiny_clip_dir, corpus):
    home = tmp_path / "home"
    monkeypatch.setenv("MMRAG_HOME", str(home))
    monkeypatch.setenv("MMRAG_WORKERS", "1")
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    pipeline = tmp_path / "photos.yaml"
    pipeline.write_text(
        f"name: photos\nsource:\n  folder: {corpus}\nmodel: {tiny_clip_dir}\nprune: true\n"
        'schedule: "0 3 * * *"\nkeep_versions: 2\n',
        encoding="utf-8",
    )
    return {"home": home, "corpus": corpus, "pipeline": pipeline, "tmp": tmp_path, "model": tiny_clip_dir}


def run(capsys, *argv):
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


def test_run_rebuild_rollback(env, capsys):
    code, rep, _ = run(capsys, "run", str(env["pipeline"]))
    assert code == 0 and rep["status"] == "partial" and rep["target"] == "photos__v1"
    assert rep["ingest"]["indexed"] == len(GOOD_IMAGES) and rep["failed_files"] == len(BAD_FILES)

    code, cols, _ = run(capsys, "collections")
    assert [(c["name"], c["aliases"], c["points"]) for c in cols] == [("photos__v1", ["photos"], len(GOOD_IMAGES))]

    (env["corpus"] / "red.png").unlink()  # pruned by the pipeline's policy
    code, rep, _ = run(capsys, "run", str(env["pipeline"]), "--strict")
    assert code == 4 and rep["ingest"]["pruned"] == 1  # --strict: failed files make it non-zero

    code, rep, _ = run(capsys, "run", str(env["pipeline"]), "--rebuild")
    assert code == 0 and (rep["previous"], rep["target"]) == ("photos__v1", "photos__v2")
    code, hits, _ = run(capsys, "search", "x", "-c", "photos", "-k", "20")
    assert len(hits["hits"]) == len(GOOD_IMAGES) - 1

    code, rep, _ = run(capsys, "rollback", "photos")
    assert code == 0 and rep["target"] == "photos__v1"


def test_bad_pipeline_and_held_lock_exit_codes(env, capsys):
    bad = env["tmp"] / "bad.yaml"
    bad.write_text("name: x\nsourec: {folder: /tmp}\nmodel: m\n", encoding="utf-8")
    code, _, err = run(capsys, "run", str(bad))
    assert code == 2 and "bad.yaml" in err and "sourec" in err

    from mmrag.jobs.lock import CollectionLock

    with CollectionLock(env["home"], "photos"):
        code, rep, _ = run(capsys, "run", str(env["pipeline"]))
    assert code == 3 and rep["status"] == "locked"


def test_reindex_collection_uses_the_recorded_corpus(env, capsys):
    code, rep, _ = run(capsys, "ingest", str(env["corpus"]), "-c", "plain", "--model", str(env["model"]))
    assert code == 0
    Image.new("RGB", (30, 30), (1, 2, 3)).save(env["corpus"] / "new.png")
    code, rep, _ = run(capsys, "reindex", "plain")
    assert code == 0 and rep["job"] == "sync" and rep["ingest"]["indexed"] == 1

    code, rep, err = run(capsys, "reindex", "plain", "--rebuild")
    assert code == 2 and "--migrate" in (rep or {}).get("error", err)


def test_export_import_roundtrip_through_cli(env, capsys, tmp_path):
    run(capsys, "ingest", str(env["corpus"]), "-c", "photos", "--model", str(env["model"]))
    out = tmp_path / "photos.parquet"
    code, res, _ = run(capsys, "export", "photos", str(out))
    assert code == 0 and res["points"] == len(GOOD_IMAGES)

    code, res, _ = run(capsys, "import", str(out), "--home", str(tmp_path / "other-home"), "-c", "copy")
    assert code == 0 and res["points"] == len(GOOD_IMAGES)
    code, a, _ = run(capsys, "search", "a red picture", "-c", "photos")
    code, b, _ = run(capsys, "search", "a red picture", "-c", "copy", "--home", str(tmp_path / "other-home"))
    assert [(h["id"], round(h["score"], 5)) for h in a["hits"]] == [(h["id"], round(h["score"], 5)) for h in b["hits"]]
