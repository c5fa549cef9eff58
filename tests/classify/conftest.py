"""Fixtures for classification, tagging, dedup, evaluation and plotting tests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from qdrant_client import QdrantClient

from mmrag.embedders.base import Embedder, ModelInfo
from mmrag.tasks.classify import LABEL_CACHE


class FakeEmbedder:
    """Deterministic `Embedder`: texts are sums of per-word random vectors, images a fixed projection of 4x4 pixels.

    Counts `embed_texts` calls and texts so tests can check caching.
    """

    def __init__(self, dim: int = 8, language: str = "en", scale: float = 10.0, model_id: str = "fake:v1"):
        self.info = ModelInfo(model_id=model_id, dim=dim, backend="fake", image_size=4, language=language)
        self.device = "cpu"
        self._scale = scale
        self._proj = np.random.default_rng(123).normal(size=(3 * 4 * 4, dim)).astype(np.float32)
        self.text_calls = 0
        self.texts_embedded: list[str] = []

    @property
    def logit_scale(self) -> float:
        return self._scale

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "little")
        return np.random.default_rng(seed).normal(size=self.info.dim)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.text_calls += 1
        self.texts_embedded.extend(texts)
        vecs = np.stack([sum((self._word(w) for w in t.split()), np.zeros(self.info.dim)) for t in texts])
        return (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        small = image.convert("RGB").resize((4, 4), Image.BILINEAR)
        return (np.asarray(small, dtype=np.float32) / 255.0 - 0.5).transpose(2, 0, 1).copy()

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        flat = np.asarray(pixels, dtype=np.float32).reshape(len(pixels), -1)
        vecs = flat @ self._proj
        return (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_pixels(np.stack([self.preprocess(im) for im in images]))


def make_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (24, 24), seed: int = 0) -> Path:
    """A coloured image with a little seeded noise, so images of one colour still differ."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour, dtype=np.int16) + rng.integers(-25, 26, size=(size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), "RGB").save(path)
    return path


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 220)}


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """ImageFolder tree: 3 classes x 3 images, plus one corrupt file in `blue`."""
    root = tmp_path / "folder"
    for c, (name, colour) in enumerate(COLOURS.items()):
        for i in range(3):
            make_image(root / name / f"{name}{i}.png", colour, seed=10 * c + i)
    (root / "blue" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


@pytest.fixture(autouse=True)
def _fresh_label_cache() -> Iterator[None]:
    LABEL_CACHE.clear()  # tests count text embeddings: no leftovers from earlier tests
    yield
    LABEL_CACHE.clear()


@pytest.fixture
def fake() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir: Path) -> Embedder:
    from mmrag.embedders import load_embedder

    return load_embedder(str(tiny_clip_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny_chinese_clip(tiny_chinese_clip_dir: Path) -> Embedder:
    from mmrag.embedders import load_embedder

    return load_embedder(str(tiny_chinese_clip_dir), device="cpu")


@pytest.fixture(params=["memory", "edge"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    from mmrag.store import EdgeStore, QdrantClientStore

    s = EdgeStore(tmp_path / "home") if request.param == "edge" else QdrantClientStore(QdrantClient(":memory:"))
    yield s
    s.close()
