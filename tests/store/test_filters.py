"""dict / CLI -> models.Filter translation (mmrag.store.filters)."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
from qdrant_client import models

from mmrag.store.base import Store
from mmrag.store.convert import build_payload, build_point, point_id
from mmrag.store.filters import filter_from_cli, filter_from_dict, merge_filters
from mmrag.store.schema import CollectionSpec


def match(key: str, value) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def any_of(key: str, values) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchAny(any=values))


def rng(key: str, **bounds) -> models.FieldCondition:
    return models.FieldCondition(key=key, range=models.Range(**bounds))


def none_of(key: str, values) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchExcept(**{"except": values}))


UTC = timezone.utc


# --- dicts -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [None, {}])
def test_empty_gives_none(spec) -> None:
    assert filter_from_dict(spec) is None


def test_filter_passes_through() -> None:
    flt = models.Filter(must=[match("a", "b")])
    assert filter_from_dict(flt) is flt


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"tags": "cat"}, models.Filter(must=[match("tags", "cat")])),
        ({"tags": ["cat", "dog"]}, models.Filter(must=[any_of("tags", ["cat", "dog"])])),
        ({"year": [2020, 2021]}, models.Filter(must=[any_of("year", [2020, 2021])])),
        ({"year": {"gte": 2020, "lt": 2024}}, models.Filter(must=[rng("year", gte=2020, lt=2024)])),
        ({"score": {"gt": 0.5, "lte": 1}}, models.Filter(must=[rng("score", gt=0.5, lte=1)])),
        ({"format": {"in": ["PNG", "JPEG"]}}, models.Filter(must=[any_of("format", ["PNG", "JPEG"])])),
        ({"format": {"nin": ["GIF"]}}, models.Filter(must=[none_of("format", ["GIF"])])),
        ({"format": {"ne": "GIF"}}, models.Filter(must_not=[match("format", "GIF")])),
        ({"format": {"eq": "PNG"}}, models.Filter(must=[match("format", "PNG")])),
        (
            {"caption": {"text": "sunny beach"}},
            models.Filter(must=[models.FieldCondition(key="caption", match=models.MatchText(text="sunny beach"))]),
        ),
        ({"favourite": True}, models.Filter(must=[match("favourite", "true")])),
        ({"archived": np.bool_(False)}, models.Filter(must=[match("archived", "false")])),
        ({"flags": [True, False]}, models.Filter(must=[any_of("flags", ["true", "false"])])),
        ({"width": np.int64(640)}, models.Filter(must=[match("width", 640)])),
        # Exact match takes keywords and integers only: a float equality is a closed range.
        ({"mtime": 12.5}, models.Filter(must=[rng("mtime", gte=12.5, lte=12.5)])),
        ({"exif.camera": "X100"}, models.Filter(must=[match("exif.camera", "X100")])),
    ],
)
def test_field_translations(spec, expected: models.Filter) -> None:
    assert filter_from_dict(spec) == expected


def test_datetime_ranges() -> None:
    expected = models.Filter(
        must=[
            models.FieldCondition(
                key="ingested_at",
                range=models.DatetimeRange(
                    gte=datetime(2024, 1, 1, tzinfo=UTC), lt=datetime(2024, 2, 1, 12, 0, tzinfo=UTC)
                ),
            )
        ]
    )
    assert filter_from_dict({"ingested_at": {"gte": "2024-01-01", "lt": "2024-02-01T12:00:00Z"}}) == expected
    assert filter_from_dict(
        {"ingested_at": {"gte": datetime(2024, 1, 1), "lt": datetime(2024, 2, 1, 12, tzinfo=UTC)}}
    ) == expected


def test_multiple_keys_are_anded() -> None:
    assert filter_from_dict({"tags": "cat", "width": {"gte": 512, "ne": 1000}, "format": {"ne": "GIF"}}) == models.Filter(
        must=[match("tags", "cat"), rng("width", gte=512)],
        must_not=[match("width", 1000), match("format", "GIF")],
    )


def test_logical_keys() -> None:
    spec = {
        "$or": [{"tags": "cat"}, {"tags": "dog", "width": {"gte": 100}}],
        "$not": [{"format": "GIF"}],
        "$and": [{"has_caption": "yes"}, {"$or": [{"a": 1}, {"b": 2}]}],
        "height": {"lt": 4000},
    }
    assert filter_from_dict(spec) == models.Filter(
        must=[
            match("has_caption", "yes"),
            models.Filter(should=[match("a", 1), match("b", 2)]),
            rng("height", lt=4000),
        ],
        should=[match("tags", "cat"), models.Filter(must=[match("tags", "dog"), rng("width", gte=100)])],
        must_not=[match("format", "GIF")],
    )
    # "$not" also takes a single dict.
    assert filter_from_dict({"$not": {"format": "GIF", "width": 1}}) == models.Filter(
        must_not=[models.Filter(must=[match("format", "GIF"), match("width", 1)])]
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"tags": {"like": "c%"}}, "unknown filter operator 'like' for field 'tags'"),
        ({"$xor": [{"a": 1}]}, "unknown logical operator '\\$xor'"),
        ({"$or": []}, "'\\$or' takes a non-empty list"),
        ({"$or": ["tags=cat"]}, "each entry must be a non-empty filter dict"),
        ({"tags": []}, "empty list"),
        ({"tags": {}}, "empty operator dict"),
        ({"tags": ["cat", 1]}, "all strings or all integers"),
        ({"score": [0.5, 0.7]}, "all strings or all integers"),
        ({"tags": {"in": "cat"}}, "'in' takes a list of values"),
        ({"caption": None}, "None cannot be matched"),
        ({"caption": {"text": ""}}, "'text' takes a non-empty string"),
        ({"year": {"gte": "last year"}}, "neither a number nor an ISO date/time"),
        ({"year": {"gte": 2020, "lt": "2024-01-01"}}, "mix numbers and dates"),
        ({"blob": b"x"}, "unsupported value"),
        ("tags=cat", "must be a dict"),
    ],
)
def test_dict_errors(spec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        filter_from_dict(spec)


# --- CLI ------------------------------------------------------------------------------


def test_cli_pairs() -> None:
    flt = filter_from_cli(
        ["tags=cat|dog", "width>=512", "width<2048", "format!=GIF", "year=2020", "ratio>0.5", "caption~sunny beach",
         "album = Summer 2023", "has_caption==yes", "kind!=a|b", "height<=100"]
    )
    assert flt == models.Filter(
        must=[
            any_of("tags", ["cat", "dog"]),
            rng("width", gte=512, lt=2048),
            match("year", 2020),
            rng("ratio", gt=0.5),
            models.FieldCondition(key="caption", match=models.MatchText(text="sunny beach")),
            match("album", "Summer 2023"),
            match("has_caption", "yes"),
            none_of("kind", ["a", "b"]),
            rng("height", lte=100),
        ],
        must_not=[match("format", "GIF")],
    )


def test_cli_value_types() -> None:
    assert filter_from_cli(["year=2020|2021"]) == models.Filter(must=[any_of("year", [2020, 2021])])
    # Mixed alternatives are text (tags are keywords), quotes force text.
    assert filter_from_cli(["tags=cat|2020"]) == models.Filter(must=[any_of("tags", ["cat", "2020"])])
    assert filter_from_cli(['tags="2020"']) == models.Filter(must=[match("tags", "2020")])
    assert filter_from_cli(["favourite=true"]) == models.Filter(must=[match("favourite", "true")])
    assert filter_from_cli(["mtime=1.5"]) == models.Filter(must=[rng("mtime", gte=1.5, lte=1.5)])
    assert filter_from_cli(["delta>=-3"]) == models.Filter(must=[rng("delta", gte=-3)])
    # A repeated bound is a separate condition (still AND).
    assert filter_from_cli(["w>=1", "w>=5"]) == models.Filter(must=[rng("w", gte=1), rng("w", gte=5)])
    assert filter_from_cli(["ingested_at>=2024-03-01"]) == models.Filter(
        must=[models.FieldCondition(key="ingested_at", range=models.DatetimeRange(gte=datetime(2024, 3, 1, tzinfo=UTC)))]
    )
    assert filter_from_cli([]) is None
    assert filter_from_cli("tags=cat") == models.Filter(must=[match("tags", "cat")])


@pytest.mark.parametrize(
    "text, reason",
    [
        ("tags", "no operator found"),
        ("=cat", "missing field name"),
        ("tags=", "missing value after '='"),
        ("width>=big", ">= needs a number or an ISO date, got 'big'"),
        ("width>=1|2", ">= needs a number"),
        ("tags=cat||dog", "empty alternative"),
        ("score=0.1|0.2", "integers or text"),
    ],
)
def test_cli_errors_quote_input_and_example(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        filter_from_cli(["ok=1", text])
    message = str(info.value)
    assert f"bad filter {text!r}" in message
    assert reason in message
    assert "e.g. --filter tags=cat|dog" in message


# --- merge ---------------------------------------------------------------------------


def test_merge_filters() -> None:
    a = models.Filter(must=[match("a", 1)])
    b = models.Filter(must=[match("b", 2), match("c", 3)])
    c = models.Filter(should=[match("d", 4), match("e", 5)])
    assert merge_filters() is None
    assert merge_filters(None, None) is None
    assert merge_filters(None, a) is a
    assert merge_filters(a, None, b, c) == models.Filter(must=[match("a", 1), match("b", 2), match("c", 3), c])


# --- semantics on a real engine --------------------------------------------------------


def test_filters_select_the_right_points(store: Store) -> None:
    """Payloads from build_payload, filtered by translated filters, on every backend (conftest `store`)."""
    rows = [
        ("a/cat.png", "a cat", {"tags": ["cat"], "favourite": True, "year": 2019}, "PNG", 100),
        ("a/dog.jpg", None, {"tags": ["dog"], "favourite": False, "year": 2021}, "JPEG", 800),
        ("b/both.jpg", "cat and dog", {"tags": ["cat", "dog"], "year": 2023}, "JPEG", 1600),
        ("b/none.gif", None, {"year": 2024}, "GIF", 50),
    ]
    store.create_collection(CollectionSpec(name="c", dim=2, model_id="m"))
    points = []
    for i, (rel, caption, metadata, fmt, width) in enumerate(rows):
        payload = build_payload(
            rel_path=rel, caption=caption, sha256=str(i), width=width, height=width, format=fmt, file_size=1,
            mtime=float(i), model_id="m", ingested_at=datetime(2024, 1, 1 + i, tzinfo=UTC), metadata=metadata,
        )
        points.append(build_point(rel, [1.0, float(i)], None, payload))
    store.upsert("c", points)

    def selected(flt: models.Filter | None) -> set[str]:
        records, next_offset = store.scroll("c", scroll_filter=flt, limit=100, with_payload=True)
        assert next_offset is None
        assert {str(r.id) for r in records} == {point_id(r.payload["path"]) for r in records}
        return {r.payload["path"] for r in records}

    assert selected(None) == {row[0] for row in rows}
    assert selected(filter_from_dict({"tags": "cat"})) == {"a/cat.png", "b/both.jpg"}
    assert selected(filter_from_dict({"favourite": True})) == {"a/cat.png"}
    assert selected(filter_from_cli(["favourite=false"])) == {"a/dog.jpg"}
    assert selected(filter_from_dict({"has_caption": "no", "width": {"gte": 100}})) == {"a/dog.jpg"}
    assert selected(filter_from_cli(["year>=2021", "year<2024"])) == {"a/dog.jpg", "b/both.jpg"}
    assert selected(filter_from_dict({"year": [2019, 2024]})) == {"a/cat.png", "b/none.gif"}
    assert selected(filter_from_dict({"format": {"nin": ["GIF", "PNG"]}})) == {"a/dog.jpg", "b/both.jpg"}
    assert selected(filter_from_cli(["format!=JPEG"])) == {"a/cat.png", "b/none.gif"}
    assert selected(filter_from_dict({"$or": [{"tags": "dog"}, {"format": "GIF"}], "$not": [{"has_caption": "yes"}]})) == {
        "a/dog.jpg",
        "b/none.gif",
    }
    assert selected(filter_from_dict({"mtime": 2.0})) == {"b/both.jpg"}
    assert selected(merge_filters(filter_from_cli(["tags=cat|dog"]), filter_from_dict({"width": {"lt": 1000}}))) == {
        "a/cat.png",
        "a/dog.jpg",
    }
    assert store.count("c", filter_from_dict({"path": "a/cat.png"})) == 1
    # RFC 3339 ingested_at strings (2024-01-01 .. 01-04) compared as datetimes.
    assert selected(filter_from_dict({"ingested_at": {"gte": "2024-01-03T00:00:00Z"}})) == {"b/both.jpg", "b/none.gif"}
    assert selected(filter_from_cli(["ingested_at<2024-01-02T00:00:01+00:00"])) == {"a/cat.png", "a/dog.jpg"}
    assert selected(filter_from_cli(["caption~dog"])) == {"b/both.jpg"}
