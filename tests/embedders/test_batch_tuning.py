"""Batch size on a GPU: measured doubling, and halving on out-of-memory (simulated here on CPU)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrag.embedders import load_embedder
from mmrag.embedders.base import ModelInfo
from mmrag.embedders.tuning import tune_batch_size


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedEmbedder:
    """embed_pixels costs `seconds_per_call[batch]` on a fake clock; batches above `fits` run out of memory."""

    def __init__(self, seconds_per_call: dict[int, float], fits: int, clock: FakeClock) -> None:
        self.info = ModelInfo(model_id="fake", dim=4, backend="hf-clip", image_size=2)
        self.device = "cuda"
        self.batch_size = 1
        self.cost, self.fits, self.clock = seconds_per_call, fits, clock
        self.calls: list[int] = []

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        assert pixels.shape[1:] == (3, 2, 2) and len(pixels) == self.batch_size
        self.calls.append(len(pixels))
        if len(pixels) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.clock.now += self.cost[len(pixels)]
        return np.zeros((len(pixels), 4), np.float32)


def test_doubles_while_throughput_grows_and_stops_at_the_plateau() -> None:
    clock = FakeClock()
    # images/s: 32 -> 100, 64 -> 200, 128 -> 256, 256 -> 260 (< 5% more): 128 wins
    emb = ScriptedEmbedder({32: 0.32, 64: 0.32, 128: 0.5, 256: 256 / 260}, fits=4096, clock=clock)
    result = tune_batch_size(emb, start=32, min_seconds=1.0, clock=clock)
    assert result.best == emb.batch_size == 128
    assert result.best_images_per_s == pytest.approx(256.0)
    assert [t["batch_size"] for t in result.trials] == [32, 64, 128, 256]
    assert [t["images_per_s"] for t in result.trials] == [100.0, 200.0, 256.0, 260.0]
    # each size: one warm-up call, then timed calls until a second has passed
    assert emb.calls[:5] == [32, 32, 32, 32, 32] and emb.calls.count(64) == 5 and emb.calls.count(256) == 3


def test_out_of_memory_ends_the_search_at_the_largest_size_that_fits() -> None:
    clock = FakeClock()
    emb = ScriptedEmbedder({32: 0.32, 64: 0.32, 128: 0.32}, fits=128, clock=clock)
    result = tune_batch_size(emb, start=32, min_seconds=0.0, clock=clock)
    assert result.best == emb.batch_size == 128
    assert result.trials[-1] == {"batch_size": 256, "images_per_s": None, "oom": True}


def test_nothing_fits_and_bad_bounds_are_errors() -> None:
    clock = FakeClock()
    with pytest.raises(RuntimeError, match="no batch size from 64 fits in memory on cuda"):
        tune_batch_size(ScriptedEmbedder({}, fits=16, clock=clock), start=64, clock=clock)
    with pytest.raises(ValueError, match="need 1 <= start <= limit"):
        tune_batch_size(ScriptedEmbedder({}, fits=16, clock=clock), start=64, limit=32, clock=clock)


def test_other_errors_are_not_taken_for_out_of_memory() -> None:
    class Broken(ScriptedEmbedder):
        def embed_pixels(self, pixels):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        tune_batch_size(Broken({}, fits=16, clock=FakeClock()), start=8)


def test_hf_embedder_halves_its_batch_on_out_of_memory_and_loses_nothing(tiny_clip_dir: Path, caplog) -> None:
    embedder = load_embedder(str(tiny_clip_dir), device="cpu", batch_size=8, backend="torch")
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((11, 3, 32, 32)).astype(np.float32)
    expected = embedder.embed_pixels(pixels)

    real = embedder.model.get_image_features
    seen: list[int] = []

    def limited(pixel_values):
        seen.append(len(pixel_values))
        if len(pixel_values) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(pixel_values=pixel_values)

    embedder.model.get_image_features = limited
    with caplog.at_level(logging.WARNING, logger="mmrag.embedders.hf"):
        got = embedder.embed_pixels(pixels)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert embedder.batch_size == 2
    assert seen == [8, 4, 2, 2, 2, 2, 2, 1]  # 11 images: two halvings, then five batches of 2 and one of 1
    assert [r.getMessage() for r in caplog.records] == [
        "out of memory at image batch 8 on cpu; using 4 from now on",
        "out of memory at image batch 4 on cpu; using 2 from now on",
    ]

    def always_oom(pixel_values):
        raise torch.OutOfMemoryError("CUDA out of memory")

    embedder.model.get_image_features = always_oom
    with pytest.raises(torch.OutOfMemoryError):
        embedder.embed_pixels(pixels)  # at batch 1 there is nothing left to halve
    assert embedder.batch_size == 1


def test_tuning_a_real_embedder_keeps_its_vectors(tiny_clip_dir: Path) -> None:
    embedder = load_embedder(str(tiny_clip_dir), device="cpu", batch_size=2, backend="torch")
    pixels = np.random.default_rng(1).standard_normal((9, 3, 32, 32)).astype(np.float32)
    before = embedder.embed_pixels(pixels)
    result = tune_batch_size(embedder, start=2, limit=8, min_seconds=0.0)
    assert embedder.batch_size == result.best and result.best in (2, 4, 8)
    assert all(t["images_per_s"] > 0 for t in result.trials)
    np.testing.assert_allclose(embedder.embed_pixels(pixels), before, atol=1e-5, rtol=0)
