"""Auto-tagging: zero-shot label probabilities written into point payloads.

Tags come from the image vectors already in the store (no re-embedding) with
the zero-shot math of `mmrag.tasks.classify`. Each tagged point gets

- `tags`: the labels kept (a keyword list, indexed, so `{"tags": "cat"}` filters), and
- `tag_scores`: {label: probability} for the `top` best labels, including
  those that missed the threshold, so near misses stay visible.

Selection: the `top` most probable labels, of which those with probability
>= `threshold` are kept (all of them when threshold is None). Probabilities
are a softmax over the whole label set, so they depend on which labels are
offered: a threshold means "share of the probability mass", not an absolute
confidence. `default_threshold` (what `mmrag tag` uses without --threshold) keeps
a label only when it has at least twice the share of a uniform guess.

Tagging a point replaces its earlier `tags` and `tag_scores`: the latest label set wins.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import models
from tqdm.auto import tqdm

from mmrag.embedders.base import Embedder
from mmrag.store.base import Store
from mmrag.store.schema import IMAGE_VECTOR, SchemaMismatch
from mmrag.tasks.classify import ZeroShotClassifier, label_probabilities

TAGS_FIELD = "tags"
TAG_SCORES_FIELD = "tag_scores"
METADATA_KEY = "tagging"

__all__ = [
    "TagReport",
    "TagResult",
    "ingest_tagger",
    "make_ingest_tagger",
    "tag_collection",
    "tags_for_vectors",
]


@dataclass(frozen=True)
class TagResult:
    tags: list[str]
    tag_scores: dict[str, float]

    def payload(self) -> dict[str, Any]:
        return {TAGS_FIELD: list(self.tags), TAG_SCORES_FIELD: dict(self.tag_scores)}


def default_threshold(n_labels: int) -> float:
    """Twice the uniform share (2/N), at most 0.5: a label must stand out from the others.

    Without a threshold every image gets its `top` labels however flat the distribution,
    so every image was tagged with every label of a short list.
    """
    if n_labels < 1:
        raise ValueError(f"need at least one label, got {n_labels}")
    return min(0.5, 2.0 / n_labels)


def tags_for_vectors(
    vectors: np.ndarray,
    label_matrix: np.ndarray,
    logit_scale: float,
    threshold: float | None = None,
    top: int = 3,
    *,
    labels: Sequence[str],
) -> list[TagResult]:
    """Tags of each (unit) image vector: see the module docstring for the selection rule."""
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a probability in [0, 1], got {threshold}")
    if len(labels) != len(label_matrix):
        raise ValueError(f"{len(labels)} labels but {len(label_matrix)} label vectors")
    vectors = np.atleast_2d(np.asarray(vectors))
    if len(vectors) == 0:
        return []
    probs = label_probabilities(vectors, label_matrix, logit_scale)
    k = min(top, len(labels))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    results = []
    for row, idx in zip(probs, order):
        scores = {labels[j]: float(row[j]) for j in idx}
        kept = [labels[j] for j in idx if threshold is None or row[j] >= threshold]
        results.append(TagResult(tags=kept, tag_scores=scores))
    return results


def _as_classifier(
    embedder_or_classifier: Embedder | ZeroShotClassifier,
    labels: Sequence[str] | None,
    templates: str | Sequence[str] | None,
    cache_dir: str | Path | None,
) -> ZeroShotClassifier:
    if isinstance(embedder_or_classifier, ZeroShotClassifier):
        clf = embedder_or_classifier
        if labels is not None and list(labels) != clf.labels:
            raise ValueError("labels differ from the given classifier's labels; pass one or the other")
        return clf
    if not labels:
        raise ValueError("tagging needs at least one label")
    return ZeroShotClassifier(embedder_or_classifier, labels, templates, cache_dir=cache_dir)


def _tagging_metadata(clf: ZeroShotClassifier, threshold: float | None, top: int) -> dict[str, Any]:
    return {
        METADATA_KEY: {
            "labels": list(clf.labels),
            "templates": list(clf.templates),
            "threshold": threshold,
            "top": top,
            "model_id": clf.embedder.info.model_id,
            "tagged_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
    }


def _ensure_tag_index(store: Store, collection: str) -> None:
    # Collections made from the default schema already have it; creating it again is harmless.
    store.create_payload_index(collection, TAGS_FIELD, models.PayloadSchemaType.KEYWORD)


def _check_model(store: Store, collection: str, clf: ZeroShotClassifier) -> None:
    spec = store.get_spec(collection)
    if spec is None:
        raise ValueError(f"collection {collection!r} does not exist")
    info = clf.embedder.info
    if spec.model_id != info.model_id or spec.dim != info.dim:
        raise SchemaMismatch(
            f"collection {collection!r} holds vectors of model {spec.model_id!r} (dim {spec.dim}); labels "
            f"embedded with {info.model_id!r} (dim {info.dim}) cannot be compared with them. "
            f"Use --model {spec.model_id!r}."
        )


@dataclass
class TagReport:
    collection: str
    model_id: str
    labels: list[str]
    templates: list[str]
    threshold: float | None
    top: int
    tagged: int = 0
    without_vector: int = 0  # points that had no image vector to tag from
    tag_counts: dict[str, int] = field(default_factory=dict)  # label -> points carrying it

    @property
    def untagged(self) -> int:
        """Points tagged with an empty list (no label reached the threshold)."""
        return self.tag_counts.get("", 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "model_id": self.model_id,
            "labels": list(self.labels),
            "templates": list(self.templates),
            "threshold": self.threshold,
            "top": self.top,
            "tagged": self.tagged,
            "without_vector": self.without_vector,
            "untagged": self.untagged,
            "tag_counts": {lab: self.tag_counts.get(lab, 0) for lab in self.labels},
        }

    def format_table(self) -> str:
        lines = [
            f"collection {self.collection}: {self.tagged} point(s) tagged"
            + (f", {self.without_vector} without image vector" if self.without_vector else ""),
            f"top={self.top} threshold={self.threshold}",
            f"{'label':<30} {'points':>8}",
        ]
        for lab in sorted(self.labels, key=lambda x: (-self.tag_counts.get(x, 0), x)):
            lines.append(f"{lab:<30} {self.tag_counts.get(lab, 0):>8}")
        return "\n".join(lines)


def tag_collection(
    store: Store,
    collection: str,
    embedder_or_classifier: Embedder | ZeroShotClassifier,
    labels: Sequence[str] | None = None,
    *,
    templates: str | Sequence[str] | None = None,
    threshold: float | None = None,
    top: int = 3,
    batch: int = 256,
    progress: bool = False,
    cache_dir: str | Path | None = None,
) -> TagReport:
    """Tag every point of `collection` (alias allowed) from its stored image vector."""
    clf = _as_classifier(embedder_or_classifier, labels, templates, cache_dir)
    target = store.resolve(collection)
    _check_model(store, target, clf)
    label_matrix = clf.label_matrix
    report = TagReport(
        collection=target,
        model_id=clf.embedder.info.model_id,
        labels=list(clf.labels),
        templates=list(clf.templates),
        threshold=threshold,
        top=top,
    )
    _ensure_tag_index(store, target)
    counts: Counter[str] = Counter()
    bar = tqdm(total=store.count(target), unit="pt", desc="tagging", disable=not progress, dynamic_ncols=True)
    offset: Any = None
    try:
        while True:
            records, offset = store.scroll(
                target, limit=batch, offset=offset, with_payload=False, with_vectors=[IMAGE_VECTOR]
            )
            ids, vecs = [], []
            for rec in records:
                vec = (rec.vector or {}).get(IMAGE_VECTOR) if isinstance(rec.vector, dict) else None
                if vec is None:
                    report.without_vector += 1
                    continue
                ids.append(rec.id)
                vecs.append(vec)
            if ids:
                results = tags_for_vectors(
                    np.asarray(vecs, dtype=np.float32), label_matrix, clf.logit_scale, threshold, top, labels=clf.labels
                )
                store.set_payloads(target, [(str(pid), res.payload()) for pid, res in zip(ids, results)])
                for res in results:
                    counts.update(res.tags or [""])
                report.tagged += len(ids)
            bar.update(len(records))
            if offset is None:
                break
    finally:
        bar.close()
    report.tag_counts = dict(counts)
    store.update_metadata(target, _tagging_metadata(clf, threshold, top))
    return report


def make_ingest_tagger(
    embedder: Embedder,
    labels: Sequence[str],
    *,
    store: Store | None = None,
    collection: str | None = None,
    templates: str | Sequence[str] | None = None,
    threshold: float | None = None,
    top: int = 3,
    cache_dir: str | Path | None = None,
) -> Callable[[np.ndarray], list[dict[str, Any]]]:
    """A function for ingestion: batch of image vectors -> payload updates ({"tags", "tag_scores"}).

    With a store and collection, also ensures the `tags` index and records the
    labels/templates in the collection metadata, as `tag_collection` does.
    """
    clf = ZeroShotClassifier(embedder, labels, templates, cache_dir=cache_dir)
    label_matrix = clf.label_matrix  # embed the prompts once, before the first batch
    scale = clf.logit_scale
    if store is not None and collection is not None:
        target = store.resolve(collection)
        _ensure_tag_index(store, target)
        store.update_metadata(target, _tagging_metadata(clf, threshold, top))

    def tagger(vectors: np.ndarray) -> list[dict[str, Any]]:
        return [r.payload() for r in tags_for_vectors(vectors, label_matrix, scale, threshold, top, labels=clf.labels)]

    return tagger


def ingest_tagger(
    store: Store,
    embedder: Embedder,
    collection: str,
    labels: Sequence[str],
    *,
    threshold: float | None = None,
    top: int | None = None,
) -> Callable[[np.ndarray], list[dict[str, Any]]]:
    """The tagger `run_ingest(tagger=...)` takes: creates/checks the collection, then `make_ingest_tagger`.

    The collection must exist first because the labels are recorded in its metadata.
    """
    from mmrag.ingest import ensure_collection

    target = ensure_collection(store, embedder, collection)
    if top is None:  # make_ingest_tagger's default
        return make_ingest_tagger(embedder, list(labels), store=store, collection=target, threshold=threshold)
    return make_ingest_tagger(embedder, list(labels), store=store, collection=target, threshold=threshold, top=top)
