"""Issue 12, section 2: a rebuild that lost most of its corpus never goes live, and never costs a version."""

from __future__ import annotations

import pytest

from jobs.conftest import FakeIngest, make_corpus, pid
from mmrag.jobs.reindex import ExitCode, JobSpec, RebuildGate, list_versions, rebuild, sync

FILES = {f"img{i:02d}.jpg": f"content {i}" for i in range(50)}


def _job(root, **kw) -> JobSpec:
    return JobSpec(collection="photos", root=root, **kw)


def _ids(store, name):
    recs, _ = store.scroll(name, limit=1000, with_payload=False)
    return {str(r.id) for r in recs}


def test_gate_checks_share_and_failed_files():
    gate = RebuildGate(min_share=0.98, max_failed=2)
    assert gate.check(new_points=98, live_points=100, failed_files=2).passed
    low = gate.check(new_points=97, live_points=100, failed_files=0)
    assert not low.passed and low.reasons == ["97 points is 97.0% of the live 100, below the gate's 98% "
                                              "(MMRAG_REBUILD_MIN_SHARE)"]
    assert gate.check(new_points=5, live_points=None, failed_files=0).passed  # nothing live to compare with
    assert gate.check(new_points=100, live_points=100, failed_files=3).reasons == [
        "3 files failed, more than the gate's 2 (MMRAG_REBUILD_MAX_FAILED)"]
    assert not RebuildGate(strict=True).check(new_points=100, live_points=100, failed_files=1).passed
    with pytest.raises(ValueError, match="min_share"):
        RebuildGate(min_share=1.5)


def test_a_rebuild_that_lost_its_corpus_does_not_switch_or_prune(store, embedder, home, tmp_path):
    root = make_corpus(tmp_path / "c", FILES)
    first = sync(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest(batch=10))
    assert (first.target, store.count("photos")) == ("photos__v1", 50)
    full = rebuild(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest(batch=10),
                   retire_grace_s=0)
    assert (full.status, full.target, full.gate["passed"]) == ("ok", "photos__v2", True)

    for name in list(FILES)[17:]:  # the corpus disappears: 17 of 50 files are left
        (root / name).unlink()
    for _ in range(2):  # two bad runs in a row, as in the probe
        bad = rebuild(_job(root, keep_versions=1), store=store, embedder=embedder, home=home,
                      ingest_fn=FakeIngest(batch=10), retire_grace_s=0)
        assert (bad.status, bad.exit_code, bad.target, bad.deleted_versions) == ("failed", ExitCode.FAILED,
                                                                                 "photos__v2", [])
        assert bad.gate == {"passed": False, "new_points": 17, "live_points": 50, "failed_files": 0,
                            "reasons": ["17 points is 34.0% of the live 50, below the gate's 98% "
                                        "(MMRAG_REBUILD_MIN_SHARE)"]}
        assert "did not pass the gate" in bad.error and bad.abandoned is not None
        assert store.get_aliases() == {"photos": "photos__v2"}
        assert store.count("photos") == 50
    # Nothing was pruned: both complete versions are still there, and the bad ones are gone.
    assert [c for _, c in list_versions(store, "photos")] == ["photos__v1", "photos__v2"]
    assert _ids(store, "photos__v1") == {pid(n) for n in FILES}

    # A lower share set on purpose lets the smaller corpus go live, and only then prunes.
    ok = rebuild(_job(root, keep_versions=1), store=store, embedder=embedder, home=home,
                 ingest_fn=FakeIngest(batch=10), retire_grace_s=0, gate=RebuildGate(min_share=0.3))
    assert (ok.status, ok.previous, ok.gate["passed"]) == ("ok", "photos__v2", True)
    assert store.count("photos") == 17 and [c for _, c in list_versions(store, "photos")] == [ok.target]


def test_strict_never_switches_after_a_failure(store, embedder, home, tmp_path):
    root = make_corpus(tmp_path / "c", {**FILES})
    sync(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest(batch=10))
    (root / "broken.jpg").write_text("BROKEN")
    strict = rebuild(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest(batch=10),
                     strict=True, retire_grace_s=0)
    assert (strict.status, strict.exit_code, strict.target) == ("partial", ExitCode.PARTIAL, "photos__v1")
    assert strict.gate["reasons"] == ["1 files failed and --strict was given"]
    assert store.get_aliases() == {"photos": "photos__v1"}
    assert [c for _, c in list_versions(store, "photos")] == ["photos__v1"]
    # Without --strict the same corpus passes (50 points, 1 failed file) and switches.
    loose = rebuild(_job(root), store=store, embedder=embedder, home=home, ingest_fn=FakeIngest(batch=10),
                    retire_grace_s=0)
    assert (loose.status, loose.exit_code, loose.target) == ("partial", ExitCode.OK, "photos__v2")
