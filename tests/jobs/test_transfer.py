from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from qdrant_client import QdrantClient, models

from mmrag.jobs.transfer import export_collection, import_collection, read_export_spec
from mmrag.store import CollectionSpec, EdgeStore, QdrantClientStore, SchemaMismatch

DIM = 12
N = 23


def _points(seed: int = 0) -> list[models.PointStruct]:
    rng = np.random.default_rng(seed)
    pts = []
    for i in range(N):
        img = rng.standard_normal(DIM).astype(np.float32)
        img /= np.linalg.norm(img)
        vec = {"image": img.tolist()}
        if i % 3:  # every third point has no caption, hence no text vector
            txt = rng.standard_normal(DIM).astype(np.float32)
            txt /= np.linalg.norm(txt)
            vec["text"] = txt.tolist()
        payload = {
            "path": f"dir/图片 {i}.jpg",
            "caption": f"caption {i}" if i % 3 else None,
            "has_caption": "yes" if i % 3 else "no",
            "mtime": 1_700_000_000 + i / 7,
            "width": 640 + i,
            "tags": ["cat", "dog"][: i % 3],
            "extra": {"nested": [1, 2.5, "x"], "flag": bool(i % 2)},
        }
        pts.append(models.PointStruct(id=str(uuid.uuid5(uuid.NAMESPACE_URL, str(i))), vector=vec, payload=payload))
    return pts


def _spec(name: str = "photos", model_id: str = "fake/model") -> CollectionSpec:
    return CollectionSpec(name=name, dim=DIM, model_id=model_id, extra={"tag_labels": ["cat", "dog"]})


def _dump(store, name: str) -> dict[str, tuple[dict[str, bytes], dict]]:
    """id -> ({vector name: raw float32 bytes}, payload) for every point."""
    out, offset = {}, None
    while True:
        recs, offset = store.scroll(name, limit=7, offset=offset, with_payload=True, with_vectors=True)
        for r in recs:
            out[str(r.id)] = ({k: np.asarray(v, dtype=np.float32).tobytes() for k, v in r.vector.items()}, r.payload)
        if offset is None:
            return out


def _file_dump(path) -> dict[str, tuple[dict[str, bytes], dict]]:
    t = pq.read_table(path)
    out = {}
    for i, pid in enumerate(t["id"].to_pylist()):
        vecs = {name: np.asarray(t[name][i].as_py(), dtype=np.float32).tobytes()
                for name in ("image", "text") if t[name][i].is_valid}
        out[pid] = (vecs, json.loads(t["payload"][i].as_py()))
    return out


class CapturingStore:
    """Delegates to a real store and keeps every upsert call's points (what import sends on the wire)."""

    def __init__(self, inner):
        self.inner = inner
        self.upserts: list[list[models.PointStruct]] = []

    def upsert(self, name, points):
        self.upserts.append(list(points))
        return self.inner.upsert(name, points)

    def __getattr__(self, item):
        return getattr(self.inner, item)


def _wire(points: list[models.PointStruct]) -> dict[str, tuple[dict[str, bytes], dict]]:
    return {str(p.id): ({k: np.asarray(v, dtype=np.float32).tobytes() for k, v in p.vector.items()}, p.payload)
            for p in points}


def _assert_close(a, b):
    """Same ids, vector names and payloads; vectors equal within one float32 step of a unit vector."""
    assert a.keys() == b.keys()
    for pid in a:
        assert a[pid][1] == b[pid][1]
        assert a[pid][0].keys() == b[pid][0].keys()
        for name in a[pid][0]:
            x, y = (np.frombuffer(v[pid][0][name], dtype=np.float32) for v in (a, b))
            np.testing.assert_allclose(x, y, rtol=0, atol=2.0**-23)


