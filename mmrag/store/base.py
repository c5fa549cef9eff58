"""The one store adapter contract.

Filters and points to write are qdrant-client's models; what comes back is our own
`StoredPoint` / `Hit` (store/points.py), so that a query needs no qdrant_client import.

Backends: `EdgeStore` (qdrant-edge, embedded on disk, the default),
`QdrantClientStore` (qdrant-client: remote server or `:memory:`). Nothing in
`mmrag.store` imports `mmrag.embedders`; vectors arrive as plain floats.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from mmrag.store.points import Hit, PointToWrite, StoredPoint
from mmrag.store.schema import CollectionSpec, PayloadSchema

if TYPE_CHECKING:  # filters and points to write are qdrant-client models; results are our own (points.py)
    from qdrant_client import models

FusionMethod = Literal["rrf", "dbsf"]


@dataclass(frozen=True)
class MmrParams:
    """Maximal marginal relevance, run by the engine over `candidates` nearest points.

    `lambda_mult` follows LangChain: 1 = pure relevance, 0 = maximal diversity
    (Qdrant's server calls the complement `diversity`).
    """

    lambda_mult: float = 0.5
    candidates: int = 50

    def __post_init__(self) -> None:
        if not 0.0 <= self.lambda_mult <= 1.0:
            raise ValueError(f"MMR lambda must be within [0, 1], got {self.lambda_mult}")
        if self.candidates < 1:
            raise ValueError(f"MMR candidate count must be at least 1, got {self.candidates}")


@runtime_checkable
class Store(Protocol):
    """Minimal surface mmrag needs from Qdrant. Every backend passes the same tests."""

    @property
    def backend_name(self) -> str: ...  # a property, so a wrapper (RetryingStore) can pass it through

    # --- collections ----------------------------------------------------------
    def list_collections(self) -> list[str]: ...
    def collection_exists(self, name: str) -> bool: ...
    def create_collection(self, spec: CollectionSpec) -> None:
        """Create vectors (cosine, named), payload indexes and the metadata of `spec`."""
    def get_spec(self, name: str) -> CollectionSpec | None:
        """The spec recorded in the collection's metadata; None if the collection is absent."""
    def update_metadata(self, name: str, metadata: Mapping[str, Any]) -> None:
        """Merge keys into the collection's metadata (e.g. tagging labels)."""
    def delete_collection(self, name: str) -> None: ...
    def create_payload_index(self, name: str, field: str, schema: PayloadSchema) -> None: ...

    # --- aliases (server: Qdrant aliases; edge: our own atomic pointer file) ---
    def get_aliases(self) -> dict[str, str]:
        """alias -> collection"""
    def set_alias(self, alias: str, collection: str) -> None:
        """Atomically point `alias` at `collection` (creating or switching it)."""
    def delete_alias(self, alias: str) -> None: ...
    def resolve(self, name: str) -> str:
        """Alias target if `name` is an alias, else `name` itself."""

    # --- points ---------------------------------------------------------------
    def upsert(self, name: str, points: Sequence[PointToWrite | models.PointStruct]) -> None:
        """Insert or replace whole points (all vectors + payload); durable when it returns."""
    def delete_points(self, name: str, ids: Sequence[str]) -> None: ...
    def set_payload(self, name: str, payload: Mapping[str, Any], ids: Sequence[str]) -> None: ...
    def set_payloads(self, name: str, updates: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """A different payload update per point, applied as one batch (tagging writes thousands)."""
    def retrieve(
        self, name: str, ids: Sequence[str], *, with_payload: bool = True, with_vectors: bool | Sequence[str] = False
    ) -> list[StoredPoint]: ...
    def scroll(
        self,
        name: str,
        *,
        scroll_filter: models.Filter | None = None,
        limit: int = 256,
        offset: Any = None,
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool | Sequence[str] = False,
    ) -> tuple[list[StoredPoint], Any]:
        """One page of points and the offset of the next page (None at the end)."""
    def count(self, name: str, count_filter: models.Filter | None = None) -> int: ...

    # --- search -----------------------------------------------------------------
    def search(
        self,
        name: str,
        vector: Sequence[float],
        *,
        using: str,
        limit: int = 10,
        query_filter: models.Filter | None = None,
        score_threshold: float | None = None,
        exact: bool = True,
        hnsw_ef: int | None = None,
        with_payload: bool = True,
        with_vectors: bool | Sequence[str] = False,
        mmr: MmrParams | None = None,
    ) -> list[Hit]:
        """Nearest neighbours on one named vector; score is cosine similarity.

        With `mmr`, the engine re-ranks the `mmr.candidates` nearest for diversity.
        """
    def search_fused(
        self,
        name: str,
        vectors: Mapping[str, Sequence[float]],
        *,
        text: str | None = None,
        limit: int = 10,
        query_filter: models.Filter | None = None,
        prefetch_limit: int | None = None,
        exact: bool = True,
        fusion: FusionMethod = "rrf",
        weights: Mapping[str, float] | None = None,
        mmr: MmrParams | None = None,
        score_thresholds: Mapping[str, float] | None = None,
    ) -> list[Hit]:
        """One engine query: a prefetch per named dense vector (and, with `text`, a BM25
        prefetch on the sparse vector), each under `query_filter`, fused by the engine
        (RRF with k=2, optionally weighted per vector name, or DBSF). With `mmr` the
        fused candidates are re-ranked for diversity on the image vector.
        `score_thresholds` (vector name -> minimum score) cut each prefetch's list.
        """
    def facet(
        self, name: str, key: str, *, filter: models.Filter | None = None, limit: int = 10
    ) -> list[models.FacetValueHit]:
        """Counts of the values of the indexed payload field `key` among points matching `filter`."""

    async def asearch(self, name: str, vector: Sequence[float], **kwargs: Any) -> list[Hit]: ...
    async def asearch_fused(self, name: str, vectors: Mapping[str, Sequence[float]], **kwargs: Any) -> list[Hit]: ...

    def optimize(self, name: str) -> None:
        """Build indexes now (HNSW on edge); a no-op where the server does it itself."""
    def close(self) -> None: ...


class ThreadedAsyncMixin:
    """Async methods for synchronous backends: run the sync call in a worker thread."""

    async def asearch(self, name: str, vector: Sequence[float], **kwargs: Any) -> list[Hit]:
        return await asyncio.to_thread(self.search, name, vector, **kwargs)  # type: ignore[attr-defined]

    async def asearch_fused(
        self, name: str, vectors: Mapping[str, Sequence[float]], **kwargs: Any
    ) -> list[Hit]:
        return await asyncio.to_thread(self.search_fused, name, vectors, **kwargs)  # type: ignore[attr-defined]


# Qdrant's RRF constant for our fused queries: 1 / (k + rank), both backends the same.
RRF_K = 2


def fusion_weights(
    names: Sequence[str], fusion: FusionMethod, weights: Mapping[str, float] | None
) -> list[float] | None:
    """Per-prefetch RRF weights in prefetch order (None: all equal); DBSF takes none."""
    if fusion not in ("rrf", "dbsf"):
        raise ValueError(f"fusion must be 'rrf' or 'dbsf', not {fusion!r}")
    if not weights:
        return None
    if fusion == "dbsf":
        raise ValueError("fusion weights apply to RRF only; DBSF normalises each list's scores itself")
    unknown = set(weights) - set(names)
    if unknown:
        raise ValueError(f"fusion weights name vectors that are not searched: {sorted(unknown)}")
    return [float(weights.get(n, 1.0)) for n in names]


def default_prefetch_limit(limit: int) -> int:
    """Candidates fetched per named vector before fusion when the caller does not say (every backend)."""
    return max(limit * 3, 10)
