"""Fakes for the job tests: an embedder identity and an ingest that writes real points.

The fake ingest has run_ingest's signature and semantics that matter to jobs:
it creates the collection (or checks the spec), upserts one point per corpus
file in small batches, and prunes on request. Its vectors are a deterministic
function of the file name and content, so tests can compute expected results.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from mmrag.corpus.types import SkippedFile
from mmrag.embedders.base import ModelInfo
from mmrag.ingest import IngestReport, ensure_collection
from mmrag.store import EdgeStore, QdrantClientStore

DIM = 8


@dataclass
class FakeEmbedder:
    info: ModelInfo = field(
        default_factory=lambda: ModelInfo(model_id="fake/model", dim=DIM, backend="hf-clip", image_size=32)
    )
    device: str = "cpu"
    logit_scale: float = 100.0

    def embed_texts(self, texts):  # for the zero-shot tagger a job builds from tag labels
        return np.asarray([vector_for("text:" + t) for t in texts], dtype=np.float32)


def vector_for(key: str) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return (v / np.linalg.norm(v)).tolist()


def pid(rel: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, rel))


class FakeIngest:
    """`run_ingest` stand-in over a folder of small text files ("images")."""

    def __init__(self, *, batch: int = 2, fail_after: int | None = None, between_batches=None):
        self.batch = batch
        self.fail_after = fail_after  # raise after this many batches
        self.between_batches = between_batches  # callback(batch_index) to interleave with readers
        self.calls: list[dict[str, Any]] = []

    def __call__(self, store, embedder, *, root: Path | None, collection: str, manifest=None, prune=False,
                 options=None, progress=True, tagger=None) -> IngestReport:
        self.calls.append(dict(collection=collection, root=root, prune=prune, options=options, tagger=tagger))
        info = embedder.info
        target = ensure_collection(store, embedder, collection)  # the real check, as run_ingest does
        rep = IngestReport(collection=target, model_id=info.model_id)
        stored: dict[str, str] = {}
        offset = None
        while True:
            recs, offset = store.scroll(target, limit=100, offset=offset, with_payload=True)
            stored.update({str(r.id): r.payload.get("sha256") for r in recs})
            if offset is None:
                break
        points, seen = [], set()
        for path in sorted(Path(root).rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            data = path.read_bytes()
            seen.add(pid(rel))
            if data.startswith(b"BROKEN"):
                rep.failed.append(SkippedFile(rel, "cannot decode"))
                continue
            sha = hashlib.sha256(data).hexdigest()
            if stored.get(pid(rel)) == sha:
                rep.unchanged += 1
                continue
            if pid(rel) in stored:
                rep.updated += 1
            else:
                rep.indexed += 1
            points.append(models.PointStruct(
                id=pid(rel), vector={"image": vector_for(rel + sha)},
                payload={"path": rel, "sha256": sha, "model_id": info.model_id, **(tagger(np.asarray([vector_for(rel + sha)]))[0] if tagger else {})},
            ))
        for i in range(0, len(points), self.batch):
            if self.fail_after is not None and i // self.batch >= self.fail_after:
                raise RuntimeError("store went away mid-ingest")
            store.upsert(target, points[i : i + self.batch])
            if self.between_batches:
                self.between_batches(i // self.batch)
        if prune:
            stale = [p for p in stored if p not in seen]
            if stale:
                store.delete_points(target, stale)
            rep.pruned = len(stale)
        return rep


def make_corpus(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


@pytest.fixture(params=["edge", "memory"])
def store(request, tmp_path):
    if request.param == "edge":
        s = EdgeStore(tmp_path / "edge-home")
    else:
        s = QdrantClientStore(QdrantClient(":memory:"))
    yield s
    s.close()


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


class Reader(threading.Thread):
    """Queries the alias in a loop until stopped; records errors and empty results."""

    def __init__(self, store, alias: str, query: list[float]):
        super().__init__(daemon=True)
        self.store, self.alias, self.query = store, alias, query
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.empty = 0
        self.queries = 0
        self.seen_collections: set[str] = set()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                # alternate: resolve-per-call, and the alias straight to the store
                if self.queries % 2 == 0:
                    name = self.store.resolve(self.alias)
                    self.seen_collections.add(name)
                else:
                    name = self.alias
                hits = self.store.search(name, self.query, using="image", limit=3)
                if not hits:
                    self.empty += 1
            except BaseException as exc:  # noqa: BLE001 - the test asserts there are none
                self.errors.append(exc)
            self.queries += 1

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
