"""Section 1 of issue 12: a second process must never damage a running job's embedded store.

qdrant-edge 0.9's loader deletes the holder's tracker journals before it refuses a second
process (bench/repro/edge_second_open.py); our shard lock refuses the second process first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

N_IMAGES = 400


def _holder_pid(lock_file: Path) -> int | None:
    try:
        return json.loads(lock_file.read_text() or "{}").get("pid")
    except (OSError, ValueError):
        return None


def test_second_processes_of_every_kind_leave_a_long_ingest_intact(cli, shapes_corpus, tmp_path):
    corpus = shapes_corpus(N_IMAGES)
    other = shapes_corpus(12)
    # One point per write: ~400 flushes, each of which would hit a damaged tracker journal;
    # the fsyncs also keep the ingest running long enough for every probe.
    long_ingest = cli.start("ingest", str(corpus), "-c", "big", "--json", "--quiet",
                            MMRAG_WRITE_BATCH_SIZE="1", MMRAG_BATCH_SIZE="2")
    lock_file = Path(cli.env["MMRAG_HOME"]) / "collections" / "big" / "shard.lock"
    deadline = time.monotonic() + 120
    while _holder_pid(lock_file) != long_ingest.pid:
        assert long_ingest.poll() is None, long_ingest.communicate()
        assert time.monotonic() < deadline, "the long ingest never opened its shard"
        time.sleep(0.05)

    probes = {
        "ingest": ("ingest", str(other), "-c", "big", "--json", "--quiet"),
        "search": ("search", "a red circle", "-c", "big", "--json"),
        "collections": ("collections", "--json"),
        "export": ("export", "big", str(tmp_path / "big.parquet"), "--json"),
        "tag": ("tag", "-c", "big", "--labels", "circle,square", "--json"),
    }
    refused: dict[str, int] = {}
    for _round in range(2):
        for kind, argv in probes.items():
            if long_ingest.poll() is not None or kind in refused:
                continue
            proc = cli.run(*argv, MMRAG_STORE_LOCK_WAIT_SECONDS="0.5")
            if kind == "collections":
                assert proc.returncode == 0, proc.stderr
                (row,) = json.loads(proc.stdout)
                held = row["busy"] is not None
                if held:
                    assert row["points"] is None and f"pid {long_ingest.pid}" in row["busy"]
            else:
                held = proc.returncode == 3
                if held:
                    assert f"open in another process: pid {long_ingest.pid}" in proc.stderr, (kind, proc.stderr)
                    assert "mmrag ingest" in proc.stderr  # the holder's command line
            if held:
                refused[kind] = refused.get(kind, 0) + 1
            else:  # only possible once the ingest has let go of its shard
                assert proc.returncode == 0 and long_ingest.poll() is not None, (kind, proc.returncode, proc.stderr)
    out, err = long_ingest.communicate(timeout=300)
    assert long_ingest.returncode == 0, err[-3000:]
    report = json.loads(out)
    assert (report["indexed"], report["written"], report["failed_count"], report["error"]) == (
        N_IMAGES, N_IMAGES, 0, None)
    assert set(refused) == set(probes), f"probes refused while the ingest ran: {refused}"
    assert not (tmp_path / "big.parquet").exists()  # a refused export writes nothing

    code, rows = cli.json("collections")
    assert code == 0 and [(r["name"], r["points"], r["busy"]) for r in rows] == [("big", N_IMAGES, None)]
    code, again = cli.json("ingest", str(corpus), "-c", "big", "--quiet")
    assert (code, again["indexed"], again["unchanged"], again["failed_count"]) == (0, 0, N_IMAGES, 0)
