"""Export a collection to Parquet and import it elsewhere, without re-embedding.

The file is self-describing: the collection's spec (model id, dim, schema
version, quantization, extra metadata such as tagging labels) and its payload
indexes travel in the Parquet schema metadata under `mmrag.*` keys. Columns:

    id       string                                   point id (uuid)
    image    fixed_size_list<float32>[dim]            the image vector
    text     fixed_size_list<float32>[dim], nullable  the caption vector (null: no caption)
    payload  string                                   the payload as JSON

Vectors are written as float32, exactly as the store returns them, so an
edge → server → edge round trip keeps every bit. Both directions stream one
scroll page / one record batch at a time: memory is bounded by `batch`, not
by the collection's size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from qdrant_client import models

from mmrag.errors import UsageError
from mmrag.store.base import Store
from mmrag.store.integrity import record_points
from mmrag.store.schema import IMAGE_VECTOR, TEXT_VECTOR, CollectionSpec, SchemaMismatch, check_compatible

__all__ = ["EXPORT_FORMAT_VERSION", "export_collection", "import_collection", "read_export_spec"]

EXPORT_FORMAT_VERSION = 1
_META_FORMAT = b"mmrag.export_format"
_META_SPEC = b"mmrag.collection_metadata"
_META_INDEXES = b"mmrag.payload_indexes"
_META_SOURCE = b"mmrag.source_collection"
_META_COUNT = b"mmrag.point_count"


def _schema(dim: int, metadata: dict[bytes, bytes]) -> pa.Schema:
    vec = pa.list_(pa.float32(), dim)
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field(IMAGE_VECTOR, vec, nullable=False),
            pa.field(TEXT_VECTOR, vec, nullable=True),
            pa.field("payload", pa.string(), nullable=False),
        ],
        metadata=metadata,
    )


def _vectors_column(rows: list[Any], dim: int, name: str, *, nullable: bool) -> pa.Array:
    mask = np.array([v is None for v in rows], dtype=bool)
    if mask.any() and not nullable:
        raise ValueError(f"a point has no {name!r} vector; every mmrag point has one")
    flat = np.zeros((len(rows), dim), dtype=np.float32)
    for i, v in enumerate(rows):
        if v is not None:
            if len(v) != dim:
                raise ValueError(f"{name!r} vector of length {len(v)}, expected {dim}")
            flat[i] = np.asarray(v, dtype=np.float32)
    values = pa.array(flat.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(mask) if mask.any() else None)


def export_collection(
    store: Store, collection: str, out_parquet: Path | str, *, batch: int = 1024
) -> int:
    """Write every point of `collection` (an alias is resolved) with its vectors and payload. Returns the count.

    One scroll page of `batch` points becomes one Parquet row group.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    real = store.resolve(collection)
    spec = store.get_spec(real)
    if spec is None:
        raise ValueError(f"collection {collection!r} does not exist")
    metadata = {
        _META_FORMAT: str(EXPORT_FORMAT_VERSION).encode(),
        _META_SPEC: json.dumps(spec.to_metadata(), sort_keys=True).encode(),
        _META_INDEXES: json.dumps({k: str(getattr(v, "value", v)) for k, v in spec.payload_indexes.items()}).encode(),
        _META_SOURCE: real.encode(),
    }
    schema = _schema(spec.dim, metadata)
    out = Path(out_parquet)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    total = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            offset = None
            while True:
                records, offset = store.scroll(
                    real, limit=batch, offset=offset, with_payload=True, with_vectors=True
                )
                if records:
                    writer.write_table(_records_table(records, spec.dim, schema), row_group_size=batch)
                    total += len(records)
                if offset is None:
                    break
            # the count is known only at the end; the footer metadata is written on close
            writer.add_key_value_metadata({_META_COUNT.decode(): str(total)})
        tmp.replace(out)  # a crash never leaves a truncated file under the final name
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return total


