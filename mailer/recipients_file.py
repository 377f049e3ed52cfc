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

from .charset import decode
from .errors import InvalidInput
from .models import Member
from .store import ImportRow
from .validate import clean_text, normalise_email

# Column -> the headers that mean it (compared case-insensitively, spaces removed).
HEADERS: dict[str, tuple[str, ...]] = {
    "email": ("email", "e-mail", "电子邮箱", "邮箱", "电子邮件", "邮件地址"),
    "name": ("name", "联系人", "姓名"),
    "unit": ("unit", "单位名称", "单位"),
    "group": ("group", "片组", "分组"),
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


def read(path: Path, *, encoding: str | None = None) -> ReadResult:
    """Read and validate a recipients CSV. Raises InvalidInput for a file that cannot
    be read at all; bad rows are returned as problems so the caller decides."""
    source = path.name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except OSError as e:
        raise InvalidInput(f"{path}: cannot read: {e.strerror}") from None
    text, used = decode(data, source, encoding=encoding, hint=(
        "save it from Excel as 'CSV UTF-8', or pass --encoding (utf-8, gb18030)"))
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(
            text.split("\n", 1)[0], delimiters=",;\t"
        )
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    header = next(reader, None)
    if header is None or not any(h.strip() for h in header):
        raise InvalidInput(f"{source}: the file is empty; the first line must name the columns")
    cols = _column_map(header, source)

    rows: list[ImportRow] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for record in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in record):
            continue

        def cell(column: str, record: list[str] = record) -> str:
            i = cols.get(column)
            return record[i] if i is not None and i < len(record) else ""

        try:
            address = normalise_email(cell("email"))
            unit = clean_text(cell("unit"), "unit name", required=True)
            assert unit is not None
            name = clean_text(cell("name"), "contact name")
            group = clean_text(cell("group"), "group (片组)")
        except InvalidInput as e:
            problems.append(f"{source} line {line}: {e}")
            continue
        if address.email in seen:
            problems.append(
                f"{source} line {line}: {address.email} repeats line {seen[address.email]}"
            )
            continue
        seen[address.email] = line
        rows.append(ImportRow(line=line, address=address, name=name, unit=unit, group=group))
    return ReadResult(rows=rows, problems=problems, encoding=used)


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
