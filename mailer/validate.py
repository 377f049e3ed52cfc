"""Checks on what staff type or import: addresses, names, unit names.

Each check returns the cleaned value or raises ``InvalidInput`` with a message that
says what is wrong in words a staff member can act on.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

from .errors import InvalidInput

MAX_NAME = 200


@dataclass(frozen=True)
class Address:
    email: str  # the key: domain in Unicode, whole address lower-cased
    # The same with an IDN domain in punycode; None if the local part is not ASCII.
    ascii: str | None


def normalise_email(raw: str) -> Address:
    """Validate syntax only (no DNS: staff import offline and test domains are fine)."""
    value = raw.strip()
    if not value:
        raise InvalidInput("the email address is empty")
    if _has_control(value):
        raise InvalidInput(f"{value!r} contains a control character (line break or tab)")
    try:
        info = validate_email(value, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as e:
        raise InvalidInput(f"{value!r} is not an email address ({_reason(e)})") from None
    # Mailbox names are case-insensitive at every provider staff deal with; folding
    # case keeps "Zhang@X.org" and "zhang@x.org" from becoming two recipients.
    email = info.normalized.lower()
    ascii_email = info.ascii_email.lower() if info.ascii_email else None
    return Address(email=email, ascii=ascii_email)


def _reason(e: EmailNotValidError) -> str:
    text = str(e).rstrip(".")
    return text[:1].lower() + text[1:]


def _has_control(value: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in value)


def clean_text(raw: str | None, what: str, *, required: bool = False) -> str | None:
    """A one-line display text (a contact's name, a unit, a 片组): trimmed, no control
    characters (CR/LF would end up in a mail header), not absurdly long."""
    value = (raw or "").strip()
    if not value:
        if required:
            raise InvalidInput(f"the {what} is empty")
        return None
    if _has_control(value):
        raise InvalidInput(
            f"the {what} {value!r} contains a control character (line break or tab); "
            "put it on one line"
        )
    if len(value) > MAX_NAME:
        raise InvalidInput(f"the {what} is longer than {MAX_NAME} characters")
    return value


# --- addresses on the wire ---------------------------------------------------------
# What the store holds (``Address.email``: the domain in Unicode) is turned into what
# SMTP and the headers carry. Done per recipient, so the domain conversion (IDNA via
# email-validator, about 2 ms) is cached per domain and the local part is checked here
# by the same rules email-validator applied when the address was accepted.


@dataclass(frozen=True)
class WireAddress:
    # For MAIL FROM / RCPT TO: the domain in A-labels (punycode), the local part as
    # it is (UTF-8 when ``smtputf8``).
    envelope: str
    # For the To header: ``envelope`` when the local part is ASCII (the message stays
    # plain RFC 5322); otherwise the whole address in Unicode (NFC), which RFC 6532
    # allows in a message sent over SMTPUTF8 and only there.
    header: str
    smtputf8: bool  # the local part is not ASCII: only a relay offering SMTPUTF8 can take it


_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")


def wire_address(address: str) -> WireAddress:
    """The wire and header forms of an address; ``InvalidInput`` if it has none."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InvalidInput(f"{address!r} is not an email address")
    local = unicodedata.normalize("NFC", local)
    smtputf8 = not local.isascii()
    if local.startswith(".") or local.endswith(".") or ".." in local or any(
        not (c in _ATEXT or c == "." or (ord(c) > 127 and _safe_unicode(c))) for c in local
    ):
        raise InvalidInput(f"the local part of {address!r} cannot be sent unquoted")
    ascii_domain, unicode_domain = _domain(domain)
    envelope = f"{local}@{ascii_domain}"
    return WireAddress(envelope, f"{local}@{unicode_domain}" if smtputf8 else envelope, smtputf8)


def _safe_unicode(c: str) -> bool:
    # No controls, format characters, surrogates, private use, unassigned, spaces or
    # separators (email-validator refuses the same).
    return unicodedata.category(c)[0] not in "CZ"


def ascii_domain(domain: str) -> str:
    """A domain in A-labels (punycode); ``InvalidInput`` if it is not a domain name."""
    return _domain(domain)[0]


@functools.lru_cache(maxsize=4096)
def _domain(domain: str) -> tuple[str, str]:
    """(A-label form, Unicode form) of a domain, as email-validator converts it."""
    if domain.isascii() and _PLAIN_DOMAIN.fullmatch(domain) and "xn--" not in domain.lower():
        return domain, domain
    try:
        info = validate_email(f"postmaster@{domain}", check_deliverability=False,
                              allow_smtputf8=True)
    except EmailNotValidError as e:
        raise InvalidInput(f"the domain {domain!r} cannot be sent to ({_reason(e)})") from None
    return info.ascii_domain, info.domain


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
