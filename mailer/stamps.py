"""The one way times are stored: UTC, to the millisecond, as ``2015-11-24T01:00:00.000Z``.

Text stamps sort and compare correctly in SQL, which the ledger relies on (due
retries, quota windows): every stamp has the same width. Milliseconds, because a
retry stored to the second could come up to a second early. Stamps written before
milliseconds (``…:00Z``) are rewritten by the schema migration ``m006``; reading
accepts both.
"""

from __future__ import annotations

import datetime as dt

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
OLD_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# SQLite GLOB for a stamp of the old, second-only form.
OLD_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z"


def stamp(t: dt.datetime) -> str:
    """UTC to the millisecond, rounded down (a stored retry time is never later than
    the time computed, and never more than a millisecond earlier)."""
    text = t.astimezone(dt.UTC).strftime(FORMAT)
    return text[:-4] + "Z"  # microseconds → milliseconds


def parse_stamp(text: str) -> dt.datetime:
    fmt = OLD_FORMAT if len(text) == 20 else FORMAT
    return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)
