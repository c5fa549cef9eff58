"""Section 3 of issue 12: a full disk gives a clear error (exit 1), never SIGBUS, and a re-run finishes.

A real small tmpfs is mounted for the test, which needs root (CAP_SYS_ADMIN) and is skipped otherwise.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integrity.mounts import mounted_tmpfs

N_IMAGES = 40
TMPFS_MB = 200  # creating a collection takes 20 MiB and its first open 45 MiB (WAL segments)
RESERVE_MB = 64


@pytest.fixture
def small_fs(tmp_path: Path):
    with mounted_tmpfs(tmp_path / "small", TMPFS_MB, why_root="mounting a tmpfs needs root; run as root to test the full-disk path") as mnt:
        yield mnt


def _fill(mnt: Path, leave: int) -> Path:
    filler = mnt / "filler"
    free = shutil.disk_usage(mnt).free
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


def test_full_disk_stops_with_a_clear_error_then_a_rerun_finishes(cli, shapes_corpus, small_fs):
    corpus = shapes_corpus(N_IMAGES)
    env = dict(MMRAG_HOME=str(small_fs / "home"), MMRAG_MIN_FREE_MB=str(RESERVE_MB), MMRAG_WRITE_BATCH_SIZE="4")
    first_part = shapes_corpus(4)
    code, first = cli.json("ingest", str(first_part), "-c", "photos", "--quiet", **env)
    assert (code, first["indexed"]) == (0, 4), first

    # Leave the reserve plus ~24 KiB: room for a batch or two, then the check stops the run.
    filler = _fill(small_fs, RESERVE_MB * 1024 * 1024 + 24 * 1024)
    code, report = cli.json("ingest", str(corpus), "-c", "photos", "--quiet", **env)
    assert code == 1, report  # not 135 (SIGBUS)
    assert "DiskFull" in report["error"] and str(small_fs / "home") in report["error"]
    assert "MMRAG_MIN_FREE_MB" in report["error"]
    written = report["written"]
    assert 0 <= written < N_IMAGES and report["ok"] is False

    proc = cli.run("search", "a red circle", "-c", "photos", **env)  # a plain read on the full disk
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "not enough free space" in proc.stderr and "open collection 'photos'" in proc.stderr

    filler.unlink()  # space is freed: the same commands finish the job, nothing duplicated or lost
    code, again = cli.json("ingest", str(corpus), "-c", "photos", "--quiet", **env)
    assert (code, again["error"], again["failed_count"]) == (0, None, 0)
    assert again["indexed"] + again["updated"] + again["unchanged"] == N_IMAGES and again["unchanged"] >= written
    code, rows = cli.json("collections", **env)
    assert {r["name"]: r["points"] for r in rows} == {"photos": N_IMAGES}  # img_00000..39: 4 of them overwritten
    code, hits = cli.json("search", "a red circle", "-c", "photos", "-k", "3", **env)
    assert code == 0 and len(hits["hits"]) == 3, hits
