"""Congruence tests: every Store backend gives the answers numpy gives.

Each test runs against EdgeStore (qdrant-edge, in tmp_path) and QdrantClientStore
(qdrant-client `:memory:`), and checks results against a reference computed
here from the inserted data.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from mmrag.settings import Settings
from mmrag.store import (
    IMAGE_VECTOR,
    TEXT_VECTOR,
    EdgeStore,
    QdrantClientStore,
    Store,
    open_store,
)
from mmrag.store.schema import CollectionSpec
from store.conftest import (
    COLLECTION,
    DIM,
    N_POINTS,
    Dataset,
    fill,
    make_dataset,
    make_store,
    payload_equal,
    point_id,
    spec,
    unit_rows,
)

# ---------------------------------------------------------------------------
# reference computations
# ---------------------------------------------------------------------------


def numpy_ranking(data: Dataset, query: np.ndarray, using: str, mask: np.ndarray | None = None) -> list[tuple[str, float]]:
    """(id, cosine) of the stored points, best first; `mask` keeps a subset."""
    matrix = data.image if using == IMAGE_VECTOR else data.text
    keep = np.ones(len(data.ids), bool) if mask is None else mask.copy()
    if using == TEXT_VECTOR:
        keep &= data.has_text
    q = query.astype(np.float64) / np.linalg.norm(query)
    scores = matrix.astype(np.float64) @ q
    order = [i for i in np.argsort(-scores, kind="stable") if keep[i]]
    return [(data.ids[i], float(scores[i])) for i in order]


def rrf(rankings: list[list[str]], k: int = 2) -> dict[str, float]:
    """Reciprocal rank fusion by hand: score = sum over rankings of 1 / (k + rank), rank counted from 0."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, pid in enumerate(ranking):
            fused[pid] = fused.get(pid, 0.0) + 1.0 / (k + rank)
    return fused


def scroll_all(store: Store, flt: models.Filter | None = None, page: int = 1000) -> list[models.Record]:
    records: list[models.Record] = []
    offset = None
    while True:
        batch, offset = store.scroll(COLLECTION, scroll_filter=flt, limit=page, offset=offset)
        records.extend(batch)
        if offset is None:
            return records


def queries(n: int, seed: int = 99) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed), n)


# ---------------------------------------------------------------------------
# collections
# ---------------------------------------------------------------------------


def test_collection_lifecycle(store: Store) -> None:
    assert store.list_collections() == []
    assert not store.collection_exists(COLLECTION)
    assert store.get_spec(COLLECTION) is None

    wanted = spec(quantization="int8", extra={"labels": ["a"]}, payload_indexes={"format": models.PayloadSchemaType.KEYWORD})
    store.create_collection(wanted)
    assert store.collection_exists(COLLECTION)
    assert store.list_collections() == [COLLECTION]
    got = store.get_spec(COLLECTION)
    assert got is not None
    assert (got.name, got.dim, got.model_id, got.schema_version, got.quantization) == (
        COLLECTION, DIM, "test/random-16", wanted.schema_version, "int8",
    )
    assert dict(got.extra) == {"labels": ["a"]}

    with pytest.raises(ValueError, match="already exists"):
        store.create_collection(spec())

    store.update_metadata(COLLECTION, {"tagged_by": "clip", "labels": ["a", "b"]})
    assert dict(store.get_spec(COLLECTION).extra) == {"labels": ["a", "b"], "tagged_by": "clip"}  # type: ignore[union-attr]

    store.create_collection(spec("other", payload_indexes={}))
    assert store.list_collections() == ["other", COLLECTION]
    store.delete_collection(COLLECTION)
    assert not store.collection_exists(COLLECTION)
    assert store.get_spec(COLLECTION) is None
    assert store.list_collections() == ["other"]
    store.delete_collection(COLLECTION)  # deleting again is a no-op
    assert store.list_collections() == ["other"]


# ---------------------------------------------------------------------------
# points
# ---------------------------------------------------------------------------


