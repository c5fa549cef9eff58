"""Plain dicts and CLI `key=value` pairs translated to qdrant-client `models.Filter`.

Dict form (what the retriever and API take)::

    {"tags": "cat"}                          tags matches "cat"
    {"tags": ["cat", "dog"]}                 any of
    {"width": {"gte": 512, "lt": 2048}}      numeric range (ISO date/time strings: datetime range)
    {"format": {"in": [...]}} / {"nin": [...]} / {"ne": v} / {"eq": v}
    {"caption": {"text": "beach"}}           full-text match
    {"$and": [...], "$or": [...], "$not": [...]}   sub-dicts combined

Several keys are AND-ed. Booleans become the keywords "true"/"false", as in the payload
(convert.bool_keyword), because qdrant-edge 0.9 never matches boolean filters. Floats are
matched with a closed range, since Qdrant's exact match only takes keywords and integers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from typing import Any

import numpy as np

from mmrag.errors import UsageError
from mmrag.store.convert import FLAG_KEYWORDS, flag_keyword
from mmrag.store.qdrant_models import models

RANGE_OPERATORS = ("gt", "gte", "lt", "lte")
FIELD_OPERATORS = ("eq", "ne", "in", "nin", "text", *RANGE_OPERATORS)
LOGICAL_KEYS = ("$and", "$or", "$not")

Condition = Any  # one of models.Condition's members (FieldCondition, Filter, ...)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 32  # nested $and/$or/$not levels: deeper is a mistake (and would overflow the stack)


class FilterValueError(UsageError):
    """A filter value that cannot match as written (exit 2, HTTP 400)."""


# --- values -------------------------------------------------------------------


def _scalar(value: Any, key: str) -> Any:
    """A filter value in payload vocabulary: bool -> the field's stored keyword, numpy -> Python.

    Numbers must be finite and integers within int64 (Qdrant's integer payload); else FilterValueError.
    """
    if isinstance(value, (bool, np.bool_)):
        return flag_keyword(key, bool(value))
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and key in FLAG_KEYWORDS and value.strip().lower() in ("true", "false"):
        return flag_keyword(key, value.strip().lower() == "true")  # has_caption=true from the CLI
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise FilterValueError(f"filter on {key!r}: {value} is outside the 64-bit integer range Qdrant stores")
    if isinstance(value, float) and not math.isfinite(value):
        raise FilterValueError(f"filter on {key!r}: {value!r} is not a finite number; a NaN bound would disable the filter")
    if value is None:
        raise ValueError(f"filter on {key!r}: None cannot be matched; use a value, or filter on 'has_caption'")
    if isinstance(value, (str, int, float, datetime, date)):
        return value
    raise ValueError(f"filter on {key!r}: unsupported value {value!r} of type {type(value).__name__}")


def _datetime_bound(value: Any, key: str, op: str) -> datetime | date:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"filter on {key!r}: {op} bound {value!r} is neither a number nor an ISO date/time "
                "(e.g. 2024-05-01 or 2024-05-01T12:00:00Z)"
            ) from None
    if isinstance(value, datetime) and value.tzinfo is None:
        # Payload times are UTC (ingested_at); read naive bounds the same way.
        value = value.replace(tzinfo=timezone.utc)
    return value


def _range(key: str, bounds: Mapping[str, Any]) -> models.FieldCondition:
    values = {op: _scalar(value, key) for op, value in bounds.items()}
    numeric = [isinstance(v, (int, float)) for v in values.values()]
    if all(numeric):
        return models.FieldCondition(key=key, range=models.Range(**values))
    if any(numeric):
        raise ValueError(f"filter on {key!r}: range bounds mix numbers and dates: {dict(bounds)!r}")
    dates = {op: _datetime_bound(value, key, op) for op, value in values.items()}
    return models.FieldCondition(key=key, range=models.DatetimeRange(**dates))


def _match_value(key: str, value: Any) -> models.FieldCondition:
    value = _scalar(value, key)
    if isinstance(value, (str, int)):
        return models.FieldCondition(key=key, match=models.MatchValue(value=value))
    if isinstance(value, float):
        return models.FieldCondition(key=key, range=models.Range(gte=value, lte=value))
    moment = _datetime_bound(value, key, "eq")
    return models.FieldCondition(key=key, range=models.DatetimeRange(gte=moment, lte=moment))


def _match_list(key: str, values: Any, op: str) -> list[str] | list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, set, frozenset, np.ndarray)):
        raise ValueError(f"filter on {key!r}: {op!r} takes a list of values, got {values!r}")
    items = [_scalar(v, key) for v in (values.tolist() if isinstance(values, np.ndarray) else values)]
    if not items:
        raise ValueError(f"filter on {key!r}: {op!r} got an empty list")
    if all(isinstance(v, str) for v in items) or all(isinstance(v, int) for v in items):
        return items
    raise ValueError(
        f"filter on {key!r}: {op!r} needs all strings or all integers, got {list(values)!r} "
        "(use a range for floats)"
    )


# --- dicts -----------------------------------------------------------------------


def _field_conditions(key: str, value: Any) -> tuple[list[Condition], list[Condition]]:
    """(must, must_not) conditions for one field."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"filter field names must be non-empty strings, got {key!r}")
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"filter on {key!r}: empty operator dict; e.g. {{{key!r}: {{'gte': 1}}}}")
        must: list[Condition] = []
        must_not: list[Condition] = []
        bounds: dict[str, Any] = {}
        for op, operand in value.items():
            if op in RANGE_OPERATORS:
                bounds[op] = operand
            elif op == "eq":
                must.append(_match_value(key, operand))
            elif op == "ne":
                must_not.append(_match_value(key, operand))
            elif op == "in":
                must.append(models.FieldCondition(key=key, match=models.MatchAny(any=_match_list(key, operand, op))))
            elif op == "nin":
                excluded = _match_list(key, operand, op)
                must.append(models.FieldCondition(key=key, match=models.MatchExcept(**{"except": excluded})))
            elif op == "text":
                if not isinstance(operand, str) or not operand.strip():
                    raise ValueError(f"filter on {key!r}: 'text' takes a non-empty string, got {operand!r}")
                must.append(models.FieldCondition(key=key, match=models.MatchText(text=operand)))
            else:
                raise ValueError(
                    f"unknown filter operator {op!r} for field {key!r}; known operators: "
                    f"{', '.join(FIELD_OPERATORS)} (nested payload fields use dotted keys, e.g. 'exif.camera')"
                )
        if bounds:
            must.insert(0, _range(key, bounds))
        return must, must_not
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        return [models.FieldCondition(key=key, match=models.MatchAny(any=_match_list(key, value, "in")))], []
    return [_match_value(key, value)], []


