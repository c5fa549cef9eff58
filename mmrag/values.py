"""Value rules shared by every layer (manifest metadata, payloads, filters): one definition each."""

from __future__ import annotations

import datetime as dt


def rfc3339(value: dt.datetime | dt.date) -> str:
    """RFC 3339 text of a datetime or date, in UTC with a `Z`.

    A naive datetime is read as UTC, as the Qdrant server reads naive datetimes in
    filters, so a stored value and a filter bound written the same way compare equal.
    A bare date means its midnight, UTC.
    """
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
