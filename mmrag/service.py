"""The library calls behind the CLI, the HTTP API and the MCP tools: search, similar, images, facets.

`SearchService` wraps one collection name (usually an alias). Every call resolves
the alias again (a cheap stat of the embedded store's pointer file, or the
server's alias), so a rebuild finished by another process is answered from at
once; the shard of the version it replaced is closed after a grace period.
Nothing here reads the environment: it gets an `App` (or a store and an embedder).
"""

from __future__ import annotations

import io
import logging
import threading
import typing
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from PIL import Image

from mmrag.errors import NotFoundError, UsageError
from mmrag.retrieval.documents import _image_file, document_from_point, image_mime_type
from mmrag.retrieval.queries import Target
from mmrag.store.convert import normalize_rel_path
from mmrag.store.filters import filter_from_dict

log = logging.getLogger(__name__)

# Facet counts without a store-side facet: scroll at most this many payloads.
FACET_SCROLL_LIMIT = 20_000
# Keyword indexes that identify a single file: useless as a filter control.
_NOT_FACETS = {"path", "sha256", "model_id"}


def targets() -> tuple[str, ...]:
    """The search targets the retriever accepts (grows when the retriever does, e.g. "hybrid")."""
    return typing.get_args(Target)


def collections(store: Any) -> list[dict[str, Any]]:
    """Every collection with its aliases, point count, model, dim and schema version.

    A collection open in another process (the embedded store allows one per shard) is listed
    with `busy` saying who holds it, and no count.
    """
    from mmrag.errors import LockHeldError

    aliases = store.get_aliases()
    rows = []
    for name in sorted(store.list_collections()):
        spec = store.get_spec(name)
        try:
            points, busy = store.count(name), None
        except LockHeldError as exc:
            points, busy = None, str(exc)
        rows.append({
            "name": name,
            "aliases": sorted(a for a, c in aliases.items() if c == name),
            "points": points,
            "busy": busy,
            "model_id": spec.model_id if spec else None,
            "dim": spec.dim if spec else None,
            "schema_version": spec.schema_version if spec else None,
        })
    return rows


