"""Who may read which issue on the web, and what a search finds: no HTTP, no SQL.

A web-edition link names a recipient, a list and an issue. It opens the issue when
the issue was sent to that address on that list (old links keep working after the
address leaves the list), or when the address is still active on the list and the
issue is in the list's archive. Report-to (报) bodies' archive holds every issue
sent to any list. Links made before staff revoked the address's links open nothing.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from .models import Role, Status
from .store import Reader, Store
from .validate import normalise_email

MAX_QUERY_CHARS = 100
MAX_TERMS = 5
SNIPPET_CHARS = 90  # characters of an article's text shown around the first match


def archive_scope(reader: Reader) -> str | None:
    """Whose issues the reader's archive holds: the list's slug, or None for every list."""
    return None if reader.role is Role.REPORT_TO else reader.list_slug


def has_archive(reader: Reader) -> bool:
    """An address on an active subscription reaches the archive; one that left does not."""
    return reader.status is Status.ACTIVE


def revoked(reader: Reader, issued: int) -> bool:
    return issued < reader.revoked_before


def may_read(reader: Reader, *, sent: bool, in_archive: bool) -> bool:
    return sent or (has_archive(reader) and in_archive)


@dataclass(frozen=True)
class Query:
    terms: tuple[str, ...]
    problem: str | None  # in the reader's words, when the query cannot be run


def parse_query(text: str) -> Query:
    """Search terms from what the reader typed: split at spaces (full-width too),
    each term once, at most ``MAX_TERMS``; too long a query is refused, not cut."""
    if len(text) > MAX_QUERY_CHARS:
        return Query((), f"搜索词太长，请不超过 {MAX_QUERY_CHARS} 个字。")
    terms = tuple(dict.fromkeys(t for t in re.split(r"[\s\u3000]+", text) if t))
    if len(terms) > MAX_TERMS:
        return Query((), f"关键词太多，请不超过 {MAX_TERMS} 个。")
    return Query(terms, None)


def highlight(text: str, terms: Sequence[str]) -> Markup:
    """``text`` escaped, every occurrence of a term in ``<mark>``."""
    if not terms:
        return escape(text)
    pattern = re.compile("|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True)))
    out = Markup("")
    pos = 0
    for m in pattern.finditer(text):
        out += escape(text[pos:m.start()]) + Markup("<mark>") + escape(m.group()) + \
            Markup("</mark>")
        pos = m.end()
    return out + escape(text[pos:])


def snippet(text: str, terms: Sequence[str], width: int = SNIPPET_CHARS) -> Markup:
    """The passage around the first match, highlighted, with … where it was cut."""
    flat = " ".join(text.split())
    starts = [i for t in terms if (i := flat.find(t)) >= 0]
    first = min(starts) if starts else 0
    begin = max(0, first - width // 3)
    end = min(len(flat), begin + width)
    piece = highlight(flat[begin:end], terms)
    return (Markup("…") if begin else Markup("")) + piece + \
        (Markup("…") if end < len(flat) else Markup(""))


def revoke(store: Store, address: str, *, now: dt.datetime) -> str:
    """Revoke every web-edition and archive link of ``address`` made until ``now``
    (mail sent later carries links that work); returns the normalised address."""
    email = normalise_email(address).email
    # Links carry their time in whole seconds: everything up to this second is dead.
    store.revoke_links(email, before=int(now.timestamp()) + 1)
    return email
