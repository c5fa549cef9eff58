"""The points a store takes and hands back, as plain Python.

What ingestion writes (`PointToWrite`, with `SparseText` for BM25) and what searches
return (`StoredPoint`, `Hit`) carry the attribute names of qdrant-client's `PointStruct`,
`Document`, `Record` and `ScoredPoint`, and both backends also take qdrant-client's own
models. Plain dataclasses because building those pydantic models means importing
qdrant_client, about 1.2 s on a laptop: more than a whole ONNX query, and a fifth of a
small ingest. The embedded store never needs it; the client backend converts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PointId = str | int


@dataclass(frozen=True, slots=True)
class SparseText:
    """Text for the engine to turn into a sparse vector with `model` (Qdrant's BM25)."""

    text: str
    model: str


@dataclass(slots=True)
class PointToWrite:
    """A point for `Store.upsert`: named vectors (lists of floats, or a `SparseText`) and a payload."""

    id: PointId
    vector: dict[str, Any]
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class StoredPoint:
    """A point as stored (`retrieve`, `scroll`); `vector` is None unless vectors were asked for."""

    id: PointId
    payload: dict[str, Any] | None = None
    vector: Any = None


@dataclass(slots=True)
class Hit(StoredPoint):
    """A search result: `score` is cosine similarity, or the fused score of a fused query."""

    score: float = 0.0
    version: int = 0


def stored_point(record: Any) -> StoredPoint:
    """Any record-like object (qdrant-client's `Record`, say) as a StoredPoint."""
    return StoredPoint(id=record.id, payload=record.payload, vector=record.vector)


def hit(point: Any) -> Hit:
    """Any scored-point-like object (qdrant-client's `ScoredPoint`, say) as a Hit."""
    return Hit(id=point.id, payload=point.payload, vector=point.vector, score=float(point.score),
               version=int(point.version or 0))
