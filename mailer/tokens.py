"""Unsubscribe tokens: who (a recipient's random uid) and which list, signed with HMAC.

A token looks like ``v1.k1.<payload>.<mac>``:

- ``v1`` is the format version;
- ``k1`` is the id of the signing key (``web.key_id``), so that after a rotation the
  previous key is still found, and accepted until its ``valid_until``;
- ``payload`` is base64url (no padding) of ``<uid>:<list slug>``;
- ``mac`` is base64url (no padding) of HMAC-SHA256, truncated to 16 bytes, over a
  fixed context label, the version, the key id and the payload *as text*.

Everything is ASCII and URL-safe, about 60 characters: short enough for a
List-Unsubscribe header. The MAC is compared as its canonical base64 text with
``hmac.compare_digest``, so a MAC spelled differently but decoding to the same
bytes (base64's spare trailing bits) is not accepted either.

``read_token`` returns ``None`` for anything it does not accept and never says why:
garbage, a wrong version, an unknown key id, a retired key and a forged MAC all look
the same to the caller (and so to whoever sent the token).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from .config import SigningKey

VERSION = "v1"
MAC_BYTES = 16
# The longest token worth looking at; anything longer is garbage, refused unparsed.
MAX_TOKEN_CHARS = 256
_CONTEXT = b"mailer/unsubscribe\x00"
_UID = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
_SLUG = re.compile(r"[A-Za-z0-9-]{1,64}", re.ASCII)
_KEY_ID = re.compile(r"[A-Za-z0-9]{1,32}", re.ASCII)
_TOKEN = re.compile(
    r"v1\.([A-Za-z0-9]{1,32})\.([A-Za-z0-9_-]{4,200})\.([A-Za-z0-9_-]{22})", re.ASCII
)
# Stands in for an unknown key id, so that such a token costs the same work as one
# with a known id and a wrong MAC.
_DECOY_SECRET = secrets.token_bytes(32)


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says: the recipient's uid, the list, and the key that
    signed it."""

    uid: str
    list_slug: str
    key_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, key_id: str, payload: str) -> str:
    signed = _CONTEXT + f"{VERSION}.{key_id}.{payload}".encode("ascii")
    return _b64(hmac.new(secret, signed, hashlib.sha256).digest()[:MAC_BYTES])


def make_token(key: SigningKey, uid: str, list_slug: str) -> str:
    """Sign a token for ``uid`` on ``list_slug`` with ``key`` (normally the current key,
    ``config.signing_keys()[0]``). Raises ValueError for a uid, slug or key id that
    could not travel in a link (the store and config never produce one)."""
    if not _UID.fullmatch(uid):
        raise ValueError(f"not a recipient uid: {uid!r}")
    if not _SLUG.fullmatch(list_slug):
        raise ValueError(f"not a list slug: {list_slug!r}")
    if not _KEY_ID.fullmatch(key.key_id):
        raise ValueError(f"not a key id (ASCII letters and digits): {key.key_id!r}")
    payload = _b64(f"{uid}:{list_slug}".encode("ascii"))
    return f"{VERSION}.{key.key_id}.{payload}.{_mac(key.secret, key.key_id, payload)}"


def read_token(
    keys: Sequence[SigningKey], token: object, *, now: dt.datetime
) -> TokenClaims | None:
    """The claims of a token signed by one of ``keys`` (a key past its ``valid_until``
    no longer counts), else None. Never raises on any input."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        return None
    m = _TOKEN.fullmatch(token)
    if m is None:
        return None
    key_id, payload, given = m.groups()
    key = next((k for k in keys if k.key_id == key_id), None)
    expected = _mac(key.secret if key is not None else _DECOY_SECRET, key_id, payload)
    if not hmac.compare_digest(expected.encode("ascii"), given.encode("ascii")):
        return None
    if key is None or (key.valid_until is not None and now >= key.valid_until):
        return None
    try:
        uid, sep, list_slug = _unb64(payload).decode("ascii").partition(":")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    if not sep or not _UID.fullmatch(uid) or not _SLUG.fullmatch(list_slug):
        return None
    return TokenClaims(uid=uid, list_slug=list_slug, key_id=key_id)


def unsubscribe_url(base_url: str, token: str) -> str:
    """The page a token opens: ``<base_url>/u/<token>`` (for the List-Unsubscribe
    header and the link in the footer)."""
    return f"{base_url.rstrip('/')}/u/{token}"
