"""`QdrantClientStore`: the qdrant-client backend (a remote Qdrant server, or `:memory:`).

Collection metadata lives in Qdrant's own collection `metadata`; aliases are
Qdrant aliases, switched atomically by one `update_collection_aliases` call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from qdrant_client import AsyncQdrantClient, QdrantClient, models

from mmrag.store.base import RRF_K, FusionMethod, MmrParams, ThreadedAsyncMixin, default_prefetch_limit, fusion_weights
from mmrag.store.points import Hit, PointToWrite, SparseText, StoredPoint, hit, stored_point
from mmrag.store.schema import (
    BM25_MODEL,
    BM25_OPTIONS,
    IMAGE_VECTOR,
    SPARSE_VECTOR,
    VECTOR_NAMES,
    CollectionSpec,
    PayloadSchema,
    SparseVectorMissing,
    bm25_input,
    missing_sparse_message,
    schema_name,
)

try:
    from qdrant_client.local.qdrant_local import QdrantLocal
except ImportError:  # pragma: no cover - layout of other qdrant-client versions
    QdrantLocal = None  # type: ignore[assignment,misc]


def _document(value: SparseText | models.Document) -> models.Document:
    return value if isinstance(value, models.Document) else models.Document(text=value.text, model=value.model)


def _is_local(client: QdrantClient) -> bool:
    """True for qdrant-client's local mode (`:memory:` or a path), which is always exact."""
    return QdrantLocal is not None and isinstance(getattr(client, "_client", None), QdrantLocal)


