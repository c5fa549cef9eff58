"""Section 4 of issue 12 (part): damaged store files give a named error, never a wrong answer."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import models

from mmrag.store import IMAGE_VECTOR, CollectionSpec, EdgeStore
from mmrag.store.edge import StoreCorrupted


def _store(tmp_path) -> EdgeStore:
    return EdgeStore(tmp_path / "home", max_search_threads=1, min_free_bytes=0)


def _filled(tmp_path, n: int = 50) -> np.ndarray:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(n, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = _store(tmp_path)
    store.create_collection(CollectionSpec(name="photos", dim=8, model_id="test/m", payload_indexes={}))
    store.upsert("photos", [models.PointStruct(id=i + 1, vector={IMAGE_VECTOR: v.tolist()}, payload={"i": i})
                            for i, v in enumerate(vecs)])
    store.close()
    return vecs


def test_random_bytes_in_the_vector_file_are_refused_not_served(tmp_path):
    vecs = _filled(tmp_path)
    (chunk,) = (tmp_path / "home").rglob("vector_storage-image/vectors/chunk_0.mmap")
    with open(chunk, "r+b") as fh:  # the probe: 4 KiB of random bytes over the vectors
        fh.write(np.random.default_rng(1).bytes(4096))
    store = _store(tmp_path)
    try:
        with pytest.raises(StoreCorrupted, match=r"impossible for a cosine similarity: its vector files are damaged"):
            store.search("photos", vecs[0].tolist(), using=IMAGE_VECTOR, limit=50)
    finally:
        store.close()


def test_unreadable_meta_json_names_the_file(tmp_path):
    _filled(tmp_path)
    meta = tmp_path / "home" / "collections" / "photos" / "meta.json"
    meta.write_bytes(b'{"metadata": {"dim": 8, "mod\xff')
    store = _store(tmp_path)
    try:
        with pytest.raises(StoreCorrupted, match=rf"cannot read {meta}") as exc:
            store.get_spec("photos")
        assert exc.value.exit_code == 1
    finally:
        store.close()
