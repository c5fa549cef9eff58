"""`EdgeStore`: the embedded, on-disk default backend over qdrant-edge.

Layout under `home`::

    home/aliases.json                      alias -> collection (replaced atomically)
    home/aliases.lock                      serialises alias writers across processes
    home/collections/<name>/meta.json      {"metadata": spec metadata, "payload_indexes": {...}, "vectors": {...}}
    home/collections/<name>/shard/         one qdrant-edge EdgeShard

qdrant-edge has no collections, aliases or collection metadata; this module
supplies them with small JSON files and speaks qdrant-client `models` at its
surface so callers cannot tell it from `QdrantClientStore`.

    home/collections/<name>/shard.lock     our flock, taken BEFORE qdrant-edge opens the shard

Limitation: qdrant-edge lets only ONE process open a shard directory at a time
(the shard's WAL is locked). Worse, qdrant-edge 0.9's loader deletes the holder's
`tracker_journal.dat` files and rewrites `tracker.dat` before it notices the WAL
lock (bench/repro/edge_second_open.py), so a refused second process breaks the
holder's next flush. We therefore never let the engine try: each shard is guarded
by our own exclusive flock on `shard.lock`. A reader waits up to `lock_wait_s` for
it, a writer is refused at once; both get `ShardLockHeld` (exit 3) naming the
holder (pid, command, since). Inside one process shards are opened lazily,
cached, and shared by all threads.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from mmrag.errors import LockHeldError, RunFailed, UsageError
from mmrag.flock import describe_holder, process_holder, release, try_lock
from mmrag.store.base import RRF_K, FusionMethod, MmrParams, ThreadedAsyncMixin, default_prefetch_limit, fusion_weights
from mmrag.store.integrity import count_message, recorded_points
from mmrag.store.points import Hit, PointToWrite, SparseText, StoredPoint
from mmrag.store.qdrant_models import is_model, models
from mmrag.store.schema import (
    BM25_MODEL,
    IMAGE_VECTOR,
    PAYLOAD_INDEXES,
    SPARSE_VECTOR,
    VECTOR_NAMES,
    CollectionSpec,
    PayloadSchema,
    SparseVectorMissing,
    bm25_input,
    missing_sparse_message,
    schema_name,
)
from mmrag.store.space import CREATE_BYTES, DEFAULT_MIN_FREE_BYTES, DiskFull, estimate_points_bytes, is_enospc, require_free
from mmrag.values import rfc3339

try:  # POSIX only; elsewhere alias writers are serialised per process only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# Same constant qdrant-client (local mode) and the Qdrant server use by default,
# so both backends fuse identically: score = sum over rankings of 1 / (k + rank0).

log = logging.getLogger(__name__)

# A `.creating-*` / `.deleted-*` folder without a lock file is a leftover once it is this old
# (the lock file is made right after the folder, so only a kill in between leaves none).
LEFTOVER_AGE_S = 60.0

# Opens a shard in a child process: qdrant-edge aborts (SIGABRT) on some damaged id trackers,
# e.g. trying to allocate 92 GB, which no Python code can catch.
_PROBE = """
import json, sys
import qdrant_edge as qe
shard = qe.EdgeShard.load(sys.argv[1], None)
print(json.dumps({"count": int(shard.count(qe.CountRequest(exact=True)))}))
shard.close()
"""

_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")

_SCHEMA_TYPES: dict[str, Any] = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "geo": qe.PayloadSchemaType.Geo,
    "text": qe.PayloadSchemaType.Text,
    "bool": qe.PayloadSchemaType.Bool,
    "datetime": qe.PayloadSchemaType.Datetime,
    "uuid": qe.PayloadSchemaType.Uuid,
}

BOOLEAN_FILTER_MESSAGE = (
    "boolean payload filters never match in qdrant-edge 0.9; mmrag stores flags as keywords "
    "(\"yes\"/\"no\", e.g. has_caption), so filter with MatchValue(value=\"yes\") instead of {value!r}"
)


class ShardLockHeld(LockHeldError, RuntimeError):
    """Another process has the collection's shard open (qdrant-edge allows one per shard)."""

    def __init__(self, collection: str, path: Path, holder: dict[str, Any] | None, *, waited_s: float):
        self.collection, self.path, self.holder = collection, path, holder or {}
        waited = f" (waited {waited_s:g} s)" if waited_s > 0 else ""
        super().__init__(
            f"collection {collection!r} is open in another process: {describe_holder(holder)}{waited}. "
            f"The embedded store allows one process per collection; wait for it to finish, stop it, "
            f"or use a Qdrant server (QDRANT_URL). If a running `mmrag serve` holds it, rebuild instead: "
            f"`mmrag reindex {re.sub(r'__v[0-9]+$', '', collection)} --rebuild` writes a new version beside it, "
            f"and the server switches to it with no restart. Lock file: {path}"
        )


class StoreReadOnly(UsageError):
    """The store folder is on a read-only filesystem: qdrant-edge cannot open a shard there at all."""

    http_status = 503  # the server's configuration, not the request, is at fault

    def __init__(self, home: Path, what: str):
        self.home = Path(home)
        super().__init__(
            f"cannot {what}: the store folder {home} (MMRAG_HOME) is on a read-only filesystem, and the "
            f"embedded store must write its lock, WAL and mmap files even to read, so mount it read-write, "
            f"copy it somewhere writable (cp -a {home} /tmp/mmrag-home, then MMRAG_HOME=/tmp/mmrag-home) "
            f"or serve the collections from a Qdrant server (QDRANT_URL)"
        )


