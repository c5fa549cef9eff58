"""Pure conversions between mmrag's records and Qdrant points (ids, payloads, points).

Point ids are uuid5 of the normalised corpus-relative path, so re-ingesting the
same file (on any OS) overwrites its point instead of duplicating it. Nothing
here touches the store; the only I/O is reading an image file when a caller asks
for it inline (`include_image="data_uri"`, `image_content_block`).
"""

from __future__ import annotations

import math
import re
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import PurePath
from typing import Any

import numpy as np

from mmrag.store.points import PointToWrite, SparseText
from mmrag.store.schema import BM25_MODEL, IMAGE_VECTOR, PAYLOAD_FIELDS, SPARSE_VECTOR, TEXT_VECTOR
from mmrag.values import rfc3339

# Fixed forever: changing it would change every point id of every existing collection.
MMRAG_NAMESPACE: uuid.UUID = uuid.UUID("831e4cc0-c18d-5d78-a9a9-141a47355af4")

# Payload fields mmrag writes itself. "tags" is the exception: it comes from manifest metadata.
RESERVED_FIELDS: frozenset[str] = frozenset(PAYLOAD_FIELDS) - {"tags"}

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")



# --- ids ------------------------------------------------------------------------


def normalize_rel_path(rel_path: str | PurePath) -> str:
    """Corpus-relative path in its canonical form: NFC, POSIX separators, no '.' or empty parts.

    Raises ValueError for empty, absolute or '..'-escaping paths: those cannot identify a
    file inside the corpus.
    """
    text = str(rel_path)
    # macOS file systems hand out NFD names; Linux and Windows usually NFC. Same file, same id.
    text = unicodedata.normalize("NFC", text).replace("\\", "/")
    if text.startswith("/") or _WINDOWS_DRIVE.match(text):
        raise ValueError(f"expected a corpus-relative path, got the absolute path {str(rel_path)!r}")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"corpus-relative path {str(rel_path)!r} must not contain '..'")
    if not parts:
        raise ValueError(f"empty corpus-relative path: {str(rel_path)!r}")
    return "/".join(parts)


def point_id(rel_path: str | PurePath) -> str:
    """The point id of a corpus file: uuid5(MMRAG_NAMESPACE, normalised relative path)."""
    return str(uuid.uuid5(MMRAG_NAMESPACE, normalize_rel_path(rel_path)))


# --- payload ----------------------------------------------------------------------


# Flags the payload stores in a keyword form of their own (see build_payload).
FLAG_KEYWORDS: dict[str, tuple[str, str]] = {"has_caption": ("yes", "no")}


def flag_keyword(key: str, value: bool) -> str:
    """A boolean filter value in the form field `key` stores it: "yes"/"no" for has_caption, else bool_keyword."""
    yes, no = FLAG_KEYWORDS.get(key, ("true", "false"))
    return yes if value else no


def bool_keyword(value: bool) -> str:
    """Booleans are stored and filtered as the keywords "true"/"false".

    qdrant-edge 0.9 never matches boolean filters, so a keyword keeps filters working
    the same on every backend. filters.py uses the same mapping.
    """
    return "true" if value else "false"


class _Drop:
    """Marker for values that are left out of the payload (None, NaN)."""


_DROP = _Drop()


def _json_safe(value: Any, where: str) -> Any:
    """A JSON-safe copy of `value`, or _DROP. `where` names the key for error messages."""
    if value is None:
        return _DROP
    if isinstance(value, (bool, np.bool_)):
        return bool_keyword(bool(value))
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating, Decimal)):
        number = float(value)
        # JSON has no NaN/inf; a missing value reads better than a poisoned one.
        return number if math.isfinite(number) else _DROP
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"metadata key {key!r} under {where!r} must be a string")
            converted = _json_safe(item, f"{where}.{key}")
            if converted is not _DROP:
                out[key] = converted
        return out
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        # Positions matter inside a list (as in manifest.json_safe): an unusable element becomes null.
        return [None if (item := _json_safe(x, f"{where}[]")) is _DROP else item for x in items]
    if isinstance(value, np.generic):
        return _json_safe(value.item(), where)
    raise ValueError(
        f"metadata value for {where!r} is not JSON-safe: {type(value).__name__} {value!r}; "
        "use strings, numbers, booleans, lists or dicts"
    )