def test_upsert_with_and_without_text_vector(filled: Store, dataset: Dataset) -> None:
    assert filled.count(COLLECTION) == N_POINTS
    records = filled.retrieve(COLLECTION, dataset.ids, with_vectors=True)
    assert len(records) == N_POINTS
    by_id = {r.id: r for r in records}
    assert set(by_id) == set(dataset.ids)
    for i, pid in enumerate(dataset.ids):
        expected_names = {IMAGE_VECTOR, TEXT_VECTOR} if dataset.has_text[i] else {IMAGE_VECTOR}
        assert set(by_id[pid].vector) == expected_names  # type: ignore[arg-type]
        assert payload_equal(by_id[pid].payload, dataset.payloads[i])
    # upsert replaces whole points: idempotent re-ingest keeps the count
    fill(filled, dataset)
    assert filled.count(COLLECTION) == N_POINTS


def test_search_matches_numpy_cosine(shared: Store, dataset: Dataset) -> None:
    for q in queries(5):
        expected = numpy_ranking(dataset, q, IMAGE_VECTOR)[:25]
        hits = shared.search(COLLECTION, q.tolist(), using=IMAGE_VECTOR, limit=25)
        assert [h.id for h in hits] == [pid for pid, _ in expected]
        np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], atol=1e-5)
        payloads = {pid: p for pid, p in zip(dataset.ids, dataset.payloads)}
        assert all(payload_equal(h.payload, payloads[h.id]) for h in hits)
        assert all(h.vector is None for h in hits)


def test_search_on_text_returns_only_points_with_text(shared: Store, dataset: Dataset) -> None:
    q = queries(1, seed=5)[0]
    hits = shared.search(COLLECTION, q.tolist(), using=TEXT_VECTOR, limit=N_POINTS)
    expected = numpy_ranking(dataset, q, TEXT_VECTOR)
    assert len(hits) == int(dataset.has_text.sum()) < N_POINTS
    assert [h.id for h in hits] == [pid for pid, _ in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], atol=1e-5)


def test_search_with_vectors_and_without_payload(shared: Store, dataset: Dataset) -> None:
    q = queries(1, seed=6)[0]
    hits = shared.search(COLLECTION, q.tolist(), using=IMAGE_VECTOR, limit=3, with_payload=False, with_vectors=[IMAGE_VECTOR])
    for h in hits:
        i = dataset.ids.index(h.id)
        assert not h.payload
        assert set(h.vector) == {IMAGE_VECTOR}  # type: ignore[arg-type]
        np.testing.assert_allclose(h.vector[IMAGE_VECTOR], dataset.image[i], atol=1e-6)  # type: ignore[index]


_FORMAT = lambda value: models.FieldCondition(key="format", match=models.MatchValue(value=value))  # noqa: E731

