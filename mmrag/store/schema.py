"""The collection schema: named vectors, payload fields and indexes, and versioning.

A collection records what filled it (model id, vector size, schema version,
quantization) in its metadata. `check_compatible` refuses to mix spaces and
says how to fix the problem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from mmrag.errors import UsageError

if TYPE_CHECKING:
    from qdrant_client import models

SCHEMA_VERSION = 1

IMAGE_VECTOR = "image"
TEXT_VECTOR = "text"
VECTOR_NAMES = (IMAGE_VECTOR, TEXT_VECTOR)
# Collection metadata key: the JPEG draft size ingestion decoded with (0: full size). Query
# images are decoded with the same one, so a stored file used as a query finds itself.
DRAFT_SIZE_KEY = "decode_draft_size"

# The sparse vector: BM25 of the caption (and of manifest text fields the user names),
# computed by the engine itself (qdrant-edge's Bm25 embedded, server-side inference on a
# server) and stored with the IDF modifier, so term weights follow the collection.
SPARSE_VECTOR = "bm25"
BM25_MODEL = "Qdrant/bm25"
# The multilingual tokenizer splits Chinese into words; the default one keeps a whole
# Chinese sentence as one token, so no Chinese keyword would ever match.
BM25_OPTIONS: dict[str, Any] = {"tokenizer": "multilingual"}
DEFAULT_SPARSE_FIELDS = ("caption",)
_NUMBER = re.compile(r"\b(\d+)\b")


def bm25_input(text: str) -> str:
    """Text as handed to the engine's BM25, documents and queries alike.

    The multilingual tokenizer drops tokens made only of digits, so the "7157" of a
    catalogue number "YR-7157" would vanish (and "YR" alone is not unique); prefixing
    standalone numbers with "n" keeps them as words on both sides.
    """
    return _NUMBER.sub(r"n\1", text)

# Payload fields written for every point (manifest metadata is added beside them).
PAYLOAD_FIELDS = (
    "path",  # corpus-relative, POSIX separators
    "caption",
    "sha256",
    "width",
    "height",
    "format",
    "file_size",
    "mtime",
    "model_id",
    "ingested_at",  # RFC 3339, UTC
    "has_caption",  # "yes" | "no": a keyword, because qdrant-edge 0.9 never matches boolean filters
    "tags",
)

# Indexes on the fields people filter on.
# Values are Qdrant's payload schema names ("keyword", ...); either backend also takes a
# qdrant-client `PayloadSchemaType`, whose value is the same name (see `schema_name`).
PAYLOAD_INDEXES: dict[str, str] = {
    "path": "keyword",
    "sha256": "keyword",
    "format": "keyword",
    "model_id": "keyword",
    "has_caption": "keyword",
    "tags": "keyword",
    "width": "integer",
    "height": "integer",
    "mtime": "float",
}

PayloadSchema = Union[str, "models.PayloadSchemaType"]


def schema_name(schema: PayloadSchema) -> str:
    """A payload index type as Qdrant's lower-case name: "keyword", "integer", ..."""
    return str(getattr(schema, "value", schema)).lower()


class SchemaMismatch(UsageError, RuntimeError):
    """The existing collection was built differently from what is asked now. Not retried."""


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    dim: int
    model_id: str
    schema_version: int = SCHEMA_VERSION
    quantization: str | None = None
    payload_indexes: Mapping[str, PayloadSchema] = field(default_factory=lambda: dict(PAYLOAD_INDEXES))
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Payload fields whose text feeds the BM25 vector; None: the collection has no sparse
    # vector (made before it existed) and answers dense searches only.
    sparse_fields: tuple[str, ...] | None = DEFAULT_SPARSE_FIELDS

    @property
    def has_sparse(self) -> bool:
        return self.sparse_fields is not None

    def to_metadata(self) -> dict[str, Any]:
        md: dict[str, Any] = {
            "mmrag_schema_version": self.schema_version,
            "model_id": self.model_id,
            "dim": self.dim,
            "quantization": self.quantization,
            **{k: v for k, v in self.extra.items()},
        }
        if self.sparse_fields is not None:
            md["sparse"] = {"vector": SPARSE_VECTOR, "model": BM25_MODEL, "fields": list(self.sparse_fields)}
        return md

    @classmethod
    def from_metadata(cls, name: str, metadata: Mapping[str, Any] | None) -> CollectionSpec:
        md = dict(metadata or {})
        if "mmrag_schema_version" not in md:
            raise SchemaMismatch(
                f"collection {name!r} was not created by mmrag (no 'mmrag_schema_version' in its metadata). "
                f"Use another collection name (--collection / MMRAG_COLLECTION), or delete it if it is disposable."
            )
        known = {"mmrag_schema_version", "model_id", "dim", "quantization", "sparse"}
        sparse = md.get("sparse")
        return cls(
            name=name,
            dim=int(md["dim"]),
            model_id=str(md["model_id"]),
            schema_version=int(md["mmrag_schema_version"]),
            quantization=md.get("quantization"),
            extra={k: v for k, v in md.items() if k not in known},
            sparse_fields=tuple(sparse["fields"]) if isinstance(sparse, Mapping) else None,
        )


