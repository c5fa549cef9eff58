"""Issue 12, section 6: filter values that cannot match as written are refused (exit 2), never silent."""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import models

from mmrag.store import IMAGE_VECTOR, CollectionSpec, EdgeStore
from mmrag.store.filters import MAX_DEPTH, FilterValueError, filter_from_cli, filter_from_dict


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ({"width": 2**64}, "outside the 64-bit integer range"),
        ({"width": {"gte": float("nan")}}, "not a finite number"),
        ({"width": {"lt": float("inf")}}, "not a finite number"),
        ({"tags": {"in": [1, 2**70]}}, "outside the 64-bit integer range"),
    ],
)
def test_bad_numbers_are_usage_errors(flt, message):
    with pytest.raises(FilterValueError, match=message) as exc:
        filter_from_dict(flt)
    assert exc.value.exit_code == 2 and exc.value.http_status == 400


def test_cli_values_are_checked_too():
    with pytest.raises(FilterValueError, match="64-bit"):
        filter_from_cli([f"width={2**64}"])
    with pytest.raises(FilterValueError, match="finite"):
        filter_from_dict({"width": {"gte": np.float64("nan")}})  # numpy values too


def test_deep_nesting_is_refused_not_a_recursion_error():
    flt: dict = {"tags": "cat"}
    for _ in range(3000):
        flt = {"$and": [flt]}
    with pytest.raises(FilterValueError, match=f"deeper than {MAX_DEPTH} levels"):
        filter_from_dict(flt)
    ok: dict = {"tags": "cat"}
    for _ in range(MAX_DEPTH):
        ok = {"$and": [ok]}
    assert filter_from_dict(ok) == models.Filter(must=[models.FieldCondition(key="tags", match=models.MatchValue(value="cat"))])


def test_has_caption_true_matches_the_stored_yes(tmp_path):
    store = EdgeStore(tmp_path / "home", max_search_threads=1)
    try:
        store.create_collection(CollectionSpec(name="photos", dim=4, model_id="test/m", payload_indexes={}))
        store.upsert("photos", [
            models.PointStruct(id=i, vector={IMAGE_VECTOR: [1.0, 0.0, 0.0, float(i)]},
                               payload={"has_caption": "yes" if i % 3 == 0 else "no"})
            for i in range(1, 10)
        ])
        assert store.count("photos", filter_from_dict({"has_caption": True})) == 3  # ids 3, 6, 9
        assert store.count("photos", filter_from_dict({"has_caption": False})) == 6
        assert store.count("photos", filter_from_cli(["has_caption=true"])) == 3
    finally:
        store.close()
