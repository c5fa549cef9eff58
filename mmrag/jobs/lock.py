"""One job per collection at a time, on one host.

`CollectionLock(home, collection)` takes an exclusive `fcntl.flock` on
`home/locks/<collection>.lock` without waiting; a second job fails fast with
`LockHeld`, whose message names the holder (pid, host, since) read from the
JSON the holder wrote into the file.

Why flock: the kernel drops the lock when the holder's process dies, even on
SIGKILL or OOM-kill, so a lock can never be left "held" by a dead job. The
holder empties the file when it releases cleanly; a new holder that finds the
previous holder's JSON still there knows that job died mid-run, takes over
and reports it (`took_over`) — the collection may hold a half-finished sync,
which the next incremental sync repairs, or a half-built rebuild version,
which never became live and which the next rebuild removes.

Scope: flock coordinates processes on ONE host (and is unreliable on some
network filesystems). Across hosts — e.g. Kubernetes pods on different nodes —
the guard is the scheduler itself: the CronJob's `concurrencyPolicy: Forbid`
(see deploy/k8s/cronjob.yaml), or one scheduler container in docker compose.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from mmrag.errors import LockHeldError

__all__ = ["CollectionLock", "LockHeld", "lock_path"]


class LockHeld(LockHeldError, RuntimeError):
    """Another live job holds the collection's lock."""

    def __init__(self, collection: str, path: Path, holder: dict[str, Any] | None):
        self.collection = collection
        self.path = path
        self.holder = holder or {}
        if holder:
            who = (
                f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"
                + (f" (job: {holder['job']})" if holder.get("job") else "")
            )
        else:
            who = "a process that has not written its details yet"
        super().__init__(
            f"collection {collection!r} is locked by {who}; another job is running on it. "
            f"Wait for it to finish (lock file: {path})."
        )


def lock_path(home: Path | str, collection: str) -> Path:
    # Collection names are validated elsewhere; still keep the file name safe.
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", collection)
    return Path(home) / "locks" / f"{safe}.lock"


def _read_holder(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return {"raw": raw.decode("utf-8", "replace")[:200]}
    return data if isinstance(data, dict) else {"raw": str(data)[:200]}


class CollectionLock:
    """Exclusive, non-blocking lock on one collection; a context manager.

    After `__enter__`, `took_over` is the dead previous holder's info when its
    job ended without releasing (killed), else None.
    """

    def __init__(self, home: Path | str, collection: str, *, job: str | None = None):
        self.collection = collection
        self.path = lock_path(home, collection)
        self.job = job
        self.took_over: dict[str, Any] | None = None
        self.holder: dict[str, Any] | None = None
        self._fd: int | None = None

    def acquire(self) -> CollectionLock:
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Never unlink the lock file: a process waiting on the old inode would lock a ghost.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = _read_holder(fd)
            os.close(fd)
            raise LockHeld(self.collection, self.path, holder) from None
        try:
            # Content left behind means the previous holder died while holding the lock.
            self.took_over = _read_holder(fd)
            self.holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "collection": self.collection,
                **({"job": self.job} if self.job else {}),
            }
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(self.holder).encode("utf-8"))
            os.fsync(fd)
        except BaseException:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # Empty file = released cleanly; do it while still holding the lock.
            os.ftruncate(fd, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> CollectionLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
