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

import re
from pathlib import Path
from types import TracebackType
from typing import Any

from mmrag.errors import LockHeldError
from mmrag.flock import describe_holder, process_holder, release, try_lock

__all__ = ["CollectionLock", "LockHeld", "lock_path"]


class LockHeld(LockHeldError, RuntimeError):
    """Another live job holds the collection's lock."""

    def __init__(self, collection: str, path: Path, holder: dict[str, Any] | None):
        self.collection = collection
        self.path = path
        self.holder = holder or {}
        super().__init__(
            f"collection {collection!r} is locked by {describe_holder(holder)}; another job is running on it. "
            f"Wait for it to finish (lock file: {path})."
        )


def lock_path(home: Path | str, collection: str) -> Path:
    # Collection names are validated elsewhere; still keep the file name safe.
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", collection)
    return Path(home) / "locks" / f"{safe}.lock"


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
        holder = process_holder(collection=self.collection, job=self.job)
        fd, previous = try_lock(self.path, holder)
        if fd is None:
            raise LockHeld(self.collection, self.path, previous)
        # Content left behind means the previous holder died while holding the lock.
        self.took_over, self.holder, self._fd = previous, holder, fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            release(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> CollectionLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