def _records_table(records: list[models.Record], dim: int, schema: pa.Schema) -> pa.Table:
    images, texts = [], []
    for r in records:
        vec = r.vector if isinstance(r.vector, dict) else {}
        if IMAGE_VECTOR not in vec:
            raise ValueError(f"point {r.id} has no {IMAGE_VECTOR!r} vector")
        images.append(vec[IMAGE_VECTOR])
        texts.append(vec.get(TEXT_VECTOR))
    columns = [
        pa.array([str(r.id) for r in records], type=pa.string()),
        _vectors_column(images, dim, IMAGE_VECTOR, nullable=False),
        _vectors_column(texts, dim, TEXT_VECTOR, nullable=True),
        pa.array([json.dumps(r.payload or {}, ensure_ascii=False, sort_keys=True) for r in records], type=pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def read_export_spec(in_parquet: Path | str, *, collection: str | None = None) -> CollectionSpec:
    """The collection spec recorded in an export file (named `collection`, or the source's name)."""
    try:
        md = pq.read_schema(in_parquet).metadata or {}
    except (OSError, pa.ArrowException) as exc:
        raise UsageError(f"cannot read {in_parquet} as an mmrag export: {exc}") from exc
    if _META_SPEC not in md:
        raise ValueError(f"{in_parquet}: not an mmrag export (no {_META_SPEC.decode()!r} in the Parquet metadata)")
    version = int(md.get(_META_FORMAT, b"0"))
    if version > EXPORT_FORMAT_VERSION:
        raise ValueError(f"{in_parquet}: export format {version} is newer than this mmrag reads; upgrade mmrag")
    name = collection or md[_META_SOURCE].decode()
    spec = CollectionSpec.from_metadata(name, json.loads(md[_META_SPEC]))
    if _META_INDEXES in md:
        indexes = {k: models.PayloadSchemaType(v) for k, v in json.loads(md[_META_INDEXES]).items()}
        spec = CollectionSpec(
            name=spec.name, dim=spec.dim, model_id=spec.model_id, schema_version=spec.schema_version,
            quantization=spec.quantization, payload_indexes=indexes, extra=spec.extra,
        )
    return spec


def import_collection(
    store: Store, in_parquet: Path | str, *, collection: str | None = None, batch: int = 1024
) -> int:
    """Create the collection from the file's metadata (or check the existing one matches) and upsert every point.

    `collection` defaults to the exported collection's name; an alias is resolved. Idempotent:
    the same ids are overwritten on a second import. Returns the number of points written.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    name = collection or read_export_spec(in_parquet).name
    real = store.resolve(name)
    spec = read_export_spec(in_parquet, collection=real)
    existing = store.get_spec(real)
    if existing is not None:
        try:
            check_compatible(existing, spec)
        except SchemaMismatch as exc:
            raise SchemaMismatch(f"cannot import {in_parquet} into {real!r}: {exc}") from exc
    created = False
    total = 0
    try:
        pf = pq.ParquetFile(in_parquet)
        if existing is None:
            store.create_collection(spec)
            created = True
        for rb in pf.iter_batches(batch_size=batch):
            store.upsert(real, _points_of(rb, spec.dim))
            record_points(store, real)
            total += rb.num_rows
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        # A garbled file must not leave a new, empty or half-filled collection behind.
        if created:
            store.delete_collection(real)
        kept = f"; {real!r} keeps its points and the {total} imported before the error" if not created else \
            f"; nothing was kept (the new collection {real!r} was removed)"
        reason = " ".join(str(exc).split())  # pyarrow messages span lines
        raise UsageError(f"cannot import {in_parquet}: {type(exc).__name__}: {reason}{kept}") from exc
    return total


def _points_of(rb: pa.RecordBatch, dim: int) -> list[models.PointStruct]:
    ids = rb.column("id").to_pylist()
    payloads = rb.column("payload").to_pylist()
    image = _as_matrix(rb.column(IMAGE_VECTOR), dim)
    text_col = rb.column(TEXT_VECTOR)
    text = _as_matrix(text_col, dim)
    text_valid = text_col.is_valid().to_numpy(zero_copy_only=False)
    points = []
    for i, pid in enumerate(ids):
        # tolist() turns float32 into Python floats that convert back to the same float32 bits
        vector: dict[str, list[float]] = {IMAGE_VECTOR: image[i].tolist()}
        if text_valid[i]:
            vector[TEXT_VECTOR] = text[i].tolist()
        points.append(models.PointStruct(id=pid, vector=vector, payload=json.loads(payloads[i])))
    return points


def _as_matrix(arr: pa.FixedSizeListArray, dim: int) -> np.ndarray:
    # .values ignores the validity mask; nulls still occupy dim slots in a fixed-size list
    flat = arr.values.to_numpy(zero_copy_only=False)
    start = arr.offset * dim
    return flat[start : start + len(arr) * dim].reshape(len(arr), dim).astype(np.float32, copy=False)