def _only_must(flt: models.Filter) -> bool:
    return not flt.should and not flt.must_not and flt.min_should is None


def _as_list(conditions: Any) -> list[Condition]:
    if conditions is None:
        return []
    return list(conditions) if isinstance(conditions, list) else [conditions]


def _single(flt: models.Filter) -> Condition:
    """A filter that is just one must-condition collapses to that condition."""
    must = _as_list(flt.must)
    return must[0] if _only_must(flt) and len(must) == 1 else flt


def _sub_filters(key: str, value: Any, depth: int = 0) -> list[models.Filter]:
    subs = [value] if isinstance(value, Mapping) else value
    if not isinstance(subs, (list, tuple)) or not subs:
        raise ValueError(f"{key!r} takes a non-empty list of filter dicts, e.g. {{{key!r}: [{{'tags': 'cat'}}]}}")
    out = []
    for sub in subs:
        if not isinstance(sub, Mapping) or not sub:
            raise ValueError(f"{key!r}: each entry must be a non-empty filter dict, got {sub!r}")
        built = _filter_from_dict(sub, depth + 1)
        if built is not None:  # a non-empty dict always builds one
            out.append(built)
    return out


def _make_filter(must: list[Condition], should: list[Condition], must_not: list[Condition]) -> models.Filter | None:
    if not (must or should or must_not):
        return None
    return models.Filter(must=must or None, should=should or None, must_not=must_not or None)


def filter_from_dict(spec: Mapping[str, Any] | models.Filter | None) -> models.Filter | None:
    """Translate a filter dict (see module docstring) to a Filter; None/{} -> None.

    A models.Filter is passed through unchanged. Unknown operators raise ValueError naming
    the operator and the field.
    """
    return _filter_from_dict(spec, 0)


def _filter_from_dict(spec: Any, depth: int) -> models.Filter | None:
    if spec is None or isinstance(spec, models.Filter):
        return spec
    if depth > MAX_DEPTH:
        raise FilterValueError(f"filter nests $and/$or/$not deeper than {MAX_DEPTH} levels")
    if not isinstance(spec, Mapping):
        raise ValueError(f"a filter must be a dict like {{'tags': 'cat'}}, got {type(spec).__name__}")
    must: list[Condition] = []
    should: list[Condition] = []
    must_not: list[Condition] = []
    for key, value in spec.items():
        if key == "$and":
            for sub in _sub_filters(key, value, depth):
                must.extend(_as_list(sub.must) if _only_must(sub) else [sub])
        elif key == "$or":
            should.extend(_single(sub) for sub in _sub_filters(key, value, depth))
        elif key == "$not":
            must_not.extend(_single(sub) for sub in _sub_filters(key, value, depth))
        elif isinstance(key, str) and key.startswith("$"):
            raise ValueError(f"unknown logical operator {key!r}; use one of {', '.join(LOGICAL_KEYS)}")
        else:
            field_must, field_must_not = _field_conditions(key, value)
            must.extend(field_must)
            must_not.extend(field_must_not)
    return _make_filter(must, should, must_not)


