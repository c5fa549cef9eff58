"""Issue 17 item 1: only MMRAG_* (and QDRANT_*) variables configure mmrag."""

from __future__ import annotations

from pathlib import Path

from mmrag.settings import Settings


def test_bare_shell_variables_change_no_setting(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("MMRAG_HOME", "MMRAG_MODEL", "MMRAG_DEVICE", "MMRAG_COLLECTION", "MMRAG_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", "/root")
    monkeypatch.setenv("MODEL", "some-other-model")
    monkeypatch.setenv("DEVICE", "cuda")
    monkeypatch.setenv("COLLECTION", "leaked")
    monkeypatch.setenv("WORKERS", "7")
    s = Settings()
    assert (s.home, s.model, s.device, s.collection, s.workers) == (Path(".mmrag"), "clip-vit-b32", "auto", "mmrag", 0)


def test_prefixed_and_qdrant_variables_and_keywords(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MMRAG_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("MMRAG_COLLECTION", "photos")
    monkeypatch.setenv("MMRAG_WORKERS", "3")
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("QDRANT_API_KEY", "k")
    s = Settings()
    assert (s.home, s.collection, s.workers) == (tmp_path / "h", "photos", 3)
    assert (s.qdrant_url, s.qdrant_api_key) == ("http://qdrant:6333", "k")
    # the CLI builds Settings with overrides by field name
    o = Settings(home=tmp_path / "o", collection="c", qdrant_url=":memory:")
    assert (o.home, o.collection, o.qdrant_url) == (tmp_path / "o", "c", ":memory:")


def test_dotenv_uses_the_same_names(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MMRAG_COLLECTION", raising=False)
    (tmp_path / ".env").write_text("COLLECTION=wrong\nMMRAG_WORKERS=2\n", encoding="utf-8")
    s = Settings()
    assert (s.collection, s.workers) == ("mmrag", 2)


def test_no_field_reads_its_bare_name(monkeypatch, tmp_path):
    """Every setting added later must keep the rule: its bare upper-case name (RAY_ADDRESS,
    API_KEY, BACKEND, ...) is somebody else's variable and changes nothing."""
    monkeypatch.chdir(tmp_path)
    defaults = Settings()
    for name in Settings.model_fields:
        if name.startswith("qdrant_"):
            continue
        monkeypatch.setenv(name.upper(), "1")  # a value most fields would accept
    assert Settings().model_dump() == defaults.model_dump()
