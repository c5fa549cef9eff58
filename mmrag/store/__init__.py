"""Vector storage: one `Store` contract, two Qdrant backends, and the factory that picks one.

Names load on first use (PEP 562): the embedded store's query path never imports
qdrant_client (about 1.2 s), which only the client backend and the filter builders need.
"""

from __future__ import annotations

from mmrag.lazy import lazy_exports

_EXPORTS = {
    "BOOLEAN_FILTER_MESSAGE": "mmrag.store.edge",
    "CollectionSpec": "mmrag.store.schema",
    "EdgeStore": "mmrag.store.edge",
    "Hit": "mmrag.store.points",
    "IMAGE_VECTOR": "mmrag.store.schema",
    "MmrParams": "mmrag.store.base",
    "PAYLOAD_FIELDS": "mmrag.store.schema",
    "PAYLOAD_INDEXES": "mmrag.store.schema",
    "QdrantClientStore": "mmrag.store.client",
    "RRF_K": "mmrag.store.base",
    "SCHEMA_VERSION": "mmrag.store.schema",
    "SPARSE_VECTOR": "mmrag.store.schema",
    "SchemaMismatch": "mmrag.store.schema",
    "Store": "mmrag.store.base",
    "StoredPoint": "mmrag.store.points",
    "TEXT_VECTOR": "mmrag.store.schema",
    "ThreadedAsyncMixin": "mmrag.store.base",
    "VECTOR_NAMES": "mmrag.store.schema",
    "check_compatible": "mmrag.store.schema",
    "open_store": "mmrag.store.factory",
    "to_edge_filter": "mmrag.store.edge",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
