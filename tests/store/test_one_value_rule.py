"""The JSON-safe rules of the manifest reader and the payload converter agree (positions, NaN, datetimes)."""

from __future__ import annotations

import datetime as dt

from mmrag.corpus.manifest import json_safe
from mmrag.store.convert import payload_metadata
from mmrag.store.edge import _rfc3339 as edge_rfc3339
from mmrag.values import rfc3339


def test_a_list_with_nan_stays_positional_through_manifest_and_payload() -> None:
    from_manifest = json_safe([1.0, float("nan"), 3.0])
    assert from_manifest == [1.0, None, 3.0]
    assert payload_metadata({"scores": from_manifest})["scores"] == [1.0, None, 3.0]
    assert payload_metadata({"scores": [1.0, float("nan"), 3.0]})["scores"] == [1.0, None, 3.0]


def test_datetimes_one_rule_for_manifest_payload_and_filters() -> None:
    naive, aware = dt.datetime(2023, 7, 1, 9, 30), dt.datetime(2023, 7, 1, 11, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    for value in (naive, aware):
        assert rfc3339(value) == "2023-07-01T09:30:00Z"
        assert json_safe(value) == payload_metadata({"t": value})["t"] == edge_rfc3339(value) == "2023-07-01T09:30:00Z"
    assert rfc3339(dt.date(2024, 2, 29)) == "2024-02-29T00:00:00Z"  # a date bound in a filter: its midnight
    assert json_safe(dt.date(2024, 2, 29)) == payload_metadata({"d": dt.date(2024, 2, 29)})["d"] == "2024-02-29"
