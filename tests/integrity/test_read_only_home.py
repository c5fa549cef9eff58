"""Issue 17 item 11: a read-only MMRAG_HOME gives one sentence that says what is wrong and how to fix it.

qdrant-edge 0.9 cannot open a shard on a read-only filesystem at all (it maps its payload storage
writable: "Failed to open mmap payload storage: Read-only file system"), so reading cannot be
supported; the readers (`collections`, `search`) and the writer say so instead of a raw engine
error, exit 2 (configuration), and leave every file as it was. Root ignores permission bits, so
the test makes a real read-only filesystem: a tmpfs remounted read-only (needs root; skipped
otherwise).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.integrity.mounts import mounted_tmpfs

TMPFS_MB = 256
ENV = dict(MMRAG_MIN_FREE_MB="16")  # the default 128 MiB reserve would not fit the small tmpfs


@pytest.fixture
def tmpfs(tmp_path: Path):
    with mounted_tmpfs(tmp_path / "fs", TMPFS_MB, why_root="a read-only filesystem needs root to mount (root ignores permission bits otherwise)") as mnt:
        yield mnt


def _remount(mnt: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], check=True, capture_output=True)


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _advice(home: Path) -> str:
    return (f"the store folder {home} (MMRAG_HOME) is on a read-only filesystem, and the embedded store "
            f"must write its lock, WAL and mmap files even to read, so mount it read-write, copy it somewhere "
            f"writable (cp -a {home} /tmp/mmrag-home, then MMRAG_HOME=/tmp/mmrag-home) or serve the "
            f"collections from a Qdrant server (QDRANT_URL)")


def test_read_only_home_says_what_is_wrong_and_loses_nothing(cli, shapes_corpus, tmpfs, tmp_path):
    home = tmpfs / "home"
    env = dict(ENV, MMRAG_HOME=str(home))
    code, report = cli.json("ingest", str(shapes_corpus(6)), "-c", "photos", "--quiet", **env)
    assert (code, report["indexed"]) == (0, 6), report
    code, before = cli.json("search", "a red circle", "-c", "photos", "-k", "3", **env)
    assert code == 0 and len(before["hits"]) == 3

    _remount(tmpfs, "ro")
    with pytest.raises(OSError, match="Read-only file system"):  # a real read-only filesystem, even for root
        (home / "probe").touch()
    files = _tree(home)

    for args, what in [
        (("collections",), "open collection 'photos'"),
        (("search", "a red circle", "-c", "photos", "-k", "3"), "open collection 'photos'"),
        (("ingest", str(shapes_corpus(6)), "-c", "other", "--quiet"), "create collection 'other'"),
    ]:
        proc = cli.run(*args, **env)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        errors = [line for line in proc.stderr.splitlines() if line.startswith("mmrag: error")]
        assert errors == [f"mmrag: error: cannot {what}: {_advice(home)}"], (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and "mmap" not in proc.stderr.replace("mmap files", "")
    assert _tree(home) == files  # nothing written, nothing lost

    # The advice works: a writable copy answers the same search.
    copy = tmp_path / "mmrag-home"
    subprocess.run(["cp", "-a", str(home), str(copy)], check=True)
    code, again = cli.json("search", "a red circle", "-c", "photos", "-k", "3", **dict(ENV, MMRAG_HOME=str(copy)))
    assert code == 0 and again["hits"] == before["hits"]

    _remount(tmpfs, "rw")  # and the original is intact once writable again
    code, rows = cli.json("collections", **env)
    assert code == 0 and {r["name"]: r["points"] for r in rows} == {"photos": 6}