def test_round_trip_edge_memory_edge(tmp_path):
    src = EdgeStore(tmp_path / "src")
    src.create_collection(_spec())
    pts = _points()
    src.upsert("photos", pts)
    stored = _dump(src, "photos")
    assert {pid: vecs for pid, (vecs, _) in stored.items()} == {pid: v for pid, (v, _) in _wire(pts).items()}
    # (qdrant-edge 0.9 may move the last bit of a float in a payload on insert; the export keeps what is stored)

    # edge -> file: every stored bit, one row group per scroll page
    f1 = tmp_path / "a.parquet"
    assert export_collection(src, "photos", f1, batch=5) == N
    assert _file_dump(f1) == stored
    pf = pq.ParquetFile(f1)
    assert pf.metadata.num_row_groups == math.ceil(N / 5)
    assert pf.metadata.num_rows == N
    assert pf.metadata.metadata[b"mmrag.point_count"] == str(N).encode()
    schema = pf.schema_arrow
    assert schema.field("id").type == pa.string()
    assert schema.field("image").type == pa.list_(pa.float32(), DIM) and not schema.field("image").nullable
    assert schema.field("text").type == pa.list_(pa.float32(), DIM) and schema.field("text").nullable
    assert schema.field("payload").type == pa.string()
    assert pq.read_table(f1)["text"].null_count == len([p for p in pts if "text" not in p.vector])
    assert json.loads(schema.metadata[b"mmrag.collection_metadata"])["tag_labels"] == ["cat", "dog"]

    # file -> memory client: the points sent are the file's exact bits, in bounded batches
    mem = CapturingStore(QdrantClientStore(QdrantClient(":memory:")))
    assert import_collection(mem, f1, batch=4) == N
    assert [len(b) for b in mem.upserts] == [4] * (N // 4) + [N % 4]
    assert _wire([p for b in mem.upserts for p in b]) == stored
    spec = mem.get_spec("photos")
    assert (spec.dim, spec.model_id, spec.extra["tag_labels"]) == (DIM, "fake/model", ["cat", "dog"])
    in_memory = _dump(mem, "photos")
    # Qdrant (server and :memory:) re-normalises cosine vectors on insert, which may move the last bit
    _assert_close(in_memory, stored)

    # memory -> file -> edge: bit-for-bit what the memory store held
    f2 = tmp_path / "b.parquet"
    assert export_collection(mem, "photos", f2, batch=1024) == N
    assert _file_dump(f2) == in_memory
    dst = EdgeStore(tmp_path / "dst")
    assert import_collection(dst, f2, collection="restored") == N
    assert dst.list_collections() == ["restored"]
    assert {k: v for k, (v, _) in _dump(dst, "restored").items()} == {k: v for k, (v, _) in in_memory.items()}
    _assert_close(_dump(dst, "restored"), stored)
    assert dst.get_spec("restored").payload_indexes == src.get_spec("photos").payload_indexes

    # edge -> file -> edge directly: every vector bit and every payload
    again = EdgeStore(tmp_path / "again")
    assert import_collection(again, f1) == N
    assert _dump(again, "photos") == stored

    # the same query ranks the same points everywhere
    q = pts[4].vector["image"]
    ranked = [[str(h.id) for h in s.search(n, q, using="image", limit=5)]
              for s, n in ((src, "photos"), (mem.inner, "photos"), (dst, "restored"), (again, "photos"))]
    assert ranked[0] == ranked[1] == ranked[2] == ranked[3] and ranked[0][0] == str(pts[4].id)
    for s in (src, mem.inner, dst, again):
        s.close()


def test_import_checks_an_existing_collection_and_is_idempotent(tmp_path):
    store = QdrantClientStore(QdrantClient(":memory:"))
    store.create_collection(_spec())
    store.upsert("photos", _points())
    out = tmp_path / "x.parquet"
    export_collection(store, "photos", out)

    assert import_collection(store, out) == N  # same ids overwritten, nothing duplicated
    assert store.count("photos") == N

    store.create_collection(_spec("other", model_id="another/model"))
    with pytest.raises(SchemaMismatch, match="cannot import .* into 'other'.*'another/model'"):
        import_collection(store, out, collection="other")
    assert store.count("other") == 0

    # an alias is resolved on both sides
    store.create_collection(_spec("photos__v2"))
    store.set_alias("live", "photos__v2")
    assert import_collection(store, out, collection="live") == N
    assert store.count("photos__v2") == N
    assert export_collection(store, "live", tmp_path / "y.parquet") == N
    assert read_export_spec(tmp_path / "y.parquet").name == "photos__v2"


def test_export_of_a_missing_collection_or_a_foreign_file_fails_clearly(tmp_path):
    store = QdrantClientStore(QdrantClient(":memory:"))
    with pytest.raises(ValueError, match="collection 'nope' does not exist"):
        export_collection(store, "nope", tmp_path / "n.parquet")
    assert not (tmp_path / "n.parquet").exists() and not (tmp_path / "n.parquet.partial").exists()
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "foreign.parquet")
    with pytest.raises(ValueError, match="not an mmrag export"):
        import_collection(store, tmp_path / "foreign.parquet")


def test_empty_collection_exports_and_imports(tmp_path):
    store = EdgeStore(tmp_path / "e")
    store.create_collection(_spec())
    assert export_collection(store, "photos", tmp_path / "e.parquet") == 0
    mem = QdrantClientStore(QdrantClient(":memory:"))
    assert import_collection(mem, tmp_path / "e.parquet") == 0
    assert mem.get_spec("photos").dim == DIM and mem.count("photos") == 0
    store.close()
