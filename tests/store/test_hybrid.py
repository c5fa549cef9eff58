"""Hybrid search in the engine, on both backends: BM25 sparse vectors, fusion, MMR, facets.

Every answer is checked against a reference computed here: BM25 with IDF by hand from
the engine's own document weights, dense rankings with numpy, and Qdrant's weighted
RRF formula. The tests fail if the sparse vector is dropped, if fusion is skipped or if
a filter is applied only after the prefetches.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import models

from mmrag.store import IMAGE_VECTOR, TEXT_VECTOR, Store
from mmrag.store.base import MmrParams
from mmrag.store.convert import build_point
from mmrag.store.edge import bm25_document, bm25_query
from mmrag.store.schema import SPARSE_VECTOR, SparseVectorMissing
from store.conftest import DIM, make_store, spec, unit_rows

N = 60
WORDS = ("red", "blue", "green", "circle", "square", "star", "beach", "forest", "night", "river", "lamp", "harbour",
         "glass", "stone", "winter", "market", "bridge", "tower", "garden", "window", "violin", "desert")
CODES = {7: "QX-4821", 33: "BE-4637"}
ZH = {11: "海边的红色圆形", 12: "森林里的蓝色方块"}


def _caption(i: int, rng: np.random.Generator) -> str:
    if i in ZH:
        return ZH[i]
    words = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 12))))
    return f"{words}, cat. no. {CODES[i]}" if i in CODES else words


@pytest.fixture(scope="module")
def hybrid_data():
    rng = np.random.default_rng(3)
    image, text = unit_rows(rng, N), unit_rows(rng, N)
    captions = [_caption(i, rng) for i in range(N)]
    formats = ["jpeg" if i % 3 else "png" for i in range(N)]
    points = [
        build_point(f"img/{i:02d}.jpg", image[i], text[i],
                    {"path": f"img/{i:02d}.jpg", "caption": captions[i], "format": formats[i],
                     "tags": ["cat"] if i % 4 == 0 else ["dog", "sky"]},
                    sparse_text=captions[i])
        for i in range(N)
    ]
    ids = [str(p.id) for p in points]
    return {"image": image, "text": text, "captions": captions, "formats": formats, "points": points, "ids": ids}


@pytest.fixture(scope="module", params=["edge", "memory"])
def hstore(request, tmp_path_factory, hybrid_data):
    s = make_store(request.param, tmp_path_factory.mktemp(f"hybrid-{request.param}"))
    s.create_collection(spec("h", payload_indexes={"format": models.PayloadSchemaType.KEYWORD,
                                                   "tags": models.PayloadSchemaType.KEYWORD}))
    s.upsert("h", hybrid_data["points"])
    yield s
    s.close()


# --- references -----------------------------------------------------------------


def bm25_scores(data, query: str, keep: np.ndarray) -> dict[int, float]:
    """BM25 by hand: sum over query tokens of idf * the engine's document weight (IDF modifier)."""
    docs = [dict(zip(v.indices, v.values)) for v in (bm25_document(models.Document(text=c, model="Qdrant/bm25"))
                                                       for c in data["captions"])]
    n = len(docs)
    scores: dict[int, float] = {}
    for token in bm25_query(query).indices:
        df = sum(token in d for d in docs)
        idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
        for i, d in enumerate(docs):
            if token in d and keep[i]:
                scores[i] = scores.get(i, 0.0) + idf * d[token]
    return scores


def dense_rank(matrix: np.ndarray, q: np.ndarray, keep: np.ndarray) -> list[int]:
    sims = matrix @ q
    return [i for i in np.argsort(-sims, kind="stable") if keep[i]]


def weighted_rrf(rankings: list[list[int]], weights: list[float], k: int = 2) -> dict[int, float]:
    """Qdrant's weighted RRF: rank r (from 0) adds 1 / ((r + 1) / w + k - 1)."""
    out: dict[int, float] = {}
    for ranking, w in zip(rankings, weights):
        for r, i in enumerate(ranking):
            out[i] = out.get(i, 0.0) + 1.0 / ((r + 1) / w + k - 1)
    return out


# --- tests ------------------------------------------------------------------------


