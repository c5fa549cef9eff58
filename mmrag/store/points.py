"""What a store hands back: a stored point or a scored hit, as plain Python.

Both backends return these, so callers see one type whatever the engine. They carry the
attribute names of qdrant-client's `Record` and `ScoredPoint` (id, payload, vector;
score, version). Plain dataclasses because building qdrant-client's pydantic models
means importing qdrant_client, about 1.2 s on a laptop: more than a whole ONNX query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PointId = str | int


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
