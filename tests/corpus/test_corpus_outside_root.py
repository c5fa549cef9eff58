"""Issue 12, section 5: nothing outside the corpus root is opened or indexed unless asked for."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from mmrag.corpus import iter_corpus
from mmrag.corpus.scan import MAX_CAPTION_BYTES
from mmrag.corpus.types import CorpusItem, SkippedFile

_OPENED: list[str] = []
_RECORDING: list[bool] = []


def _audit(event: str, args: tuple) -> None:
    if _RECORDING and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # records every file the scan opens (audit hooks cannot be removed: gated)


def _opened_during(fn):
    _OPENED.clear()
    _RECORDING.append(True)
    try:
        return fn()
    finally:
        _RECORDING.clear()


@pytest.fixture
def layout(tmp_path: Path):
    root, outside = tmp_path / "corpus", tmp_path / "secret"
    root.mkdir()
    outside.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(root / "inside.png")
    Image.new("RGB", (8, 8), (0, 200, 0)).save(outside / "private.png")
    (outside / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (outside / "notes").mkdir()
    Image.new("RGB", (8, 8), (0, 0, 200)).save(outside / "notes" / "n.png")
    (outside / "cap.txt").write_text("a caption from outside")
    os.symlink(outside / "passwd", root / "passwd.jpg")  # the probe: /etc/passwd hashed whole
    os.symlink(outside / "private.png", root / "private.png")  # an image outside: indexed then served
    os.symlink(outside / "notes", root / "notes")  # a folder outside
    os.symlink(root / "inside.png", root / "alias.png")  # a link that stays inside: fine
    Image.new("RGB", (8, 8), (9, 9, 9)).save(root / "leaky.png")
    os.symlink(outside / "cap.txt", root / "leaky.txt")  # a sidecar that links out
    return root, outside


def test_symlinks_leaving_the_root_are_skipped_with_a_reason_and_never_opened(layout):
    root, outside = layout
    entries = _opened_during(lambda: list(iter_corpus(root, follow_symlinks=True)))
    items = {e.rel_path: e for e in entries if isinstance(e, CorpusItem)}
    skipped = {e.rel_path: e.reason for e in entries if isinstance(e, SkippedFile)}
    assert sorted(items) == ["alias.png", "inside.png", "leaky.png"]
    assert items["leaky.png"].caption is None  # its sidecar links out: ignored, not read
    assert sorted(skipped) == ["notes", "passwd.jpg", "private.png"]
    real_outside = os.path.realpath(outside)
    assert skipped["passwd.jpg"] == (f"symlink to {real_outside}/passwd, outside the corpus root {root}; "
                                     "set MMRAG_ALLOW_OUTSIDE_ROOT=true to index it")
    assert not [p for p in _OPENED if os.path.realpath(p).startswith(real_outside)], _OPENED

    allowed = list(iter_corpus(root, follow_symlinks=True, allow_outside_root=True))
    assert sorted(e.rel_path for e in allowed if isinstance(e, CorpusItem)) == [
        "alias.png", "inside.png", "leaky.png", "notes/n.png", "passwd.jpg", "private.png"]


def test_manifest_rows_leaving_the_root_are_skipped_rows(layout):
    root, outside = layout
    rows = [
        {"path": "inside.png", "caption": "red"},
        {"path": "../../../../../../etc/passwd"},
        {"path": str(outside / "private.png")},
        {"path": "private.png"},  # inside by name, a symlink out by target
        {"path": "big.png", "caption": "x" * (MAX_CAPTION_BYTES + 1)},
        {"path": "alias.png", "caption": "ok"},
    ]
    Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "big.png")
    manifest = root / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    entries = _opened_during(lambda: list(iter_corpus(root, manifest=manifest)))
    assert [(e.rel_path, e.caption) for e in entries if isinstance(e, CorpusItem)] == [
        ("inside.png", "red"), ("alias.png", "ok")]
    reasons = [e.reason for e in entries if isinstance(e, SkippedFile)]
    assert reasons == [
        f"line 2: path leaves the corpus root {root}; set MMRAG_ALLOW_OUTSIDE_ROOT=true to index it",
        f"line 3: path leaves the corpus root {root}; set MMRAG_ALLOW_OUTSIDE_ROOT=true to index it",
        f"line 4: symlink to {os.path.realpath(outside)}/private.png, outside the corpus root {root}; "
        "set MMRAG_ALLOW_OUTSIDE_ROOT=true to index it",
        f"line 5: caption is larger than {MAX_CAPTION_BYTES} bytes",
    ]
    assert "/etc/passwd" not in _OPENED
    assert not [p for p in _OPENED if os.path.realpath(p).startswith(os.path.realpath(outside))], _OPENED
