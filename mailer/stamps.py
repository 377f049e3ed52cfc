"""The one way times are stored: UTC, to the second, as ``2015-11-24T01:00:00Z``.

Text stamps sort and compare correctly in SQL, which the ledger relies on (due
retries, quota windows).
"""

from __future__ import annotations

import datetime as dt

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime(FORMAT)


def parse_stamp(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, FORMAT).replace(tzinfo=dt.UTC)
