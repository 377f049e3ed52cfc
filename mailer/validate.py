"""Checks on what staff type or import: addresses, names, unit names.

Each check returns the cleaned value or raises ``InvalidInput`` with a message that
says what is wrong in words a staff member can act on.
"""

from __future__ import annotations

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
