"""App wiring of batch sizes: settings reach the embedder; a GPU model gets its batch tuned once."""

from __future__ import annotations

from pathlib import Path

import pytest

import mmrag.embedders as embedders
import mmrag.embedders.tuning as tuning
from mmrag.app import App
from mmrag.ingest import IngestOptions
from mmrag.settings import Settings


@pytest.fixture
def calls(monkeypatch) -> list[tuple[object, int]]:
    seen: list[tuple[object, int]] = []

    def fake_tune(embedder, *, start):
        seen.append((embedder, start))
        embedder.batch_size = start * 4

    monkeypatch.setattr(tuning, "tune_batch_size", fake_tune)
    return seen


def _app(tmp_path: Path, model: Path, **overrides) -> App:
    return App(Settings(home=tmp_path / "home", model=str(model), device="cpu", **overrides))


def test_cpu_model_takes_the_configured_batches_untuned(tmp_path, tiny_clip_dir, calls) -> None:
    app = _app(tmp_path, tiny_clip_dir, batch_size=4, text_batch_size=3)
    embedder = app.embedder()
    assert (embedder.batch_size, embedder.text_batch_size) == (4, 3)
    assert calls == []
    assert IngestOptions.from_settings(app.settings, embedder).batch_size == 4
    assert app.embedder() is embedder  # loaded once per process


@pytest.mark.parametrize("auto_batch, expected", [(True, 32), (False, 8)])
def test_gpu_model_is_tuned_once_unless_switched_off(tmp_path, tiny_clip_dir, calls, monkeypatch, auto_batch, expected) -> None:
    real_load = embedders.load_embedder

    def on_gpu(*args, **kwargs):
        embedder = real_load(*args, **kwargs)
        embedder.device = "cuda"  # what pick_device would give on a GPU host; nothing runs on it here
        return embedder

    monkeypatch.setattr(embedders, "load_embedder", on_gpu)
    app = _app(tmp_path, tiny_clip_dir, batch_size=8, auto_batch=auto_batch)
    embedder = app.embedder()
    app.embedder()
    assert calls == ([(embedder, 8)] if auto_batch else [])
    assert embedder.batch_size == expected
    # ingestion stacks as many images as the model takes in one call
    assert IngestOptions.from_settings(app.settings, embedder).batch_size == expected
