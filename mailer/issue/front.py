"""The TOML front matter of a Markdown issue, read and reported in staff words.

Every problem names the key, what was written and how to write it
(``date: 2026/12/01 is not a date; write it as 2026-12-01``), at its own line. A
line TOML cannot read is reported and left out, and the rest is still read, so one
slip does not hide the others.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from mailer.models import Masthead

from .common import _Problems

STRING_KEYS = ("notice", "organisation", "title", "publisher")
NUMBER_KEYS = ("year", "number", "total_number")
OVERRIDES = {"report_to": "报", "send_to": "发"}
KNOWN_KEYS = (*STRING_KEYS, *NUMBER_KEYS, "date", "send_at", *OVERRIDES)

# How to write each key, for the messages.
_EXAMPLES = {
    "notice": '"内部刊物 注意保存"',
    "organisation": '"杭州市新经济与新社会组织党务工作者协会"',
    "title": '"简 报"',
    "publisher": '"杭州市“两新”党务工作者协会编印"',
    "year": "2026",
    "number": "9",
    "total_number": "33",
    "date": "2026-12-01",
    "send_at": "2026-12-02 09:00",
    "report_to": '"省委组织部、市委组织部"',
    "send_to": '"协会会员"',
}
_WHAT = {
    **dict.fromkeys(STRING_KEYS, "text in double quotes"),
    **dict.fromkeys(OVERRIDES, "text in double quotes"),
    **dict.fromkeys(NUMBER_KEYS, "a whole number without quotes"),
    "date": "a date without quotes or time",
    "send_at": "a date and time without quotes",
}

_KEY_LINE = re.compile(r'^\s*(?:"(?P<q>[^"]+)"|(?P<k>[A-Za-z0-9_-]+))\s*=\s*(?P<v>.*?)\s*$')
_AT_LINE = re.compile(r"\(at line (\d+), column \d+\)")
# 2026-12-02 09:00 is how staff are told to write send_at; TOML 1.0 wants the seconds.
_SHORT_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2})(?![:\d])")
_NUMBERS = re.compile(r"\d+")


@dataclass
class Front:
    """What the front matter says: the masthead, ``send_at`` and the 报/发 overrides."""

    masthead: Masthead
    send_at: dt.datetime | None
    overrides: dict[str, str]
    lines: dict[str, int] = field(default_factory=dict)  # key -> line in the file


def read_front(lines: list[str], first_line: int, rep: _Problems) -> Front:
    """Read the front matter ``lines`` (the first is line ``first_line`` of the file)."""
    src = list(lines)
    raw: dict[str, str] = {}
    at: dict[str, int] = {}
    for i, ln in enumerate(src):
        m = _KEY_LINE.match(ln)
        if m is None:
            continue
        key = m["q"] or m["k"]
        raw.setdefault(key, _uncommented(m["v"]))
        at.setdefault(key, first_line + i)
        if key == "send_at":
            src[i] = ln[: m.start("v")] + _SHORT_TIME.sub(r"\1:00", m["v"])
    data, broken = _loads(src, first_line, rep)
    return Front(*_values(data, raw, at, broken, rep), lines=at)


def _uncommented(value: str) -> str:
    if value.startswith(('"', "'")):
        return value
    return value.split("#", 1)[0].strip()


def _loads(src: list[str], first_line: int, rep: _Problems) -> tuple[dict[str, Any], set[str]]:
    """TOML of ``src``; a line it cannot read is reported and dropped, then the rest is
    read again (at most once per line)."""
    broken: set[str] = set()
    for _ in range(len(src) + 1):
        try:
            return tomllib.loads("\n".join(src)), broken
        except tomllib.TOMLDecodeError as e:
            m = _AT_LINE.search(str(e))
            n = int(m[1]) - 1 if m else max(
                (i for i, s in enumerate(src) if s.strip()), default=-1)
            if not 0 <= n < len(src) or not src[n].strip():
                rep.error(first_line, f"the front matter cannot be read ({e}); write one "
                                      'key = value per line, e.g. title = "简 报"')
                return {}, broken
            rep.error(first_line + n, _unreadable(src, n, first_line))
            km = _KEY_LINE.match(src[n])
            if km:
                broken.add(km["q"] or km["k"])
            src[n] = ""
    return {}, broken


def _unreadable(src: list[str], n: int, first_line: int) -> str:
    line = src[n].strip()
    m = _KEY_LINE.match(src[n])
    if m is None:
        return (f"{line!r} is not a 'key = value' line; write e.g. title = \"简 报\" "
                "(or start it with # to keep it as a note)")
    key = m["q"] or m["k"]
    earlier = next((i for i, s in enumerate(src[:n]) if (k := _KEY_LINE.match(s))
                    and (k["q"] or k["k"]) == key), None)
    if earlier is not None:
        return f"{key}: given twice (also on line {first_line + earlier}); keep one"
    return f"{key}: {_uncommented(m['v']) or '(nothing)'} {_is_not(key)}; {_how(key, m['v'])}"


def _is_not(key: str) -> str:
    what = _WHAT.get(key)
    return f"is not {what}" if what else "cannot be read"


def _how(key: str, written: str) -> str:
    """``write it as …``, from what was written when it can be (2026/12/01 gives
    2026-12-01), else from the example."""
    numbers = [int(n) for n in _NUMBERS.findall(written)]
    try:
        if key == "date" and len(numbers) >= 3:
            return f"write it as {dt.date(*numbers[:3]).isoformat()}"
        if key == "send_at" and len(numbers) >= 5:
            y, mo, d, h, mi = numbers[:5]
            when = dt.datetime(y, mo, d, h, mi)
            return f"write it as {when:%Y-%m-%d %H:%M}"
        if key in NUMBER_KEYS and len(numbers) == 1 and numbers[0] > 0:
            return f"write it as {numbers[0]}"
    except ValueError:
        pass
    if key in _EXAMPLES:
        return f"write it as {_EXAMPLES[key]}"
    return 'write text in double quotes ("…"), a number, or a date such as 2026-12-01'


def _values(
    data: dict[str, Any], raw: dict[str, str], at: dict[str, int], broken: set[str],
    rep: _Problems,
) -> tuple[Masthead, dt.datetime | None, dict[str, str]]:
    def wrong(key: str) -> None:
        broken.add(key)
        rep.error(at.get(key, 0), f"{key}: {raw.get(key, data[key])} {_is_not(key)}; "
                                  f"{_how(key, raw.get(key, ''))}")

    def missing(key: str) -> None:
        if key not in broken:
            rep.error(0, f"front matter has no '{key}' (add a line such as "
                         f"{key} = {_EXAMPLES[key]})")

    strings: dict[str, str] = {}
    for key in (*STRING_KEYS, *OVERRIDES):
        value = data.get(key)
        if isinstance(value, str):
            strings[key] = value
        elif value is not None:
            wrong(key)
        elif key in STRING_KEYS:
            missing(key)

    ints: dict[str, int | None] = {}
    for key in NUMBER_KEYS:
        value = data.get(key)
        ints[key] = None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            ints[key] = value
        elif value is not None:
            wrong(key)
        elif key != "total_number":
            missing(key)

    date = data.get("date")
    if date is None:
        missing("date")
    elif isinstance(date, dt.datetime) or not isinstance(date, dt.date):
        wrong("date")
        date = None
    send_at = data.get("send_at")
    if send_at is not None and not isinstance(send_at, dt.datetime):
        wrong("send_at")
        send_at = None

    for key in data:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, 1)
            hint = (f"did you mean '{close[0]}'?" if close
                    else f"the keys are {', '.join(KNOWN_KEYS)}")
            rep.error(at.get(key, 0), f"unknown front matter key '{key}'; {hint}")

    year = ints["year"]
    if year is not None and isinstance(date, dt.date) and date.year != year:
        rep.warning(at.get("year", 0), f"year = {year} but date = {date.isoformat()}: the "
                                       f"issue line will read {year} 年; check which is right")

    masthead = Masthead(
        notice=strings.get("notice", ""),
        organisation=strings.get("organisation", ""),
        title=strings.get("title", ""),
        year=year or 0,
        number=ints["number"] or 0,
        total_number=ints["total_number"],
        publisher=strings.get("publisher", ""),
        date=date,
    )
    overrides = {k: v for k, v in strings.items() if k in OVERRIDES}
    return masthead, send_at, overrides
