"""Retrieval metrics, once: evaluation (`mmrag.tasks.evaluate`) and fine-tuning validation both use these.

Pure numpy on a (queries, gallery) similarity matrix and a relevance mask. Ties
count in the query's favour: rank = 1 + irrelevant items scoring strictly higher
than the best relevant one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["group_mask", "mean_reciprocal_rank", "median_rank", "ranks", "recall_at_k", "relevance_mask"]


def relevance_mask(relevant: Any, shape: tuple[int, int]) -> np.ndarray:
    """(Q, N) boolean mask from a mask, a (Q,) array of single relevant indices, or Q iterables of indices."""
    if isinstance(relevant, np.ndarray) and relevant.dtype == bool:
        if relevant.shape != shape:
            raise ValueError(f"relevance mask has shape {relevant.shape}, similarity matrix {shape}")
        return relevant
    mask = np.zeros(shape, dtype=bool)
    rows = list(relevant)
    if len(rows) != shape[0]:
        raise ValueError(f"{len(rows)} relevance entries for {shape[0]} queries")
    for q, rel in enumerate(rows):
        idx = [int(rel)] if np.isscalar(rel) else [int(j) for j in rel]  # type: ignore[arg-type]  # a scalar index
        mask[q, idx] = True
    return mask


def ranks(sim: np.ndarray, relevant: Any) -> np.ndarray:
    """1-based rank of the best-ranked relevant item for each query (row of `sim`).

    rank = 1 + number of irrelevant items scoring strictly higher than the best
    relevant one. Every query needs at least one relevant item.
    """
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity matrix must be 2-D, got shape {sim.shape}")
    mask = relevance_mask(relevant, sim.shape)
    empty = np.flatnonzero(~mask.any(axis=1))
    if len(empty):
        raise ValueError(f"queries without any relevant item: {empty.tolist()}")
    best = np.where(mask, sim, -np.inf).max(axis=1)
    return 1 + ((sim > best[:, None]) & ~mask).sum(axis=1)


def recall_at_k(sim: np.ndarray, relevant: Any, k: int) -> float:
    """Share of queries whose best relevant item is within the top k."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return float(np.mean(ranks(sim, relevant) <= k))


def mean_reciprocal_rank(rank_values: np.ndarray) -> float:
    return float(np.mean(1.0 / np.asarray(rank_values, dtype=np.float64)))


def median_rank(rank_values: np.ndarray) -> float:
    return float(np.median(np.asarray(rank_values, dtype=np.float64)))


def group_mask(query_groups: Sequence[Any], gallery_groups: Sequence[Any]) -> np.ndarray:
    """(Q, N) relevance mask: a gallery item is relevant when its group (e.g. caption) equals the query's.

    Groups make duplicates honest: every copy of the query's caption counts as a hit.
    """
    return np.asarray(query_groups)[:, None] == np.asarray(gallery_groups)[None, :]