def is_read_only_fs(exc: BaseException) -> bool:
    """EROFS from Python, or qdrant-edge's own report of it (a plain Exception naming os error 30)."""
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return True
    return isinstance(exc, Exception) and "Read-only file system (os error 30)" in str(exc)


@contextmanager
def _read_only_as(home: Path, what: str) -> Iterator[None]:
    try:
        yield
    except StoreReadOnly:
        raise
    except Exception as exc:
        if is_read_only_fs(exc):
            raise StoreReadOnly(home, what) from exc
        raise


class _HeldLock:
    """Our flock on one shard; released on close, or when the store is garbage-collected with it."""

    def __init__(self, fd: int):
        self.fd: int | None = fd

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            release(fd)

    def __del__(self) -> None:  # a store dropped without close() (as the engine drops its shard)
        try:
            self.release()
        except OSError:
            pass


class StoreCorrupted(RunFailed):
    """A file of the embedded store cannot be read: named, with what to do."""


# ---------------------------------------------------------------------------
# JSON files
# ---------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON so that readers see either the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and is_enospc(exc):
            raise DiskFull(path, f"no space left on device while writing {path}; the previous version is kept") from exc
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# qdrant-client models -> qdrant_edge
# ---------------------------------------------------------------------------


def _id_in(point_id: Any) -> int | str:
    if isinstance(point_id, uuid.UUID):
        return str(point_id)
    if isinstance(point_id, (int, str)) and not isinstance(point_id, bool):
        return point_id
    raise TypeError(f"point ids are UUID strings or unsigned ints, got {point_id!r}")


def _id_out(point_id: Any) -> int | str:
    return str(point_id) if isinstance(point_id, uuid.UUID) else point_id


def to_edge_schema(schema: PayloadSchema) -> Any:
    """PayloadSchemaType (or its string value) -> qdrant_edge.PayloadSchemaType."""
    key = schema_name(schema)
    try:
        return _SCHEMA_TYPES[key]
    except KeyError:
        raise ValueError(f"unsupported payload index type {schema!r}; use one of {sorted(_SCHEMA_TYPES)}") from None


def _check_not_bool(value: Any) -> None:
    if isinstance(value, bool):
        raise ValueError(BOOLEAN_FILTER_MESSAGE.format(value=value))


def _to_edge_match(match: Any) -> Any:
    if isinstance(match, models.MatchValue):
        _check_not_bool(match.value)
        return qe.MatchValue(match.value)
    if isinstance(match, models.MatchAny):
        for value in match.any:
            _check_not_bool(value)
        return qe.MatchAny(list(match.any))  # type: ignore[arg-type]  # str or int values, checked above
    if isinstance(match, models.MatchExcept):
        for value in match.except_:
            _check_not_bool(value)
        return qe.MatchExcept(list(match.except_))  # type: ignore[arg-type]  # str or int values, checked above
    if isinstance(match, models.MatchText):
        return qe.MatchText(match.text)
    if isinstance(match, models.MatchTextAny):
        return qe.MatchTextAny(match.text_any)
    if isinstance(match, models.MatchPhrase):
        return qe.MatchPhrase(match.phrase)
    if isinstance(match, models.MatchPrefix):
        return qe.MatchPrefix(match.prefix)
    if isinstance(match, models.MatchSubstring):
        return qe.MatchSubstring(match.substring)
    raise TypeError(f"unsupported match condition for qdrant-edge: {match!r}")


def _rfc3339(value: dt.datetime | dt.date | None) -> str | None:
    return None if value is None else rfc3339(value)


def _to_edge_range(rng: Any) -> Any:
    if isinstance(rng, models.DatetimeRange):
        return qe.RangeDateTime(gte=_rfc3339(rng.gte), gt=_rfc3339(rng.gt), lte=_rfc3339(rng.lte), lt=_rfc3339(rng.lt))
    if isinstance(rng, models.Range):
        return qe.RangeFloat(gte=rng.gte, gt=rng.gt, lte=rng.lte, lt=rng.lt)
    raise TypeError(f"unsupported range for qdrant-edge: {rng!r}")


def _geo_point(point: models.GeoPoint) -> Any:
    return qe.GeoPoint(lon=point.lon, lat=point.lat)


