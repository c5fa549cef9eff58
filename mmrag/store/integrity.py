"""Our own record of the points a collection should hold, and `verify_collection`.

qdrant-edge loses points silently when its files are damaged (a removed `version.info`
or segments folder, a truncated id tracker): the engine opens what is left and counts
it. So every writer records, in the collection's metadata under `RECORD_KEY`, the point
count the store confirmed after its last write, and an open compares the two (counts
only: cheap). `verify_collection` is the full check behind `mmrag verify`.

Order of writes, so that a kill between the two steps never looks like a loss: an upsert
is recorded after it is confirmed; a delete lowers the record first. A store count
above the record is therefore an interrupted write (not damage); below it, points were lost.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmrag.store.base import Store

__all__ = ["RECORD_KEY", "VerifyReport", "count_message", "record_points", "recorded_points", "verify_collection"]

RECORD_KEY = "points_written"
NORM_TOLERANCE = 1e-3  # vectors are stored L2-normalised (cosine); float32 keeps them within 1e-6


def recorded_points(metadata: dict[str, Any] | None) -> int | None:
    value = (metadata or {}).get(RECORD_KEY)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def record_points(store: Store, collection: str, count: int | None = None) -> int:
    """Record `count` (default: the store's own count, just confirmed) as what `collection` holds."""
    n = store.count(collection) if count is None else int(count)
    store.update_metadata(collection, {RECORD_KEY: max(0, n)})
    return n


def count_message(collection: str, count: int, recorded: int) -> str:
    return (
        f"collection {collection!r} holds {count} points but mmrag recorded {recorded} written: "
        f"{recorded - count} points were lost (damaged store files). Run `mmrag verify {collection}` to see "
        f"what is damaged, then `mmrag repair {collection}` to rebuild it."
    )


@dataclass
class VerifyReport:
    collection: str
    recorded: int | None = None
    count: int | None = None
    scanned: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"collection": self.collection, "ok": self.ok, "recorded": self.recorded, "count": self.count,
                "scanned": self.scanned, "problems": list(self.problems), "notes": list(self.notes)}

    def summary(self) -> str:
        head = f"collection {self.collection}: {'ok' if self.ok else 'DAMAGED'}"
        lines = [head, f"  recorded {self.recorded if self.recorded is not None else '-'}",
                 f"  count    {self.count if self.count is not None else '-'}", f"  scanned  {self.scanned}"]
        lines += [f"  ! {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes]
        if not self.ok:
            lines.append(f"  repair: `mmrag repair {self.collection}` rebuilds it from its corpus (or --from-export FILE)")
        return "\n".join(lines)


def _vector_problem(name: str, values: Any) -> str | None:
    vec = np.asarray(values, dtype=np.float64)
    if not np.isfinite(vec).all():
        return f"a non-finite {name!r} vector"
    norm = float(np.linalg.norm(vec))
    if not math.isclose(norm, 1.0, abs_tol=NORM_TOLERANCE):
        return f"an {name!r} vector of norm {norm:.6g} (stored vectors are unit-norm)"
    return None


def verify_collection(store: Store, collection: str, *, page: int = 256, max_listed: int = 20) -> VerifyReport:
    """Count vs record, then every point: vectors finite and unit-norm, payload a JSON object.

    Engine errors while reading are problems of the report, not exceptions: the point of
    verify is to say what is broken. At most `max_listed` damaged points are named.
    """
    real = store.resolve(collection)
    report = VerifyReport(collection=real)
    try:
        spec = store.get_spec(real)
    except Exception as exc:  # StoreCorrupted: unreadable meta.json
        report.problems.append(str(exc))
        return report
    if spec is None:
        report.problems.append(f"collection {collection!r} does not exist")
        return report
    report.recorded = recorded_points(spec.to_metadata())
    probe = getattr(store, "probe_open", None)  # the embedded store: the engine may abort the process
    if probe is not None:
        try:
            problem = probe(real)
        except Exception as exc:  # e.g. another process holds the shard
            problem = str(exc)
        if problem:
            report.problems.append(problem)
            return report
    try:
        report.count = store.count(real)
    except Exception as exc:
        report.problems.append(f"the store cannot count {real!r}: {type(exc).__name__}: {exc}")
        return report
    if report.recorded is None:
        report.notes.append("no record of the points written (collection written before mmrag recorded it)")
    elif report.count < report.recorded:
        report.problems.append(count_message(real, report.count, report.recorded))
    elif report.count > report.recorded:
        report.notes.append(f"{report.count - report.recorded} points more than recorded: a write was "
                            f"interrupted before its record; the next ingest records the count again")
    damaged = 0
    offset = None
    try:
        while True:
            records, offset = store.scroll(real, limit=page, offset=offset, with_payload=True, with_vectors=True)
            for r in records:
                report.scanned += 1
                found = _point_problems(r)
                if found:
                    damaged += 1
                    if damaged <= max_listed:
                        report.problems.append(f"point {r.id}: " + "; ".join(found))
            if offset is None:
                break
    except Exception as exc:
        report.problems.append(f"reading the points of {real!r} failed after {report.scanned}: "
                               f"{type(exc).__name__}: {exc}")
    if damaged > max_listed:
        report.problems.append(f"... {damaged - max_listed} more damaged points ({damaged} in all)")
    if report.scanned != report.count and not any("failed after" in p for p in report.problems):
        report.problems.append(f"the store counts {report.count} points but {report.scanned} could be read")
    return report


def _point_problems(record: Any) -> list[str]:
    found: list[str] = []
    vectors = record.vector if isinstance(record.vector, dict) else {}
    if "image" not in vectors:
        found.append("no 'image' vector")
    for name, values in vectors.items():
        problem = _vector_problem(name, values)
        if problem:
            found.append(problem)
    payload = record.payload
    if not isinstance(payload, dict):
        found.append("its payload is not an object")
    else:
        try:
            json.dumps(payload, allow_nan=False)
        except (TypeError, ValueError) as exc:
            found.append(f"its payload does not serialise as JSON ({exc})")
    return found
