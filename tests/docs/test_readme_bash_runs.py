"""The `mmrag` lines of README.md's bash blocks run for real (issue 17 item 13), not only parse.

Each block runs in order in one working folder laid out as the README assumes: ./corpus (12
synthetic shapes with captions), ./photos and ./scans (the same images), query.jpg, a.jpg, b.jpg,
labels.txt, ./imagefolder (one folder per shape) and pairs.jsonl (image-caption pairs), with the
reference model mmrag-shapes-en and the collection "photos". Commands that cannot run here are
listed in SKIP with the reason; a README command that is neither run nor listed fails the test.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil

import pytest
from PIL import Image

from docs.test_readme import SH, _mmrag_lines

SKIP = {
    "serve": "starts an HTTP server that runs until stopped (tests/server runs it)",
    "mcp": "starts an MCP server on stdio (tests/server runs it)",
    "schedule": "runs cron schedules until stopped (tests/jobs runs the scheduler)",
    "finetune": "--base clip-vit-b32 downloads weights and training takes minutes (tests/finetune trains a tiny model)",
    "run": "needs a pipeline file and its corpus folder from deploy (tests/jobs runs pipelines)",
    "reindex": "needs the fine-tuned ./my-clip from finetune (tests/jobs runs reindex and rebuilds)",
    "rollback": "needs a collection rebuilt by reindex --rebuild (tests/jobs runs rollback)",
}
SKIP_ARG = {"./my-clip": "needs the fine-tuned model that finetune writes"}


def _skip_reason(argv: list[str]) -> str | None:
    if argv and argv[0] in SKIP:
        return SKIP[argv[0]]
    return next((reason for arg, reason in SKIP_ARG.items() if arg in argv), None)


RUNNABLE = [b for b in SH if b[3] is None and any(_skip_reason(a) is None for a in _mmrag_lines(b[2]))]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from mmrag.training.synthetic import write_corpus

    root = tmp_path_factory.mktemp("readme-bash")
    corpus = write_corpus(root / "corpus", 12, seed=0, manifest="jsonl")
    for name in ("photos", "scans"):
        os.symlink(corpus, root / name)
    Image.open(corpus / "img_00000.png").convert("RGB").save(root / "query.jpg", "JPEG")
    shutil.copy(root / "query.jpg", root / "a.jpg")
    Image.open(corpus / "img_00001.png").convert("RGB").save(root / "b.jpg", "JPEG")
    (root / "labels.txt").write_text("red star\nwhite cross\nblue circle\n", encoding="utf-8")
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    pairs = []
    for row in rows:
        (root / "imagefolder" / row["shape"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus / row["path"], root / "imagefolder" / row["shape"] / row["path"])
        pairs.append(json.dumps({"path": f"corpus/{row['path']}", "caption": row["caption"]}))
    (root / "pairs.jsonl").write_text("\n".join(pairs) + "\n", encoding="utf-8")
    return root


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    commands = [a for b in SH if b[3] is None for a in _mmrag_lines(b[2])]
    # every reason is still needed: a command the README dropped must leave SKIP too
    assert {a[0] for a in commands if a[0] in SKIP} == set(SKIP)
    assert {arg for a in commands for arg in SKIP_ARG if arg in a} == set(SKIP_ARG)
    assert sum(_skip_reason(a) is None for a in commands) >= 20


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: f"README.md:{b[0]}")
def test_bash_block_runs(block, workdir, monkeypatch, capsys):
    from mmrag.cli.main import main
    from mmrag.settings import get_settings

    monkeypatch.chdir(workdir)
    for name in [k for k in os.environ if k.startswith(("MMRAG_", "QDRANT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MMRAG_HOME", str(workdir / ".mmrag"))
    monkeypatch.setenv("MMRAG_MODEL", "mmrag-shapes-en")
    monkeypatch.setenv("MMRAG_COLLECTION", "photos")
    monkeypatch.setenv("MMRAG_WORKERS", "1")
    if not (workdir / ".mmrag").exists():  # blocks may run alone (-k): the collection first
        get_settings.cache_clear()
        assert main(["ingest", "./corpus", "-q"]) == 0
    for argv in _mmrag_lines(block[2]):
        if _skip_reason(argv):
            continue
        get_settings.cache_clear()
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as exc:  # --help and --version exit through argparse
            code = exc.code
        out, err = capsys.readouterr()
        assert code == 0, f"README.md:{block[0]}: `mmrag {shlex.join(argv)}` exited {code}\n{out[-2000:]}\n{err[-2000:]}"
        if "--json" in argv:
            json.loads(out)
        for flag in ("--out", "--plot", "--confusion-png"):
            if flag in argv:
                written = workdir / argv[argv.index(flag) + 1]
                assert written.is_file() and written.stat().st_size > 0, f"`mmrag {shlex.join(argv)}` wrote no {written}"
    get_settings.cache_clear()
