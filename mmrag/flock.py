"""An exclusive, holder-describing `fcntl.flock` on one file: the primitive behind every mmrag lock.

`try_lock(path, holder)` takes the lock without waiting and writes `holder` (JSON) into the
file, or returns the current holder's JSON when another open file holds it. The kernel drops
a flock when its process dies (even on SIGKILL), so a lock is never left held by a dead
process; content found on taking a lock means the previous holder died without releasing.

Used by the per-collection job lock (`mmrag.jobs.lock`) and the per-shard lock of the
embedded store (`mmrag.store.edge`), which must be taken before qdrant-edge touches a shard.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["describe_holder", "process_holder", "read_holder", "release", "try_lock"]


def read_holder(fd: int) -> dict[str, Any] | None:
    """The JSON a holder wrote into the lock file; None when it is empty."""
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


def _command() -> str:
    argv = list(sys.argv) or [""]
    prog = Path(argv[0])
    # `python -m mmrag` runs mmrag/__main__.py (or mmrag/cli/__main__.py): show it as `mmrag`.
    name = ("mmrag" if "mmrag" in prog.parts else prog.parent.name) if prog.name == "__main__.py" else prog.name
    return " ".join([name or "python", *argv[1:]])[:300]


def process_holder(**extra: Any) -> dict[str, Any]:
    """This process as a lock holder: pid, host, command line and start of the hold."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": _command(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **{k: v for k, v in extra.items() if v is not None},
    }


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a process that has not written its details yet"
    text = f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"
    if holder.get("job"):
        text += f" (job: {holder['job']})"
    if holder.get("command"):
        text += f" (command: {holder['command']})"
    return text


def try_lock(path: Path, holder: dict[str, Any]) -> tuple[int | None, dict[str, Any] | None]:
    """Take the exclusive lock on `path` without waiting.

    Returns (fd, previous content) when taken: `previous` is the JSON a holder that died left
    behind, else None. Returns (None, current holder) when another open file holds the lock.
    """
    # The caller makes the folder: a lock must not recreate a folder that was just deleted.
    # Never unlink a lock file: a process waiting on the old inode would lock a ghost.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        current = read_holder(fd)
        os.close(fd)
        return None, current
    try:
        previous = read_holder(fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(holder).encode("utf-8"))
        os.fsync(fd)
    except BaseException:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise
    return fd, previous


def release(fd: int) -> None:
    """Empty the file (= released cleanly) while still holding it, then unlock."""
    try:
        os.ftruncate(fd, 0)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
