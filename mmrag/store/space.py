"""Free-space checks for the embedded store: stop with an error while there is still room.

qdrant-edge writes through memory-mapped, sparse files. On a full filesystem a write into
such a page is not an error but a SIGBUS that kills the process without a word (exit 135).
Measured on tmpfs (qdrant-edge 0.9, 9 payload indexes): creating a collection takes 20 MiB,
its first open another 45 MiB (WAL segments), and re-opening one with 16 MiB free dies.
So we keep a reserve free, check it before a shard is created or opened and before every
write batch, and raise `DiskFull` naming the path.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmrag.errors import RunFailed

MIB = 1024 * 1024
# More than a first open touches (45 MiB), with room for the segment files to grow.
DEFAULT_MIN_FREE_BYTES = 128 * MIB
CREATE_BYTES = 24 * MIB  # what creating a collection writes (20 MiB measured)


class DiskFull(RunFailed):
    """Not enough free space where the store writes (or ENOSPC): exit 1, nothing half-written."""

    def __init__(self, path: Path | str, message: str):
        self.path = Path(path)
        super().__init__(message)


def _existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def free_bytes(path: Path | str) -> int:
    return shutil.disk_usage(_existing(Path(path))).free


def require_free(path: Path | str, need: int, *, reserve: int, what: str) -> None:
    """Raise DiskFull unless `need` bytes fit on `path`'s filesystem with `reserve` left over."""
    free = free_bytes(path)
    if free - need < reserve:
        raise DiskFull(
            path,
            f"not enough free space on {path} to {what}: {free / MIB:.1f} MiB free, this needs about "
            f"{need / MIB:.2f} MiB and the store keeps {reserve / MIB:.0f} MiB free (MMRAG_MIN_FREE_MB) "
            "so that qdrant-edge never writes into a full disk (it would die with SIGBUS). "
            "Free some space and re-run: points already written are kept.",
        )


def estimate_points_bytes(points: Sequence[Any]) -> int:
    """Bytes a batch of PointStructs takes on disk: vectors and payload, about twice (WAL + segment)."""
    total = 0
    for point in points:
        vectors = point.vector if isinstance(point.vector, dict) else {"": point.vector}
        vector_bytes = sum(_vector_bytes(v) for v in vectors.values() if v is not None)
        payload_bytes = len(json.dumps(point.payload or {}, default=str))
        total += 2 * (vector_bytes + payload_bytes) + 256
    return total


def _vector_bytes(vector: Any) -> int:
    if isinstance(vector, (list, tuple)):
        return 4 * len(vector)
    indices = getattr(vector, "indices", None)  # a sparse vector: an index and a value per term
    if indices is not None:
        return 8 * len(indices)
    text = getattr(vector, "text", None)  # a Document the engine turns into BM25: about a term per word
    return 8 * len(str(text or "").split()) + 64


def is_enospc(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "os error 28" in text