def merge_filters(*filters: models.Filter | None) -> models.Filter | None:
    """AND of the given filters (None entries ignored); pure-must filters are flattened."""
    present = [f for f in filters if f is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    must: list[Condition] = []
    for flt in present:
        must.extend(_as_list(flt.must) if _only_must(flt) else [flt])
    return models.Filter(must=must)


# --- CLI ------------------------------------------------------------------------

_CLI_PAIR = re.compile(r"^\s*(?P<key>[^=<>!~]*?)\s*(?P<op>>=|<=|!=|==|=|>|<|~)\s*(?P<value>.*?)\s*$", re.S)
_CLI_RANGE = {">=": "gte", "<=": "lte", ">": "gt", "<": "lt"}
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")
CLI_EXAMPLE = "e.g. --filter tags=cat|dog --filter 'width>=512' --filter format!=GIF --filter 'caption~beach'"


def _cli_error(text: str, reason: str) -> ValueError:
    return ValueError(
        f"bad filter {text!r}: {reason}. Expected KEY=VALUE, KEY!=VALUE, KEY>=N, KEY<=N, KEY>N, KEY<N "
        f"or KEY~TEXT; {CLI_EXAMPLE}"
    )


def _cli_value(raw: str) -> Any:
    """int or float when it looks numeric; quotes force a string ("2020" stays text)."""
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    if _INT.match(raw):
        return int(raw)
    if _FLOAT.match(raw):
        return float(raw)
    return raw


def _cli_alternatives(raw: str, text: str) -> list[Any]:
    parts = [part.strip() for part in raw.split("|")]
    if any(not part for part in parts):
        raise _cli_error(text, "empty alternative in 'a|b|c'")
    values = [_cli_value(part) for part in parts]
    # MatchAny takes all ints or all strings: a mixed list is read as text ("cat|2020" are tags).
    if all(isinstance(v, int) for v in values):
        return values
    if all(isinstance(v, float) for v in values):
        raise _cli_error(text, "'a|b' alternatives must be integers or text, not decimals")
    return [v if isinstance(v, str) else part for v, part in zip(values, parts)]


def filter_from_cli(pairs: Sequence[str]) -> models.Filter | None:
    """Repeatable `--filter` arguments AND-ed together; an empty sequence gives None.

    `key=value` (`a|b|c` for any of), `key!=value` (`a|b` for none of), `key>=n`, `key<=n`,
    `key>n`, `key<n` (numbers or ISO dates), `key~text` (full-text). Values that look numeric
    become int/float; quote them ('"2020"') to match a keyword. Malformed input raises ValueError
    quoting the offending text and an example.
    """
    if isinstance(pairs, str):
        pairs = [pairs]
    entries: list[tuple[str, Any]] = []  # (key, value-or-operator-dict), in input order
    for text in pairs:
        match = _CLI_PAIR.match(text)
        if not match:
            raise _cli_error(text, "no operator found")
        key, op, raw = match["key"], match["op"], match["value"]
        if not key:
            raise _cli_error(text, "missing field name before the operator")
        if any(ch.isspace() for ch in key):
            raise _cli_error(text, f"field name {key!r} contains a space")
        if not raw:
            raise _cli_error(text, f"missing value after {op!r}")
        if op in ("=", "=="):
            entries.append((key, {"in": _cli_alternatives(raw, text)} if "|" in raw else {"eq": _cli_value(raw)}))
        elif op == "!=":
            entries.append((key, {"nin": _cli_alternatives(raw, text)} if "|" in raw else {"ne": _cli_value(raw)}))
        elif op == "~":
            entries.append((key, {"text": raw}))
        else:
            value = _cli_value(raw)
            if "|" in raw or not isinstance(value, (int, float)) and not _looks_like_date(value):
                raise _cli_error(text, f"{op} needs a number or an ISO date, got {raw!r}")
            range_op = _CLI_RANGE[op]
            # width>=512 width<2048 become one Range, as long as no bound repeats.
            previous = next((ops for k, ops in reversed(entries) if k == key and set(ops) <= set(RANGE_OPERATORS)), None)
            if previous is not None and range_op not in previous:
                previous[range_op] = value
            else:
                entries.append((key, {range_op: value}))
    must: list[Condition] = []
    must_not: list[Condition] = []
    for key, ops in entries:
        try:
            field_must, field_must_not = _field_conditions(key, ops)
        except FilterValueError:
            raise
        except ValueError as exc:
            raise ValueError(f"{exc}; {CLI_EXAMPLE}") from None
        must.extend(field_must)
        must_not.extend(field_must_not)
    return _make_filter(must, [], must_not)


def _looks_like_date(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True
