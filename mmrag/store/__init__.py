"""Vector storage: one `Store` contract, two Qdrant backends, and the factory that picks one."""

from __future__ import annotations

from mmrag.store.base import MmrParams, Store, ThreadedAsyncMixin
from mmrag.store.client import QdrantClientStore
from mmrag.store.edge import BOOLEAN_FILTER_MESSAGE, RRF_K, EdgeStore, to_edge_filter
from mmrag.store.factory import open_store
from mmrag.store.schema import (
    IMAGE_VECTOR,
    PAYLOAD_FIELDS,
    PAYLOAD_INDEXES,
    SCHEMA_VERSION,
    SPARSE_VECTOR,
    TEXT_VECTOR,
    VECTOR_NAMES,
    CollectionSpec,
    SchemaMismatch,
    check_compatible,
)

# --- helpers from convert.py / filters.py / retry.py (wired by the integrator) ---
# e.g.: from .convert import ...; from .filters import ...; from .retry import ...

__all__ = [
    "BOOLEAN_FILTER_MESSAGE",
    "CollectionSpec",
    "EdgeStore",
    "IMAGE_VECTOR",
    "MmrParams",
    "PAYLOAD_FIELDS",
    "PAYLOAD_INDEXES",
    "QdrantClientStore",
    "RRF_K",
    "SCHEMA_VERSION",
    "SchemaMismatch",
    "SPARSE_VECTOR",
    "TEXT_VECTOR",
    "ThreadedAsyncMixin",
    "VECTOR_NAMES",
    "Store",
    "check_compatible",
    "open_store",
    "to_edge_filter",
]
