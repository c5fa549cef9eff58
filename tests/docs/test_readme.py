"""Every ```python and ```bash block of README.md runs (issue 17 item 13).

Python blocks are executed in a folder holding a small synthetic corpus ingested into the
collection "photos" with the reference model; the `mmrag ...` lines of bash blocks are parsed
by the real parser (an unknown option or command fails). A block preceded by
`<!-- no-test: reason -->` is skipped, and must say why.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from PIL import Image

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"(?P<marker><!--\s*no-test:(?P<reason>[^>]*)-->\s*\n)?^```(?P<lang>python|bash)[ \t]*\n(?P<code>.*?)^```[ \t]*$",
                    re.M | re.S)


def readme_blocks(text: str) -> list[tuple[int, str, str, str | None]]:
    """(line, language, code, no-test reason) of every python/bash fence."""
    return [
        (text[: m.start("code")].count("\n"), m["lang"], m["code"], m["reason"].strip() if m["marker"] else None)
        for m in _BLOCK.finditer(text)
    ]


def test_extractor_handles_markers_and_ignores_inline_fences():
    text = "a ```python inline\n```python\nx = 1\n```\n<!-- no-test: needs a server -->\n```bash\nmmrag serve\n```\n"
    assert readme_blocks(text) == [(2, "python", "x = 1\n", None), (6, "bash", "mmrag serve\n", "needs a server")]


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
PY = [b for b in BLOCKS if b[1] == "python"]
SH = [b for b in BLOCKS if b[1] == "bash"]


def test_few_blocks_are_exempt():
    skipped = [b for b in BLOCKS if b[3] is not None]
    assert all(reason for *_, reason in skipped)
    assert len(PY) >= 1 and len(skipped) <= max(2, len(BLOCKS) // 3)


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory):
    from mmrag.app import App
    from mmrag.ingest import run_ingest
    from mmrag.settings import Settings
    from mmrag.training.synthetic import write_corpus

    root = tmp_path_factory.mktemp("readme")
    corpus = write_corpus(root / "corpus", 12, seed=0, manifest=None)
    Image.open(corpus / "img_00000.png").convert("RGB").save(root / "query.jpg", "JPEG")
    app = App(Settings(home=root / ".mmrag", model="mmrag-shapes-en", workers=1))
    report = run_ingest(app.store, app.embedder(), root=corpus, collection="photos", progress=False)
    assert report.indexed == 12
    app.close()
    return root


@pytest.mark.parametrize("block", [b for b in PY if b[3] is None], ids=lambda b: f"README.md:{b[0]}")
def test_python_block_runs(block, readme_dir, monkeypatch):
    monkeypatch.chdir(readme_dir)
    monkeypatch.setenv("MMRAG_HOME", str(readme_dir / ".mmrag"))
    monkeypatch.setenv("MMRAG_MODEL", "mmrag-shapes-en")
    monkeypatch.delenv("QDRANT_URL", raising=False)
    from mmrag.settings import get_settings

    get_settings.cache_clear()
    try:
        exec(compile(block[2], f"README.md:{block[0]}", "exec"), {"__name__": "__readme__"})
    finally:
        get_settings.cache_clear()


def _mmrag_lines(code: str) -> list[list[str]]:
    """argv of each `mmrag ...` command (after `&&`, `VAR=x` prefixes; before `>` or `|`)."""
    out = []
    for line in code.splitlines():
        line = line.split(" #", 1)[0].strip()
        for part in line.split("&&"):
            part = re.split(r"\s[>|]\s", part)[0]
            tokens = shlex.split(part)
            while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
                tokens.pop(0)
            if tokens[:1] == ["mmrag"]:
                out.append(tokens[1:])
    return out


@pytest.mark.parametrize("block", [b for b in SH if b[3] is None], ids=lambda b: f"README.md:{b[0]}")
def test_bash_block_commands_parse(block):
    from mmrag.cli.parser import build_parser

    for argv in _mmrag_lines(block[2]):
        if argv in (["--version"],) or "--help" in argv:
            continue
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"README.md:{block[0]}: `mmrag {shlex.join(argv)}` does not parse (exit {exc.code})")