def _to_edge_field_condition(cond: models.FieldCondition) -> Any:
    kwargs: dict[str, Any] = {}
    if cond.match is not None:
        kwargs["match"] = _to_edge_match(cond.match)
    if cond.range is not None:
        kwargs["range"] = _to_edge_range(cond.range)
    if cond.values_count is not None:
        vc = cond.values_count
        kwargs["values_count"] = qe.ValuesCount(lt=vc.lt, gt=vc.gt, lte=vc.lte, gte=vc.gte)
    if cond.geo_bounding_box is not None:
        box = cond.geo_bounding_box
        kwargs["geo_bounding_box"] = qe.GeoBoundingBox(_geo_point(box.top_left), _geo_point(box.bottom_right))
    if cond.geo_radius is not None:
        kwargs["geo_radius"] = qe.GeoRadius(_geo_point(cond.geo_radius.center), cond.geo_radius.radius)
    if cond.geo_polygon is not None:
        poly = cond.geo_polygon
        kwargs["geo_polygon"] = qe.GeoPolygon(
            [_geo_point(p) for p in poly.exterior.points],
            [[_geo_point(p) for p in ring.points] for ring in poly.interiors] if poly.interiors else None,
        )
    if getattr(cond, "is_empty", None) is not None:
        kwargs["is_empty"] = cond.is_empty
    if getattr(cond, "is_null", None) is not None:
        kwargs["is_null"] = cond.is_null
    if not kwargs:
        raise ValueError(f"field condition on {cond.key!r} has no condition set")
    return qe.FieldCondition(key=cond.key, **kwargs)


def to_edge_condition(cond: Any) -> Any:
    """One qdrant-client condition -> its qdrant_edge counterpart."""
    if isinstance(cond, models.FieldCondition):
        return _to_edge_field_condition(cond)
    if isinstance(cond, models.Filter):
        return to_edge_filter(cond)
    if isinstance(cond, models.IsEmptyCondition):
        return qe.IsEmptyCondition(cond.is_empty.key)
    if isinstance(cond, models.IsNullCondition):
        return qe.IsNullCondition(cond.is_null.key)
    if isinstance(cond, models.HasIdCondition):
        return qe.HasIdCondition({_id_in(i) for i in cond.has_id})
    if isinstance(cond, models.HasVectorCondition):
        return qe.HasVectorCondition(cond.has_vector)
    if isinstance(cond, models.NestedCondition):
        return qe.NestedCondition(cond.nested.key, to_edge_filter(cond.nested.filter))
    raise TypeError(f"unsupported filter condition for qdrant-edge: {cond!r}")


def _condition_list(conds: Any) -> list[Any] | None:
    if conds is None:
        return None
    if not isinstance(conds, list):  # qdrant-client accepts a single condition too
        conds = [conds]
    return [to_edge_condition(c) for c in conds]


def to_edge_filter(flt: models.Filter | None) -> Any:
    """qdrant-client Filter -> qdrant_edge.Filter (None stays None).

    Raises ValueError for boolean MatchValue/MatchAny/MatchExcept: qdrant-edge
    0.9 would silently match nothing.
    """
    if flt is None:
        return None
    min_should = None
    if flt.min_should is not None:
        min_should = qe.MinShould(
            [to_edge_condition(c) for c in flt.min_should.conditions], flt.min_should.min_count
        )
    return qe.Filter(
        must=_condition_list(flt.must),
        should=_condition_list(flt.should),
        must_not=_condition_list(flt.must_not),
        min_should=min_should,
    )


_BM25: Any = None
_BM25_LOCK = threading.Lock()


def bm25() -> Any:
    """The engine's BM25 model (qdrant-edge's, the same tokenizer and weights as a Qdrant server's)."""
    global _BM25
    with _BM25_LOCK:
        if _BM25 is None:
            _BM25 = qe.Bm25(qe.Bm25Config(tokenizer=qe.TokenizerType.Multilingual))
        return _BM25


def _check_bm25(doc: SparseText | models.Document) -> None:
    if doc.model.lower() != BM25_MODEL.lower():
        raise ValueError(f"the embedded store computes only {BM25_MODEL!r} documents, got model {doc.model!r}")


def bm25_document(doc: SparseText | models.Document) -> Any:
    """A `SparseText` (or qdrant-client `Document`) to index -> the qdrant_edge sparse vector BM25 makes of it."""
    _check_bm25(doc)
    return bm25().embed_document(bm25_input(doc.text))


def bm25_query(text: str) -> Any:
    return bm25().embed_query(bm25_input(text))


def _edge_vector(name: str, values: Any) -> Any:
    if isinstance(values, SparseText) or is_model(values, "Document"):
        return bm25_document(values)
    if is_model(values, "SparseVector"):
        return qe.SparseVector(list(values.indices), list(values.values))
    # build_point (or PointStruct) has already made dense ones lists of floats
    return values if isinstance(values, list) else list(values)


def _named_vectors(point: PointToWrite | models.PointStruct) -> dict[str, Any]:
    vector = point.vector
    if not isinstance(vector, dict):
        raise ValueError(
            f"point {point.id!r}: mmrag collections use named vectors {VECTOR_NAMES}; pass a dict, got {type(vector).__name__}"
        )
    return {name: _edge_vector(name, values) for name, values in vector.items()}


def to_edge_point(point: PointToWrite | models.PointStruct) -> Any:
    """PointToWrite (or PointStruct) -> qdrant_edge.Point; a point may carry only some of the named vectors."""
    return qe.Point(_id_in(point.id), _named_vectors(point), dict(point.payload or {}))


def _with_vectors(value: bool | Sequence[str]) -> bool | list[str]:
    return value if isinstance(value, bool) else list(value)


def _with_payload(value: bool | Sequence[str]) -> bool | list[str]:
    return value if isinstance(value, bool) else list(value)


# ---------------------------------------------------------------------------
# qdrant_edge -> qdrant-client models
# ---------------------------------------------------------------------------


