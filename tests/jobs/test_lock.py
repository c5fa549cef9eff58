from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmrag.jobs.lock import CollectionLock, LockHeld, lock_path

HOLDER = textwrap.dedent(
    """
    import sys, time
    from mmrag.jobs.lock import CollectionLock
    lock = CollectionLock(sys.argv[1], sys.argv[2], job="rebuild").acquire()
    print("ready", flush=True)
    sys.stdin.read()  # hold until the parent closes stdin (or kills us)
    lock.release()
    print("released", flush=True)
    """
)


def _spawn_holder(home: Path, collection: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(home), collection],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_live_holder_in_another_process_makes_the_next_job_fail_fast(tmp_path):
    proc = _spawn_holder(tmp_path, "photos")
    try:
        with pytest.raises(LockHeld) as info:
            CollectionLock(tmp_path, "photos").acquire()
        err = info.value
        assert err.holder["pid"] == proc.pid
        assert err.holder["host"] == socket.gethostname()
        msg = str(err)
        assert f"pid {proc.pid} on host {socket.gethostname()} since {err.holder['since']}" in msg
        assert "(job: rebuild)" in msg and "'photos'" in msg
        # other collections are independent
        with CollectionLock(tmp_path, "other") as other:
            assert other.held and other.took_over is None
    finally:
        proc.stdin.close()
        assert proc.stdout.readline().strip() == "released"
        proc.wait(timeout=30)
    # released cleanly: the file is empty, and the next holder reports no takeover
    assert lock_path(tmp_path, "photos").read_text() == ""
    with CollectionLock(tmp_path, "photos") as lock:
        assert lock.took_over is None


def test_holder_killed_with_sigkill_is_taken_over_and_reported(tmp_path):
    proc = _spawn_holder(tmp_path, "photos")
    dead_pid = proc.pid
    os.kill(dead_pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # the dead holder's details are still in the file, but the kernel has dropped its flock
    assert json.loads(lock_path(tmp_path, "photos").read_text())["pid"] == dead_pid
    with CollectionLock(tmp_path, "photos", job="sync") as lock:
        assert lock.took_over is not None and lock.took_over["pid"] == dead_pid
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        assert json.loads(lock.path.read_text())["job"] == "sync"
        with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
            CollectionLock(tmp_path, "photos").acquire()
    with CollectionLock(tmp_path, "photos") as again:
        assert again.took_over is None


def test_sync_reports_a_stale_lock_it_took_over(tmp_path):
    from jobs.conftest import FakeEmbedder, FakeIngest, make_corpus
    from mmrag.jobs import JobSpec, sync
    from mmrag.store import EdgeStore

    home = tmp_path / "home"
    proc = _spawn_holder(home, "photos")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    root = make_corpus(tmp_path / "c", {"a.jpg": "A"})
    store = EdgeStore(tmp_path / "edge")
    rep = sync(JobSpec(collection="photos", root=root), store=store, embedder=FakeEmbedder(), home=home,
               ingest_fn=FakeIngest())
    assert rep.status == "ok" and rep.stale_lock["pid"] == proc.pid
    assert f"took over a stale lock of pid {proc.pid}" in rep.summary()
    store.close()


def test_lock_file_names_are_safe(tmp_path):
    assert lock_path(tmp_path, "a/../b c").name == "a_.._b_c.lock"
    assert lock_path(tmp_path, "a/../b c").parent == tmp_path / "locks"
