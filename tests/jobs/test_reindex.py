from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from jobs.conftest import FakeEmbedder, FakeIngest, Reader, make_corpus, pid, vector_for
from mmrag.embedders.base import ModelInfo
from mmrag.jobs import (
    CollectionLock,
    ExitCode,
    JobReport,
    JobSpec,
    list_versions,
    load_pipeline,
    rebuild,
    rollback,
    run_pipeline,
    run_scheduler,
    sync,
)
from mmrag.tasks.tagging import METADATA_KEY


def _ids(store, name: str) -> set[str]:
    recs, _ = store.scroll(name, limit=1000)
    return {str(r.id) for r in recs}


def _job(root: Path, **kw) -> JobSpec:
    return JobSpec(collection="photos", root=root, **kw)


def test_first_sync_builds_v1_behind_the_alias_and_saves_a_report(store, embedder, home, tmp_path):
    root = make_corpus(tmp_path / "c", {"a.jpg": "A", "b.jpg": "B", "sub/c.jpg": "C"})
    rep = sync(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest())
    assert (rep.status, rep.exit_code, rep.initial, rep.target) == ("ok", 0, True, "photos__v1")
    assert store.get_aliases() == {"photos": "photos__v1"}
    assert _ids(store, "photos__v1") == {pid("a.jpg"), pid("b.jpg"), pid("sub/c.jpg")}
    saved = list((home / "reports" / "photos").glob("*.json"))
    assert [str(p) for p in saved] == [rep.report_path]
    data = json.loads(saved[0].read_text())
    assert data["job"] == "sync" and data["ingest"]["indexed"] == 3 and data["exit_code"] == 0
    assert data["model_id"] == "fake/model"


def test_sync_is_incremental_and_prunes_by_policy(store, embedder, home, tmp_path):
    root = make_corpus(tmp_path / "c", {"a.jpg": "A", "b.jpg": "B", "c.jpg": "C"})
    ingest = FakeIngest()
    sync(_job(root), store=store, embedder=embedder, home=home, ingest_fn=ingest)
    (root / "a.jpg").write_text("A changed")
    (root / "b.jpg").unlink()
    (root / "d.jpg").write_text("D")

    kept = sync(_job(root, prune=False), store=store, embedder=embedder, home=home, ingest_fn=ingest)
    assert kept.target == "photos__v1" and not kept.initial
    assert {k: kept.ingest[k] for k in ("indexed", "updated", "unchanged", "pruned")} == {
        "indexed": 1, "updated": 1, "unchanged": 1, "pruned": 0}
    assert pid("b.jpg") in _ids(store, "photos")

    pruned = sync(_job(root, prune=True), store=store, embedder=embedder, home=home, ingest_fn=ingest)
    assert pruned.ingest["pruned"] == 1 and pruned.ingest["unchanged"] == 3
    assert _ids(store, "photos") == {pid("a.jpg"), pid("c.jpg"), pid("d.jpg")}
    # the prune override wins over the job's policy
    assert ingest.calls[-1]["prune"] is True
    sync(_job(root, prune=True), store=store, embedder=embedder, home=home, ingest_fn=ingest, prune=False)
    assert ingest.calls[-1]["prune"] is False
    assert len(list((home / "reports" / "photos").glob("*.json"))) == 4


def test_partial_run_is_ok_unless_strict(store, embedder, home, tmp_path):
    root = make_corpus(tmp_path / "c", {"a.jpg": "A", "bad.jpg": "BROKEN"})
    rep = sync(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest())
    assert (rep.status, rep.exit_code, rep.failed_files) == ("partial", 0, 1)
    assert rep.ingest["failed"] == [{"path": "bad.jpg", "reason": "cannot decode"}]
    strict = sync(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest(), strict=True)
    assert (strict.status, strict.exit_code) == ("partial", ExitCode.PARTIAL)


def test_sync_refuses_another_model_with_config_exit_code(store, embedder, home, tmp_path):
    root = make_corpus(tmp_path / "c", {"a.jpg": "A"})
    sync(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest())
    other = FakeEmbedder(info=ModelInfo(model_id="other/model", dim=8, backend="hf-clip", image_size=32))
    rep = sync(_job(root), store=store, embedder=other, home=home, ingest_fn=FakeIngest())
    assert (rep.status, rep.exit_code) == ("invalid", 2)
    assert "'fake/model'" in rep.error and "'other/model'" in rep.error