def test_points_store_the_engine_bm25_vector(hstore: Store, hybrid_data) -> None:
    rec = hstore.retrieve("h", [hybrid_data["ids"][7]], with_vectors=[SPARSE_VECTOR])[0]
    sparse = rec.vector[SPARSE_VECTOR]
    expected = bm25_document(models.Document(text=hybrid_data["captions"][7], model="Qdrant/bm25"))
    assert isinstance(sparse, models.SparseVector)
    assert dict(zip(sparse.indices, sparse.values)) == pytest.approx(dict(zip(expected.indices, expected.values)))
    assert hstore.get_spec("h").sparse_fields == ("caption",)


def test_a_qdrant_client_point_and_a_plain_point_store_the_same(hstore: Store, hybrid_data) -> None:
    """Both backends take qdrant-client's PointStruct + Document as well as our PointToWrite + SparseText."""
    plain = build_point("extra/plain.jpg", hybrid_data["image"][0], None, {"path": "extra/plain.jpg"},
                        sparse_text="violin harbour QX-4821")
    client = models.PointStruct(
        id=str(build_point("extra/client.jpg", hybrid_data["image"][0], None, {}).id),
        vector={IMAGE_VECTOR: list(plain.vector[IMAGE_VECTOR]),
                SPARSE_VECTOR: models.Document(text="violin harbour QX-4821", model="Qdrant/bm25")},
        payload={"path": "extra/client.jpg"})
    hstore.upsert("h", [plain, client])
    try:
        got = hstore.retrieve("h", [str(plain.id), str(client.id)], with_vectors=True)
        assert [r.payload["path"] for r in got] == ["extra/plain.jpg", "extra/client.jpg"]
        a, b = (r.vector for r in got)
        assert a[IMAGE_VECTOR] == pytest.approx(b[IMAGE_VECTOR])
        assert dict(zip(a[SPARSE_VECTOR].indices, a[SPARSE_VECTOR].values)) == pytest.approx(
            dict(zip(b[SPARSE_VECTOR].indices, b[SPARSE_VECTOR].values)))
    finally:
        hstore.delete_points("h", [str(plain.id), str(client.id)])
    assert hstore.count("h") == N


@pytest.mark.parametrize("with_filter", [False, True])
def test_hybrid_is_weighted_rrf_of_dense_and_bm25_rankings(hstore: Store, hybrid_data, with_filter: bool) -> None:
    rng = np.random.default_rng(5)
    q = unit_rows(rng, 1)[0]
    query = "red circle beach"
    keep = np.array([f == "png" for f in hybrid_data["formats"]]) if with_filter else np.ones(N, bool)
    flt = models.Filter(must=[models.FieldCondition(key="format", match=models.MatchValue(value="png"))])
    per = 5  # small prefetches: a filter applied only after them would leave other points in the lists
    weights = {IMAGE_VECTOR: 0.5, TEXT_VECTOR: 0.5, SPARSE_VECTOR: 3.0}
    hits = hstore.search_fused("h", {IMAGE_VECTOR: q.tolist(), TEXT_VECTOR: q.tolist()}, text=query, limit=8,
                               query_filter=flt if with_filter else None, prefetch_limit=per, weights=weights)
    bm = bm25_scores(hybrid_data, query, keep)
    sparse_rank = sorted(bm, key=lambda i: -bm[i])[:per]
    expected = weighted_rrf([dense_rank(hybrid_data["image"], q, keep)[:per],
                             dense_rank(hybrid_data["text"], q, keep)[:per], sparse_rank], [0.5, 0.5, 3.0])
    by_id = {hybrid_data["ids"][i]: s for i, s in expected.items()}
    assert len(hits) == min(8, len(by_id))
    for h in hits:
        assert h.score == pytest.approx(by_id[str(h.id)], abs=1e-6)
    assert [h.score for h in hits] == pytest.approx(sorted(by_id.values(), reverse=True)[: len(hits)], abs=1e-6)
    if with_filter:
        assert all(h.payload["format"] == "png" for h in hits)


def test_a_rare_code_and_a_chinese_keyword_find_their_caption(hstore: Store, hybrid_data) -> None:
    q = unit_rows(np.random.default_rng(8), 1)[0].tolist()
    weights = {IMAGE_VECTOR: 0.5, TEXT_VECTOR: 0.5, SPARSE_VECTOR: 3.0}
    for i, query in [(7, "QX-4821"), (33, "be-4637"), (11, "海边"), (12, "蓝色")]:
        top = hstore.search_fused("h", {IMAGE_VECTOR: q, TEXT_VECTOR: q}, text=query, limit=1, weights=weights)
        assert str(top[0].id) == hybrid_data["ids"][i], (query, top[0].payload["caption"])


