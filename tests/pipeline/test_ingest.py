"""End-to-end ingestion on real files, a tiny real model and both store backends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mmrag.ingest import IngestOptions, run_ingest
from mmrag.store import EdgeStore
from mmrag.store.convert import point_id
from mmrag.store.schema import SchemaMismatch
from pipeline.conftest import BAD_FILES, GOOD_IMAGES, CountingEmbedder, all_points, bump_mtime, expected_caption

SMALL = IngestOptions(batch_size=2, write_batch_size=3, workers=2)


def _ingest(store, embedder, root, **kw):
    kw.setdefault("options", SMALL)
    return run_ingest(store, embedder, root=root, collection="photos", progress=False, **kw)


def test_first_run_indexes_good_files_and_reports_bad_ones(store, tiny_embedder, corpus):
    report = _ingest(store, tiny_embedder, corpus)

    assert report.ok
    assert (report.indexed, report.updated, report.unchanged, report.pruned) == (len(GOOD_IMAGES), 0, 0, 0)
    assert report.captions == 4
    assert sorted(f.rel_path for f in report.failed) == sorted(BAD_FILES)
    reasons = {f.rel_path: f.reason for f in report.failed}
    assert "empty" in reasons["empty.png"]
    assert store.count("photos") == len(GOOD_IMAGES)

    points = all_points(store, "photos")
    assert set(points) == {point_id(rel) for rel in GOOD_IMAGES}
    for rel, (size, _mode, _colour) in GOOD_IMAGES.items():
        rec = points[point_id(rel)]
        p = rec.payload
        assert p["path"] == rel
        assert (p["width"], p["height"]) == size
        assert p["caption"] == expected_caption(rel)
        assert p["has_caption"] == ("yes" if expected_caption(rel) else "no")
        assert p["file_size"] == (corpus / rel).stat().st_size
        assert p["model_id"] == tiny_embedder.info.model_id
        assert len(p["sha256"]) == 64
        # The stored image vector is the model's vector for this very file.
        with Image.open(corpus / rel) as im:
            want = tiny_embedder.embed_images([im.convert("RGB")])[0]
        got = np.asarray(rec.vector["image"], dtype=np.float32)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert abs(np.linalg.norm(got) - 1.0) < 1e-5
        # ... and its caption vector is the model's vector for its caption (absent without one).
        if expected_caption(rel):
            want_t = tiny_embedder.embed_texts([expected_caption(rel)])[0]
            np.testing.assert_allclose(np.asarray(rec.vector["text"], dtype=np.float32), want_t, atol=1e-5)
        else:
            assert "text" not in (rec.vector or {})


def test_rerun_touches_no_model_and_changes_are_reembedded_in_place(store, tiny_embedder, corpus, monkeypatch):
    _ingest(store, tiny_embedder, corpus)

    counting = CountingEmbedder(tiny_embedder)
    again = _ingest(store, counting, corpus)
    assert (again.indexed, again.updated, again.unchanged) == (0, 0, len(GOOD_IMAGES))
    assert counting.images_embedded == 0 and counting.texts_embedded == 0

    # Same bytes, new mtime: decided by sha256, still no embedding.
    bump_mtime(corpus / "red.png")
    counting = CountingEmbedder(tiny_embedder)
    touched = _ingest(store, counting, corpus)
    assert (touched.indexed, touched.updated, touched.unchanged) == (0, 0, len(GOOD_IMAGES))
    assert counting.images_embedded == 0
    assert store.retrieve("photos", [point_id("red.png")])[0].payload["mtime"] == pytest.approx(
        (corpus / "red.png").stat().st_mtime, abs=1e-6
    )

    # The third run trusts size+mtime again: only the files that failed before are decoded again.
    decoded = []
    import mmrag.ingest.run as ingest_module

    real_stream = ingest_module.decode_stream
    monkeypatch.setattr(ingest_module, "decode_stream", lambda items, **kw: real_stream(decoded.extend(items) or items, **kw))
    third = _ingest(store, tiny_embedder, corpus)
    assert third.unchanged == len(GOOD_IMAGES)
    assert sorted(i.rel_path for i in decoded) == sorted(BAD_FILES)
    monkeypatch.undo()

    # New content and a new caption: re-embedded in place, same id, no duplicate.
    Image.new("RGB", (12, 12), (0, 0, 0)).save(corpus / "red.png")
    (corpus / "grey.txt").write_text("now with a caption", encoding="utf-8")
    counting = CountingEmbedder(tiny_embedder)
    changed = _ingest(store, counting, corpus)
    assert (changed.indexed, changed.updated, changed.unchanged) == (0, 2, len(GOOD_IMAGES) - 2)
    assert counting.images_embedded == 2
    assert store.count("photos") == len(GOOD_IMAGES)
    rec = store.retrieve("photos", [point_id("red.png")])[0]
    assert (rec.payload["width"], rec.payload["height"]) == (12, 12)
    assert store.retrieve("photos", [point_id("grey.png")])[0].payload["caption"] == "now with a caption"


def test_prune_removes_points_of_deleted_files_only_when_asked(store, tiny_embedder, corpus):
    _ingest(store, tiny_embedder, corpus)
    (corpus / "sub" / "green.jpg").unlink()

    kept = _ingest(store, tiny_embedder, corpus)
    assert kept.pruned == 0 and store.count("photos") == len(GOOD_IMAGES)

    pruned = _ingest(store, tiny_embedder, corpus, prune=True)
    assert pruned.pruned == 1
    assert store.count("photos") == len(GOOD_IMAGES) - 1
    assert store.retrieve("photos", [point_id("sub/green.jpg")]) == []


def test_another_model_is_refused_with_a_fix(store, tiny_embedder, corpus, tmp_path):
    from mmrag.embedders import load_embedder
    from mmrag.testing.tiny_models import make_tiny_clip

    _ingest(store, tiny_embedder, corpus)
    other = load_embedder(str(make_tiny_clip(tmp_path / "other", seed=1)), device="cpu")
    with pytest.raises(SchemaMismatch) as err:
        _ingest(store, other, corpus)
    msg = str(err.value)
    assert tiny_embedder.info.model_id in msg and other.info.model_id in msg
    assert "--model" in msg and "--rebuild" in msg
    assert store.count("photos") == len(GOOD_IMAGES)  # nothing was mixed in


def test_interrupted_run_resumes_without_duplicates(store, tiny_embedder, corpus):
    interrupted = CountingEmbedder(tiny_embedder, fail_after_batches=1)
    with pytest.raises(KeyboardInterrupt):
        _ingest(store, interrupted, corpus)
    written = store.count("photos")
    assert 0 < written < len(GOOD_IMAGES)  # the first batch was kept

    counting = CountingEmbedder(tiny_embedder)
    report = _ingest(store, counting, corpus)
    assert report.unchanged == written
    assert report.indexed == len(GOOD_IMAGES) - written
    assert counting.images_embedded == len(GOOD_IMAGES) - written
    assert set(all_points(store, "photos", with_vectors=False)) == {point_id(r) for r in GOOD_IMAGES}


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from mmrag.embedders import load_embedder
    from mmrag.ingest import IngestOptions, run_ingest
    from mmrag.store import EdgeStore
    from pipeline.conftest import CountingEmbedder

    def die(n):
        if n == 3:  # mid-run, after two batches went to the writer
            os.kill(os.getpid(), signal.SIGKILL)

    emb = CountingEmbedder(load_embedder({model!r}, device="cpu"), on_batch=die)
    run_ingest(EdgeStore(Path({home!r})), emb, root=Path({root!r}), collection="photos", progress=False,
               options=IngestOptions(batch_size=1, write_batch_size=1, workers=1))
    """
)


