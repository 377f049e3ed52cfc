"""Which characters staff's files hold: one answer for issue files and recipient CSVs.

Chinese Windows saves text as GBK (GB18030 is its superset), other tools as UTF-8
with or without a BOM, and Excel's "Unicode text" as UTF-16 with a BOM. UTF-8 is
tried first: GBK bytes are almost never valid UTF-8, while UTF-8 bytes often decode
as (wrong) GB18030. Line endings are left as they are; the readers handle CRLF and
lone CR.
"""

from __future__ import annotations

from .errors import InvalidInput

GUESSES = ("utf-8-sig", "gb18030")


def decode(data: bytes, source: str, *, hint: str, encoding: str | None = None) -> tuple[str, str]:
    """Return (text, encoding used) for the bytes of the file named ``source``.

    ``encoding`` forces one; otherwise a UTF-16 BOM means UTF-16, and anything else
    is UTF-8 (a BOM is dropped) or else GB18030. Bytes that are none of these, or a
    NUL byte outside UTF-16 (a binary file, or UTF-16 without its BOM), raise
    ``InvalidInput`` naming ``source``; ``hint`` says what to do about it.
    """
    if encoding:
        return _decode_as(data, source, encoding, hint), encoding
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return _decode_as(data, source, "utf-16", hint), "utf-16"
    if b"\x00" in data:
        raise InvalidInput(
            f"{source}: NUL bytes, so not a text file (a binary file, or UTF-16 without "
            f"a BOM); {hint}"
        )
    try:
        return data.decode(GUESSES[0]), GUESSES[0]
    except UnicodeDecodeError as first:
        try:
            return data.decode(GUESSES[1]), GUESSES[1]
        except UnicodeDecodeError:
            raise InvalidInput(
                f"{source}: neither UTF-8 nor GB18030 (GBK) text (bad byte at offset "
                f"{first.start}); {hint}"
            ) from None


def _decode_as(data: bytes, source: str, encoding: str, hint: str) -> str:
    try:
        return data.decode(encoding)
    except LookupError:
        raise InvalidInput(f"unknown encoding {encoding!r}; try utf-8 or gb18030") from None
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InvalidInput(f"{source} line {line}: not valid {encoding}; {hint}") from None
