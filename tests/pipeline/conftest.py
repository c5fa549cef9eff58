"""Fixtures for the end-to-end pipeline tests: real files, real stores, tiny real models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from qdrant_client import QdrantClient

from mmrag.embedders import load_embedder
from mmrag.store import EdgeStore, QdrantClientStore

# name -> (size, mode, colour); written as PNG/JPEG below
GOOD_IMAGES = {
    "red.png": ((40, 30), "RGB", (220, 20, 20)),
    "sub/green.jpg": ((64, 64), "RGB", (20, 200, 40)),
    "sub/deeper/blue.PNG": ((17, 90), "RGB", (10, 30, 230)),
    "grey.png": ((33, 33), "L", 128),
    "with space é.png": ((50, 20), "RGB", (250, 250, 0)),
    "中文/猫.png": ((24, 48), "RGB", (120, 60, 200)),
}
CAPTIONS = {
    "red.png": "a red picture",
    "sub/green.jpg": "a green photo",
    "sub/deeper/blue.PNG": "\ufeffa tall blue image",  # BOM: stripped by the reader
    "中文/猫.png": "一只紫色的猫",
}
BAD_FILES = {
    "corrupt.jpg": b"\xff\xd8\xff\xe0 this is not really a jpeg",
    "empty.png": b"",
    "text-as.png": b"hello, I am text pretending to be a png",
}
IGNORED = {"notes.md": b"# readme", ".DS_Store": b"\x00\x01", "data.json": b"{}"}


def write_corpus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, (size, mode, colour) in GOOD_IMAGES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        img = Image.new(mode, size, colour)
        # a little structure so images of one colour still differ
        img.paste(Image.new(mode, (size[0] // 2 or 1, size[1] // 2 or 1), 0 if mode == "L" else (0, 0, 0)), (0, 0))
        img.save(p, format="JPEG" if rel.endswith(".jpg") else "PNG")
    for rel, text in CAPTIONS.items():
        (root / rel).with_suffix(".txt").write_bytes(text.encode("utf-8"))
    for rel, data in {**BAD_FILES, **IGNORED}.items():
        (root / rel).write_bytes(data)
    return root


def expected_caption(rel: str) -> str | None:
    c = CAPTIONS.get(rel)
    return c.lstrip("\ufeff").strip() if c else None


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def env(monkeypatch, tmp_path: Path, tiny_clip_dir: Path, corpus: Path) -> dict[str, Path]:
    """The CLI's environment for one test: its own MMRAG_HOME, the tiny model, no server, no stray .env."""
    home = tmp_path / "home"
    monkeypatch.setenv("MMRAG_HOME", str(home))
    monkeypatch.setenv("MMRAG_MODEL", str(tiny_clip_dir))
    monkeypatch.setenv("MMRAG_WORKERS", "1")
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return {"home": home, "corpus": corpus, "model": tiny_clip_dir, "tmp": tmp_path}


@pytest.fixture(scope="session")
def tiny_embedder(tiny_clip_dir: Path):
    return load_embedder(str(tiny_clip_dir), device="cpu")


@pytest.fixture(params=["edge", "memory"])
def store(request, tmp_path: Path):
    if request.param == "edge":
        s = EdgeStore(tmp_path / "home")
    else:
        s = QdrantClientStore(QdrantClient(":memory:"))
    yield s
    s.close()


class CountingEmbedder:
    """Delegates to a real embedder and counts model calls (to prove what is skipped)."""

    def __init__(self, inner: Any, fail_after_batches: int | None = None, on_batch=None):
        self.inner = inner
        self.info = inner.info
        self.device = inner.device
        self.pixel_batches = 0
        self.images_embedded = 0
        self.texts_embedded = 0
        self.fail_after_batches = fail_after_batches
        self.on_batch = on_batch

    @property
    def logit_scale(self) -> float:
        return self.inner.logit_scale

    def preprocess(self, image):
        return self.inner.preprocess(image)

    @property
    def portable_preprocess(self):
        return getattr(self.inner, "portable_preprocess", None)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        if self.fail_after_batches is not None and self.pixel_batches >= self.fail_after_batches:
            raise KeyboardInterrupt
        self.pixel_batches += 1
        self.images_embedded += len(pixels)
        if self.on_batch is not None:
            self.on_batch(self.pixel_batches)
        return self.inner.embed_pixels(pixels)

    def embed_images(self, images):
        self.images_embedded += len(images)
        return self.inner.embed_images(images)

    def embed_texts(self, texts):
        self.texts_embedded += len(texts)
        return self.inner.embed_texts(texts)


def all_points(store, collection: str, with_vectors: bool = True) -> dict[str, Any]:
    out, offset = {}, None
    while True:
        recs, offset = store.scroll(collection, limit=100, offset=offset, with_vectors=with_vectors)
        out.update({str(r.id): r for r in recs})
        if offset is None:
            return out


def bump_mtime(path: Path, seconds: float = 10.0) -> None:
    st = path.stat()
    os.utime(path, (st.st_atime + seconds, st.st_mtime + seconds))
