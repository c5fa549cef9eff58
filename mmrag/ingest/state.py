"""What the store already holds, and whether a corpus item still matches its stored point."""

from __future__ import annotations

from typing import Any

from mmrag.corpus.types import CorpusItem
from mmrag.store.base import Store
from mmrag.store.convert import payload_metadata
from mmrag.store.schema import PAYLOAD_FIELDS

# Payload keys written by ingestion or tagging; everything else on a point came from a manifest.
_INGEST_OWNED = frozenset(PAYLOAD_FIELDS) | {"tag_scores"}


def load_state(store: Store, collection: str, page: int = 1024) -> dict[str, dict[str, Any]]:
    """point id -> stored payload, for every point (no vectors: cheap)."""
    state: dict[str, dict[str, Any]] = {}
    offset = None
    while True:
        records, offset = store.scroll(collection, limit=page, offset=offset, with_payload=True, with_vectors=False)
        for r in records:
            state[str(r.id)] = dict(r.payload or {})
        if offset is None:
            return state


# qdrant-edge 0.9 may return a float payload one ulp off (≈2e-7 s for today's epoch
# seconds); a microsecond tolerance keeps the stat check exact in practice.
_MTIME_TOLERANCE_S = 1e-6


def unchanged_by_stat(item: CorpusItem, old: dict[str, Any]) -> bool:
    mtime = old.get("mtime")
    return (
        old.get("file_size") == item.file_size
        and isinstance(mtime, (int, float))
        and abs(mtime - item.mtime) <= _MTIME_TOLERANCE_S
        and same_annotations(item, old)
    )


def same_annotations(item: CorpusItem, old: dict[str, Any]) -> bool:
    """Caption and manifest metadata unchanged? (Metadata compared in the store's JSON-safe form.)"""
    stored = {k: v for k, v in old.items() if k not in _INGEST_OWNED}
    return old.get("caption") == item.caption and stored == payload_metadata(item.metadata)