# (name, filter, python predicate over (index, payload))
FILTER_CASES: list[tuple[str, models.Filter, Callable[[int, dict[str, Any]], bool]]] = [
    ("keyword", models.Filter(must=[_FORMAT("png")]), lambda i, p: p["format"] == "png"),
    (
        "keyword flag",
        models.Filter(must=[models.FieldCondition(key="has_caption", match=models.MatchValue(value="yes"))]),
        lambda i, p: p["has_caption"] == "yes",
    ),
    (
        "match any",
        models.Filter(must=[models.FieldCondition(key="format", match=models.MatchAny(any=["png", "webp"]))]),
        lambda i, p: p["format"] in ("png", "webp"),
    ),
    (
        "match except",
        models.Filter(must=[models.FieldCondition(key="format", match=models.MatchExcept(**{"except": ["jpeg"]}))]),
        lambda i, p: p["format"] != "jpeg",
    ),
    (
        "keyword in array",
        models.Filter(must=[models.FieldCondition(key="tags", match=models.MatchValue(value="cat"))]),
        lambda i, p: "cat" in p.get("tags", []),
    ),
    (
        "integer range",
        models.Filter(must=[models.FieldCondition(key="width", range=models.Range(gte=300, lt=700))]),
        lambda i, p: 300 <= p["width"] < 700,
    ),
    (
        "float range",
        models.Filter(must=[models.FieldCondition(key="mtime", range=models.Range(gt=1.65e9))]),
        lambda i, p: p["mtime"] > 1.65e9,
    ),
    (
        "datetime range",
        models.Filter(
            must=[
                models.FieldCondition(
                    key="ingested_at",
                    range=models.DatetimeRange(gte=dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc), lt=dt.date(2024, 10, 1)),
                )
            ]
        ),
        lambda i, p: "2024-06" <= p["ingested_at"][:7] < "2024-10",
    ),
    ("must_not", models.Filter(must_not=[_FORMAT("png")]), lambda i, p: p["format"] != "png"),
    (
        "is_empty",
        models.Filter(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key="tags"))]),
        lambda i, p: not p.get("tags"),
    ),
    (
        "is_null",
        models.Filter(must=[models.IsNullCondition(is_null=models.PayloadField(key="caption"))]),
        lambda i, p: "caption" in p and p["caption"] is None,
    ),
    (
        "should",
        models.Filter(should=[_FORMAT("png"), models.FieldCondition(key="width", range=models.Range(lt=200))]),
        lambda i, p: p["format"] == "png" or p["width"] < 200,
    ),
    (
        "nested filter",
        models.Filter(
            must=[
                models.FieldCondition(key="has_caption", match=models.MatchValue(value="yes")),
                models.Filter(should=[_FORMAT("jpeg"), _FORMAT("webp")]),
            ],
            must_not=[models.FieldCondition(key="width", range=models.Range(gte=800))],
        ),
        lambda i, p: p["has_caption"] == "yes" and p["format"] in ("jpeg", "webp") and p["width"] < 800,
    ),
    (
        "has_id",
        models.Filter(must=[models.HasIdCondition(has_id=[point_id(i) for i in range(10, 40, 3)])]),
        lambda i, p: i in range(10, 40, 3),
    ),
]


