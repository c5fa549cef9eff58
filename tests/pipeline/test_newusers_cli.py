"""Issue 17: what new users hit on the command line, each checked end to end on a tiny model."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from mmrag.cli import main
from mmrag.cli.parser import build_parser
from mmrag.errors import exit_code_table
from mmrag.store import EdgeStore
from mmrag.testing.tiny_models import make_tiny_clip


@pytest.fixture(scope="session")
def other_tiny_clip(tmp_path_factory):
    """A second tiny CLIP of the SAME size but other weights: its vectors are another space."""
    return make_tiny_clip(tmp_path_factory.mktemp("other_clip"), seed=1)


def _collections(home):
    store = EdgeStore(home)
    try:
        return store.list_collections()
    finally:
        store.close()


@pytest.mark.parametrize("what", ["missing", "file", "empty"])
def test_failed_ingest_creates_no_collection(env, capsys, tmp_path, what):
    target = {"missing": tmp_path / "nope", "file": env["corpus"] / "red.png", "empty": tmp_path / "empty"}[what]
    if what == "empty":
        target.mkdir()
        (target / "notes.md").write_text("# no images", encoding="utf-8")
    assert main(["ingest", str(target), "-c", "photos"]) == 2
    err = capsys.readouterr().err
    expected = {"missing": "corpus folder not found", "file": "is not a folder",
                "empty": f"no images found under {target} (ignored: 1 .md)"}[what]
    assert expected in err
    assert _collections(env["home"]) == []
    # and a later ingest with another model is not refused
    assert main(["ingest", str(env["corpus"]), "-c", "photos", "-q"]) == 0


def test_search_with_another_model_of_the_same_size_is_refused(env, capsys, other_tiny_clip):
    assert main(["ingest", str(env["corpus"]), "-c", "photos", "-q"]) == 0
    capsys.readouterr()
    assert main(["search", "red", "-c", "photos", "--model", str(other_tiny_clip)]) == 2
    err = capsys.readouterr().err
    assert "holds vectors of model" in err and "Vectors of different models cannot be mixed" in err
    assert "Vector dimension error" not in err


def test_retriever_refuses_another_model(env, other_tiny_clip):
    from mmrag.embedders import load_embedder
    from mmrag.retrieval import MultimodalRetriever
    from mmrag.store.schema import SchemaMismatch

    assert main(["ingest", str(env["corpus"]), "-c", "photos", "-q"]) == 0
    store = EdgeStore(env["home"])
    try:
        retriever = MultimodalRetriever(store=store, embedder=load_embedder(str(other_tiny_clip), device="cpu"),
                                        collection="photos")
        with pytest.raises(SchemaMismatch, match="Vectors of different models cannot be mixed"):
            retriever.invoke("red")
    finally:
        store.close()


def test_similarity_and_classify_use_the_collections_model(env, capsys, other_tiny_clip, monkeypatch):
    assert main(["ingest", str(env["corpus"]), "-c", "photos", "-q"]) == 0
    # the default model is now another one: with -c the collection's own must be used
    monkeypatch.setenv("MMRAG_MODEL", str(other_tiny_clip))
    capsys.readouterr()
    img = str(env["corpus"] / "red.png")
    assert main(["similarity", img, "--text", "red", "-c", "photos", "--json"]) == 0
    with_c = json.loads(capsys.readouterr().out)
    assert main(["similarity", img, "--text", "red", "--model", str(env["model"]), "--json"]) == 0
    own = json.loads(capsys.readouterr().out)
    assert with_c == own
    assert main(["classify", img, "--labels", "a,b", "-c", "photos", "--model", str(other_tiny_clip)]) == 2
    assert "Vectors of different models cannot be mixed" in capsys.readouterr().err


def test_arguments_are_checked_before_the_model_loads(env, capsys, monkeypatch):
    import mmrag.app

    def boom(self, name):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(mmrag.app.App, "_load", boom)
    assert main(["ingest"]) == 2
    assert "give a corpus folder" in capsys.readouterr().err
    assert main(["ingest", str(env["corpus"] / "missing")]) == 2
    EdgeStore(env["home"]).close()
    assert main(["search", "--image", "missing.png"]) == 2
    assert "query image not found: missing.png" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["search", "red", "-k", "-1"])
    assert info.value.code == 2
    assert "must be >= 1, got -1" in capsys.readouterr().err
    assert main(["search", "red", "--filter", "a b=c"]) == 2


def test_loading_line_and_no_weight_bar(env, capsys):
    assert main(["ingest", str(env["corpus"]), "-c", "photos", "--json"]) == 0
    err = capsys.readouterr().err
    assert f"loading model {env['model']} ..." in err
    assert "Loading weights" not in err
    assert main(["search", "red", "-c", "photos", "--json", "-q"]) == 0
    err = capsys.readouterr().err
    assert "loading model" not in err and "Loading weights" not in err


def test_verbose_and_quiet_after_the_subcommand(env, capsys):
    parser = build_parser()
    for argv in (["collections", "-v"], ["-v", "collections"], ["models", "-q"], ["synth", "x", "-v", "-q"]):
        args = parser.parse_args(argv)
        assert args.verbose is ("-v" in argv) and args.quiet is ("-q" in argv)


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, p in action.choices.items():
                yield name, p
                yield from _subparsers(p)


def test_every_option_has_help_and_every_command_examples(env):
    commands = dict(_subparsers(build_parser()))
    assert {"ingest", "search", "zeroshot", "retrieval", "completion", "collections"} <= set(commands)
    for name, p in commands.items():
        text = p.format_help()
        assert "environment:" in text and "exit codes:\n" + exit_code_table() in text, name
        if name != "eval":
            assert "examples:\n  mmrag " in text, name
        for action in p._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
    assert "(default: 10)" in commands["search"].format_help()  # -k


def test_version_and_python_dash_m_and_completion(env):
    run = [sys.executable, "-m", "mmrag"]
    out = subprocess.run([*run, "--version"], capture_output=True, text=True, timeout=60)
    from importlib.metadata import version

    assert (out.returncode, out.stdout.strip()) == (0, f"mmrag {version('mmrag')}")
    comp = subprocess.run([*run, "completion", "bash"], capture_output=True, text=True, timeout=60)
    assert comp.returncode == 0 and "complete" in comp.stdout and "ingest" in comp.stdout


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_closed_qdrant_port_fails_fast_and_names_the_url(env, capsys, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("QDRANT_URL", url)
    t0 = time.monotonic()
    assert main(["collections"]) == 1
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert f"cannot reach Qdrant at {url}" in err and "deterministic" not in err
    assert elapsed < 5


def test_default_model_without_network_fails_fast_with_the_fix(env, tmp_path):
    child = {k: v for k, v in os.environ.items() if not k.startswith(("MMRAG_MODEL", "HF_", "TRANSFORMERS_OFFLINE"))}
    child.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",
                 PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "mmrag", "ingest", str(env["corpus"])], capture_output=True,
                         text=True, timeout=120, env=child, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "cannot download model 'openai/clip-vit-base-patch32'" in out.stderr
    assert "--model mmrag-shapes-en" in out.stderr and "HF_HUB_OFFLINE=1" in out.stderr
    assert "Retrying" not in out.stderr and "Traceback" not in out.stderr
    offline = subprocess.run([sys.executable, "-m", "mmrag", "ingest", str(env["corpus"])], capture_output=True,
                             text=True, timeout=120, env={**child, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert offline.returncode == 1 and "is not in the Hugging Face cache and HF_HUB_OFFLINE is set" in offline.stderr


def test_shapes_model_on_photos_says_so(env, capsys, tmp_path):
    assert main(["ingest", str(env["corpus"]), "-c", "real", "--model", "mmrag-shapes-en"]) == 0
    assert "mmrag-shapes-en is a small reference model trained only on mmrag's synthetic shapes" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "shapes"), "-n", "4", "-q"]) == 0
    assert main(["ingest", str(tmp_path / "shapes"), "-c", "synthetic", "--model", "mmrag-shapes-en"]) == 0
    assert "reference model" not in capsys.readouterr().err


def test_tag_default_threshold_does_not_tag_every_image_with_every_label(env, capsys):
    from mmrag.tasks.tagging import default_threshold

    assert default_threshold(2) == 0.5 and default_threshold(10) == pytest.approx(0.2)
    assert main(["ingest", str(env["corpus"]), "-c", "photos", "-q"]) == 0
    capsys.readouterr()
    assert main(["tag", "--labels", "a,b,c,d,e,f", "-c", "photos", "--top", "6", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threshold"] == pytest.approx(1 / 3)


def test_filter_typos_warn_and_format_is_case_insensitive(env, capsys):
    assert main(["ingest", str(env["corpus"]), "-c", "photos", "-q"]) == 0
    capsys.readouterr()
    code = main(["search", "red", "-c", "photos", "-q", "--filter", "format=jpeg", "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and [h["path"] for h in json.loads(out)["hits"]] == ["sub/green.jpg"]
    assert main(["search", "red", "-c", "photos", "-q", "--filter", "colour=red", "--filter", "width=>5"]) == 0
    err = capsys.readouterr().err
    assert "'colour' is not a field mmrag writes" in err and "indexed fields: path, sha256, format" in err
    assert "did you mean width>=5?" in err
    assert main(["search", "red", "-c", "photos", "--filter", "a b=c"]) == 2
    assert "field name 'a b' contains a space" in capsys.readouterr().err