def test_rebuild_switches_the_alias_and_keeps_n_versions(store, embedder, home, tmp_path):
    root = make_corpus(tmp_path / "c", {"a.jpg": "A", "b.jpg": "B"})
    sync(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest())
    (root / "c.jpg").write_text("C")
    r2 = rebuild(_job(root), store=store, embedder=embedder, home=home, keep=2, ingest_fn=FakeIngest())
    assert (r2.status, r2.previous, r2.target, r2.deleted_versions) == ("ok", "photos__v1", "photos__v2", [])
    assert store.get_aliases() == {"photos": "photos__v2"}
    assert _ids(store, "photos") == {pid(n) for n in ("a.jpg", "b.jpg", "c.jpg")}
    assert _ids(store, "photos__v1") == {pid("a.jpg"), pid("b.jpg")}  # the old version is untouched

    r3 = rebuild(_job(root), store=store, embedder=embedder, home=home, keep=2, ingest_fn=FakeIngest(),
                 retire_grace_s=0)
    assert r3.target == "photos__v3" and r3.deleted_versions == ["photos__v1"]
    assert [c for _, c in list_versions(store, "photos")] == ["photos__v2", "photos__v3"]
    r4 = rebuild(_job(root, keep_versions=1), store=store, embedder=embedder, home=home,
                 ingest_fn=FakeIngest(), retire_grace_s=0)
    assert r4.target == "photos__v4" and r4.deleted_versions == ["photos__v3", "photos__v2"]
    assert list_versions(store, "photos") == [(4, "photos__v4")]


def test_rollback_and_keep_protects_the_replaced_version(store, embedder, home, tmp_path):
    root = make_corpus(tmp_path / "c", {"a.jpg": "A"})
    sync(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest())
    (root / "b.jpg").write_text("B")
    rebuild(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest())
    assert _ids(store, "photos") == {pid("a.jpg"), pid("b.jpg")}

    back = rollback("photos", store=store, home=home)
    assert (back.status, back.previous, back.target) == ("ok", "photos__v2", "photos__v1")
    assert store.get_aliases() == {"photos": "photos__v1"}
    hits = store.search("photos", vector_for("b.jpg" + __import__("hashlib").sha256(b"B").hexdigest()),
                        using="image", limit=5)
    assert {str(h.id) for h in hits} == {pid("a.jpg")}

    again = rollback("photos", store=store, home=home)
    assert (again.status, again.exit_code) == ("invalid", 2)
    assert "no earlier version of 'photos'" in again.error
    assert store.get_aliases() == {"photos": "photos__v1"}

    fwd = rollback("photos", store=store, home=home, to=2)
    assert fwd.target == "photos__v2" and store.get_aliases() == {"photos": "photos__v2"}
    assert rollback("photos", store=store, home=home, to="photos__v9").status == "invalid"

    # roll back to v1, then rebuild with keep=2: v3 plus the version it replaced (v1) survive, not v2
    rollback("photos", store=store, home=home)
    r = rebuild(_job(root), store=store, embedder=embedder, home=home, keep=2, ingest_fn=FakeIngest(),
                retire_grace_s=0)
    assert r.previous == "photos__v1" and r.deleted_versions == ["photos__v2"]
    assert [c for _, c in list_versions(store, "photos")] == ["photos__v1", "photos__v3"]


def test_failed_rebuild_leaves_the_live_alias_and_results_unchanged(store, embedder, home, tmp_path):
    root = make_corpus(tmp_path / "c", {f"{i}.jpg": str(i) for i in range(6)})
    sync(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest())
    query = vector_for("probe")
    before = [(str(h.id), h.score) for h in store.search("photos", query, using="image", limit=4)]

    rep = rebuild(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest(fail_after=1))
    assert (rep.status, rep.exit_code, rep.abandoned, rep.target) == ("failed", 1, "photos__v2", "photos__v1")
    assert "store went away mid-ingest" in rep.error
    assert store.get_aliases() == {"photos": "photos__v1"}
    assert not store.collection_exists("photos__v2")
    after = [(str(h.id), h.score) for h in store.search("photos", query, using="image", limit=4)]
    assert after == before and len(before) == 4

    # an empty corpus fails validation: never switch readers to an empty collection
    empty = make_corpus(tmp_path / "empty", {})
    rep = rebuild(_job(empty), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest())
    assert rep.status == "failed" and "is empty" in rep.error
    assert store.get_aliases() == {"photos": "photos__v1"}
    assert [c for _, c in list_versions(store, "photos")] == ["photos__v1"]

    # the next successful rebuild takes the next free number
    ok = rebuild(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest())
    assert ok.target == "photos__v2"