@pytest.mark.parametrize("case", FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
def test_filters_match_python(shared: Store, dataset: Dataset, case: tuple) -> None:
    _, flt, predicate = case
    mask = np.array([predicate(i, p) for i, p in enumerate(dataset.payloads)])
    expected_ids = {pid for pid, keep in zip(dataset.ids, mask) if keep}
    assert 0 < len(expected_ids) < N_POINTS  # the case really filters

    scrolled = [r.id for r in scroll_all(shared, flt)]
    assert len(scrolled) == len(set(scrolled))
    assert set(scrolled) == expected_ids
    assert shared.count(COLLECTION, flt) == len(expected_ids)

    q = queries(1, seed=11)[0]
    hits = shared.search(COLLECTION, q.tolist(), using=IMAGE_VECTOR, limit=N_POINTS, query_filter=flt)
    assert [h.id for h in hits] == [pid for pid, _ in numpy_ranking(dataset, q, IMAGE_VECTOR, mask)]


def test_score_threshold(shared: Store, dataset: Dataset) -> None:
    q = queries(1, seed=12)[0]
    ranking = numpy_ranking(dataset, q, IMAGE_VECTOR)
    # a threshold halfway between the 30th and 31st scores: no rounding can move a point across it
    threshold = (ranking[29][1] + ranking[30][1]) / 2
    hits = shared.search(COLLECTION, q.tolist(), using=IMAGE_VECTOR, limit=100, score_threshold=threshold)
    assert [h.id for h in hits] == [pid for pid, _ in ranking[:30]]
    assert all(h.score >= threshold for h in hits)


def test_scroll_pages_through_all_points_once(shared: Store, dataset: Dataset) -> None:
    seen: list[str] = []
    pages = 0
    offset = None
    while True:
        batch, offset = shared.scroll(COLLECTION, limit=37, offset=offset, with_payload=False)
        pages += 1
        assert len(batch) <= 37
        seen.extend(str(r.id) for r in batch)
        if offset is None:
            break
    assert pages == math.ceil(N_POINTS / 37)
    assert len(seen) == len(set(seen)) == N_POINTS
    assert set(seen) == set(dataset.ids)


def test_retrieve_vectors_bit_exact(store: Store) -> None:
    store.create_collection(spec(payload_indexes={}))
    rng = np.random.default_rng(3)
    # Components of +-0.25 have a norm of exactly 1 in float32, so cosine normalisation is a no-op
    # and any lossy storage (float16, quantisation, a float64 round trip gone wrong) would show.
    dyadic = (rng.choice([-0.25, 0.25], size=(20, DIM))).astype(np.float32)
    random_unit = unit_rows(rng, 20)
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(20)]
    store.upsert(
        COLLECTION,
        [
            models.PointStruct(id=pid, vector={IMAGE_VECTOR: dyadic[i].tolist(), TEXT_VECTOR: random_unit[i].tolist()})
            for i, pid in enumerate(ids)
        ],
    )
    records = {r.id: r for r in store.retrieve(COLLECTION, ids, with_vectors=True)}
    assert set(records) == set(ids)
    for i, pid in enumerate(ids):
        got_image = np.asarray(records[pid].vector[IMAGE_VECTOR], dtype=np.float32)  # type: ignore[index]
        got_text = np.asarray(records[pid].vector[TEXT_VECTOR], dtype=np.float32)  # type: ignore[index]
        assert got_image.dtype == np.float32 and np.array_equal(got_image, dyadic[i])
        # Random unit vectors are re-normalised by the backend: equal to float32 rounding.
        np.testing.assert_allclose(got_text, random_unit[i], rtol=0, atol=1e-7)
        if store.backend_name == "edge":  # qdrant-edge keeps already-normalised float32 vectors untouched
            assert np.array_equal(got_text, random_unit[i])

    only_text = store.retrieve(COLLECTION, ids[:2], with_payload=False, with_vectors=[TEXT_VECTOR])
    assert all(set(r.vector) == {TEXT_VECTOR} and not r.payload for r in only_text)  # type: ignore[arg-type]
    assert store.retrieve(COLLECTION, ["00000000-0000-4000-8000-999999999999"]) == []


def test_set_payload(store: Store, dataset: Dataset) -> None:
    filled = store
    fill(filled, dataset)  # with payload indexes: the filter below runs on the keyword index
    targets = dataset.ids[5:8]
    filled.set_payload(COLLECTION, {"tags": ["reviewed"], "score": 3}, targets)
    for r in filled.retrieve(COLLECTION, targets):
        i = dataset.ids.index(r.id)
        assert payload_equal(r.payload, {**dataset.payloads[i], "tags": ["reviewed"], "score": 3})
    flt = models.Filter(must=[models.FieldCondition(key="tags", match=models.MatchValue(value="reviewed"))])
    assert {r.id for r in scroll_all(filled, flt)} == set(targets)
    untouched = filled.retrieve(COLLECTION, [dataset.ids[9]])[0]
    assert payload_equal(untouched.payload, dataset.payloads[9])


def test_delete_points(filled: Store, dataset: Dataset) -> None:
    doomed = dataset.ids[::20]
    filled.delete_points(COLLECTION, doomed)
    assert filled.count(COLLECTION) == N_POINTS - len(doomed)
    assert filled.retrieve(COLLECTION, doomed) == []
    q = dataset.image[0]  # the nearest point of its own vector was deleted
    hits = filled.search(COLLECTION, q.tolist(), using=IMAGE_VECTOR, limit=N_POINTS)
    assert len(hits) == N_POINTS - len(doomed)
    assert not set(doomed) & {h.id for h in hits}


