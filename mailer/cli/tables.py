"""Tables that read at 80 columns, and the same rows as JSON or CSV.

Addresses, unit names, times and numbers are never broken inside a word: when a
table does not fit, the least important columns are left out (and named under the
table) until it does; ``--wide`` shows every column. The width is the terminal's,
or ``$COLUMNS`` when the output is piped (without it, piped tables are shown whole).
``--json`` and ``--csv`` print the rows for scripts; ``-o FILE`` writes them to a
file, CSV with a BOM so Excel reads the Chinese right.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import click
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from ..files import write_atomic
from .base import plural

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Col:
    """One column: ``drop`` 0 is always shown, higher numbers are left out first when
    the table is too wide; ``wrap`` lets free text wrap between words."""

    name: str  # the key in JSON and CSV
    drop: int = 0
    wrap: bool = False
    right: bool = False
    label: str | None = None  # a shorter heading for the table


@dataclass(frozen=True)
class Output:
    """How a command's rows are wanted: a table, JSON or CSV, on stdout or a file."""

    fmt: Literal["table", "json", "csv"] = "table"
    wide: bool = False
    path: Path | None = None


def output_options(f: F) -> F:
    """``--json``, ``--csv``, ``--wide`` and ``-o FILE`` for a command that prints rows;
    the command receives them as ``out: Output``."""
    f = click.option("--output", "-o", "out_path", type=click.Path(dir_okay=False,
                     path_type=Path),
                     help="Write the rows to FILE (CSV with BOM for Excel; JSON with --json).")(f)
    f = click.option("--wide", is_flag=True, help="Show every column, however wide.")(f)
    f = click.option("--csv", "as_csv", is_flag=True, help="CSV instead of a table.")(f)
    f = click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")(f)
    return f


def make_output(as_json: bool, as_csv: bool, wide: bool, out_path: Path | None) -> Output:
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    fmt: Literal["table", "json", "csv"] = "json" if as_json else "csv"
    if not as_json and not as_csv and out_path is None:
        fmt = "table"
    return Output(fmt=fmt, wide=wide, path=out_path)


def table_width() -> int | None:
    """The width to fit: the terminal's, else ``$COLUMNS``; None: show tables whole."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return Console().width
    return None


def console(width: int | None = None) -> Console:
    # markup off: a unit name or a reply like "[sender]" is data, not styling.
    return Console(width=width, highlight=False, markup=False, emoji=False)


def emit(out: Output, cols: Sequence[Col], rows: Sequence[Sequence[object]], *, title: str,
         records: Sequence[Mapping[str, object]] | None = None) -> None:
    """Print ``rows`` as ``out`` asks. ``records`` (default: rows keyed by column name)
    is what --json prints when it should carry more than the table shows."""
    header = [c.name for c in cols]
    if out.fmt == "json":
        data = list(records) if records is not None else [
            dict(zip(header, r, strict=True)) for r in rows]
        text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
        if out.path is None:
            click.echo(text, nl=False)
        else:
            write_atomic(out.path, text.encode("utf-8"))
            click.echo(f"wrote {plural(len(data), 'row')} to {out.path}", err=True)
        return
    if out.fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n" if out.path else "\n")
        if records is not None and records:
            # The same fields as --json, flat: lists joined with commas.
            w.writerow(list(records[0]))
            w.writerows([",".join(map(str, v)) if isinstance(v, (list, tuple)) else
                         "" if v is None else v for v in rec.values()] for rec in records)
        else:
            w.writerow(header)
            w.writerows(["" if v is None else v for v in r] for r in rows)
        if out.path is None:
            click.echo(buf.getvalue(), nl=False)
        else:
            # The BOM: Excel opens UTF-8 as the local code page without it.
            write_atomic(out.path, buf.getvalue().encode("utf-8-sig"))
            click.echo(f"wrote {plural(len(rows), 'row')} to {out.path}", err=True)
        return
    print_table(cols, rows, title=title, wide=out.wide)


def _build(cols: Sequence[Col], rows: Sequence[Sequence[object]], shown: list[int],
           title: str) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False)
    for i in shown:
        c = cols[i]
        table.add_column(c.label or c.name, no_wrap=not c.wrap,
                         overflow="fold" if c.wrap else "ellipsis",
                         justify="right" if c.right else "left",
                         min_width=8 if c.wrap else None)
    for r in rows:
        table.add_row(*("" if r[i] is None else str(r[i]) for i in shown))
    return table


def _print_stacked(cols: Sequence[Col], rows: Sequence[Sequence[object]], *, title: str,
                   width: int) -> None:
    """Rows too wide for any table at this width: each row's cells in column order,
    separated by " · " and carried to an indented next line between cells, never
    inside one (an address stays whole and can be copied)."""
    click.echo(title)
    click.echo(" · ".join(c.name for c in cols))
    for r in rows:
        line = ""
        cells: list[str] = []
        for c, v in zip(cols, r, strict=True):
            text = "" if v is None else str(v)
            # Free text (a reply, a change) may wrap between words; nothing else.
            # textwrap counts characters: a Chinese one takes two columns.
            room = width - 2 if cell_len(text) == len(text) else (width - 2) // 2
            cells += textwrap.wrap(text, room) if c.wrap and text else [text]
        for cell in cells:
            if not cell:
                continue
            piece = cell if not line else f" · {cell}"
            if line and cell_len(line + piece) > width:
                click.echo(line)
                line, piece = "  ", cell
            line += piece
        click.echo(line)


def _need(cols: Sequence[Col], rows: Sequence[Sequence[object]], shown: list[int]) -> int:
    """The narrowest the shown columns go without breaking a cell: Rich would break
    Chinese between any two characters, so a name's width is counted whole here."""
    total = 0
    for i in shown:
        cells = [cols[i].label or cols[i].name, *("" if r[i] is None else str(r[i])
                                                 for r in rows)]
        widest = max(cell_len(c) for c in cells)
        total += min(widest, 8) if cols[i].wrap else widest
    # SIMPLE_HEAD without edges: one separator and a space each side between columns.
    return total + 3 * (len(shown) - 1)


def print_table(cols: Sequence[Col], rows: Sequence[Sequence[object]], *, title: str,
                wide: bool = False, width: int | None = None) -> None:
    """A table that fits ``width`` (default: ``table_width()``) without breaking a
    word: columns are left out, most droppable first, and named below it."""
    width = width if width is not None else table_width()
    shown = list(range(len(cols)))
    probe = console(width=10_000)
    if wide or width is None:
        table = _build(cols, rows, shown, title)
        full = Measurement.get(probe, probe.options, table).maximum
        console(width=max(full, 20)).print(table)
        return
    hidden: list[str] = []
    while True:
        table = _build(cols, rows, shown, title)
        need = max(_need(cols, rows, shown),
                   Measurement.get(probe, probe.options, table).minimum)
        droppable = [i for i in shown if cols[i].drop > 0]
        if need <= width:
            break
        if not droppable:
            _print_stacked(cols, rows, title=title, width=width)
            return
        # The highest drop number goes first; among equals, the rightmost.
        victim = max(droppable, key=lambda i: (cols[i].drop, i))
        shown.remove(victim)
        hidden.insert(0, cols[victim].name)
    console(width=width).print(table)
    if hidden:
        click.echo(f"(not shown at {width} columns: {', '.join(hidden)}; --wide shows them)")
