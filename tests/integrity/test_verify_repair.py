"""Section 4 and 6 of issue 12: silent loss shows up, `verify` names it, `repair` restores every point."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from qdrant_client import models

from mmrag.errors import UsageError
from mmrag.flock import process_holder, release, try_lock
from mmrag.ingest.run import IngestReport, refuse_non_finite
from mmrag.ingest.writer import StoreWriter
from mmrag.jobs.repair import repair
from mmrag.jobs.transfer import export_collection, import_collection
from mmrag.store import IMAGE_VECTOR, CollectionSpec, EdgeStore
from mmrag.store.integrity import RECORD_KEY, verify_collection

N = 600  # the probe's size: 6 write batches of 100


def _store(home: Path) -> EdgeStore:
    return EdgeStore(home, max_search_threads=1, min_free_bytes=0)


def _fill(home: Path) -> None:
    vecs = np.random.default_rng(0).normal(size=(N, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = _store(home)
    store.create_collection(CollectionSpec(name="photos", dim=8, model_id="test/m", payload_indexes={}))
    writer = StoreWriter(store, "photos", 100)
    writer.add([models.PointStruct(id=str(uuid.UUID(int=i + 1)), vector={IMAGE_VECTOR: v.tolist()}, payload={"path": f"{i}.png"})
                for i, v in enumerate(vecs)])
    writer.flush()
    writer.close()
    store.close()


def _segment(home: Path) -> Path:
    (seg,) = (home / "collections" / "photos" / "shard" / "segments").iterdir()
    return seg


def _garble(path: Path, offset: int, n: int = 200) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(np.random.default_rng(2).bytes(n))


PROBES = {
    "version.info removed": (lambda h: (_segment(h) / "version.info").unlink(), 100),
    "segments dir removed": (lambda h: shutil.rmtree(_segment(h).parent), 100),
    "id tracker truncated": (lambda h: os.truncate(m := _segment(h) / "mutable_id_tracker.mappings",
                                                   m.stat().st_size // 2), 400),
}


@pytest.fixture
def exported(tmp_path) -> tuple[Path, Path]:
    home = tmp_path / "home"
    _fill(home)
    store = _store(home)
    assert store.get_spec("photos").extra[RECORD_KEY] == N  # the writer recorded each confirmed batch
    out = tmp_path / "photos.parquet"
    assert export_collection(store, "photos", out) == N
    store.close()
    return home, out


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_silent_loss_is_reported_at_open_by_verify_and_repaired_from_an_export(probe, exported, tmp_path, caplog):
    home, export = exported
    damage, left = PROBES[probe]
    damage(home)
    store = _store(home)
    try:
        assert store.count("photos") == left  # what the engine silently opens
        assert store.count_mismatches == {"photos": (left, N)}  # the cheap check at open
        assert f"holds {left} points but mmrag recorded {N} written" in caplog.text
        assert "`mmrag verify photos`" in caplog.text
        store.close()
        store = _store(home)
        report = verify_collection(store, "photos")
        assert (report.ok, report.count, report.recorded, report.scanned) == (False, left, N, left)
        assert report.problems == [f"collection 'photos' holds {left} points but mmrag recorded {N} written: "
                                   f"{N - left} points were lost (damaged store files). Run `mmrag verify photos` "
                                   f"to see what is damaged, then `mmrag repair photos` to rebuild it."]
        job = repair("photos", store=store, home=tmp_path / "jobs", from_export=export, keep=1)
        assert (job.status, job.target, job.migrated, job.gate["live_points"]) == ("ok", "photos__v1", True, N)
        after = verify_collection(store, "photos")
        assert (after.ok, after.count, after.recorded, after.scanned, after.problems) == (True, N, N, N, [])
        assert store.get_aliases() == {"photos": "photos__v1"} and store.list_collections() == ["photos__v1"]
    finally:
        store.close()


def test_a_garbled_id_tracker_that_aborts_the_engine_is_reported_not_fatal(exported, tmp_path):
    home, export = exported
    _garble(_segment(home) / "mutable_id_tracker.mappings", 17)  # the engine then tries a ~40-90 GB allocation
    store = _store(home)
    try:
        report = verify_collection(store, "photos")  # would be SIGABRT for this process without the probe
        assert not report.ok and report.count is None
        (problem,) = report.problems
        assert "the storage engine aborted the process (SIGABRT: memory allocation of" in problem
        assert "`mmrag repair photos` rebuilds it" in problem
        job = repair("photos", store=store, home=tmp_path / "jobs", from_export=export)
        assert job.status == "ok" and store.count("photos") == N
        assert verify_collection(store, "photos").ok
    finally:
        store.close()


def test_random_bytes_in_the_vector_file_are_named_by_verify(exported):
    home, _ = exported
    (chunk,) = home.rglob("vector_storage-image/vectors/chunk_0.mmap")
    _garble(chunk, 0, 4096)
    store = _store(home)
    try:
        report = verify_collection(store, "photos", max_listed=3)
        assert not report.ok and report.scanned == N and len(report.problems) == 4
        assert all("'image' vector" in p for p in report.problems[:3])
        assert report.problems[3].startswith("... ") and report.problems[3].endswith(" damaged points (128 in all)")
    finally:
        store.close()


def test_a_garbled_parquet_import_leaves_no_collection(exported, tmp_path):
    _, export = exported
    data = bytearray(export.read_bytes())
    data[4:4 + 2000] = np.random.default_rng(3).bytes(2000)  # row data garbled, footer (spec) intact
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(data))
    store = _store(tmp_path / "other")
    try:
        with pytest.raises(UsageError, match=r"cannot import .*bad.parquet: .*nothing was kept"):
            import_collection(store, bad)
        assert store.list_collections() == []
        assert not list((tmp_path / "other" / "collections").iterdir())
        (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
        with pytest.raises(UsageError, match=r"cannot read .*garbage.parquet as an mmrag export"):
            import_collection(store, tmp_path / "garbage.parquet")
    finally:
        store.close()


def test_creating_leftovers_are_cleaned_at_open_but_a_live_creation_is_kept(tmp_path):
    collections = tmp_path / "home" / "collections"
    dead, live, fresh = (collections / f".creating-photos-{s}" for s in ("dead", "live", "fresh"))
    for d in (dead, live, fresh):
        (d / "shard").mkdir(parents=True)
    (dead / "shard.lock").write_text(json.dumps({"pid": 1}))  # its creator was killed: flock gone
    fd, _ = try_lock(live / "shard.lock", process_holder())  # a creation in progress holds its lock
    os.utime(fresh, (0, 0))  # no lock file and old: a kill right after mkdir
    try:
        store = _store(tmp_path / "home")
        assert sorted(store.removed_leftovers) == [dead.name, fresh.name]
        assert not dead.exists() and not fresh.exists() and live.is_dir()
        store.close()
    finally:
        release(fd)


def test_ingest_refuses_non_finite_vectors_with_a_reason():
    batch = [SimpleNamespace(item=SimpleNamespace(rel_path=p)) for p in ("a.png", "b.png", "c.png")]
    image = np.eye(3, dtype=np.float32)
    image[1, 0] = np.nan
    text = {0: np.array([0.0, 1.0, 0.0]), 2: np.array([np.inf, 0.0, 0.0])}
    report = IngestReport(collection="c", model_id="m")
    kept, kept_image, kept_text = refuse_non_finite(batch, image, text, report)
    assert [d.item.rel_path for d in kept] == ["a.png"] and kept_image.tolist() == [[1.0, 0.0, 0.0]]
    assert list(kept_text) == [0]
    assert [(f.rel_path, f.reason.split(" (")[0]) for f in report.failed] == [
        ("b.png", "the model returned a non-finite image vector"),
        ("c.png", "the model returned a non-finite caption vector")]