@pytest.mark.parametrize("with_filter", [False, True], ids=["all", "filtered"])
def test_fused_search_is_rrf_of_per_vector_rankings(shared: Store, dataset: Dataset, with_filter: bool) -> None:
    flt = models.Filter(must_not=[_FORMAT("png")]) if with_filter else None
    mask = np.array([p["format"] != "png" for p in dataset.payloads]) if with_filter else None
    prefetch = 15
    for seed in (21, 22, 23):
        qi, qt = queries(2, seed=seed)
        image_rank = [pid for pid, _ in numpy_ranking(dataset, qi, IMAGE_VECTOR, mask)[:prefetch]]
        text_rank = [pid for pid, _ in numpy_ranking(dataset, qt, TEXT_VECTOR, mask)[:prefetch]]
        expected = rrf([image_rank, text_rank], k=2)

        # limit above the candidate count: the whole fused list comes back, no cut among ties
        hits = shared.search_fused(
            COLLECTION,
            {IMAGE_VECTOR: qi.tolist(), TEXT_VECTOR: qt.tolist()},
            limit=2 * prefetch,
            prefetch_limit=prefetch,
            query_filter=flt,
        )
        assert {h.id for h in hits} == set(expected)
        assert len(hits) == len(expected)
        for h in hits:
            assert h.score == pytest.approx(expected[h.id], abs=1e-6)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)

        top = shared.search_fused(
            COLLECTION, {IMAGE_VECTOR: qi.tolist(), TEXT_VECTOR: qt.tolist()}, limit=5, prefetch_limit=prefetch, query_filter=flt
        )
        best = sorted(expected.values(), reverse=True)[:5]
        np.testing.assert_allclose([h.score for h in top], best, atol=1e-6)


def test_async_search_equals_sync(shared: Store, dataset: Dataset) -> None:
    qi, qt = queries(2, seed=31)

    async def run() -> tuple[list[models.ScoredPoint], list[models.ScoredPoint]]:
        return await asyncio.gather(
            shared.asearch(COLLECTION, qi.tolist(), using=IMAGE_VECTOR, limit=7),
            shared.asearch_fused(COLLECTION, {IMAGE_VECTOR: qi.tolist(), TEXT_VECTOR: qt.tolist()}, limit=7),
        )

    plain, fused = asyncio.run(run())
    assert [h.id for h in plain] == [h.id for h in shared.search(COLLECTION, qi.tolist(), using=IMAGE_VECTOR, limit=7)]
    sync_fused = shared.search_fused(COLLECTION, {IMAGE_VECTOR: qi.tolist(), TEXT_VECTOR: qt.tolist()}, limit=7)
    assert [h.score for h in fused] == pytest.approx([h.score for h in sync_fused])


def test_client_store_uses_async_client_when_given(dataset: Dataset) -> None:
    sync = QdrantClient(location=":memory:")

    class RecordingAsyncClient:
        """Stands in for AsyncQdrantClient: answers from the same database, and records the calls."""

        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        async def query_points(self, collection_name: str, **kwargs: Any) -> models.QueryResponse:
            self.calls.append(kwargs)
            return sync.query_points(collection_name, **kwargs)

    fake = RecordingAsyncClient()
    store = QdrantClientStore(sync, async_client=fake)  # type: ignore[arg-type]
    fill(store, dataset, indexes=False)
    qi, qt = queries(2, seed=32)
    plain = asyncio.run(store.asearch(COLLECTION, qi.tolist(), using=IMAGE_VECTOR, limit=5))
    fused = asyncio.run(store.asearch_fused(COLLECTION, {IMAGE_VECTOR: qi.tolist(), TEXT_VECTOR: qt.tolist()}, limit=5))
    assert len(fake.calls) == 2
    assert fake.calls[0]["using"] == IMAGE_VECTOR and len(fake.calls[1]["prefetch"]) == 2
    assert [h.id for h in plain] == [pid for pid, _ in numpy_ranking(dataset, qi, IMAGE_VECTOR)[:5]]
    assert [h.id for h in fused] == [h.id for h in store.search_fused(COLLECTION, {IMAGE_VECTOR: qi.tolist(), TEXT_VECTOR: qt.tolist()}, limit=5)]
    store.close()


# ---------------------------------------------------------------------------
# aliases
# ---------------------------------------------------------------------------


