"""The embedded store and a running server: a rebuild in another process, an incremental sync refused."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import httpx
import pytest

from server.conftest import COLLECTION

pytestmark = pytest.mark.slow


def _cli(world, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "mmrag", *args, "--home", str(world["home"])], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_rebuild_in_another_process_switches_the_server_without_a_failed_query(server, world, service):
    root = world["root"]
    before = world["store"].resolve(COLLECTION)
    stop = threading.Event()
    results: list[tuple[int, int]] = []

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not stop.is_set():
                r = client.post("/api/search", json={"query": "a red circle", "k": 3})
                results.append((r.status_code, len(r.json().get("hits", [])) if r.status_code == 200 else 0))

    thread = threading.Thread(target=load)
    thread.start()
    try:
        proc = _cli(world, "reindex", COLLECTION, "--rebuild", "--root", str(root), "--manifest",
                    str(root / "manifest.jsonl"), "--quiet")
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        after = world["store"].resolve(COLLECTION)
        assert after != before
        for _ in range(50):  # keep querying until the server has answered from the new version
            if service._live == after:
                break
            stop.wait(0.1)
    finally:
        stop.set()
        thread.join()
    assert service._live == after
    failed = [r for r in results if r[0] != 200]
    empty = [r for r in results if r[0] == 200 and r[1] == 0]
    assert len(results) >= 5 and failed == [] and empty == [], (len(results), failed[:3], empty[:3])
    assert httpx.get(server.url + "/readyz").json()["live"] == after


def test_incremental_sync_while_the_server_holds_the_shard_is_refused_with_a_way_out(server, world, http):
    http.post("/api/search", json={"query": "a red circle", "k": 1})  # the server holds the live shard now
    proc = _cli(world, "reindex", COLLECTION, "--root", str(world["root"]), "--quiet")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert "open in another process" in out and f"mmrag reindex {COLLECTION} --rebuild" in out
