"""Addresses as staff type them: ``张三 <zs@163.com>``, and the provider typos
(163.con, gmial.com) that would otherwise bounce every issue silently.

Syntax is checked by ``mailer.validate``; this module only splits a display name
off and notices a domain that is one slip away from a big mail provider.
"""

from __future__ import annotations

import difflib
import email.utils
from dataclasses import dataclass

from .errors import InvalidInput
from .validate import Address, normalise_email

# The providers Chinese member units and offices use most; a domain one or two
# keystrokes from one of these is almost always a typo.
PROVIDERS = (
    "163.com", "126.com", "yeah.net", "qq.com", "foxmail.com", "sina.com", "sina.cn",
    "sohu.com", "139.com", "189.cn", "aliyun.com", "gmail.com", "outlook.com",
    "hotmail.com", "live.com", "yahoo.com", "icloud.com",
)
_TLD_SLIPS = {"con": "com", "cmo": "com", "ocm": "com", "comm": "com", "co": "com",
              "nte": "net", "ent": "net", "cm": "com"}


@dataclass(frozen=True)
class Typed:
    """What staff typed: the address, and the name written with it, if any."""

    address: Address
    name: str | None


def split_name(raw: str) -> tuple[str | None, str]:
    """``张三 <zs@163.com>`` → (``张三``, ``zs@163.com``); a bare address → (None, it)."""
    text = raw.strip()
    if "<" not in text:
        return None, text
    name, addr = email.utils.parseaddr(text)
    if not addr or text.count("<") != 1 or not text.endswith(">"):
        raise InvalidInput(f"{text!r} is not an address; write it as zs@163.com or "
                           "张三 <zs@163.com>")
    return (name.strip().strip('"').strip() or None), addr


def parse_typed(raw: str) -> Typed:
    name, addr = split_name(raw)
    return Typed(normalise_email(addr), name)


def likely_typo(address: Address) -> str | None:
    """The address staff probably meant (``zs@163.com`` for ``zs@163.con``), or None."""
    local, _, domain = address.email.rpartition("@")
    if domain in PROVIDERS:
        return None
    base, _, tld = domain.rpartition(".")
    if base and tld in _TLD_SLIPS and f"{base}.{_TLD_SLIPS[tld]}" in PROVIDERS:
        return f"{local}@{base}.{_TLD_SLIPS[tld]}"
    close = difflib.get_close_matches(domain, PROVIDERS, n=1, cutoff=0.8)
    return f"{local}@{close[0]}" if close else None


def typo_problem(address: Address) -> str | None:
    """One line for a likely typo, saying how to keep the address as typed."""
    meant = likely_typo(address)
    if meant is None:
        return None
    return (f"{address.email}: did you mean {meant}? Correct it, or add --as-typed to keep "
            "it as written")
