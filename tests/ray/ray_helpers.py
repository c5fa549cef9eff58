"""Picklable fault hooks for the Ray tests (imported by the Ray workers through PYTHONPATH)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

POISON_SIZE = (40, 30)  # red.png: kills its decode worker every time
KILL_ONCE_SIZE = (64, 64)  # sub/green.jpg: kills its decode worker on the first try only


def _first_time(marker: Path) -> bool:
    try:
        marker.touch(exist_ok=False)
        return True
    except FileExistsError:
        return False


class KillingTransform:
    """The real ClipTransform, except that some images kill the worker process running it."""

    def __init__(self, inner: Any, marker_dir: str) -> None:
        self.inner, self.marker_dir = inner, Path(marker_dir)

    def __call__(self, image: Any) -> np.ndarray:
        if image.size == POISON_SIZE:
            os._exit(3)
        if image.size == KILL_ONCE_SIZE and _first_time(self.marker_dir / "decode-killed"):
            os._exit(3)
        return self.inner(image)


class FaultyEmbedder:
    """Delegates to a real embedder; `portable_preprocess` kills decode workers, and with
    `kill_actor` the first model call of the run kills its actor."""

    def __init__(self, inner: Any, marker_dir: str, kill_actor: bool = False) -> None:
        self.inner, self.marker_dir, self.kill_actor = inner, marker_dir, kill_actor
        self.info, self.device = inner.info, inner.device

    @property
    def portable_preprocess(self) -> KillingTransform:
        return KillingTransform(self.inner.portable_preprocess, self.marker_dir)

    def preprocess(self, image):
        return self.inner.preprocess(image)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        if self.kill_actor and _first_time(Path(self.marker_dir) / "actor-killed"):
            os._exit(3)
        return self.inner.embed_pixels(pixels)

    def embed_texts(self, texts):
        return self.inner.embed_texts(texts)


def faulty_factory(marker_dir: str) -> FaultyEmbedder:
    from mmrag.embedders import load_embedder

    return FaultyEmbedder(load_embedder("mmrag-shapes-en", device="cpu"), marker_dir, kill_actor=True)