@dataclass(frozen=True)
class UploadLimits:
    """What an uploaded query image may be: bytes, pixels (the ingestion bomb rule) and formats."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    formats: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})


class SearchService:
    """Search one collection (or alias) with one embedder; safe to share between threads."""

    def __init__(
        self,
        store: Any,
        embedder: Any,
        collection: str,
        *,
        exact: bool = True,
        hnsw_ef: int | None = None,
        limits: UploadLimits | None = None,
        facet_fields: Sequence[str] | None = None,
        close_grace_s: float = 5.0,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.collection = collection
        self.exact = exact
        self.hnsw_ef = hnsw_ef
        self.limits = limits or UploadLimits()
        self.facet_fields = list(facet_fields) if facet_fields else None
        self.close_grace_s = close_grace_s
        self._live: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_app(cls, app: Any, collection: str | None = None, **kwargs: Any) -> SearchService:
        name = collection or app.settings.collection
        s = app.settings
        limits = UploadLimits(max_bytes=s.upload_max_bytes, max_pixels=s.upload_max_pixels,
                              formats=frozenset(f.upper() for f in s.upload_formats))
        return cls(app.store, app.embedder(collection=name if app.store.collection_exists(name) else None), name,
                   exact=not s.hnsw, hnsw_ef=s.hnsw_ef if s.hnsw else None, limits=limits,
                   facet_fields=s.facet_fields or None, **kwargs)

    # --- the live version ----------------------------------------------------------------
    def live(self) -> str:
        """The collection the name points at now; closes the previous version's shard after a grace."""
        real = self.store.resolve(self.collection)
        if real != self._live:
            with self._lock:
                previous, self._live = self._live, real
            close = getattr(self.store, "close_collection", None)
            if previous is not None and previous != real and close is not None:
                log.info("alias %s switched %s -> %s", self.collection, previous, real)
                # In-flight queries may still be using the old shard: close it a little later.
                timer = threading.Timer(self.close_grace_s, self._close_if_stale, args=(previous,))
                timer.daemon = True
                timer.start()
        return real

    def _close_if_stale(self, name: str) -> None:
        if name != self._live:
            try:
                self.store.close_collection(name)
            except Exception:  # a deleted version: nothing left to close
                log.debug("closing %s failed", name, exc_info=True)

    def ready(self) -> dict[str, Any]:
        """Raises NotFoundError unless the collection exists and has points."""
        real = self.live()
        spec = self.store.get_spec(real)
        if spec is None:
            raise NotFoundError(f"collection {self.collection!r} does not exist; ingest it first")
        n = self.store.count(real)
        if n <= 0:
            raise NotFoundError(f"collection {self.collection!r} is empty")
        return {"collection": self.collection, "live": real, "points": n, "model_id": spec.model_id}

    # --- search ------------------------------------------------------------------------
    def _retriever(self) -> Any:
        from mmrag.retrieval import MultimodalRetriever

        return MultimodalRetriever(store=self.store, embedder=self.embedder, collection=self.live(),
                                   exact=self.exact, hnsw_ef=self.hnsw_ef)

    @staticmethod
    def _check(k: int, target: str, flt: Any) -> Any:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
            raise UsageError(f"k must be an integer from 1 to 1000, got {k!r}")
        if target not in targets():
            raise UsageError(f"target must be one of {', '.join(targets())}, not {target!r}")
        try:
            return filter_from_dict(flt) if flt else None
        except (ValueError, TypeError) as e:
            raise UsageError(f"bad filter: {e}") from e

    def _run(self, query: Any, query_type: str, k: int, target: str, flt: Any, score_threshold: float | None) -> list[Document]:
        qfilter = self._check(k, target, flt)
        try:
            return self._retriever().search(query, query_type=query_type, k=k, target=target,
                                            qdrant_filter=qfilter, score_threshold=score_threshold)
        except (ValueError, TypeError) as e:
            raise UsageError(str(e)) from e

    def search_text(self, query: str, *, k: int = 12, target: str = "image", filter: Mapping[str, Any] | None = None,
                    score_threshold: float | None = None) -> list[Document]:
        """Text query. Always embedded as text: over a network, a path-like query must never open a file."""
        if not isinstance(query, str) or not query.strip():
            raise UsageError("the query must be a non-empty string")
        if len(query) > 2000:
            raise UsageError(f"the query is too long ({len(query)} characters > 2000)")
        return self._run(query, "text", k, target, filter, score_threshold)

    def search_image(self, data: bytes, *, k: int = 12, target: str = "image", filter: Mapping[str, Any] | None = None,
                     score_threshold: float | None = None) -> list[Document]:
        return self._run(self.decode_upload(data), "image", k, target, filter, score_threshold)

    def similar(self, point_id: str, *, k: int = 12, target: str = "image", filter: Mapping[str, Any] | None = None) -> list[Document]:
        """More like this: the point's own image vector as the query; the point itself is left out."""
        from mmrag.store.schema import IMAGE_VECTOR

        real = self.live()
        record = self._record(point_id, real, with_vectors=[IMAGE_VECTOR])
        vector = (record.vector or {}).get(IMAGE_VECTOR) if isinstance(record.vector, dict) else None
        if not vector:
            raise NotFoundError(f"point {point_id!r} has no image vector")
        qfilter = self._check(k, target, filter)
        from qdrant_client import models

        not_self = models.Filter(must_not=[models.HasIdCondition(has_id=[record.id])])
        combined = models.Filter(must=[qfilter, not_self]) if qfilter else not_self
        if target in ("image", "text"):
            points = self.store.search(real, vector, using=target, limit=k, query_filter=combined, exact=self.exact,
                                       hnsw_ef=self.hnsw_ef)
            return [document_from_point(p, vector_name=target) for p in points]
        if target == "fused":
            from mmrag.store.schema import TEXT_VECTOR

            points = self.store.search_fused(real, {IMAGE_VECTOR: vector, TEXT_VECTOR: vector}, limit=k,
                                             query_filter=combined, exact=self.exact)
            docs = [document_from_point(p) for p in points]
            for d in docs:
                d.metadata["vector"] = "fused"
            return docs
        raise UsageError(f"similar searches target 'image', 'text' or 'fused', not {target!r}")

    # --- points and images -------------------------------------------------------------
    def _record(self, point_id: str, real: str | None = None, *, with_vectors: Any = False) -> Any:
        pid = _check_point_id(point_id)
        real = real or self.live()
        records = self.store.retrieve(real, [pid], with_payload=True, with_vectors=with_vectors)
        if not records:
            raise NotFoundError(f"no point {point_id!r} in {self.collection!r}")
        return records[0]

    def get(self, point_id: str) -> Document:
        return document_from_point(self._record(point_id))

    def corpus_root(self, real: str) -> Path:
        spec = self.store.get_spec(real)
        root = (spec.extra or {}).get("corpus_root") if spec else None
        if not root:
            raise NotFoundError(f"collection {self.collection!r} records no corpus folder; images cannot be served")
        return Path(root)

    def image_file(self, point_id: str) -> tuple[Path, str]:
        """The image file of a point, resolved under the corpus root (symlinks out of it are refused)."""
        real = self.live()
        payload = self._record(point_id, real).payload or {}
        rel = payload.get("path")
        try:
            normalize_rel_path(rel or "")
            file = _image_file(self.corpus_root(real), rel, "path")
        except ValueError as e:
            raise NotFoundError(f"point {point_id!r}: its image is not inside the corpus root ({e})") from e
        if not file.is_file():
            raise NotFoundError(f"point {point_id!r}: image file {rel!r} is missing")
        return file, image_mime_type(payload.get("format"), rel)

    def thumbnail(self, point_id: str, size: int = 256) -> bytes:
        """A JPEG of at most size x size pixels, decoded with ingestion's rules."""
        from mmrag.corpus.decode import load_rgb

        if not 16 <= size <= 1024:
            raise UsageError(f"thumbnail size must be from 16 to 1024, got {size}")
        file, _ = self.image_file(point_id)
        image = load_rgb(file)
        image.thumbnail((size, size))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85)
        return buf.getvalue()

    def decode_upload(self, data: bytes) -> Image.Image:
        """An uploaded query image, within the byte, pixel and format limits."""
        from mmrag.corpus.decode import load_rgb

        if not data:
            raise UsageError("the uploaded image is empty")
        if len(data) > self.limits.max_bytes:
            raise UsageError(f"the uploaded image is too large ({len(data)} bytes > {self.limits.max_bytes})")
        try:
            with Image.open(io.BytesIO(data)) as probe:  # header only: format check before any decoding
                fmt = probe.format
        except Exception as e:
            raise UsageError(f"the upload is not a readable image ({type(e).__name__})") from e
        if fmt not in self.limits.formats:
            raise UsageError(f"image format {fmt} is not accepted; use one of {', '.join(sorted(self.limits.formats))}")
        return load_rgb(data, max_file_bytes=self.limits.max_bytes, max_image_pixels=self.limits.max_pixels)

    # --- classification ---------------------------------------------------------------
    def classify(self, data: bytes, labels: Sequence[str], *, top_k: int = 5, templates: Any = None) -> list[tuple[str, float]]:
        from mmrag.tasks.classify import ZeroShotClassifier

        labels = [str(label).strip() for label in labels if str(label).strip()]
        if not labels:
            raise UsageError("give at least one label")
        if len(labels) > 1000:
            raise UsageError("at most 1000 labels")
        image = self.decode_upload(data)
        try:
            clf = ZeroShotClassifier(self.embedder, labels, templates)
        except ValueError as e:
            raise UsageError(str(e)) from e
        vec = self.embedder.embed_images([image])
        return clf.predict_vectors(vec, top_k=min(top_k, len(labels)))[0].top

    # --- facets ------------------------------------------------------------------------
    def facet_keys(self, real: str | None = None) -> list[str]:
        if self.facet_fields:
            return list(self.facet_fields)
        spec = self.store.get_spec(real or self.live())
        if spec is None:
            return []
        return sorted(k for k, v in spec.payload_indexes.items()
                      if str(getattr(v, "value", v)).lower() == "keyword" and k not in _NOT_FACETS)

    def facets(self, keys: Sequence[str] | None = None, *, limit: int = 20) -> dict[str, list[dict[str, Any]]]:
        """{key: [{"value", "count"}, ...]} by count; from `store.facet` where the store has it."""
        real = self.live()
        keys = list(keys) if keys else self.facet_keys(real)
        out: dict[str, list[dict[str, Any]]] = {}
        facet = getattr(self.store, "facet", None)
        scroll_keys = list(keys)
        if facet is not None:
            scroll_keys = []
            for key in keys:
                try:
                    hits = facet(real, key, limit=limit)
                except ValueError:  # no payload index on it (a manifest column): counted from payloads below
                    scroll_keys.append(key)
                    continue
                out[key] = [_facet_hit(h) for h in hits]
            if not scroll_keys:
                return out
        keys = scroll_keys
        counters: dict[str, Counter[Any]] = {key: Counter() for key in keys}
        offset, seen = None, 0
        while seen < FACET_SCROLL_LIMIT:
            page, offset = self.store.scroll(real, limit=min(1024, FACET_SCROLL_LIMIT - seen), offset=offset,
                                             with_payload=keys)
            for record in page:
                payload = record.payload or {}
                for key in keys:
                    value = payload.get(key)
                    for v in value if isinstance(value, list) else [value]:
                        if isinstance(v, (str, int)) and not isinstance(v, bool) and v != "":
                            counters[key][v] += 1
            seen += len(page)
            if offset is None or not page:
                break
        for key, counter in counters.items():
            out[key] = [{"value": v, "count": n} for v, n in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))[:limit]]
        return out


