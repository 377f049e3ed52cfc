"""Numbers and dates as bulletins write them: ``2015 年 11 月 24 日`` or, as official
documents do, ``二〇一五年十一月二十四日`` (also with ``○`` or ``零``, and ``廿``/``卅``
for twenty and thirty); ``第 9 期`` or ``第九期``, ``总第三十三期``."""

from __future__ import annotations

import datetime as dt
import re

_DIGITS = {c: i for i, c in enumerate("〇一二三四五六七八九")} | {"○": 0, "零": 0, "两": 2}
_UNITS = {"十": 10, "百": 100, "千": 1000}
_TENS = {"廿": 20, "卅": 30}

CN_DIGIT = "〇○零一二三四五六七八九"
CN_NUMBER = CN_DIGIT + "两十廿卅百千"

NUMBER_PATTERN = rf"(?:\d{{1,6}}|[{CN_NUMBER}]{{1,8}})"
"""A number written in digits or in Chinese numerals (for regular expressions)."""

_YEAR = rf"\d{{4}}|[{CN_DIGIT}]{{4}}"
_DAY = rf"\d{{1,2}}|[{CN_NUMBER}]{{1,3}}"
DATE_PATTERN = rf"(?:{_YEAR})\s*年\s*(?:{_DAY})\s*月\s*(?:{_DAY})\s*日"
"""A date such as 2015 年 11 月 24 日 or 二〇一五年十一月二十四日, no groups."""

DATE_RE = re.compile(rf"(?P<y>{_YEAR})\s*年\s*(?P<m>{_DAY})\s*月\s*(?P<d>{_DAY})\s*日")
# Something written as a date that DATE_RE may not read (for a message at its line).
LOOSE_DATE_RE = re.compile(r"\S{1,8}\s*年\s*\S{1,4}\s*月\s*\S{1,4}\s*日")


def number_value(text: str) -> int | None:
    """The value of ``text`` in digits (ASCII or full-width) or Chinese numerals:
    ``33``, ``三十三``, ``廿四``, ``一百零五``, and year-style digit runs such as
    ``二〇一五``; ``None`` if it is not a number."""
    text = text.strip()
    if not text:
        return None
    if text.isdecimal():
        return int(text)
    if any(c not in _DIGITS and c not in _UNITS and c not in _TENS for c in text):
        return None
    if not any(c in _UNITS or c in _TENS for c in text):
        # 二〇一五, 九: digit by digit
        value = 0
        for c in text:
            value = value * 10 + _DIGITS[c]
        return value
    total, digit, last_unit = 0, None, 10_000
    for c in text:
        if c in _DIGITS:
            if digit is not None and _DIGITS[c] != 0:
                return None  # 二三十: two digits in a row
            digit = _DIGITS[c] if _DIGITS[c] != 0 else None
        elif c in _TENS:
            if digit is not None or total % 100:
                return None
            total += _TENS[c]
            last_unit = 10
        else:
            unit = _UNITS[c]
            if unit >= last_unit:
                return None  # 十百, 十十
            total += (1 if digit is None else digit) * unit
            digit, last_unit = None, unit
    return total + (digit or 0)


def date_of(m: re.Match[str]) -> dt.date:
    """The date a ``DATE_RE`` match names; ``ValueError`` if there is no such day."""
    y, mo, d = (number_value(m[k]) for k in ("y", "m", "d"))
    if y is None or mo is None or d is None:
        raise ValueError("not a number")
    return dt.date(y, mo, d)
