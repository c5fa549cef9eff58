"""Read image manifests (`.jsonl`, `.csv`, `.parquet`) as a stream of CorpusItems.

A manifest has one row per image: a required `path` column (relative to the
corpus root, or absolute), an optional `caption`, and any other columns, which
become the item's `metadata` (JSON-safe Python values). Rows are streamed: a
manifest with millions of rows is never held in memory whole.

Bad rows never stop the read: a row whose file is missing, whose JSON does not
parse, or whose CSV field count is wrong is yielded as a SkippedFile. A manifest
without a `path` column is a caller error and raises ValueError.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import math
import os
import stat
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mmrag.corpus.scan import MAX_CAPTION_BYTES, outside_root, to_rel_path
from mmrag.corpus.types import CorpusItem, SkippedFile
from mmrag.values import rfc3339

PATH_COLUMN = "path"
CAPTION_COLUMN = "caption"
MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".parquet")

_DROP = object()  # marker: value is dropped from metadata (None, NaN, empty cell, binary)


def read_manifest(
    path: Path, *, root: Path | None = None, batch_size: int = 4096, allow_outside_root: bool = False
) -> Iterator[CorpusItem | SkippedFile]:
    """Stream the rows of a manifest as CorpusItem (or SkippedFile for bad rows).

    `root` is the folder that relative `path` values are resolved against and
    that `rel_path` is computed from; it defaults to the manifest's folder.
    Later rows repeating an already seen path are skipped (a path is a point id).
    A row whose path leaves the root (`../x`, an absolute path elsewhere, a symlink
    pointing out) is a skipped row, and nothing outside the root is opened, unless
    `allow_outside_root` (MMRAG_ALLOW_OUTSIDE_ROOT).
    """
    path = Path(path)
    root, rows = _open_rows(path, root, PATH_COLUMN, batch_size)
    first_seen: dict[str, str] = {}  # rel_path -> where it was first listed
    for where, row in rows:
        if isinstance(row, SkippedFile):
            yield row
            continue
        result = _row_to_item(row, root, where, path.name, allow_outside_root)
        if isinstance(result, CorpusItem):
            if result.rel_path in first_seen:
                yield SkippedFile(
                    result.rel_path, f"duplicate manifest row ({where}; first listed at {first_seen[result.rel_path]})"
                )
                continue
            first_seen[result.rel_path] = where
        yield result


# --------------------------------------------------------------------------- rows


def read_pairs(
    path: Path | str,
    *,
    root: Path | str | None = None,
    path_column: str = PATH_COLUMN,
    caption_column: str = CAPTION_COLUMN,
) -> list[tuple[Path, str]]:
    """(absolute image path, caption) pairs of a manifest, for evaluation and fine-tuning.

    The same formats, encodings and path rules as `read_manifest` (relative paths
    against `root`, default the manifest's folder). Unlike an ingestion manifest, a
    path may repeat (one row per caption) and a JSONL row may carry a `captions`
    list instead of `caption`. Rows without a caption are ignored; a row that cannot
    be read raises ValueError naming it, since a silently shorter set changes the metrics.
    """
    path = Path(path)
    base, rows = _open_rows(path, root, path_column, 4096)
    pairs: list[tuple[Path, str]] = []
    for where, row in rows:
        if isinstance(row, SkippedFile):
            raise ValueError(f"{path.name}: {row.reason}")
        raw = row.get(path_column)
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"{path.name} {where}: missing or invalid {path_column!r}")
        resolved, _ = resolve_manifest_path(raw.strip(), base)
        captions = row.get("captions")
        if not isinstance(captions, list):
            captions = [row.get(caption_column)]
        for cap in captions:
            text = _clean_caption(cap)
            if text is not None:
                pairs.append((resolved, text))
    return pairs


def _open_rows(
    path: Path, root: Path | str | None, path_column: str, batch_size: int
) -> tuple[Path, Iterator[tuple[str, Mapping[str, Any] | SkippedFile]]]:
    """(the folder relative paths resolve against, the rows) of a manifest of any supported format."""
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ValueError(
            f"unsupported manifest format {path.name!r}: expected one of {', '.join(MANIFEST_SUFFIXES)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    base = Path(os.path.normpath(Path(root if root is not None else path.parent).absolute()))
    if suffix in (".jsonl", ".ndjson"):
        return base, _jsonl_rows(path, path_column)
    if suffix == ".csv":
        return base, _csv_rows(path, path_column)
    return base, _parquet_rows(path, batch_size, path_column)


def _jsonl_rows(path: Path, path_column: str = PATH_COLUMN) -> Iterator[tuple[str, Mapping[str, Any] | SkippedFile]]:
    saw_path_column = False
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"line {lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
            except UnicodeDecodeError as exc:
                yield where, SkippedFile(f"{path.name}:{lineno}", f"invalid UTF-8 on line {lineno}: {exc}")
                continue
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, SkippedFile(f"{path.name}:{lineno}", f"bad JSON on line {lineno}: {exc.msg}")
                continue
            if not isinstance(row, dict):
                yield where, SkippedFile(
                    f"{path.name}:{lineno}", f"line {lineno} is not a JSON object ({type(row).__name__})"
                )
                continue
            if path_column not in row and not saw_path_column:
                # The first record decides the schema: without `path` the whole file is wrong.
                raise ValueError(
                    f"manifest {path} has no {path_column!r} column; "
                    f"columns found on line {lineno}: {sorted(row)}"
                )
            saw_path_column = True
            yield where, row


def _csv_rows(path: Path, path_column: str = PATH_COLUMN) -> Iterator[tuple[str, Mapping[str, Any] | SkippedFile]]:
    # Long captions exceed csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        # utf-8-sig: Excel writes a BOM that would otherwise glue itself to the first column name.
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"manifest {path} is empty (no header row)")
            columns = [c.strip() for c in header]
            if path_column not in columns:
                raise ValueError(f"manifest {path} has no {path_column!r} column; columns found: {columns}")
            for record in reader:
                where = f"line {reader.line_num}"
                if not record or all(not cell.strip() for cell in record):
                    continue  # blank line
                if len(record) != len(columns):
                    yield where, SkippedFile(
                        f"{path.name}:{reader.line_num}",
                        f"{where}: expected {len(columns)} fields, got {len(record)}",
                    )
                    continue
                # Cells stay strings: CSV carries no types, and guessing turns "007" into 7.
                yield where, {c: v for c, v in zip(columns, record) if v != ""}
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"manifest {path} is not valid UTF-8 ({exc.reason} at byte {exc.start}); re-save it as UTF-8"
        ) from exc


def _parquet_rows(
    path: Path, batch_size: int, path_column: str = PATH_COLUMN
) -> Iterator[tuple[str, Mapping[str, Any] | SkippedFile]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    columns = pf.schema_arrow.names
    if path_column not in columns:
        raise ValueError(f"manifest {path} has no {path_column!r} column; columns found: {columns}")
    rowno = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            rowno += 1
            yield f"row {rowno}", row


# --------------------------------------------------------------------------- values


def json_safe(value: Any) -> Any:
    """A JSON-serialisable version of a manifest value; `_DROP` for values that carry nothing."""
    if value is None or isinstance(value, (bool, int, str)):
        return _DROP if value is None else value
    if isinstance(value, float):
        return value if math.isfinite(value) else _DROP
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else _DROP
    if isinstance(value, dt.datetime):
        return rfc3339(value)  # the payload rule: UTC, naive read as UTC
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()  # a calendar date is not a moment: as the payload converter writes it
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _DROP  # binary blobs (thumbnails, old embeddings) do not belong in a JSON payload
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            safe = json_safe(v)
            if safe is not _DROP:
                out[str(k)] = safe
        return out
    if isinstance(value, (list, tuple)):
        # Positions matter inside a list: an unusable element becomes null, not dropped.
        return [None if (s := json_safe(v)) is _DROP else s for v in value]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return json_safe(item())
        except Exception:
            pass
    return str(value)


def _clean_caption(value: Any) -> str | None:
    safe = json_safe(value)
    if safe is _DROP or isinstance(safe, (dict, list)):
        return None
    text = str(safe).strip()
    return text or None


def _row_to_item(
    row: Mapping[str, Any], root: Path, where: str, manifest_name: str, allow_outside_root: bool = False
) -> CorpusItem | SkippedFile:
    raw_path = row.get(PATH_COLUMN)
    if not isinstance(raw_path, str) or not raw_path.strip() or "\0" in raw_path:
        return SkippedFile(f"{manifest_name}:{where.split()[-1]}", f"{where}: missing or invalid {PATH_COLUMN!r}")
    resolved, rel_path = resolve_manifest_path(raw_path.strip(), root)
    if not allow_outside_root and (reason := outside_root(resolved, root)):
        return SkippedFile(rel_path, f"{where}: {reason}")
    try:
        st = os.stat(resolved)
    except FileNotFoundError:
        return SkippedFile(rel_path, "file not found")
    except OSError as exc:
        return SkippedFile(rel_path, f"unreadable: {exc.strerror or exc}")
    if not stat.S_ISREG(st.st_mode):
        return SkippedFile(rel_path, "not a regular file")

    caption = _clean_caption(row.get(CAPTION_COLUMN))
    if caption is not None and len(caption.encode("utf-8")) > MAX_CAPTION_BYTES:
        # The same limit as sidecar captions: a caption is text for a text encoder, not a document.
        return SkippedFile(rel_path, f"{where}: caption is larger than {MAX_CAPTION_BYTES} bytes")
    metadata: dict[str, Any] = {}
    for key, value in row.items():
        if key in (PATH_COLUMN, CAPTION_COLUMN):
            continue
        safe = json_safe(value)
        if safe is not _DROP:
            metadata[str(key)] = safe
    return CorpusItem(
        path=resolved,
        rel_path=rel_path,
        file_size=st.st_size,
        mtime=st.st_mtime,
        caption=caption,
        metadata=metadata,
    )


def resolve_manifest_path(raw: str, root: Path) -> tuple[Path, str]:
    """(absolute path, rel_path) of a manifest `path` value.

    rel_path is relative to `root` when the file lies under it; a file outside
    the root keeps its absolute POSIX path as identity (still unique and stable).
    """
    candidate = Path(raw)
    absolute = Path(os.path.normpath(candidate if candidate.is_absolute() else root / candidate))
    try:
        rel = absolute.relative_to(root)
        return absolute, to_rel_path(rel.parts)
    except ValueError:
        return absolute, to_rel_path([absolute.as_posix()])