def test_aliases(filled: Store, dataset: Dataset) -> None:
    other = make_dataset(seed=8, n=30)
    fill(filled, other, name="photos_v2", indexes=False)
    assert filled.get_aliases() == {}
    assert filled.resolve("live") == "live"

    filled.set_alias("live", COLLECTION)
    assert filled.get_aliases() == {"live": COLLECTION}
    assert filled.resolve("live") == COLLECTION
    assert filled.collection_exists("live")
    assert filled.count("live") == N_POINTS
    assert filled.get_spec("live").name == COLLECTION  # type: ignore[union-attr]
    q = queries(1, seed=41)[0]
    assert [h.id for h in filled.search("live", q.tolist(), using=IMAGE_VECTOR, limit=5)] == [
        pid for pid, _ in numpy_ranking(dataset, q, IMAGE_VECTOR)[:5]
    ]

    filled.set_alias("live", "photos_v2")  # switch
    assert filled.get_aliases() == {"live": "photos_v2"}
    assert filled.resolve("live") == "photos_v2"
    assert filled.count("live") == 30
    assert [h.id for h in filled.search("live", q.tolist(), using=IMAGE_VECTOR, limit=5)] == [
        pid for pid, _ in numpy_ranking(other, q, IMAGE_VECTOR)[:5]
    ]
    assert filled.list_collections() == [COLLECTION, "photos_v2"]  # aliases are not collections

    with pytest.raises(ValueError, match="no such collection"):
        filled.set_alias("broken", "missing")
    with pytest.raises(ValueError, match="a collection has that name"):
        filled.set_alias(COLLECTION, "photos_v2")
    assert filled.get_aliases() == {"live": "photos_v2"}

    filled.set_alias("previous", COLLECTION)
    filled.delete_alias("live")
    filled.delete_alias("live")  # absent: no-op
    assert filled.get_aliases() == {"previous": COLLECTION}
    assert filled.resolve("live") == "live"
    assert not filled.collection_exists("live")

    filled.delete_collection(COLLECTION)  # takes its aliases with it
    assert filled.get_aliases() == {}


# ---------------------------------------------------------------------------
# edge specifics
# ---------------------------------------------------------------------------


def test_edge_reopen_sees_data(tmp_path: Path, dataset: Dataset) -> None:
    first = make_store("edge", tmp_path)
    fill(first, dataset)
    first.set_alias("live", COLLECTION)
    first.update_metadata(COLLECTION, {"labels": ["x"]})
    q = queries(1, seed=51)[0]
    before = first.search("live", q.tolist(), using=TEXT_VECTOR, limit=10)
    first.close()

    second = EdgeStore(tmp_path / "home")  # default search threads: the shard loads without a config
    try:
        assert second.list_collections() == [COLLECTION]
        assert second.get_aliases() == {"live": COLLECTION}
        assert second.count("live") == N_POINTS
        assert dict(second.get_spec(COLLECTION).extra) == {"labels": ["x"]}  # type: ignore[union-attr]
        after = second.search("live", q.tolist(), using=TEXT_VECTOR, limit=10)
        assert [(h.id, h.score) for h in after] == [(h.id, h.score) for h in before]
        meta = (tmp_path / "home" / "collections" / COLLECTION / "meta.json").read_text()
        assert '"has_caption": "keyword"' in meta
    finally:
        second.close()