def test_rebuild_of_a_plain_collection_needs_migrate(store, embedder, home, tmp_path):
    root = make_corpus(tmp_path / "c", {"a.jpg": "A", "b.jpg": "B"})
    FakeIngest()(store, embedder, root=root, collection="photos")  # what `mmrag ingest` leaves behind
    rep = sync(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest())
    assert rep.target == "photos" and not rep.initial  # synced in place

    refused = rebuild(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest())
    assert (refused.status, refused.exit_code) == ("invalid", 2)
    assert "plain collection" in refused.error and "--migrate" in refused.error
    assert store.list_collections() == ["photos"] and store.get_aliases() == {}

    done = rebuild(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest(), migrate=True)
    assert (done.status, done.migrated, done.previous, done.target) == ("ok", True, "photos", "photos__v1")
    assert store.list_collections() == ["photos__v1"]
    assert store.get_aliases() == {"photos": "photos__v1"}
    assert _ids(store, "photos") == {pid("a.jpg"), pid("b.jpg")}


def test_a_held_lock_gives_exit_code_3_and_names_the_holder(store, embedder, home, tmp_path):
    root = make_corpus(tmp_path / "c", {"a.jpg": "A"})
    ingest = FakeIngest()
    with CollectionLock(home, "photos", job="rebuild"):
        rep = sync(_job(root), store=store, embedder=embedder, home=home, ingest_fn=ingest)
    assert (rep.status, rep.exit_code) == ("locked", ExitCode.LOCKED)
    assert f"pid {os.getpid()}" in rep.error and "(job: rebuild)" in rep.error
    assert ingest.calls == [] and store.list_collections() == []
    assert sync(_job(root), store=store, embedder=embedder, home=home, ingest_fn=ingest).status == "ok"


def test_zero_downtime_rebuild_under_concurrent_queries(store, embedder, home, tmp_path):
    root = make_corpus(tmp_path / "c", {f"{i:02d}.jpg": f"img {i}" for i in range(8)})
    sync(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest())
    reader = Reader(store, "photos", vector_for("probe"))
    reader.start()

    def let_reader_run(_batch: int) -> None:
        # interleave by progress, not by time: wait until the reader has queried again
        target = reader.queries + 2
        while reader.queries < target and reader.is_alive():
            reader.stop_event.wait(0.001)

    for i in range(8, 12):
        (root / f"{i:02d}.jpg").write_text(f"img {i}")
    try:
        rep = rebuild(_job(root), store=store, embedder=embedder, home=home,
                      ingest_fn=FakeIngest(batch=3, between_batches=let_reader_run))
        let_reader_run(-1)
        let_reader_run(-1)
    finally:
        reader.stop()
    assert rep.status == "ok" and rep.target == "photos__v2"
    assert reader.errors == []
    assert reader.empty == 0
    assert reader.queries >= 8
    assert {"photos__v1", "photos__v2"} <= reader.seen_collections
    assert store.count("photos") == 12


def test_run_pipeline_uses_the_pipeline_batch_labels_and_policy(store, embedder, home, tmp_path):
    root = make_corpus(tmp_path / "corpus", {"a.jpg": "A"})
    yml = tmp_path / "p.yaml"
    yml.write_text(
        "name: pics\nsource: {folder: corpus}\nmodel: clip-vit-b32\ncollection: photos\n"
        "batch: {images: 7, writes: 9}\ntagging: {labels: [cat, dog]}\nprune: true\nkeep_versions: 4\n"
    )
    pdef = load_pipeline(yml)
    ingest = FakeIngest()
    rep = run_pipeline(pdef, store=store, embedder=embedder, home=home, ingest_fn=ingest)
    assert (rep.job, rep.collection, rep.pipeline, rep.target) == ("sync", "photos", "pics", "photos__v1")
    call = ingest.calls[-1]
    assert call["root"] == root.resolve() and call["tagger"] is not None
    assert store.get_spec("photos__v1").extra[METADATA_KEY]["labels"] == ["cat", "dog"]  # the tagger the job built
    assert (call["options"].batch_size, call["options"].text_batch_size, call["options"].write_batch_size) == (7, 128, 9)
    rep = run_pipeline(pdef, store=store, embedder=embedder, home=home, ingest_fn=ingest)
    assert ingest.calls[-1]["prune"] is True and ingest.calls[-1]["collection"] == "photos__v1"
    rep = run_pipeline(pdef, store=store, embedder=embedder, home=home, ingest_fn=ingest, rebuild_all=True)
    assert rep.job == "rebuild" and rep.target == "photos__v2"


