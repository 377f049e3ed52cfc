"""Argument types that answer in staff words."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import click

# 2026-12-01 20:30, 2026/12/01 20:30, 2026.12.01 20:30, 2026-12-01T20:30, with seconds
_DATE = r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})"
_TIME = r"(\d{1,2}):(\d{2})(?::(\d{2}))?"


class LocalDateTime(click.ParamType[dt.datetime, Any]):
    """A date and time (``date_only``: a date, the time optional) in the config's time
    zone, written as staff write it; a wrong one is answered with an example."""

    name = "datetime"

    def __init__(self, *, date_only: bool = False) -> None:
        self.date_only = date_only

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "DATE" if self.date_only else '"DATE TIME"'

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None
                ) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        text = str(value).strip()
        time_part = f"(?:[ T]+{_TIME})" + ("?" if self.date_only else "")
        m = re.fullmatch(_DATE + time_part, text)
        try:
            if m is None:
                raise ValueError
            y, mo, d, h, mi, sec = (int(g) if g else 0 for g in m.groups())
            return dt.datetime(y, mo, d, h, mi, sec)
        except ValueError:
            example = "2026-12-01" if self.date_only else '"2026-12-01 20:30"'
            words = ("a date, written year-month-day (a time may follow)" if self.date_only
                     else "a date and a time, written year-month-day hour:minute")
            self.fail(f"{text!r} is not {words}; for example {example}", param, ctx)
