"""Fixtures for the store congruence tests: the same tests run against every backend."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from mmrag.store import IMAGE_VECTOR, TEXT_VECTOR, CollectionSpec, EdgeStore, QdrantClientStore, Store

DIM = 16
N_POINTS = 200
COLLECTION = "photos"
FORMATS = ("jpeg", "png", "webp")
TAG_POOL = ("cat", "dog", "sky", "sea")


def make_store(kind: str, tmp_path: Path, **edge_options: Any) -> Store:
    if kind == "edge":
        return EdgeStore(tmp_path / "home", max_search_threads=1, **edge_options)
    return QdrantClientStore(QdrantClient(location=":memory:"))


@pytest.fixture(params=["edge", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = make_store(request.param, tmp_path)
    yield s
    s.close()


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def point_id(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"img/{i:03d}.jpg"))


@dataclass
class Dataset:
    """Reference data: what went in, so tests can recompute every answer with numpy."""

    ids: list[str]
    image: np.ndarray  # (N, DIM) float32, unit rows
    text: np.ndarray  # (N, DIM) float32, unit rows; only rows where has_text is set are stored
    has_text: np.ndarray  # (N,) bool
    payloads: list[dict[str, Any]]

    def points(self) -> list[models.PointStruct]:
        out = []
        for i, pid in enumerate(self.ids):
            vectors = {IMAGE_VECTOR: self.image[i].tolist()}
            if self.has_text[i]:
                vectors[TEXT_VECTOR] = self.text[i].tolist()
            out.append(models.PointStruct(id=pid, vector=vectors, payload=self.payloads[i]))
        return out


def make_dataset(seed: int = 7, n: int = N_POINTS) -> Dataset:
    rng = np.random.default_rng(seed)
    image = unit_rows(rng, n)
    text = unit_rows(rng, n)
    has_text = rng.random(n) < 0.6
    payloads: list[dict[str, Any]] = []
    for i in range(n):
        payload: dict[str, Any] = {
            "path": f"img/{i:03d}.jpg",
            "format": FORMATS[i % 3],
            "width": int(rng.integers(100, 1000)),
            "mtime": float(rng.uniform(1.6e9, 1.7e9)),
            "has_caption": "yes" if has_text[i] else "no",
            "ingested_at": f"2024-{1 + i % 12:02d}-15T12:00:00+00:00",
        }
        if has_text[i]:
            payload["caption"] = f"caption {i}"
        elif i % 2:
            payload["caption"] = None  # explicit null: is_null matches it, a missing key does not
        if i % 4 == 0:
            payload["tags"] = []  # is_empty matches [] and a missing key
        elif i % 4 != 1:
            payload["tags"] = sorted({TAG_POOL[i % 4], TAG_POOL[(i // 4) % 4]})
        payloads.append(payload)
    return Dataset([point_id(i) for i in range(n)], image, text, has_text, payloads)


@pytest.fixture(scope="session")
def dataset() -> Dataset:
    return make_dataset()


def spec(name: str = COLLECTION, **kw: Any) -> CollectionSpec:
    return CollectionSpec(name=name, dim=DIM, model_id="test/random-16", **kw)


def fill(store: Store, data: Dataset, name: str = COLLECTION, batch: int = 64, indexes: bool = True) -> None:
    """Create the collection if needed (with mmrag's payload indexes, or none) and upsert `data`."""
    if not store.collection_exists(name):
        # Creating nine payload indexes costs qdrant-edge about a second of fsyncs; tests that
        # do not filter skip them.
        store.create_collection(spec(name) if indexes else spec(name, payload_indexes={}))
    points = data.points()
    for start in range(0, len(points), batch):
        store.upsert(name, points[start : start + batch])


@pytest.fixture
def filled(store: Store, dataset: Dataset) -> Store:
    """A fresh store holding `dataset` (without payload indexes), for tests that change it."""
    fill(store, dataset, indexes=False)
    return store


@pytest.fixture(scope="module", params=["edge", "memory"])
def shared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, dataset: Dataset) -> Iterator[Store]:
    """A store holding `dataset`, shared by the read-only tests of a module (filling a shard costs ~0.5 s)."""
    s = make_store(request.param, tmp_path_factory.mktemp(f"shared-{request.param}"))
    fill(s, dataset)
    yield s
    s.close()


def payload_equal(got: dict[str, Any] | None, expected: dict[str, Any]) -> bool:
    """Payload equality, letting floats differ by an ulp or two.

    qdrant-edge 0.9 parses payload floats with a fast, not round-trip-exact
    parser: 1657420882.0258923 comes back as 1657420882.0258925.
    """
    if got is None or set(got) != set(expected):
        return False
    for key, value in expected.items():
        if isinstance(value, float) and isinstance(got[key], float):
            if not math.isclose(got[key], value, rel_tol=1e-15, abs_tol=0.0):
                return False
        elif got[key] != value:
            return False
    return True