def check_compatible(existing: CollectionSpec, wanted: CollectionSpec) -> None:
    """Raise SchemaMismatch, with the fix, when `wanted` cannot share `existing`'s collection."""
    name = existing.name
    if existing.schema_version > wanted.schema_version:
        raise SchemaMismatch(
            f"collection {name!r} has schema version {existing.schema_version}, newer than this mmrag "
            f"understands ({wanted.schema_version}). Upgrade mmrag."
        )
    if existing.schema_version < wanted.schema_version:
        raise SchemaMismatch(
            f"collection {name!r} has schema version {existing.schema_version}; this mmrag writes "
            f"version {wanted.schema_version}. Rebuild it: `mmrag reindex {name} --rebuild`."
        )
    if existing.model_id != wanted.model_id or existing.dim != wanted.dim:
        raise SchemaMismatch(
            f"collection {name!r} holds vectors of model {existing.model_id!r} (dim {existing.dim}), "
            f"but model {wanted.model_id!r} (dim {wanted.dim}) was requested. Vectors of different models "
            f"cannot be mixed. Use --model {existing.model_id!r} to work with this collection, choose another "
            f"collection with --collection, or rebuild it with `mmrag reindex {name} --rebuild --model ...`."
        )
    if (existing.quantization or None) != (wanted.quantization or None):
        legacy = (" ('int8' is the torch.ao int8 of earlier mmrag versions, replaced by ONNX Runtime's "
                  "'int8-onnx', whose vectors differ)") if "int8" in (existing.quantization, wanted.quantization) else ""
        raise SchemaMismatch(
            f"collection {name!r} was embedded with quantization={existing.quantization!r}, but "
            f"quantization={wanted.quantization!r} was requested; the vectors would differ. Pass the same "
            f"--quantize setting, or rebuild the collection with `mmrag reindex {name} --rebuild`.{legacy}"
        )


def check_model(existing: CollectionSpec | None, model: Any) -> None:
    """The check of `check_compatible`, for a reader: may `model` query `existing`?

    `model` is anything with `model_id`, `dim` and `quantization` (an embedder's `info`).
    Every read path (search, the retriever, tag, classify/similarity/eval with -c) calls
    this, so a query embedded by another model is refused with the message ingest gives,
    instead of random scores or a raw vector-dimension error. `None` (no such collection)
    passes: there is nothing to compare with.
    """
    if existing is None:
        return
    wanted = CollectionSpec(
        name=existing.name, dim=int(model.dim), model_id=str(model.model_id),
        quantization=getattr(model, "quantization", None),
    )
    check_compatible(existing, wanted)


def missing_sparse_message(name: str) -> str:
    return (
        f"collection {name!r} has no BM25 sparse vector (it was built before mmrag had one), so "
        f"target='hybrid' cannot search it; dense targets (image, text, fused) still work. "
        f"Add it with `mmrag reindex {name} --rebuild`."
    )


class SparseVectorMissing(UsageError):
    """Hybrid search on a collection made without the sparse vector."""


def sparse_text(payload: Mapping[str, Any], fields: Sequence[str]) -> str | None:
    """The text BM25 indexes for a point: the named payload fields, lists flattened, joined by newlines."""
    parts: list[str] = []
    for key in fields:
        value = payload.get(key)
        values = value if isinstance(value, (list, tuple)) else [value]
        parts.extend(str(v) for v in values if isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v).strip())
    return "\n".join(parts) or None