def test_edge_second_opener_is_refused_before_the_engine_touches_the_shard(tmp_path: Path, dataset: Dataset) -> None:
    import os
    import time

    from mmrag.errors import LockHeldError
    from mmrag.store.edge import ShardLockHeld

    owner = make_store("edge", tmp_path)
    fill(owner, dataset, indexes=True)  # payload indexes: the files qdrant-edge's loader used to damage
    intruder = make_store("edge", tmp_path, lock_wait_s=0.3)  # same shard directory, another open file
    try:
        started = time.monotonic()
        with pytest.raises(ShardLockHeld, match=rf"open in another process: pid {os.getpid()} .*waited 0.3 s") as exc:
            intruder.count(COLLECTION)  # a read waits its bounded time
        assert time.monotonic() - started >= 0.3
        assert isinstance(exc.value, LockHeldError) and exc.value.exit_code == 3
        assert exc.value.holder["pid"] == os.getpid() and exc.value.holder["access"] == "write"
        started = time.monotonic()
        with pytest.raises(ShardLockHeld, match="open in another process"):
            intruder.upsert(COLLECTION, dataset.points()[:1])  # a write is refused at once
        assert time.monotonic() - started < 0.3
        # The holder's store is intact: it keeps writing and flushing.
        owner.upsert(COLLECTION, dataset.points()[:10])
        owner.set_payload(COLLECTION, {"tags": ["x"]}, dataset.ids[:3])
        assert owner.count(COLLECTION) == N_POINTS
    finally:
        intruder.close()
        owner.close()
    reopened = make_store("edge", tmp_path, lock_wait_s=0)  # released on close
    try:
        assert reopened.count(COLLECTION) == N_POINTS
    finally:
        reopened.close()


def test_edge_alias_switch_seen_by_long_lived_reader(tmp_path: Path) -> None:
    writer = make_store("edge", tmp_path)
    writer.create_collection(spec(payload_indexes={}))
    writer.create_collection(spec("photos_v2", payload_indexes={}))
    writer.set_alias("live", COLLECTION)
    reader = EdgeStore(tmp_path / "home")  # only reads aliases.json, like a serving process would
    assert reader.resolve("live") == COLLECTION
    for target in ("photos_v2", COLLECTION, "photos_v2"):
        writer.set_alias("live", target)
        assert reader.resolve("live") == target
    writer.close()
    reader.close()


def test_edge_alias_switch_is_atomic_for_concurrent_readers(tmp_path: Path) -> None:
    writer = make_store("edge", tmp_path)
    for name in ("blue", "green"):
        writer.create_collection(spec(name, payload_indexes={}))
    writer.set_alias("live", "blue")
    reader = EdgeStore(tmp_path / "home")
    seen: set[str] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(reader.resolve("live"))

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for i in range(200):
            writer.set_alias("live", ("green", "blue")[i % 2])
    finally:
        stop.set()
        thread.join()
    assert seen <= {"blue", "green"}  # never "live" itself (no alias) and never a torn file
    assert reader.resolve("live") == "blue"
    assert not [p for p in (tmp_path / "home").iterdir() if p.name.endswith(".tmp")]