def payload_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Manifest metadata made JSON-safe (see build_payload); reserved keys raise ValueError."""
    out: dict[str, Any] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metadata key {key!r} must be a non-empty string")
        if key in RESERVED_FIELDS:
            raise ValueError(
                f"metadata key {key!r} collides with a payload field mmrag writes itself "
                f"(reserved: {', '.join(sorted(RESERVED_FIELDS))}); rename that manifest column"
            )
        converted = _json_safe(value, key)
        if converted is _DROP:
            continue
        if key == "tags":
            # Always a list of strings, so `tags=cat` matches whether one tag or many were given.
            converted = [str(tag) for tag in (converted if isinstance(converted, list) else [converted]) if tag is not None]
        out[key] = converted
    return out


def build_payload(
    *,
    rel_path: str,
    caption: str | None,
    sha256: str,
    width: int,
    height: int,
    format: str,
    file_size: int,
    mtime: float,
    model_id: str,
    ingested_at: datetime,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The payload of one point: mmrag's fields (schema.PAYLOAD_FIELDS) plus manifest metadata.

    - `has_caption` is the keyword "yes"/"no"; an empty/blank caption counts as none (stored as None).
    - `ingested_at` must be timezone-aware; it is stored as an RFC 3339 UTC string ("...Z").
    - Metadata values are made JSON-safe: bools -> "true"/"false", numpy scalars -> numbers,
      None/NaN dropped, nested dicts/lists kept. A key equal to a reserved field raises ValueError;
      "tags" is allowed and stored as a list of strings.
    """
    text = caption.strip() if isinstance(caption, str) else ""
    payload: dict[str, Any] = {
        "path": normalize_rel_path(rel_path),
        "caption": caption if text else None,
        "sha256": str(sha256),
        "width": int(width),
        "height": int(height),
        "format": str(format),
        "file_size": int(file_size),
        "mtime": float(mtime),
        "model_id": str(model_id),
        "ingested_at": rfc3339(ingested_at),
        "has_caption": "yes" if text else "no",
    }
    payload.update(payload_metadata(metadata))
    return payload


# --- points -----------------------------------------------------------------------


def _vector_list(vector: Any, name: str, rel_path: str) -> list[float]:
    try:
        array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} vector of {rel_path!r} is not numeric: {exc}") from exc
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} vector of {rel_path!r} must be 1-D and non-empty, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} vector of {rel_path!r} contains NaN or infinite values")
    # tolist() of a float32 array: Python floats that are exactly the float32 values.
    return array.tolist()


def build_point(
    rel_path: str,
    image_vector: Sequence[float] | np.ndarray,
    text_vector: Sequence[float] | np.ndarray | None,
    payload: Mapping[str, Any],
    *,
    dim: int | None = None,
    sparse_text: str | None = None,
) -> PointToWrite:
    """A point with named vectors {"image": ..., "text": ...} ("text" only when given).

    `sparse_text` becomes the "bm25" vector as a `SparseText`: the store has the engine
    compute BM25 from it (qdrant-edge's Bm25, or a server's inference).

    Vectors must be 1-D, finite, of equal length (and of length `dim` when given).
    A payload "path" that disagrees with `rel_path` is refused: it would orphan the id.
    """
    path = normalize_rel_path(rel_path)
    if "path" in payload and payload["path"] != path:
        raise ValueError(f"payload path {payload['path']!r} does not match rel_path {path!r}")
    vectors = {IMAGE_VECTOR: _vector_list(image_vector, IMAGE_VECTOR, path)}
    if text_vector is not None:
        vectors[TEXT_VECTOR] = _vector_list(text_vector, TEXT_VECTOR, path)
    for name, values in vectors.items():
        expected = dim if dim is not None else len(vectors[IMAGE_VECTOR])
        if len(values) != expected:
            raise ValueError(f"{name} vector of {path!r} has {len(values)} dimensions, expected {expected}")
    named: dict[str, Any] = dict(vectors)
    if sparse_text is not None and sparse_text.strip():
        named[SPARSE_VECTOR] = SparseText(text=sparse_text, model=BM25_MODEL)
    return PointToWrite(id=point_id(path), vector=named, payload=dict(payload))