def _vector_out(vector: Any) -> Any:
    if vector is None:
        return None
    if isinstance(vector, dict):
        return {name: _vector_out(values) for name, values in vector.items()}
    if isinstance(vector, qe.SparseVector):
        return models.SparseVector(indices=list(vector.indices), values=list(vector.values))
    return list(vector)


def to_record(record: Any, *, with_payload: bool = True) -> StoredPoint:
    payload = record.payload if with_payload else None
    if with_payload and payload is None:
        payload = {}
    return StoredPoint(id=_id_out(record.id), payload=payload, vector=_vector_out(record.vector))


def to_scored_point(point: Any, *, with_payload: bool = True) -> Hit:
    payload = point.payload if with_payload else None
    if with_payload and payload is None:
        payload = {}
    return Hit(
        id=_id_out(point.id),
        version=int(point.version),
        score=float(point.score),
        payload=payload,
        vector=_vector_out(point.vector),
    )


# ---------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------


class EdgeStore(ThreadedAsyncMixin):
    """Embedded qdrant-edge backend (see the module docstring for the on-disk layout).

    One process per shard directory: qdrant-edge locks a shard's WAL, so a second
    process opening the same collection fails (RuntimeError). Within a process,
    shards are opened lazily on first use and shared by all threads; opening and
    closing are serialised by a lock, reads and writes go straight to the shard
    (qdrant-edge is internally synchronised).

    Search is exact (brute force) by default. HNSW is configured on every shard
    and built when `optimize()` is called (qdrant-edge runs no background
    optimizer); `search(..., exact=False, hnsw_ef=...)` then uses it. The HNSW thresholds are
    in KiB of vector data, as in Qdrant (`full_scan_threshold_kb`: below it a
    segment is scanned even when exact=False; `indexing_threshold_kb`: segments
    larger than it get an HNSW index when optimized).
    """

    backend_name = "edge"

    def __init__(
        self,
        home: Path | str,
        *,
        max_search_threads: int | None = None,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 100,
        full_scan_threshold_kb: int = 10_000,
        indexing_threshold_kb: int | None = None,
        max_indexing_threads: int = 0,
        lock_wait_s: float = 10.0,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
    ) -> None:
        self.home = Path(home)
        self.min_free_bytes = min_free_bytes  # kept free: qdrant-edge dies with SIGBUS on a full disk
        self.lock_wait_s = lock_wait_s  # how long a read waits for another process's shard
        self.max_search_threads = max_search_threads
        self._hnsw = dict(
            m=hnsw_m,
            ef_construct=hnsw_ef_construct,
            full_scan_threshold=full_scan_threshold_kb,
            max_indexing_threads=max_indexing_threads,
        )
        self._indexing_threshold_kb = indexing_threshold_kb
        self._lock = threading.RLock()  # guards _shards and meta.json writes
        self._alias_lock = threading.Lock()
        self._shards: dict[str, Any] = {}
        self._shard_locks: dict[str, _HeldLock] = {}  # collection -> our flock on its shard.lock
        self._alias_cache: tuple[tuple[int, int, int], dict[str, str]] | None = None
        # collection -> (count, recorded) when an open found fewer points than mmrag recorded
        self.count_mismatches: dict[str, tuple[int, int]] = {}
        # Directories are made on the first write, so read-only commands leave no trace.
        self.removed_leftovers = self._clean_leftovers()

    def _clean_leftovers(self) -> list[str]:
        """Remove `.creating-*` / `.deleted-*` folders left by a killed process.

        A creation in progress holds the flock on its folder's `shard.lock` (another process's
        is never touched); a folder with no lock file counts as left over after LEFTOVER_AGE_S.
        """
        try:
            entries = [e for e in self.collections_dir.iterdir() if e.name.startswith((".creating-", ".deleted-"))]
        except (FileNotFoundError, NotADirectoryError):
            return []
        removed = []
        for entry in entries:
            lock = entry / "shard.lock"
            try:
                if not lock.is_file():
                    if time.time() - entry.stat().st_mtime < LEFTOVER_AGE_S:
                        continue
                    fd = None
                else:
                    fd, _holder = try_lock(lock, process_holder(access="cleanup"))
                    if fd is None:  # its creator is alive and still at work
                        continue
            except OSError:
                continue
            try:
                shutil.rmtree(entry, ignore_errors=True)
            finally:
                if fd is not None:
                    release(fd)
            if not entry.exists():
                removed.append(entry.name)
                log.info("removed %s, left by a process killed while creating or deleting a collection", entry)
        return removed

    # --- paths -----------------------------------------------------------------
    @property
    def collections_dir(self) -> Path:
        return self.home / "collections"

    @property
    def aliases_path(self) -> Path:
        return self.home / "aliases.json"

    def _collection_dir(self, name: str) -> Path:
        if not _COLLECTION_NAME.match(name):
            raise ValueError(
                f"invalid collection name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit"
            )
        return self.collections_dir / name

    def _meta_path(self, name: str) -> Path:
        return self._collection_dir(name) / "meta.json"

    def _read_meta(self, name: str) -> dict[str, Any] | None:
        path = self._meta_path(name)
        try:
            with open(path, encoding="utf-8") as fh:
                meta = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
            raise StoreCorrupted(
                f"cannot read {path}: {exc}. The collection's metadata is damaged; restore it from a "
                f"backup or rebuild the collection (`mmrag repair {name}`)"
            ) from exc
        if not isinstance(meta, dict) or not isinstance(meta.get("metadata"), dict):
            raise StoreCorrupted(f"cannot read {path}: not an mmrag collection metadata object")
        return meta

    def check_free_space(self, what: str) -> None:
        """Raise DiskFull unless the store's filesystem has its reserve free (run before a job)."""
        require_free(self.home, 0, reserve=self.min_free_bytes, what=what)

    def _lock_shard(self, name: str, *, write: bool) -> int:
        """Our flock on the shard, taken before qdrant-edge may touch its files."""
        path = self._collection_dir(name) / "shard.lock"
        wait = 0.0 if write else self.lock_wait_s
        deadline = time.monotonic() + wait
        while True:
            fd, holder = try_lock(path, process_holder(collection=name, access="write" if write else "read"))
            if fd is not None:
                return fd
            if time.monotonic() >= deadline:
                raise ShardLockHeld(name, path, holder, waited_s=wait)
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    # --- shards ------------------------------------------------------------------
    def _vector_params(self, dim: int) -> dict[str, Any]:
        return {name: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine) for name in VECTOR_NAMES}

    @staticmethod
    def _sparse_params(has_sparse: bool) -> dict[str, Any] | None:
        # IDF from the collection's own statistics, applied at query time
        return {SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if has_sparse else None

    def _has_sparse(self, name: str) -> bool:
        meta = self._read_meta(self.resolve(name)) or {}
        return bool(meta.get("sparse_vectors"))

    def _shard(self, name: str, *, write: bool = False) -> Any:
        """The open shard of collection `name` (an alias is resolved first).

        Opening it takes our shard lock first: a read waits up to `lock_wait_s` for
        another process, a write is refused at once (`ShardLockHeld`).
        """
        name = self.resolve(name)
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        with self._lock:
            shard = self._shards.get(name)
            if shard is not None:
                return shard
            meta = self._read_meta(name)
            if meta is None:
                raise ValueError(f"collection {name!r} not found in {self.collections_dir}")
            config = None
            if self.max_search_threads is not None:
                # vectors must be restated whenever a config is given; they are checked against the shard
                config = qe.EdgeConfig(
                    vectors=self._vector_params(int(meta["metadata"]["dim"])),
                    sparse_vectors=self._sparse_params(bool(meta.get("sparse_vectors"))),
                    max_search_threads=self.max_search_threads,
                )
            shard_dir = self._collection_dir(name) / "shard"
            with _read_only_as(self.home, f"open collection {name!r}"):
                fd = self._lock_shard(name, write=write)
            try:
                # Even a read-only open touches a fresh WAL segment: on a full disk that is a SIGBUS.
                require_free(shard_dir, 0, reserve=self.min_free_bytes, what=f"open collection {name!r}")
                shard = qe.EdgeShard.load(str(shard_dir), config)
            except BaseException as exc:
                release(fd)
                if "WouldBlock" in str(exc):  # a process that does not take our lock (not mmrag)
                    raise ShardLockHeld(name, shard_dir, None, waited_s=0) from exc
                if is_read_only_fs(exc):
                    raise StoreReadOnly(self.home, f"open collection {name!r}") from exc
                raise
            self._shards[name] = shard
            self._shard_locks[name] = _HeldLock(fd)
            self._check_count(name, shard, meta)
            return shard

    def _check_count(self, name: str, shard: Any, meta: dict[str, Any]) -> None:
        """The cheap verify at open: the engine's count against our record (see mmrag.store.integrity)."""
        recorded = recorded_points(meta.get("metadata"))
        if recorded is None:
            return
        count = int(shard.count(qe.CountRequest(exact=True)))
        if count < recorded:
            self.count_mismatches[name] = (count, recorded)
            log.warning("%s", count_message(name, count, recorded))
        else:
            self.count_mismatches.pop(name, None)

    def probe_open(self, name: str, *, timeout_s: float = 300.0) -> str | None:
        """Open `name`'s shard in a child process first; the problem found, or None when it opens.

        qdrant-edge aborts the whole process on some damage (a garbled id tracker makes it
        allocate ~92 GB); a child that dies tells us so without taking this process with it.
        """
        name = self.resolve(name)
        if name in self._shards or self._read_meta(name) is None:
            return None
        shard_dir = self._collection_dir(name) / "shard"
        fd = self._lock_shard(name, write=False)  # the child opens it only while we hold our lock
        try:
            proc = subprocess.run([sys.executable, "-c", _PROBE, str(shard_dir)], capture_output=True, text=True,
                                  timeout=timeout_s, env={**os.environ, "RUST_BACKTRACE": "0"})
        finally:
            release(fd)
        if proc.returncode == 0:
            return None
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "memory allocation" in ln or "panicked" in ln), None)
        detail = detail or next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
        if proc.returncode < 0:
            how = f"the storage engine aborted the process ({signal.Signals(-proc.returncode).name}: {detail[:300]})"
        else:
            how = f"the storage engine cannot open it ({detail[-400:]})"
        return (f"collection {name!r}: {how} while opening {shard_dir}: its files are damaged. "
                f"`mmrag repair {name}` rebuilds it.")

    def _close_shard(self, name: str) -> None:
        with self._lock:
            shard = self._shards.pop(name, None)
            fd = self._shard_locks.pop(name, None)
            try:
                if shard is not None:
                    shard.close()
            finally:
                if fd is not None:
                    fd.release()

    # --- collections ---------------------------------------------------------------
    def list_collections(self) -> list[str]:
        if not self.collections_dir.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.collections_dir.iterdir()
            if not entry.name.startswith(".") and (entry / "meta.json").is_file()
        )

    def collection_exists(self, name: str) -> bool:
        """True for a collection or an alias that points at one."""
        return self._meta_path(self.resolve(name)).is_file()

    def create_collection(self, spec: CollectionSpec) -> None:
        """Create the shard and meta.json in a hidden directory, then rename it into place.

        A crash midway leaves only a hidden `.creating-*` directory, never a half collection.
        """
        final_dir = self._collection_dir(spec.name)
        with self._lock:
            if final_dir.exists():
                raise ValueError(f"collection {spec.name!r} already exists")
            if spec.name in self.get_aliases():
                raise ValueError(f"{spec.name!r} is an alias; choose another collection name")
            with _read_only_as(self.home, f"create collection {spec.name!r}"):
                self.collections_dir.mkdir(parents=True, exist_ok=True)
            require_free(self.collections_dir, CREATE_BYTES, reserve=self.min_free_bytes,
                         what=f"create collection {spec.name!r}")
            tmp_dir = self.collections_dir / f".creating-{spec.name}-{uuid.uuid4().hex[:8]}"
            with _read_only_as(self.home, f"create collection {spec.name!r}"):
                tmp_dir.mkdir()
            # Held until the rename: `_clean_leftovers` of another process leaves a live creation alone.
            fd, _ = try_lock(tmp_dir / "shard.lock", process_holder(collection=spec.name, access="create"))
            try:
                config = qe.EdgeConfig(
                    vectors=self._vector_params(spec.dim),
                    sparse_vectors=self._sparse_params(spec.has_sparse),
                    hnsw_config=qe.HnswIndexConfig(**self._hnsw),  # type: ignore[arg-type]  # m / ef_construct ints
                    optimizers=(
                        qe.EdgeOptimizersConfig(indexing_threshold=self._indexing_threshold_kb)
                        if self._indexing_threshold_kb is not None
                        else None
                    ),
                    max_search_threads=self.max_search_threads,
                )
                shard = qe.EdgeShard.create(str(tmp_dir / "shard"), config)
                try:
                    for field_name, schema in spec.payload_indexes.items():
                        shard.update(qe.UpdateOperation.create_field_index(field_name, to_edge_schema(schema)))
                    shard.flush()
                finally:
                    shard.close()
                write_json_atomic(
                    tmp_dir / "meta.json",
                    {
                        "metadata": spec.to_metadata(),
                        "payload_indexes": {k: schema_name(v) for k, v in spec.payload_indexes.items()},
                        "vectors": {name: spec.dim for name in VECTOR_NAMES},
                        **({"sparse_vectors": {SPARSE_VECTOR: "idf"}} if spec.has_sparse else {}),
                    },
                )
                os.rename(tmp_dir, final_dir)
                _fsync_dir(self.collections_dir)
            except BaseException as exc:
                shutil.rmtree(tmp_dir, ignore_errors=True)
                if fd is not None:
                    release(fd)
                    fd = None
                if isinstance(exc, Exception) and is_enospc(exc):
                    raise DiskFull(tmp_dir, f"no space left on device while creating {final_dir}: {exc}") from exc
                if is_read_only_fs(exc):
                    raise StoreReadOnly(self.home, f"create collection {spec.name!r}") from exc
                raise
            finally:
                if fd is not None:
                    release(fd)

    def get_spec(self, name: str) -> CollectionSpec | None:
        real = self.resolve(name)
        meta = self._read_meta(real)
        if meta is None:
            return None
        return CollectionSpec.from_metadata(real, meta.get("metadata"))

    def update_metadata(self, name: str, metadata: Mapping[str, Any]) -> None:
        real = self.resolve(name)
        with self._lock:
            meta = self._read_meta(real)
            if meta is None:
                raise ValueError(f"collection {real!r} not found")
            # A metadata change is a write: only the process holding the shard may make it.
            self._shard(real, write=True)
            meta = self._read_meta(real) or meta
            meta["metadata"] = {**meta.get("metadata", {}), **dict(metadata)}
            write_json_atomic(self._meta_path(real), meta)

    def delete_collection(self, name: str) -> None:
        """Delete collection `name` (not resolved through aliases) and the aliases pointing at it."""
        directory = self._collection_dir(name)
        with self._lock:
            self._close_shard(name)
            if directory.exists():
                # Never delete a shard another process has open: its next write would fail.
                fd = self._lock_shard(name, write=True) if (directory / "meta.json").is_file() else None
                try:
                    # Rename first so a crash mid-delete never leaves a listed, half-deleted collection.
                    doomed = self.collections_dir / f".deleted-{name}-{uuid.uuid4().hex[:8]}"
                    os.rename(directory, doomed)
                    _fsync_dir(self.collections_dir)
                finally:
                    if fd is not None:
                        release(fd)
                shutil.rmtree(doomed, ignore_errors=True)
        with self._alias_write() as aliases:
            for alias in [a for a, target in aliases.items() if target == name]:
                del aliases[alias]

    def create_payload_index(self, name: str, field: str, schema: PayloadSchema) -> None:
        real = self.resolve(name)
        shard = self._shard(real, write=True)
        shard.update(qe.UpdateOperation.create_field_index(field, to_edge_schema(schema)))
        shard.flush()
        with self._lock:
            meta = self._read_meta(real)
            if meta is not None:
                meta.setdefault("payload_indexes", {})[field] = schema_name(schema)
                write_json_atomic(self._meta_path(real), meta)

    # --- aliases -------------------------------------------------------------------
    def get_aliases(self) -> dict[str, str]:
        """alias -> collection, re-read whenever aliases.json was replaced (a cheap stat otherwise)."""
        try:
            st = os.stat(self.aliases_path)
        except FileNotFoundError:
            return {}
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._alias_cache
        if cached is not None and cached[0] == key:
            return dict(cached[1])
        try:
            with open(self.aliases_path, encoding="utf-8") as fh:
                aliases = {str(k): str(v) for k, v in json.load(fh).items()}
        except FileNotFoundError:
            return {}
        self._alias_cache = (key, aliases)
        return dict(aliases)

    @contextmanager
    def _alias_write(self) -> Iterator[dict[str, str]]:
        """Read-modify-write aliases.json under an in-process and a cross-process lock."""
        with _read_only_as(self.home, "change aliases"):
            self.home.mkdir(parents=True, exist_ok=True)
            lock_file = open(self.home / "aliases.lock", "a+")  # noqa: SIM115 - closed by the with below
        with self._alias_lock, lock_file:
            if fcntl is not None:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                self._alias_cache = None  # another process may have written since our last stat
                aliases = self.get_aliases()
                before = dict(aliases)
                yield aliases
                if aliases != before:
                    write_json_atomic(self.aliases_path, aliases)
                    self._alias_cache = None
            finally:
                if fcntl is not None:
                    fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def set_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection`; readers see the old or the new target, never neither."""
        if not self._meta_path(collection).is_file():
            raise ValueError(f"cannot point alias {alias!r} at {collection!r}: no such collection")
        if self._collection_dir(alias).exists():
            raise ValueError(f"cannot create alias {alias!r}: a collection has that name")
        with self._alias_write() as aliases:
            aliases[alias] = collection

    def delete_alias(self, alias: str) -> None:
        with self._alias_write() as aliases:
            aliases.pop(alias, None)

    def resolve(self, name: str) -> str:
        return self.get_aliases().get(name, name)

    # --- points --------------------------------------------------------------------
    def upsert(self, name: str, points: Sequence[PointToWrite | models.PointStruct]) -> None:
        if not points:
            return
        shard = self._shard(name, write=True)
        shard_dir = self._collection_dir(self.resolve(name)) / "shard"
        require_free(shard_dir, estimate_points_bytes(points), reserve=self.min_free_bytes,
                     what=f"write {len(points)} points into {self.resolve(name)!r}")
        try:
            shard.update(qe.UpdateOperation.upsert_points([to_edge_point(p) for p in points]))
            shard.flush()  # durable when we return (survives kill -9)
        except Exception as exc:
            if is_enospc(exc):
                raise DiskFull(shard_dir, f"no space left on device while writing into {shard_dir}: {exc}") from exc
            raise

    def delete_points(self, name: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        shard = self._shard(name, write=True)
        shard.update(qe.UpdateOperation.delete_points([_id_in(i) for i in ids]))
        shard.flush()

    def set_payload(self, name: str, payload: Mapping[str, Any], ids: Sequence[str]) -> None:
        if not ids:
            return
        shard = self._shard(name, write=True)
        shard.update(qe.UpdateOperation.set_payload([_id_in(i) for i in ids], dict(payload)))
        shard.flush()

    def set_payloads(self, name: str, updates: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        if not updates:
            return
        shard = self._shard(name, write=True)
        for pid, payload in updates:
            shard.update(qe.UpdateOperation.set_payload([_id_in(pid)], dict(payload)))
        shard.flush()  # one flush per batch: flushing per point costs ~9 ms each

    def retrieve(
        self, name: str, ids: Sequence[str], *, with_payload: bool = True, with_vectors: bool | Sequence[str] = False
    ) -> list[StoredPoint]:
        if not ids:
            return []
        records = self._shard(name).retrieve([_id_in(i) for i in ids], with_payload, _with_vectors(with_vectors))
        return [to_record(r, with_payload=bool(with_payload)) for r in records]

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
        records, next_offset = self._shard(name).scroll(
            qe.ScrollRequest(
                offset=_id_in(offset) if offset is not None else None,
                limit=limit,
                filter=to_edge_filter(scroll_filter),
                with_payload=_with_payload(with_payload),
                with_vector=_with_vectors(with_vectors),
            )
        )
        wants_payload = with_payload if isinstance(with_payload, bool) else True
        return [to_record(r, with_payload=wants_payload) for r in records], (
            _id_out(next_offset) if next_offset is not None else None
        )

    def count(self, name: str, count_filter: models.Filter | None = None) -> int:
        return int(self._shard(name).count(qe.CountRequest(exact=True, filter=to_edge_filter(count_filter))))

    # --- search ----------------------------------------------------------------------
    @staticmethod
    def _params(exact: bool, hnsw_ef: int | None) -> Any:
        return qe.SearchParams(exact=True) if exact else qe.SearchParams(hnsw_ef=hnsw_ef, exact=False)

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
        dense = [float(v) for v in vector]
        query = (
            qe.Mmr(dense, mmr.lambda_mult, mmr.candidates, using=using)
            if mmr is not None
            else qe.Query.Nearest(dense, using=using)
        )
        request = qe.QueryRequest(
            limit=limit,
            query=query,
            filter=to_edge_filter(query_filter),
            score_threshold=score_threshold,
            params=self._params(exact, hnsw_ef),
            with_payload=with_payload,
            with_vector=_with_vectors(with_vectors),
        )
        hits = [to_scored_point(p, with_payload=with_payload) for p in self._shard(name).query(request)]
        _check_cosine_scores(name, hits)
        return hits

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
        """One engine query: a prefetch per vector (BM25 too when `text` is given), fused by the engine."""
        if text is not None and not self._has_sparse(name):
            raise SparseVectorMissing(missing_sparse_message(self.resolve(name)))
        edge_filter = to_edge_filter(query_filter)
        fused_limit = max(limit, mmr.candidates) if mmr is not None else limit
        per_vector = prefetch_limit if prefetch_limit is not None else default_prefetch_limit(fused_limit)
        queries: dict[str, Any] = {
            vector_name: qe.Query.Nearest([float(v) for v in vec], using=vector_name)
            for vector_name, vec in vectors.items()
        }
        if text is not None:
            queries[SPARSE_VECTOR] = qe.Query.Nearest(bm25_query(text), using=SPARSE_VECTOR)
        # the filter goes inside every prefetch: a prefetch without it would fill its
        # candidate list with points the final filter then throws away
        prefetches = [
            qe.Prefetch(
                limit=per_vector,
                query=query,
                params=self._params(exact, None),
                filter=edge_filter,
                score_threshold=(score_thresholds or {}).get(vector_name),
            )
            for vector_name, query in queries.items()
        ]
        fuse = fusion_weights(list(queries), fusion, weights)
        fusion_query: Any = qe.Fusion.Dbsf() if fusion == "dbsf" else qe.Fusion.Rrf(k=RRF_K, weights=fuse)
        if mmr is None:
            request = qe.QueryRequest(
                limit=limit, query=fusion_query, prefetches=prefetches, filter=edge_filter, with_payload=True
            )
        else:
            mmr_vector = vectors.get(IMAGE_VECTOR) or next(iter(vectors.values()))
            mmr_using = IMAGE_VECTOR if IMAGE_VECTOR in vectors else next(iter(vectors))
            request = qe.QueryRequest(
                limit=limit,
                query=qe.Mmr([float(v) for v in mmr_vector], mmr.lambda_mult, mmr.candidates, using=mmr_using),
                prefetches=[qe.Prefetch(limit=mmr.candidates, query=fusion_query, prefetches=prefetches, filter=edge_filter)],
                filter=edge_filter,
                with_payload=True,
            )
        return [to_scored_point(p) for p in self._shard(name).query(request)]

    def facet(
        self, name: str, key: str, *, filter: models.Filter | None = None, limit: int = 10
    ) -> list[models.FacetValueHit]:
        try:
            response = self._shard(name).facet(
                qe.FacetRequest(key, limit=limit, exact=True, filter=to_edge_filter(filter))
            )
        except Exception as exc:
            if "No appropriate index" in str(exc):
                raise ValueError(f"cannot count values of {key!r}: it has no payload index (facets need a keyword "
                                 f"or integer index; mmrag indexes {sorted(PAYLOAD_INDEXES)})") from exc
            raise
        return [models.FacetValueHit(value=h.value, count=int(h.count)) for h in response.hits]

    def optimize(self, name: str) -> None:
        """Merge segments and build the HNSW index now, blocking until done.

        qdrant-edge holds the GIL while it builds HNSW, so other Python threads of
        this process stall meanwhile: run it after ingestion, not during serving.
        """
        self._shard(name, write=True).optimize()

    def close_collection(self, name: str) -> None:
        """Close this process's handle on `name`'s shard (reopened on next use), e.g. a retired version."""
        self._close_shard(name)

    def shard_info(self, name: str) -> dict[str, int]:
        """Segment/point/indexed-vector counts of the shard (diagnostics)."""
        info = self._shard(name).info()
        return {
            "segments_count": int(info.segments_count),
            "points_count": int(info.points_count),
            "indexed_vectors_count": int(info.indexed_vectors_count),
        }

    def close(self) -> None:
        with self._lock:
            for name in list(self._shards):
                self._close_shard(name)

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_cosine_scores(name: str, hits: Sequence[Hit]) -> None:
    """A cosine score outside [-1, 1] (or NaN) means damaged vector files: refuse to serve it."""
    for hit in hits:
        if not math.isfinite(hit.score) or abs(hit.score) > 1.0 + 1e-3:
            raise StoreCorrupted(
                f"collection {name!r} returned score {hit.score!r} for point {hit.id}, impossible for a cosine "
                f"similarity: its vector files are damaged. Rebuild it (`mmrag reindex {name} --rebuild`)."
            )