class QdrantClientStore(ThreadedAsyncMixin):
    """Store over qdrant-client.

    `async_client`, when given, must talk to the same Qdrant as `client`; then
    `asearch`/`asearch_fused` are truly asynchronous. Without it (always in
    `:memory:` mode, where a second client would be a second, empty database)
    they run the synchronous call in a worker thread.
    """

    backend_name = "qdrant"

    def __init__(
        self,
        client: QdrantClient,
        *,
        async_client: AsyncQdrantClient | None = None,
        shard_number: int | None = None,
        replication_factor: int | None = None,
    ) -> None:
        self.client = client
        self.async_client = async_client
        self.shard_number = shard_number
        self.replication_factor = replication_factor
        # Local mode ignores search params and payload indexes, and warns about each; skip them there.
        self._local = _is_local(client)

    # --- collections -------------------------------------------------------------
    def list_collections(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections)

    def collection_exists(self, name: str) -> bool:
        """True for a collection or an alias that points at one."""
        return self.client.collection_exists(self.resolve(name))

    def create_collection(self, spec: CollectionSpec) -> None:
        if self.client.collection_exists(spec.name):
            raise ValueError(f"collection {spec.name!r} already exists")
        if spec.name in self.get_aliases():
            raise ValueError(f"{spec.name!r} is an alias; choose another collection name")
        self.client.create_collection(
            spec.name,
            vectors_config={
                name: models.VectorParams(size=spec.dim, distance=models.Distance.COSINE) for name in VECTOR_NAMES
            },
            sparse_vectors_config=(
                {SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)} if spec.has_sparse else None
            ),
            shard_number=self.shard_number,
            replication_factor=self.replication_factor,
            metadata=spec.to_metadata(),
        )
        for field_name, schema in spec.payload_indexes.items():
            self.create_payload_index(spec.name, field_name, schema)

    def get_spec(self, name: str) -> CollectionSpec | None:
        real = self.resolve(name)
        if not self.client.collection_exists(real):
            return None
        info = self.client.get_collection(real)
        return CollectionSpec.from_metadata(real, info.config.metadata)

    def update_metadata(self, name: str, metadata: Mapping[str, Any]) -> None:
        # Qdrant merges the given keys into the existing metadata.
        self.client.update_collection(self.resolve(name), metadata=dict(metadata))

    def delete_collection(self, name: str) -> None:
        """Delete collection `name` (not resolved through aliases); Qdrant drops its aliases too."""
        self.client.delete_collection(name)

    def create_payload_index(self, name: str, field: str, schema: PayloadSchema) -> None:
        if self._local:
            return  # local mode has no payload indexes (filters still work, by scanning)
        self.client.create_payload_index(name, field_name=field, field_schema=models.PayloadSchemaType(schema_name(schema)),
                                         wait=True)

    # --- aliases -------------------------------------------------------------------
    def get_aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def set_alias(self, alias: str, collection: str) -> None:
        """Create or switch `alias` in one alias transaction (atomic on the server)."""
        if not self.client.collection_exists(collection):
            raise ValueError(f"cannot point alias {alias!r} at {collection!r}: no such collection")
        if alias in self.list_collections():
            raise ValueError(f"cannot create alias {alias!r}: a collection has that name")
        operations: list[Any] = []
        if alias in self.get_aliases():
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        operations.append(
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection, alias_name=alias))
        )
        self.client.update_collection_aliases(change_aliases_operations=operations)

    def delete_alias(self, alias: str) -> None:
        if alias not in self.get_aliases():
            return
        self.client.update_collection_aliases(
            change_aliases_operations=[models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))]
        )

    def resolve(self, name: str) -> str:
        return self.get_aliases().get(name, name)

    # --- points --------------------------------------------------------------------
    def _sparse_in(self, doc: models.Document) -> models.Document | models.SparseVector:
        """BM25 text for the engine: server-side inference on a server; local mode has no
        inference service (it would need fastembed), so it uses the same Qdrant BM25 from qdrant-edge."""
        if self._local:
            from mmrag.store.edge import bm25_document  # in-process mode only: a server never loads qdrant-edge

            vec = bm25_document(doc)
            return models.SparseVector(indices=list(vec.indices), values=list(vec.values))
        return models.Document(text=bm25_input(doc.text), model=BM25_MODEL, options=dict(BM25_OPTIONS))

    def _sparse_query(self, text: str) -> models.Document | models.SparseVector:
        if self._local:
            from mmrag.store.edge import bm25_query  # in-process mode only

            vec = bm25_query(text)
            return models.SparseVector(indices=list(vec.indices), values=list(vec.values))
        return models.Document(text=bm25_input(text), model=BM25_MODEL, options=dict(BM25_OPTIONS))

    def _point_in(self, point: PointToWrite | models.PointStruct) -> models.PointStruct:
        vector = point.vector
        if isinstance(point, models.PointStruct) and (
            not isinstance(vector, dict) or not any(isinstance(v, models.Document) for v in vector.values())
        ):
            return point
        if not isinstance(vector, dict):
            raise ValueError(f"point {point.id!r}: mmrag collections use named vectors; pass a dict, "
                             f"got {type(vector).__name__}")
        vectors = {k: self._sparse_in(_document(v)) if isinstance(v, (SparseText, models.Document)) else v
                   for k, v in vector.items()}
        return models.PointStruct(id=point.id, vector=vectors, payload=point.payload)

    def _has_sparse(self, name: str) -> bool:
        info = self.client.get_collection(self.resolve(name))
        return bool(info.config.params.sparse_vectors and SPARSE_VECTOR in info.config.params.sparse_vectors)

    def upsert(self, name: str, points: Sequence[PointToWrite | models.PointStruct]) -> None:
        if points:
            self.client.upsert(name, points=[self._point_in(p) for p in points], wait=True)

    def delete_points(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            self.client.delete(name, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def set_payload(self, name: str, payload: Mapping[str, Any], ids: Sequence[str]) -> None:
        if ids:
            self.client.set_payload(name, payload=dict(payload), points=list(ids), wait=True)

    def set_payloads(self, name: str, updates: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        if updates:
            ops = [models.SetPayloadOperation(set_payload=models.SetPayload(payload=dict(p), points=[pid]))
                   for pid, p in updates]
            self.client.batch_update_points(name, update_operations=ops, wait=True)

    def retrieve(
        self, name: str, ids: Sequence[str], *, with_payload: bool = True, with_vectors: bool | Sequence[str] = False
    ) -> list[StoredPoint]:
        if not ids:
            return []
        return [stored_point(r) for r in self.client.retrieve(
            name, ids=list(ids), with_payload=with_payload, with_vectors=_selector(with_vectors)
        )]

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
        records, next_offset = self.client.scroll(
            name,
            scroll_filter=scroll_filter,
            limit=limit,
            offset=offset,
            with_payload=_selector(with_payload),
            with_vectors=_selector(with_vectors),
        )
        return [stored_point(r) for r in records], next_offset

    def count(self, name: str, count_filter: models.Filter | None = None) -> int:
        return self.client.count(name, count_filter=count_filter, exact=True).count

    # --- search ----------------------------------------------------------------------
    def _search_params(self, exact: bool, hnsw_ef: int | None) -> models.SearchParams | None:
        if self._local:
            return None  # local mode is always exact and warns when given params
        return models.SearchParams(exact=exact, hnsw_ef=None if exact else hnsw_ef)

    def _search_kwargs(
        self,
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
    ) -> dict[str, Any]:
        dense = [float(v) for v in vector]
        return dict(
            query=_nearest(dense, mmr),
            using=using,
            limit=limit,
            query_filter=query_filter,
            score_threshold=score_threshold,
            search_params=self._search_params(exact, hnsw_ef),
            with_payload=with_payload,
            with_vectors=_selector(with_vectors),
        )

    def _fused_kwargs(
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
    ) -> dict[str, Any]:
        if text is not None and not self._has_sparse(name):
            raise SparseVectorMissing(missing_sparse_message(self.resolve(name)))
        fused_limit = max(limit, mmr.candidates) if mmr is not None else limit
        per_vector = prefetch_limit if prefetch_limit is not None else default_prefetch_limit(fused_limit)
        params = self._search_params(exact, None)
        queries: dict[str, Any] = {vector_name: [float(v) for v in vec] for vector_name, vec in vectors.items()}
        if text is not None:
            queries[SPARSE_VECTOR] = self._sparse_query(text)
        # the filter goes inside every prefetch, not only on the fused result
        prefetch = [
            models.Prefetch(
                query=query,
                using=vector_name,
                limit=per_vector,
                filter=query_filter,
                params=params,
                score_threshold=(score_thresholds or {}).get(vector_name),
            )
            for vector_name, query in queries.items()
        ]
        fuse = fusion_weights(list(queries), fusion, weights)
        fusion_query: Any = (
            models.FusionQuery(fusion=models.Fusion.DBSF)
            if fusion == "dbsf"
            else models.RrfQuery(rrf=models.Rrf(k=RRF_K, weights=fuse))
        )
        if mmr is None:
            return dict(prefetch=prefetch, query=fusion_query, query_filter=query_filter, limit=limit, with_payload=True)
        mmr_using = IMAGE_VECTOR if IMAGE_VECTOR in vectors else next(iter(vectors))
        return dict(
            prefetch=[models.Prefetch(prefetch=prefetch, query=fusion_query, limit=mmr.candidates, filter=query_filter)],
            query=_nearest([float(v) for v in vectors[mmr_using]], mmr),
            using=mmr_using,
            query_filter=query_filter,
            limit=limit,
            with_payload=True,
        )

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
        """Nearest neighbours on the named vector `using`; score is cosine similarity."""
        kwargs = self._search_kwargs(
            vector,
            using=using,
            limit=limit,
            query_filter=query_filter,
            score_threshold=score_threshold,
            exact=exact,
            hnsw_ef=hnsw_ef,
            with_payload=with_payload,
            with_vectors=with_vectors,
            mmr=mmr,
        )
        return [hit(p) for p in self.client.query_points(name, **kwargs).points]

    def search_fused(
        self, name: str, vectors: Mapping[str, Sequence[float]], **kwargs: Any
    ) -> list[Hit]:
        """A prefetch per named vector (and BM25 with `text`), fused by the engine; see `Store.search_fused`."""
        return [hit(p) for p in self.client.query_points(name, **self._fused_kwargs(name, vectors, **kwargs)).points]

    def facet(
        self, name: str, key: str, *, filter: models.Filter | None = None, limit: int = 10
    ) -> list[models.FacetValueHit]:
        response = self.client.facet(self.resolve(name), key, facet_filter=filter, limit=limit, exact=True)
        return list(response.hits)

    async def asearch(self, name: str, vector: Sequence[float], **kwargs: Any) -> list[Hit]:
        if self.async_client is None:
            return await super().asearch(name, vector, **kwargs)
        response = await self.async_client.query_points(name, **self._search_kwargs(vector, **kwargs))
        return [hit(p) for p in response.points]

    async def asearch_fused(
        self, name: str, vectors: Mapping[str, Sequence[float]], **kwargs: Any
    ) -> list[Hit]:
        if self.async_client is None:
            return await super().asearch_fused(name, vectors, **kwargs)
        response = await self.async_client.query_points(name, **self._fused_kwargs(name, vectors, **kwargs))
        return [hit(p) for p in response.points]

    def optimize(self, name: str) -> None:
        """No-op: a Qdrant server builds its indexes in the background."""

    def close(self) -> None:
        """Close the sync client. Close `async_client` with `await store.aclose()`."""
        self.client.close()

    async def aclose(self) -> None:
        if self.async_client is not None:
            await self.async_client.close()
        self.client.close()


def _nearest(vector: list[float], mmr: MmrParams | None) -> Any:
    if mmr is None:
        return vector
    # Qdrant's `diversity` is the complement of LangChain's lambda (1 = relevance only)
    return models.NearestQuery(
        nearest=vector, mmr=models.Mmr(diversity=1.0 - mmr.lambda_mult, candidates_limit=mmr.candidates)
    )


def _selector(value: bool | Sequence[str]) -> bool | list[str]:
    return value if isinstance(value, bool) else list(value)
