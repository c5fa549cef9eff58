"""`--engine ray` against the local engine, with the bundled reference model, on one local Ray runtime."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pipeline.conftest import BAD_FILES, GOOD_IMAGES, all_points, bump_mtime, write_corpus
from qdrant_client import QdrantClient

from mmrag.corpus.decode import DECODER_DIED
from mmrag.embedders import load_embedder
from mmrag.ingest import IngestOptions, run_ingest
from mmrag.ingest.ray_engine import RayOptions, run_ingest_ray, upsert_rows
from mmrag.store import EdgeStore, QdrantClientStore
from mmrag.store.convert import point_id
from mmrag.store.schema import SchemaMismatch

pytestmark = pytest.mark.slow
OPTS = IngestOptions(batch_size=2, write_batch_size=3, workers=1)
FACTORY = functools.partial(load_embedder, "mmrag-shapes-en", device="cpu")


def _ray(store, emb, root, ropts=None, **kw):
    return run_ingest_ray(store, emb, root=root, collection="photos", progress=False, options=OPTS,
                          ray_options=ropts or RayOptions(embedder_factory=FACTORY), **kw)


def _comparable(points):
    out = {}
    for pid, rec in points.items():
        payload = {k: v for k, v in rec.payload.items() if k != "ingested_at"}
        vectors = {}
        for k, v in (rec.vector or {}).items():
            if hasattr(v, "indices"):  # the BM25 sparse vector: its terms and weights must agree too
                vectors[k] = (tuple(v.indices), np.asarray(v.values, np.float32))
            else:
                vectors[k] = np.asarray(v, np.float32)
        out[pid] = (payload, vectors)
    return out


def test_ray_and_local_give_the_same_points_reports_and_incremental_plan(ray_runtime, ref_embedder, tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    local, ray_store = EdgeStore(tmp_path / "local"), EdgeStore(tmp_path / "ray")
    try:
        want = run_ingest(local, ref_embedder, root=corpus, collection="photos", progress=False, options=OPTS)
        got = _ray(ray_store, ref_embedder, corpus)
        assert got.ok, got.error
        a, b = want.to_dict(), got.to_dict()
        for key in ("indexed", "updated", "unchanged", "pruned", "captions", "written", "failed_count"):
            assert a[key] == b[key], key
        assert (b["indexed"], b["captions"]) == (len(GOOD_IMAGES), 4)
        assert sorted(map(tuple, (f.values() for f in b["failed"]))) == sorted(map(tuple, (f.values() for f in a["failed"])))
        assert {f["path"] for f in b["failed"]} == set(BAD_FILES)
        assert b["decode_executor"] == "ray"

        pl, pr = _comparable(all_points(local, "photos")), _comparable(all_points(ray_store, "photos"))
        assert set(pr) == set(pl) == {point_id(r) for r in GOOD_IMAGES}
        for pid, (payload, vectors) in pl.items():
            assert pr[pid][0] == payload
            assert set(pr[pid][1]) == set(vectors)
            for name, vec in vectors.items():
                got = pr[pid][1][name]
                if isinstance(vec, tuple):  # sparse: the same terms, the same weights
                    assert got[0] == vec[0]
                    got, vec = got[1], vec[1]
                np.testing.assert_allclose(got, vec, atol=1e-6, rtol=0)

        # Incremental: unchanged files reach no model; touched-but-identical ones are refreshed by sha256;
        # a changed file is re-embedded in place; --prune drops a vanished one.
        bump_mtime(corpus / "grey.png")
        (corpus / "sub" / "green.jpg").with_suffix(".txt").write_text("now a caption", encoding="utf-8")
        (corpus / "with space é.png").unlink()
        again = _ray(ray_store, ref_embedder, corpus, prune=True)
        assert (again.indexed, again.updated, again.unchanged, again.pruned) == (0, 1, len(GOOD_IMAGES) - 2, 1)
        points = all_points(ray_store, "photos", with_vectors=False)
        assert len(points) == len(GOOD_IMAGES) - 1
        assert points[point_id("sub/green.jpg")].payload["caption"] == "now a caption"
        assert points[point_id("grey.png")].payload["mtime"] == pytest.approx((corpus / "grey.png").stat().st_mtime, abs=1e-6)
    finally:
        local.close()
        ray_store.close()


def test_model_mismatch_is_refused_before_ray_starts_any_work(ref_embedder, tiny_clip_dir, tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    store = QdrantClientStore(QdrantClient(":memory:"))
    run_ingest(store, load_embedder(str(tiny_clip_dir), device="cpu"), root=corpus, collection="photos",
               progress=False, options=OPTS)
    before = store.count("photos")

    def no_factory():  # pragma: no cover - must never be called
        raise AssertionError("an actor was started")

    with pytest.raises(SchemaMismatch):
        _ray(store, ref_embedder, corpus, RayOptions(embedder_factory=no_factory, address="ray://nowhere:1"))
    assert store.count("photos") == before


def test_killed_decode_worker_and_actor_are_retried_and_a_poison_file_is_skipped(ray_runtime, ref_embedder, tmp_path):
    from ray_helpers import FaultyEmbedder, faulty_factory

    corpus = write_corpus(tmp_path / "corpus")
    markers = tmp_path / "markers"
    markers.mkdir()
    store = QdrantClientStore(QdrantClient(":memory:"))
    report = _ray(store, FaultyEmbedder(ref_embedder, str(markers)), corpus,
                  RayOptions(embedder_factory=functools.partial(faulty_factory, str(markers))))
    assert report.ok, report.error
    # Each fault happened, once ...
    assert (markers / "decode-killed").exists() and (markers / "actor-killed").exists()
    # ... and the counts are exact: the poison file alone is lost, with the local pool's reason.
    reasons = {f.rel_path: f.reason for f in report.failed}
    assert reasons.pop("red.png") == DECODER_DIED
    assert set(reasons) == set(BAD_FILES)
    assert (report.indexed, report.written) == (len(GOOD_IMAGES) - 1, len(GOOD_IMAGES) - 1)
    assert set(all_points(store, "photos", with_vectors=False)) == {point_id(r) for r in GOOD_IMAGES if r != "red.png"}


KILL_DRIVER = textwrap.dedent(
    """
    import functools, os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import ray
    ray.init(address={address!r}, log_to_driver=False)
    from mmrag.embedders import load_embedder
    from mmrag.ingest import IngestOptions
    from mmrag.ingest import ray_engine
    from mmrag.store import EdgeStore

    settle, calls = ray_engine._settle, []
    def settle_then_die(*args, **kwargs):
        settle(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # mid-run: two batches settled, one write of 3 points confirmed at most
            args[5].flush()
            os.kill(os.getpid(), signal.SIGKILL)
    ray_engine._settle = settle_then_die
    factory = functools.partial(load_embedder, "mmrag-shapes-en", device="cpu")
    ray_engine.run_ingest_ray(EdgeStore(Path({home!r})), factory(), root=Path({root!r}), collection="photos",
                              progress=False, options=IngestOptions(batch_size=2, write_batch_size=2),
                              ray_options=ray_engine.RayOptions(embedder_factory=factory))
    """
)


def test_driver_killed_mid_run_then_rerun_loses_nothing_and_duplicates_nothing(ray_runtime, ref_embedder, tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    home = tmp_path / "home"
    script = KILL_DRIVER.format(tests=str(Path(__file__).parents[1]), address=ray_runtime.address_info["address"],
                                home=str(home), root=str(corpus))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]

    store = EdgeStore(home)
    try:
        survived = store.count("photos")
        assert 0 < survived < len(GOOD_IMAGES)
        report = _ray(store, ref_embedder, corpus)
        assert report.ok, report.error
        assert (report.unchanged, report.indexed) == (survived, len(GOOD_IMAGES) - survived)
        assert store.count("photos") == len(GOOD_IMAGES)
        assert set(all_points(store, "photos", with_vectors=False)) == {point_id(r) for r in GOOD_IMAGES}
    finally:
        store.close()


def test_worker_upserts_build_the_same_points_and_report_a_store_failure():
    """The worker-side writer, without Ray: the points it writes, and a store that stays down."""
    import pickle

    from mmrag.corpus.types import CorpusItem, DecodedImage
    from mmrag.store.schema import CollectionSpec

    store = QdrantClientStore(QdrantClient(":memory:"))
    store.create_collection(CollectionSpec(name="c", dim=2, model_id="m"))
    item = CorpusItem(path=Path("/x/a.png"), rel_path="a.png", file_size=10, mtime=1.5, caption="cap")
    meta = pickle.dumps(DecodedImage(item=item, sha256="0" * 64, width=3, height=4, format="PNG"))
    batch = {"rel_path": np.array(["a.png", "b.png"], dtype=object), "meta": np.array([meta, b""], dtype=object),
             "status": np.array(["ok", "skip"], dtype=object), "error": np.array(["", ""], dtype=object),
             "image": np.array([[1, 0], [0, 0]], np.float32), "text": np.array([[0, 1], [0, 0]], np.float32),
             "has_text": np.array([True, False])}
    out = upsert_rows(store, "c", "m", 256, batch)
    assert list(out["status"]) == ["written", "skip"]
    (rec,) = store.scroll("c", limit=10, with_vectors=True)[0]
    assert str(rec.id) == point_id("a.png")
    assert (rec.payload["caption"], rec.payload["width"], rec.payload["model_id"]) == ("cap", 3, "m")
    np.testing.assert_allclose(rec.vector["text"], [0, 1])

    class Down:
        def upsert(self, *a, **k):
            raise ConnectionError("qdrant is down")

    failed = upsert_rows(Down(), "c", "m", 256, batch)
    assert list(failed["status"]) == ["error", "skip"]
    assert failed["error"][0] == "ConnectionError: qdrant is down"


def test_engine_ray_from_cli_and_pipeline_yaml(tmp_path):
    from mmrag.cli.parser import build_parser
    from mmrag.jobs.pipeline import PipelineError, load_pipeline
    from mmrag.jobs.reindex import JobSpec, _default_ingest

    args = build_parser().parse_args(["ingest", str(tmp_path), "--engine", "ray", "--ray-address", "auto"])
    assert (args.engine, args.ray_address) == ("ray", "auto")

    (tmp_path / "imgs").mkdir()
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text("name: photos\nsource: {folder: imgs}\nmodel: mmrag-shapes-en\nengine: ray\nray_address: auto\n")
    spec = JobSpec.from_pipeline(load_pipeline(yaml_file))
    assert (spec.engine, spec.ray_address) == ("ray", "auto")
    fn = _default_ingest(spec)
    assert fn.func is run_ingest_ray
    assert fn.keywords["ray_options"].address == "auto"
    assert fn.keywords["ray_options"].embedder_factory.args == ("mmrag-shapes-en",)

    yaml_file.write_text("name: photos\nsource: {folder: imgs}\nmodel: m\nengine: spark\n")
    with pytest.raises(PipelineError, match="engine"):
        load_pipeline(yaml_file)


def test_an_unchanged_corpus_needs_no_ray_at_all(ref_embedder, tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    for rel in BAD_FILES:
        (corpus / rel).unlink()
    store = QdrantClientStore(QdrantClient(":memory:"))
    run_ingest(store, ref_embedder, root=corpus, collection="photos", progress=False, options=OPTS)

    def no_factory():  # pragma: no cover - must never be called
        raise AssertionError("an actor was started")

    # An unreachable address (when no runtime is up yet) and a factory that fails: no actor, no connection.
    again = _ray(store, ref_embedder, corpus, RayOptions(embedder_factory=no_factory, address="ray://nowhere:1"),
                 prune=True)
    assert again.ok, again.error
    assert (again.unchanged, again.embedded, again.pruned, again.failed) == (len(GOOD_IMAGES), 0, 0, [])
