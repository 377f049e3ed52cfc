"""The one rule for links in an issue: only ``https://host…`` and ``mailto:address``.

The parsers use it to drop (and report) a link staff wrote; the renderer uses it
again where the ``<a>`` is written, for an ``Issue`` that did not come through a
parser. Both ask this module, so they cannot disagree.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

# One address of a mailto: link, after percent-decoding: no spaces, line breaks,
# commas or second "@" (RFC 6068 separates several addresses by commas).
_MAILTO_ADDRESS = re.compile(r"[^\s@,]+@[^\s@,]+")


def is_safe_href(url: str | None) -> bool:
    """True for the only links an issue may carry: ``https://host…`` and ``mailto:…``.

    A link is printable ASCII and nothing else (both parsers write Unicode hosts in
    punycode and the rest percent-encoded): no spaces around or inside it, no control,
    invisible or direction-changing characters, no backslash (browsers read it as
    ``/``). Schemes are compared case-insensitively. An https link needs a host and no
    ``user@`` in front of it (``https://bank.example@evil.example/`` goes to
    evil.example); a mailto link needs at least one address, each ``local@domain``.
    Relative links (``/a``, ``//host/a``, ``a.html``), http, javascript:, data: and
    every other scheme are refused.
    """
    if not url or any(not "\x21" <= c <= "\x7e" or c == "\\" for c in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    if scheme == "https":
        return bool(parts.hostname) and "@" not in parts.netloc
    if scheme == "mailto":
        addresses = unquote(parts.path).split(",")
        return all(_MAILTO_ADDRESS.fullmatch(a) for a in addresses)
    return False
