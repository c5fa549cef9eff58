"""The store-writer stage: batched upserts on a background thread."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from mmrag.store.base import Store
from mmrag.store.integrity import record_points


class StoreWriter:
    """Batched store writes on one background thread, so upserts overlap model compute.

    At most two batches are in flight: memory stays bounded however large the corpus.
    After each confirmed batch the store's count is recorded in the collection's metadata
    (`mmrag.store.integrity`): what a later open or `mmrag verify` checks the store against.
    """

    def __init__(self, store: Store, collection: str, batch: int):
        self.store, self.collection, self.batch = store, collection, batch
        self.buffer: list[Any] = []
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmrag-writer")
        self.pending: list[tuple[Future, int]] = []
        self.written = 0  # points the store confirmed: what a failed run reports as done

    def add(self, points: Sequence[Any]) -> None:
        self.buffer.extend(points)
        while len(self.buffer) >= self.batch:
            self._submit(self.buffer[: self.batch])
            self.buffer = self.buffer[self.batch :]

    def _submit(self, points: list[Any]) -> None:
        while len(self.pending) >= 2:
            self._settle()
        self.pending.append((self.pool.submit(self._write, points), len(points)))

    def _write(self, points: list[Any]) -> None:
        self.store.upsert(self.collection, points)
        record_points(self.store, self.collection)  # one writer thread: no other write in between

    def _settle(self) -> None:
        future, n = self.pending.pop(0)
        future.result()  # re-raises a store failure in the main thread
        self.written += n

    def flush(self) -> None:
        if self.buffer:
            self._submit(self.buffer)
            self.buffer = []
        while self.pending:
            self._settle()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