def test_dbsf_and_unknown_fusion(hstore: Store, hybrid_data) -> None:
    q = unit_rows(np.random.default_rng(9), 1)[0].tolist()
    hits = hstore.search_fused("h", {IMAGE_VECTOR: q}, text="QX-4821", limit=3, fusion="dbsf")
    assert len(hits) == 3 and len({h.id for h in hits}) == 3
    with pytest.raises(ValueError, match="fusion must be 'rrf' or 'dbsf'"):
        hstore.search_fused("h", {IMAGE_VECTOR: q}, fusion="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not searched"):
        hstore.search_fused("h", {IMAGE_VECTOR: q}, weights={SPARSE_VECTOR: 2.0})


def test_mmr_lambda_one_is_plain_nearest_and_lower_lambda_diversifies(hstore: Store, hybrid_data) -> None:
    img = hybrid_data["image"]
    q = img[0]
    plain = [str(h.id) for h in hstore.search("h", q.tolist(), using=IMAGE_VECTOR, limit=5)]
    same = hstore.search("h", q.tolist(), using=IMAGE_VECTOR, limit=5, mmr=MmrParams(1.0, 20))
    assert [str(h.id) for h in same] == plain
    diverse = hstore.search("h", q.tolist(), using=IMAGE_VECTOR, limit=5, mmr=MmrParams(0.0, 20))
    ids = [hybrid_data["ids"].index(str(h.id)) for h in diverse]
    assert ids[0] == 0  # the best match comes first either way
    # pure diversity: each next pick is the candidate least similar to those already picked
    candidates = dense_rank(img, q, np.ones(N, bool))[:20]
    picked = [candidates[0]]
    while len(picked) < 5:
        rest = [c for c in candidates if c not in picked]
        picked.append(min(rest, key=lambda c: max(float(img[c] @ img[p]) for p in picked)))
    assert ids == picked
    fused = hstore.search_fused("h", {IMAGE_VECTOR: q.tolist(), TEXT_VECTOR: q.tolist()}, text="red", limit=4,
                                mmr=MmrParams(0.5, 20))
    assert len({h.id for h in fused}) == 4


def test_facet_counts_values_under_a_filter(hstore: Store, hybrid_data) -> None:
    hits = hstore.facet("h", "format")
    assert {h.value: h.count for h in hits} == dict(Counter(hybrid_data["formats"]))
    png = models.Filter(must=[models.FieldCondition(key="format", match=models.MatchValue(value="png"))])
    tags = {h.value: h.count for h in hstore.facet("h", "tags", filter=png)}
    expected = Counter(t for i in range(N) if hybrid_data["formats"][i] == "png"
                       for t in (["cat"] if i % 4 == 0 else ["dog", "sky"]))
    assert tags == dict(expected)
    assert [h.value for h in hstore.facet("h", "tags", limit=1)] == [Counter(
        t for i in range(N) for t in (["cat"] if i % 4 == 0 else ["dog", "sky"])).most_common(1)[0][0]]


@pytest.mark.parametrize("kind", ["edge", "memory"])
def test_collection_without_sparse_vector_answers_dense_and_asks_for_rebuild(kind: str, tmp_path: Path) -> None:
    s = make_store(kind, tmp_path)
    try:
        s.create_collection(spec("old", payload_indexes={}, sparse_fields=None))
        assert s.get_spec("old").sparse_fields is None
        v = unit_rows(np.random.default_rng(1), 3, DIM)
        s.upsert("old", [build_point(f"{i}.jpg", v[i], v[i], {"path": f"{i}.jpg"}) for i in range(3)])
        assert len(s.search_fused("old", {IMAGE_VECTOR: v[0].tolist(), TEXT_VECTOR: v[0].tolist()}, limit=3)) == 3
        with pytest.raises(SparseVectorMissing, match="reindex old --rebuild"):
            s.search_fused("old", {IMAGE_VECTOR: v[0].tolist()}, text="red", limit=3)
    finally:
        s.close()