def test_kill_9_then_rerun_finishes_with_nothing_lost(tiny_clip_dir, tiny_embedder, corpus, tmp_path):
    home = tmp_path / "home"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parents[1]), model=str(tiny_clip_dir), home=str(home), root=str(corpus))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    store = EdgeStore(home)
    try:
        survived = store.count("photos")
        assert survived < len(GOOD_IMAGES)
        report = _ingest(store, tiny_embedder, corpus)
        assert report.unchanged == survived
        assert report.indexed == len(GOOD_IMAGES) - survived
        ids = set(all_points(store, "photos", with_vectors=False))
        assert ids == {point_id(r) for r in GOOD_IMAGES}
    finally:
        store.close()


def test_manifest_captions_and_metadata_become_payload(store, tiny_embedder, corpus):
    manifest = corpus / "manifest.jsonl"
    manifest.write_text(
        '{"path": "red.png", "caption": "manifest caption", "year": 2021, "tags": ["warm"]}\n'
        '{"path": "grey.png", "year": 2019, "source": "scanner"}\n',
        encoding="utf-8",
    )
    report = run_ingest(store, tiny_embedder, root=corpus, manifest=manifest, collection="photos",
                        progress=False, options=SMALL)
    assert (report.indexed, len(report.failed)) == (2, 0)
    red = store.retrieve("photos", [point_id("red.png")])[0].payload
    assert red["caption"] == "manifest caption" and red["year"] == 2021 and red["tags"] == ["warm"]
    grey = store.retrieve("photos", [point_id("grey.png")])[0].payload
    assert grey["source"] == "scanner" and grey["caption"] is None