def test_edge_upsert_is_durable_across_kill_9(tmp_path: Path) -> None:
    home = tmp_path / "home"
    script = f"""
import os, signal
from pathlib import Path
from qdrant_client import models
from mmrag.store import EdgeStore, CollectionSpec
store = EdgeStore(Path({str(home)!r}))
store.create_collection(CollectionSpec(name="photos", dim=4, model_id="m", payload_indexes={{}}))
store.upsert("photos", [models.PointStruct(id=i, vector={{"image": [1.0, 0.0, 0.0, float(i)]}}, payload={{"i": i}}) for i in range(50)])
store.set_payload("photos", {{"seen": "yes"}}, [7])
store.delete_points("photos", [0])
os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit: only what upsert made durable survives
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = EdgeStore(home)
    try:
        assert store.count(COLLECTION) == 49
        assert store.retrieve(COLLECTION, [7])[0].payload == {"i": 7, "seen": "yes"}
        assert store.retrieve(COLLECTION, [0]) == []
    finally:
        store.close()


def test_edge_refuses_boolean_filters(tmp_path: Path) -> None:
    store = make_store("edge", tmp_path)
    store.create_collection(spec(payload_indexes={}))
    try:
        for flag in (True, False):
            flt = models.Filter(must=[models.FieldCondition(key="has_caption", match=models.MatchValue(value=flag))])
            with pytest.raises(ValueError, match=r"flags as keywords .*\"yes\"/\"no\""):
                store.count(COLLECTION, flt)
            with pytest.raises(ValueError, match="boolean payload filters never match in qdrant-edge"):
                store.search(COLLECTION, [1.0] * DIM, using=IMAGE_VECTOR, query_filter=models.Filter(must_not=flt.must))
        # the keyword spelling of the same flag is accepted
        yes = models.Filter(must=[models.FieldCondition(key="has_caption", match=models.MatchValue(value="yes"))])
        assert store.count(COLLECTION, yes) == 0
    finally:
        store.close()


def test_hnsw_recall_after_optimize(tmp_path: Path) -> None:
    # Small thresholds so a 2000-point shard really gets (and uses) an HNSW graph.
    store = make_store("edge", tmp_path, full_scan_threshold_kb=1, indexing_threshold_kb=10, max_indexing_threads=1)
    big = make_dataset(seed=61, n=2000)
    try:
        store.create_collection(spec(payload_indexes={}))  # payload indexes are beside the point here
        fill(store, big, batch=500)
        store.optimize(COLLECTION)
        info = store.shard_info(COLLECTION)  # type: ignore[attr-defined]
        assert info["points_count"] == 2000
        assert info["indexed_vectors_count"] >= 2000  # the approximate path is really exercised
        recalls = []
        for q in queries(20, seed=62):
            truth = [pid for pid, _ in numpy_ranking(big, q, IMAGE_VECTOR)[:10]]
            # exact stays the default and stays exact once the index exists
            exact = store.search(COLLECTION, q.tolist(), using=IMAGE_VECTOR, limit=10)
            assert [h.id for h in exact] == truth
            approx = store.search(COLLECTION, q.tolist(), using=IMAGE_VECTOR, limit=10, exact=False, hnsw_ef=64)
            assert len(approx) == 10
            recalls.append(len(set(truth) & {h.id for h in approx}) / 10)
        # an approximate index: demand a sane recall, not perfection
        assert float(np.mean(recalls)) >= 0.9
    finally:
        store.close()


# ---------------------------------------------------------------------------
# factory
# ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
def test_open_store_picks_backend(tmp_path: Path) -> None:
    edge = open_store(Settings(home=tmp_path / "h"))
    assert isinstance(edge, EdgeStore) and isinstance(edge, Store)
    assert edge.home == tmp_path / "h"
    assert edge.list_collections() == [] and not (tmp_path / "h").exists()  # reading creates nothing
    edge.close()

    memory = open_store(Settings(qdrant_url=":memory:"))
    assert isinstance(memory, QdrantClientStore) and memory.async_client is None
    memory.create_collection(spec())
    assert memory.list_collections() == [COLLECTION]
    memory.close()

    remote = open_store(Settings(qdrant_url="http://127.0.0.1:9", shard_number=2, replication_factor=3))
    assert isinstance(remote, QdrantClientStore)  # constructing a client does not connect
    assert remote.async_client is not None
    assert (remote.shard_number, remote.replication_factor) == (2, 3)
    assert isinstance(remote.client, QdrantClient)
    remote.client.close()


def test_set_payloads_applies_a_different_payload_per_point(store):
    store.create_collection(CollectionSpec(name="multi", dim=4, model_id="m", payload_indexes={}))
    ids = [point_id(i) for i in range(5)]
    store.upsert("multi", [models.PointStruct(id=i, vector={"image": [1.0, 0, 0, 0]}, payload={"keep": n})
                           for n, i in enumerate(ids)])
    store.set_payloads("multi", [(i, {"tags": [f"t{n}"], "tag_scores": {f"t{n}": n / 10}}) for n, i in enumerate(ids[:3])])
    got = {str(r.id): r.payload for r in store.retrieve("multi", ids)}
    for n, i in enumerate(ids):
        assert got[i]["keep"] == n  # merged, not overwritten
        if n < 3:
            assert got[i]["tags"] == [f"t{n}"] and got[i]["tag_scores"] == {f"t{n}": n / 10}
        else:
            assert "tags" not in got[i]
