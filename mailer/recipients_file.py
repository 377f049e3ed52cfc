"""Recipients files: the CSV staff keep in Excel, read and written.

Excel on Chinese Windows saves CSV in GBK (GB18030 is its superset), other tools in
UTF-8 with or without a BOM (``mailer.charset`` tells them apart); headers come in
English or in the Chinese staff use.
Reading validates every row and names the file and line of each bad one; nothing
here touches the database.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .addresses import split_name, typo_problem
from .charset import decode
from .errors import InvalidInput
from .models import ImportRow, Member, Status
from .validate import clean_text, normalise_email

# Column -> the headers that mean it (compared case-insensitively, spaces removed).
HEADERS: dict[str, tuple[str, ...]] = {
    "email": ("email", "e-mail", "电子邮箱", "邮箱", "电子邮件", "邮件地址"),
    "name": ("name", "联系人", "姓名"),
    "unit": ("unit", "单位名称", "单位"),
    "group": ("group", "片组", "分组"),
    "list": ("list", "名单"),
    "status": ("status", "状态"),
}
REQUIRED = ("email", "unit")


@dataclass
class ReadResult:
    rows: list[ImportRow]
    problems: list[str]  # "file line N: what is wrong"
    encoding: str


def _column_map(header: list[str], source: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for i, h in enumerate(header):
        key = "".join(h.split()).lower()
        for column, names in HEADERS.items():
            if key in names and column not in found:
                found[column] = i
    missing = [c for c in REQUIRED if c not in found]
    if missing:
        wanted = "; ".join(f"{c}: {' / '.join(HEADERS[c])}" for c in missing)
        raise InvalidInput(
            f"{source} line 1: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (headers accepted: {wanted}); found: {', '.join(header)}"
        )
    return found


# What Excel's own formats begin with: staff often pick the workbook, not the CSV.
_EXCEL = {b"PK\x03\x04": "an Excel workbook (.xlsx)",
          b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1": "an old Excel workbook (.xls)"}


def read(path: Path, *, encoding: str | None = None, as_typed: bool = False) -> ReadResult:
    """Read and validate a recipients CSV. Raises InvalidInput for a file that cannot
    be read at all; bad rows are returned as problems so the caller decides.
    An address like a provider typo (163.con) is a problem unless ``as_typed``."""
    source = path.name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except OSError as e:
        raise InvalidInput(f"{path}: cannot read: {e.strerror}") from None
    for magic, what in _EXCEL.items():
        if data.startswith(magic):
            raise InvalidInput(
                f"{source} is {what}, not a CSV file: in Excel choose File → Save As → "
                "'CSV UTF-8 (comma delimited)', then import that file")
    text, used = decode(data, source, encoding=encoding, hint=(
        "save it from Excel as 'CSV UTF-8', or pass --encoding (utf-8, gb18030)"))
    # Only the delimiter is guessed (from the header line); quoting stays as Excel and
    # RFC 4180 write it. The sniffer's guess from a header without quotes says quotes
    # are never doubled, which would import "杭州""两新""协会" as 杭州"两新""协会".
    try:
        delimiter = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), csv.excel, delimiter=delimiter)
    header = next(reader, None)
    if header is None or not any(h.strip() for h in header):
        raise InvalidInput(f"{source}: the file is empty; the first line must name the columns")
    cols = _column_map(header, source)

    rows: list[ImportRow] = []
    problems: list[str] = []
    seen: dict[tuple[str, str | None], int] = {}
    unit_of: dict[str, tuple[str, int]] = {}  # address -> (unit, line)
    group_of: dict[str, tuple[str | None, int]] = {}  # unit -> (片组, line)
    wanted = max(cols.values()) + 1
    for record in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        at = f"{source} line {line}"
        if len(record) < wanted and any(
                cols[c] >= len(record) for c in REQUIRED if c in cols):
            named = ", ".join(h for h in header if h.strip())
            problems.append(f"{at}: short row: {len(record)} of {len(header)} cells "
                            f"({named}); is a comma or a cell missing?")
            continue

        def cell(column: str, record: list[str] = record) -> str:
            i = cols.get(column)
            return record[i] if i is not None and i < len(record) else ""

        try:
            written_name, raw = split_name(cell("email"))
            address = normalise_email(raw)
            unit = clean_text(cell("unit"), "unit name", required=True)
            assert unit is not None
            name = clean_text(cell("name") or written_name, "contact name")
            group = clean_text(cell("group"), "group (片组)")
            list_slug = clean_text(cell("list"), "list") if "list" in cols else None
            status = _status(cell("status")) if "status" in cols else None
        except InvalidInput as e:
            problems.append(f"{at}: {e}")
            continue
        typo = None if as_typed else typo_problem(address)
        if typo:
            problems.append(f"{at}: {typo}")
            continue
        key = (address.email, list_slug)
        if key in seen:
            problems.append(f"{at}: {address.email} repeats line {seen[key]}")
            continue
        other = unit_of.get(address.email)
        if other is not None and other[0] != unit:
            problems.append(f"{at}: {address.email} is given to {unit} here but to "
                            f"{other[0]} on line {other[1]}; an address belongs to one unit")
            continue
        before = group_of.get(unit)
        if before is not None and group is not None and before[0] not in (None, group):
            problems.append(f"{at}: {unit} is in 片组 {group} here but {before[0]} on line "
                            f"{before[1]}; a unit has one 片组")
            continue
        seen[key] = line
        unit_of.setdefault(address.email, (unit, line))
        if group is not None or unit not in group_of:
            group_of[unit] = (group, line)
        rows.append(ImportRow(line=line, address=address, name=name, unit=unit, group=group,
                              list_slug=list_slug, status=status))
    return ReadResult(rows=rows, problems=problems, encoding=used)


def _status(value: str) -> Status | None:
    text = value.strip()
    if not text:
        return None
    try:
        return Status(text)
    except ValueError:
        raise InvalidInput(f"status {text!r} is not one of "
                           f"{', '.join(s.value for s in Status)}") from None


def write(members: Iterable[Member], out: io.TextIOBase | io.StringIO) -> int:
    """Write members as a CSV that `read` accepts (UTF-8; the caller adds a BOM for
    Excel when writing a file). Returns the number of rows."""
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["email", "name", "unit", "group", "list", "status"])
    n = 0
    for m in members:
        w.writerow([m.email, m.name or "", m.unit, m.group or "", m.list_slug, m.status.value])
        n += 1
    return n