class _StoreThatGoesDown:
    """Delegates to a real store; after `healthy_upserts` upserts, every upsert fails with a 503."""

    def __init__(self, inner, healthy_upserts: int):
        self.inner, self.left, self.calls = inner, healthy_upserts, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def upsert(self, name, points):
        from qdrant_client.http.exceptions import UnexpectedResponse

        self.calls += 1
        if self.left <= 0:
            raise UnexpectedResponse(503, "Service Unavailable", b"overloaded", {})
        self.left -= 1
        return self.inner.upsert(name, points)


def test_store_down_after_retries_reports_what_was_written_and_a_rerun_finishes(store, tiny_embedder, corpus):
    from mmrag.store.retry import RetryingStore, RetryPolicy

    flaky = _StoreThatGoesDown(store, healthy_upserts=1)
    retrying = RetryingStore(flaky, RetryPolicy(attempts=3, initial_seconds=0.01, max_seconds=1.0), sleep=lambda s: None)
    report = _ingest(retrying, tiny_embedder, corpus)

    assert not report.ok and "StoreUnavailable" in report.error and "3 attempts" in report.error
    assert report.written == SMALL.write_batch_size == store.count("photos")  # one batch landed
    assert flaky.calls == 1 + 3  # the good write, then three attempts at the next batch
    assert "written before the failure: 3 points" in report.summary()

    again = _ingest(store, tiny_embedder, corpus)
    assert again.ok and again.unchanged == 3 and again.indexed == len(GOOD_IMAGES) - 3
    assert set(all_points(store, "photos", with_vectors=False)) == {point_id(r) for r in GOOD_IMAGES}


def test_process_decode_pool_stores_the_same_points_as_threads(store, tiny_embedder, corpus):
    threads = _ingest(store, tiny_embedder, corpus)
    processes = run_ingest(store, tiny_embedder, root=corpus, collection="photos-p", progress=False,
                           options=IngestOptions(batch_size=2, write_batch_size=3, workers=2, decode_executor="process"))
    assert (threads.decode_executor, processes.decode_executor) == ("thread", "process")
    assert processes.indexed == threads.indexed == len(GOOD_IMAGES)
    assert [(f.rel_path, f.reason) for f in processes.failed] == [(f.rel_path, f.reason) for f in threads.failed]
    a, b = all_points(store, "photos"), all_points(store, "photos-p")
    assert set(a) == set(b)
    for pid, rec in a.items():
        other = b[pid]
        assert {k: v for k, v in rec.payload.items() if k != "ingested_at"} == {
            k: v for k, v in other.payload.items() if k != "ingested_at"
        }
        # the workers run the same bit-identical preprocess, so the vectors agree to float precision
        np.testing.assert_allclose(other.vector["image"], rec.vector["image"], atol=1e-6, rtol=0)