def test_scheduler_runs_each_pipeline_when_its_cron_fires(tmp_path):
    root = make_corpus(tmp_path / "c", {"a.jpg": "A"})
    docs = {
        "hourly.yaml": f"name: hourly\nsource: {{folder: {root}}}\nmodel: m\nschedule: '0 * * * *'\n",
        "nightly.yaml": f"name: nightly\nsource: {{folder: {root}}}\nmodel: m\nschedule: '30 2 * * *'\n",
        "manual.yaml": f"name: manual\nsource: {{folder: {root}}}\nmodel: m\n",
    }
    pipes = []
    for fname, text in docs.items():
        (tmp_path / fname).write_text(text)
        pipes.append(load_pipeline(tmp_path / fname))
    now = [datetime(2025, 1, 1, 0, 10, tzinfo=timezone.utc)]
    ran: list[tuple[str, datetime]] = []

    def run_one(p):
        ran.append((p.name, now[0]))
        now[0] += timedelta(minutes=5)  # each job takes five minutes
        return JobReport(job="sync", collection=p.name)

    def sleep(s: float) -> None:
        now[0] += timedelta(seconds=s)

    reports = run_scheduler(pipes, run_one, clock=lambda: now[0], sleep=sleep, max_jobs=4)
    at = lambda h, m: datetime(2025, 1, 1, h, m, tzinfo=timezone.utc)  # noqa: E731
    assert ran == [("hourly", at(1, 0)), ("hourly", at(2, 0)), ("nightly", at(2, 30)), ("hourly", at(3, 0))]
    assert len(reports) == 4
    with pytest.raises(ValueError, match="none of the pipelines has a schedule"):
        run_scheduler(pipes[2:], run_one, clock=lambda: now[0], sleep=sleep, max_jobs=1)


def test_a_version_left_by_a_killed_rebuild_is_never_a_rollback_target(store, embedder, home, tmp_path):
    root = make_corpus(tmp_path / "c", {"a.jpg": "A"})
    sync(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest())
    assert store.get_spec("photos__v1").extra["mmrag_version"]["job"] == "sync"
    # what a rebuild killed with SIGKILL mid-ingest leaves behind: a version without the completion mark
    (root / "b.jpg").write_text("B")
    FakeIngest()(store, embedder, root=root, collection="photos__v2")
    assert "mmrag_version" not in store.get_spec("photos__v2").extra
    assert rollback("photos", store=store, home=home).status == "invalid"  # v2 does not count

    rep = rebuild(_job(root), store=store, embedder=embedder, home=home, keep=5, ingest_fn=FakeIngest())
    # the leftover is removed first, so its number is free again
    assert (rep.status, rep.target, rep.removed_leftovers, rep.deleted_versions) == (
        "ok", "photos__v2", ["photos__v2"], [])
    assert [c for _, c in list_versions(store, "photos")] == ["photos__v1", "photos__v2"]
    assert _ids(store, "photos") == {pid("a.jpg"), pid("b.jpg")}
    spec = store.get_spec("photos__v2")  # the mark merges into the metadata, the spec is intact
    assert (spec.model_id, spec.dim, spec.extra["mmrag_version"]["job"]) == ("fake/model", 8, "rebuild")
    assert rollback("photos", store=store, home=home).target == "photos__v1"


class _AliasFailsOnce:
    """A real store whose first set_alias call fails, as a network blip would."""

    def __init__(self, inner):
        self.inner, self.failed = inner, False

    def set_alias(self, alias, collection):
        if not self.failed:
            self.failed = True
            raise ConnectionError("connection reset")
        return self.inner.set_alias(alias, collection)

    def __getattr__(self, item):
        return getattr(self.inner, item)


def test_migration_that_loses_the_alias_says_how_to_restore_it(store, embedder, home, tmp_path):
    root = make_corpus(tmp_path / "c", {"a.jpg": "A"})
    FakeIngest()(store, embedder, root=root, collection="photos")
    flaky = _AliasFailsOnce(store)
    rep = rebuild(_job(root), store=flaky, embedder=embedder, home=home, ingest_fn=FakeIngest(), migrate=True)
    assert (rep.status, rep.exit_code, rep.migrated) == ("failed", 1, True)
    assert "`mmrag reindex photos --rollback --to photos__v1`" in rep.error
    assert store.get_aliases() == {} and store.list_collections() == ["photos__v1"]
    fixed = rollback("photos", store=store, home=home, to="photos__v1")
    assert (fixed.status, fixed.target) == ("ok", "photos__v1")
    assert _ids(store, "photos") == {pid("a.jpg")}
