"""Pick the image batch size on a GPU by measuring it, within the memory the card has."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's out-of-memory error (CUDA or another accelerator)."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom)


@dataclass
class BatchTuning:
    best: int
    best_images_per_s: float
    trials: list[dict[str, Any]] = field(default_factory=list)


def tune_batch_size(
    embedder: Any,
    *,
    start: int = 32,
    limit: int = 1024,
    min_gain: float = 0.05,
    min_seconds: float = 0.5,
    clock: Callable[[], float] = time.perf_counter,
) -> BatchTuning:
    """Double the batch from `start` while images/s grows by at least `min_gain` and memory allows.

    Each size gets one warm-up call, then timed calls for at least `min_seconds` on
    zero-filled pixels (speed does not depend on their values). The embedder's own
    `batch_size` is set to each trial size and left at the best one.
    """
    if start < 1 or limit < start:
        raise ValueError(f"need 1 <= start <= limit, got start={start}, limit={limit}")
    side = int(embedder.info.image_size)
    trials: list[dict[str, Any]] = []
    best, best_ips = 0, 0.0
    size = start
    while size <= limit:
        embedder.batch_size = size
        pixels = np.zeros((size, 3, side, side), dtype=np.float32)
        try:
            embedder.embed_pixels(pixels)  # warm-up: kernels, allocator
            if embedder.batch_size < size:
                raise _BackedOff()  # the embedder hit out-of-memory and halved its batch itself
            done, elapsed = 0, 0.0
            while elapsed < min_seconds or done == 0:
                started = clock()
                embedder.embed_pixels(pixels)  # returns host arrays, so the GPU has finished
                elapsed += clock() - started
                done += size
        except Exception as exc:
            if not (isinstance(exc, _BackedOff) or is_out_of_memory(exc)):
                raise
            trials.append({"batch_size": size, "images_per_s": None, "oom": True})
            release_cached_memory(embedder.device)
            break
        ips = done / elapsed if elapsed > 0 else float("inf")
        trials.append({"batch_size": size, "images_per_s": round(ips, 2)})
        if ips > best_ips * (1 + min_gain):
            best, best_ips = size, ips
        elif best:
            break
        size *= 2
    if not best:
        raise RuntimeError(f"no batch size from {start} fits in memory on {embedder.device}")
    embedder.batch_size = best
    log.info("image batch size %d on %s (%.0f images/s; trials %s)", best, embedder.device, best_ips, trials)
    return BatchTuning(best=best, best_images_per_s=best_ips, trials=trials)


class _BackedOff(Exception):
    pass


def release_cached_memory(device: str) -> None:
    """Hand the blocks torch's CUDA allocator keeps cached back after an out-of-memory."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