class _NoPortablePreprocess(CountingEmbedder):
    portable_preprocess = None  # like the cn_clip adapter, whose preprocess needs its package


def test_decode_plan_picks_processes_only_where_they_can_run(tiny_embedder):
    from mmrag.ingest import decode_plan

    assert decode_plan("auto", tiny_embedder) == ("thread", tiny_embedder.preprocess)  # CPU model
    assert decode_plan("process", tiny_embedder) == ("process", tiny_embedder.portable_preprocess)

    gpu = CountingEmbedder(tiny_embedder)
    gpu.device = "cuda"
    assert decode_plan("auto", gpu) == ("process", tiny_embedder.portable_preprocess)
    assert decode_plan("thread", gpu)[0] == "thread"

    plain = _NoPortablePreprocess(tiny_embedder)
    plain.device = "cuda"
    assert decode_plan("auto", plain) == ("thread", plain.preprocess)
    with pytest.raises(ValueError, match=r"decode_executor='process' needs a preprocess that runs without the model.*use 'thread'"):
        decode_plan("process", plain)
    with pytest.raises(ValueError, match="decode_executor must be auto, thread or process, got 'fork'"):
        decode_plan("fork", tiny_embedder)


class _ScheduleProbe:
    """A real embedder on a pretend device; records how far decoding ran ahead at the end of each model call."""

    def __init__(self, inner: Any, device: str, model_seconds: float = 0.2) -> None:
        self.inner, self.info, self.device = inner, inner.info, device
        self.model_seconds = model_seconds
        self.batches: list[int] = []
        self.ahead: list[int] = []  # images decoded (or decoding) beyond those handed to the model so far
        self._decoded = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def preprocess(self, image: Any) -> np.ndarray:
        with self._lock:
            self._decoded += 1
        return self.inner.preprocess(image)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        self.batches.append(len(pixels))
        time.sleep(self.model_seconds)  # long enough for the pool to show what it does meanwhile
        with self._lock:
            self.ahead.append(self._decoded - sum(self.batches))
        return self.inner.embed_pixels(pixels)


def _many_small_images(root: Path, n: int) -> Path:
    root.mkdir()
    for i in range(n):
        Image.new("RGB", (24 + i, 20), (i * 9 % 256, 80, 160)).save(root / f"{i:02d}.png")
    return root


def _ingest_on(device: str, tmp_path: Path, embedder: Any) -> _ScheduleProbe:
    """16 small images, batch 4, two decode threads, with the model on `device`; all 16 indexed."""
    corpus = _many_small_images(tmp_path / "corpus", 16)
    opts = IngestOptions(batch_size=4, workers=2, decode_executor="thread")
    probe = _ScheduleProbe(embedder, device)
    store = EdgeStore(tmp_path / "home")
    report = run_ingest(store, probe, root=corpus, collection="c", options=opts, progress=False)
    assert report.indexed == 16 and store.count("c") == 16
    store.close()
    return probe


def test_on_the_cpu_decoding_and_the_model_take_turns(tmp_path: Path, tiny_embedder) -> None:
    probe = _ingest_on("cpu", tmp_path, tiny_embedder)
    assert probe.batches == [4, 4, 4, 4]  # full batches from the start: no small first call
    # at most the few images already in flight (2 per worker) decode while the model runs
    assert max(probe.ahead) <= 4


def test_on_an_accelerator_the_pool_decodes_the_next_batch_meanwhile(tmp_path: Path, tiny_embedder) -> None:
    probe = _ingest_on("cuda", tmp_path, tiny_embedder)
    assert probe.batches[0] == 1  # a small first batch starts the model while the pool fills up
    assert sum(probe.batches) == 16
    assert max(probe.ahead) > 4  # up to two batches decode during the model's turn


def test_decode_window_rule() -> None:
    from mmrag.ingest.run import decode_window

    assert decode_window("cpu", 32, 2) == (False, 4)
    assert decode_window("cuda:0", 32, 2) == (True, 64)
    assert decode_window("cpu", 32, 2, overlap=True) == (True, 64)
    assert decode_window("cuda", 32, 3, overlap=False) == (False, 6)
