"""A per-collection "no match" cut-off: the null distribution of unrelated prompts.

Raw cosine between CLIP text and image vectors sits in a narrow, model-dependent
band, so no fixed threshold means "relevant". Instead we score prompts that are
unrelated to the collection and record, per dense vector, the percentiles of their
best scores. `min_relevance=95` then keeps only hits that beat what 95% of unrelated
prompts reach.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from mmrag.errors import UsageError
from mmrag.store.schema import IMAGE_VECTOR, TEXT_VECTOR, CollectionSpec

CALIBRATION_KEY = "calibration"

# Everyday things, none of them the subject of a typical photo collection's query.
_NULL_SUBJECTS = (
    "dog", "cat", "horse", "bicycle", "car", "airplane", "boat", "train", "bus", "pizza", "sandwich", "banana",
    "apple", "orange", "cake", "chair", "sofa", "bed", "table", "toilet", "television", "laptop", "keyboard",
    "phone", "book", "clock", "vase", "scissors", "teddy bear", "toothbrush", "umbrella", "handbag", "tie",
    "suitcase", "frisbee", "ski", "snowboard", "kite", "baseball bat", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "broccoli", "carrot", "hot dog", "donut",
    "elephant", "bear", "zebra", "giraffe", "bird", "sheep", "cow", "mountain", "forest", "beach", "city street",
)
DEFAULT_NULL_PROMPTS: tuple[str, ...] = tuple(f"a photo of a {s}." for s in _NULL_SUBJECTS)
_PERCENTILES = np.arange(0, 101)


class NotCalibrated(UsageError):
    """min_relevance on a collection without a recorded null distribution."""


def calibrate(
    store: Any, embedder: Any, collection: str, *, prompts: Sequence[str] | None = None
) -> dict[str, Any]:
    """Score `prompts` (default: DEFAULT_NULL_PROMPTS) against `collection`; record and return the distribution.

    For each dense vector, the best cosine each prompt reaches; the percentiles 0..100 of
    those maxima go into the collection's metadata under "calibration".
    """
    prompts = list(prompts) if prompts is not None else list(DEFAULT_NULL_PROMPTS)
    if len(prompts) < 10:
        raise UsageError(f"calibration needs at least 10 unrelated prompts for a distribution, got {len(prompts)}")
    target = store.resolve(collection)
    if store.get_spec(target) is None:
        raise UsageError(f"collection {collection!r} does not exist")
    if store.count(target) == 0:
        raise UsageError(f"collection {collection!r} is empty; ingest before calibrating")
    vectors = embedder.embed_texts(prompts)
    record: dict[str, Any] = {
        "model_id": embedder.info.model_id,
        "prompts": len(prompts),
        "calibrated_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
    }
    for name in (IMAGE_VECTOR, TEXT_VECTOR):
        best = []
        for vec in vectors:
            hits = store.search(target, vec.tolist(), using=name, limit=1, with_payload=False)
            if hits:
                best.append(float(hits[0].score))
        if best:
            record[name] = [round(float(v), 6) for v in np.percentile(best, _PERCENTILES)]
    store.update_metadata(target, {CALIBRATION_KEY: record})
    return record


def relevance_threshold(spec: CollectionSpec | None, vector: str, percentile: float) -> float:
    """The cosine at `percentile` (0-100) of the null distribution recorded for `vector`."""
    name = spec.name if spec is not None else "?"
    record = (spec.extra or {}).get(CALIBRATION_KEY) if spec is not None else None
    if not record or vector not in record:
        raise NotCalibrated(
            f"collection {name!r} has no calibrated null distribution for the {vector!r} vector, so "
            f"min_relevance cannot apply; run `mmrag calibrate --collection {name}` (or ingest with --calibrate)"
        )
    if record.get("model_id") not in (None, spec.model_id):  # type: ignore[union-attr]
        raise NotCalibrated(f"collection {name!r} was calibrated for another model; run `mmrag calibrate` again")
    return float(np.interp(percentile, _PERCENTILES, np.asarray(record[vector], dtype=np.float64)))
