from __future__ import annotations

import json

import numpy as np
import pytest
from qdrant_client import models

from mmrag.store.convert import point_id
from mmrag.store.schema import IMAGE_VECTOR, TEXT_VECTOR, CollectionSpec
from mmrag.tasks.dedup import UnionFind, dedup_report, find_near_duplicates

DIM = 16


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted(store, name: str = "photos") -> tuple[list[str], np.ndarray]:
    """30 random points plus planted duplicates:
    d0 == p00 exactly; d1a, d1b are slight perturbations of p01; d5 is a slight perturbation of p05."""
    rng = np.random.default_rng(7)
    base = unit(rng.normal(size=(30, DIM)))
    extra = np.stack([
        base[0],
        unit(base[1] + rng.normal(scale=0.02, size=DIM)),
        unit(base[1] + rng.normal(scale=0.02, size=DIM)),
        unit(base[5] + rng.normal(scale=0.02, size=DIM)),
    ])
    vecs = np.concatenate([base, extra])
    paths = [f"p{i:02d}.jpg" for i in range(30)] + ["d0.jpg", "d1a.jpg", "d1b.jpg", "d5.jpg"]
    store.create_collection(CollectionSpec(name=name, dim=DIM, model_id="fake"))
    points = []
    for i, (p, v) in enumerate(zip(paths, vecs)):
        vectors = {IMAGE_VECTOR: v.tolist()}
        if i % 2 == 0:  # only some points have a caption vector
            vectors[TEXT_VECTOR] = v.tolist()
        points.append(models.PointStruct(id=point_id(p), vector=vectors, payload={"path": p}))
    store.upsert(name, points)
    return paths, vecs


def reference_groups(paths, vecs, threshold) -> list[list[str]]:
    sim = vecs.astype(np.float64) @ vecs.astype(np.float64).T
    uf = UnionFind()
    for i, j in zip(*np.nonzero(np.triu(sim >= threshold, k=1))):
        uf.union(paths[i], paths[j])
    return sorted(sorted(g) for g in uf.groups())


def test_planted_duplicates_found_exactly(store) -> None:
    paths, vecs = planted(store)
    groups = find_near_duplicates(store, "photos", threshold=0.95)
    assert sorted(g.paths for g in groups) == [["d0.jpg", "p00.jpg"], ["d1a.jpg", "d1b.jpg", "p01.jpg"], ["d5.jpg", "p05.jpg"]]
    assert sorted(g.paths for g in groups) == reference_groups(paths, vecs, 0.95)
    # sorted by max score: the identical pair first
    assert groups[0].paths == ["d0.jpg", "p00.jpg"] and groups[0].max_score == pytest.approx(1.0, abs=1e-5)
    assert [g.max_score for g in groups] == sorted((g.max_score for g in groups), reverse=True)
    g1 = next(g for g in groups if g.size == 3)
    sim = vecs.astype(np.float64) @ vecs.astype(np.float64).T
    idx = [paths.index(p) for p in g1.paths]
    pair_scores = {(paths[a], paths[b]): sim[a, b] for a in idx for b in idx if paths[a] < paths[b]}
    assert g1.max_score == pytest.approx(max(pair_scores.values()), abs=1e-5)
    assert {(a, b) for a, b, _ in g1.pairs} == set(pair_scores)
    for a, b, s in g1.pairs:
        assert s == pytest.approx(pair_scores[(a, b)], abs=1e-5)
    assert g1.ids == [point_id(p) for p in g1.paths]


def test_threshold_and_report(store) -> None:
    paths, vecs = planted(store)
    # a threshold of 0.9999 keeps only the identical pair
    assert [g.paths for g in find_near_duplicates(store, "photos", threshold=0.9999)] == [["d0.jpg", "p00.jpg"]]
    report = dedup_report(store, "photos", threshold=0.95)
    assert report.points == 34 and len(report.groups) == 3 and report.duplicates == 4
    data = json.loads(json.dumps(report.to_dict()))
    assert data["n_groups"] == 3 and data["groups"][0]["paths"] == ["d0.jpg", "p00.jpg"]
    assert "3 group(s) of near duplicates (4 redundant point(s) of 34)" in report.format_table()


def test_text_vectors_skip_points_without_one(store) -> None:
    paths, vecs = planted(store)
    report = dedup_report(store, "photos", threshold=0.95, vector=TEXT_VECTOR)
    assert report.points == 17
    with_text = [i for i in range(len(paths)) if i % 2 == 0]
    expected = reference_groups([paths[i] for i in with_text], vecs[with_text], 0.95)
    # p01, d1a, d5 and p05 have no text vector: only the identical pair remains
    assert expected == [["d0.jpg", "p00.jpg"]]
    assert [g.paths for g in report.groups] == expected


def test_validation(store) -> None:
    planted(store)
    with pytest.raises(ValueError, match="threshold is a cosine"):
        find_near_duplicates(store, "photos", threshold=1.5)
    with pytest.raises(ValueError, match="limit_per_point"):
        find_near_duplicates(store, "photos", limit_per_point=0)


def test_union_find() -> None:
    uf = UnionFind()
    uf.union("a", "b")
    uf.union("c", "d")
    uf.union("b", "d")
    uf.add("e")
    assert sorted(sorted(g) for g in uf.groups()) == [["a", "b", "c", "d"], ["e"]]
