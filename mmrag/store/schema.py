"""The collection schema: named vectors, payload fields and indexes, and versioning.

A collection records what filled it (model id, vector size, schema version,
quantization) in its metadata. `check_compatible` refuses to mix spaces and
says how to fix the problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qdrant_client import models

from mmrag.errors import UsageError

SCHEMA_VERSION = 1

IMAGE_VECTOR = "image"
TEXT_VECTOR = "text"
VECTOR_NAMES = (IMAGE_VECTOR, TEXT_VECTOR)
# Collection metadata key: the JPEG draft size ingestion decoded with (0: full size). Query
# images are decoded with the same one, so a stored file used as a query finds itself.
DRAFT_SIZE_KEY = "decode_draft_size"

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
PAYLOAD_INDEXES: dict[str, models.PayloadSchemaType] = {
    "path": models.PayloadSchemaType.KEYWORD,
    "sha256": models.PayloadSchemaType.KEYWORD,
    "format": models.PayloadSchemaType.KEYWORD,
    "model_id": models.PayloadSchemaType.KEYWORD,
    "has_caption": models.PayloadSchemaType.KEYWORD,
    "tags": models.PayloadSchemaType.KEYWORD,
    "width": models.PayloadSchemaType.INTEGER,
    "height": models.PayloadSchemaType.INTEGER,
    "mtime": models.PayloadSchemaType.FLOAT,
}


class SchemaMismatch(UsageError, RuntimeError):
    """The existing collection was built differently from what is asked now. Not retried."""


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    dim: int
    model_id: str
    schema_version: int = SCHEMA_VERSION
    quantization: str | None = None
    payload_indexes: Mapping[str, models.PayloadSchemaType] = field(default_factory=lambda: dict(PAYLOAD_INDEXES))
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, Any]:
        return {
            "mmrag_schema_version": self.schema_version,
            "model_id": self.model_id,
            "dim": self.dim,
            "quantization": self.quantization,
            **{k: v for k, v in self.extra.items()},
        }

    @classmethod
    def from_metadata(cls, name: str, metadata: Mapping[str, Any] | None) -> CollectionSpec:
        md = dict(metadata or {})
        if "mmrag_schema_version" not in md:
            raise SchemaMismatch(
                f"collection {name!r} was not created by mmrag (no 'mmrag_schema_version' in its metadata). "
                f"Use another collection name (--collection / MMRAG_COLLECTION), or delete it if it is disposable."
            )
        known = {"mmrag_schema_version", "model_id", "dim", "quantization"}
        return cls(
            name=name,
            dim=int(md["dim"]),
            model_id=str(md["model_id"]),
            schema_version=int(md["mmrag_schema_version"]),
            quantization=md.get("quantization"),
            extra={k: v for k, v in md.items() if k not in known},
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
        raise SchemaMismatch(
            f"collection {name!r} was embedded with quantization={existing.quantization!r}, but "
            f"quantization={wanted.quantization!r} was requested; the vectors would differ. Pass the same "
            f"--quantize setting, or rebuild the collection with `mmrag reindex {name} --rebuild`."
        )