def _facet_hit(hit: Any) -> dict[str, Any]:
    if isinstance(hit, Mapping):
        return {"value": hit["value"], "count": int(hit["count"])}
    return {"value": hit.value, "count": int(hit.count)}


def _check_point_id(point_id: Any) -> str | int:
    """Point ids are UUIDs (or unsigned ints): anything else, like '../etc/passwd', is refused."""
    import uuid

    text = str(point_id)
    if text.isdigit() and len(text) < 20:
        return int(text)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise NotFoundError(f"no point {text[:80]!r}: point ids are UUIDs") from None


def hit_dict(doc: Document, *, thumbnail_url: str | None = None, image_url: str | None = None) -> dict[str, Any]:
    """One search hit as plain JSON (the HTTP API's and the MCP tools' form)."""
    md = doc.metadata
    payload = md.get("payload") or {}
    return {
        "id": md["id"],
        "score": md.get("score"),
        "vector": md.get("vector"),
        "path": md.get("path"),
        "caption": payload.get("caption"),
        "page_content": doc.page_content,
        "width": md.get("width"),
        "height": md.get("height"),
        "payload": payload,
        "thumbnail_url": thumbnail_url,
        "image_url": image_url,
    }


__all__ = ["FACET_SCROLL_LIMIT", "SearchService", "UploadLimits", "collections", "hit_dict", "targets"]
