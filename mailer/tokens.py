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
import functools
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


def _b64_bytes(data: bytes) -> bytes:
    # binascii at once: base64.urlsafe_b64encode is two Python calls more, and this
    # runs four times per message of a campaign.
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=")


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, key_id: str, payload: str, *, context: bytes = _CONTEXT,
         version: str = VERSION) -> str:
    inner, outer = _keyed(secret, context, version, key_id)
    return _mac_of(inner, outer, payload.encode("ascii"))


def _mac_of(inner: hashlib._Hash, outer: hashlib._Hash, payload: bytes) -> str:
    return _mac_bytes(inner, outer, payload).decode("ascii")


def _mac_bytes(inner: hashlib._Hash, outer: hashlib._Hash, payload: bytes) -> bytes:
    h = inner.copy()
    h.update(payload)
    o = outer.copy()
    o.update(h.digest())
    return _b64_bytes(o.digest()[:MAC_BYTES])


@functools.lru_cache(maxsize=16)
def _keyed(secret: bytes, context: bytes, version: str, key_id: str
           ) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC-SHA256 (RFC 2104) keyed once per secret: the inner hash with the key pad,
    the context label and the MAC's fixed start (version and key id) already in,
    and the outer one with its pad. Every message of a campaign signs two tokens;
    copying these two hashes costs a third of what ``hmac`` does per call (its
    one-shot ``hmac.digest`` looks the algorithm up in OpenSSL each time, and
    ``HMAC.copy`` is Python code). The tests check it against ``hmac.new``."""
    key = hashlib.sha256(secret).digest() if len(secret) > _BLOCK else secret
    key = key.ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(key.translate(_PAD_IN))
    inner.update(context + f"{version}.{key_id}.".encode("ascii"))
    return inner, hashlib.sha256(key.translate(_PAD_OUT))


_BLOCK = hashlib.sha256().block_size
_PAD_IN = bytes(x ^ 0x36 for x in range(256))
_PAD_OUT = bytes(x ^ 0x5C for x in range(256))


class Signer:
    """Makes the tokens of one signing key, unsubscribe and web-edition alike: its
    keyed hashes and the tokens' fixed starts made once, and each list checked once,
    so that a token costs its hashing and little more (a campaign signs two per
    message). Raises ValueError for a uid, slug or key id that could not travel in
    a link (the store and config never produce one)."""

    def __init__(self, key: SigningKey) -> None:
        if not _KEY_ID.fullmatch(key.key_id):
            raise ValueError(f"not a key id (ASCII letters and digits): {key.key_id!r}")
        self.key = key
        self._unsubscribe = (*_keyed(key.secret, _CONTEXT, VERSION, key.key_id),
                             f"{VERSION}.{key.key_id}.")
        self._edition = (*_keyed(key.secret, _EDITION_CONTEXT, EDITION_VERSION, key.key_id),
                         f"{EDITION_VERSION}.{key.key_id}.")
        self._slugs: set[str] = set()

    def unsubscribe(self, uid: str, list_slug: str) -> str:
        """The unsubscribe token of ``uid`` on ``list_slug``."""
        self._check(uid, list_slug)
        return _sign(self._unsubscribe, f"{uid}:{list_slug}")

    def edition(self, uid: str, list_slug: str, issue_id: int, issued: int) -> str:
        """A web-edition token (``make_edition_token``)."""
        self._check(uid, list_slug)
        if issue_id < 0 or issued < 0:
            raise ValueError("issue id and issue time must not be negative")
        return _sign(self._edition, f"{uid}:{list_slug}:{issue_id}:{issued}")

    def _check(self, uid: str, list_slug: str) -> None:
        if not _UID.fullmatch(uid):
            raise ValueError(f"not a recipient uid: {uid!r}")
        if list_slug not in self._slugs:
            if not _SLUG.fullmatch(list_slug):
                raise ValueError(f"not a list slug: {list_slug!r}")
            self._slugs.add(list_slug)


class LinkSigner:
    """The links of one list's recipients, as they go in a message (ASCII bytes): the
    unsubscribe link (``unsubscribe_url``) and the web edition of one issue
    (``edition_url``), each made as its fixed start and the recipient's part, both
    signed in one call, the uid checked once. Every message of a campaign carries
    both; made as text, then checked and encoded as they went in the message, they
    cost two thirds more (bench/README.md). The same bytes as
    ``unsubscribe_url(base, signer.unsubscribe(...))`` and ``edition_url(base,
    signer.edition(...))`` (the tests check it); ``starts`` are what a caller checks
    once for the whole list (``message.is_wire_url``)."""

    __slots__ = ("_edition", "_edition_tail", "_slug_tail", "_unsubscribe", "starts")

    def __init__(self, signer: Signer, base_url: str, list_slug: str, *, unsubscribe: bool,
                 edition: tuple[int, int] | None) -> None:
        if edition is not None and (edition[0] < 0 or edition[1] < 0):
            raise ValueError("issue id and issue time must not be negative")
        signer._check("uid", list_slug)  # the slug, once for the list
        u = unsubscribe_url(base_url, signer._unsubscribe[2]) if unsubscribe else None
        e = edition_url(base_url, signer._edition[2]) if edition is not None else None
        self.starts = tuple(x for x in (u, e) if x is not None)
        self._unsubscribe = (signer._unsubscribe[0], signer._unsubscribe[1],
                             u.encode("utf-8")) if u is not None else None
        self._edition = (signer._edition[0], signer._edition[1],
                         e.encode("utf-8")) if e is not None else None
        self._slug_tail = f":{list_slug}"
        self._edition_tail = f":{list_slug}:{edition[0]}:{edition[1]}" if edition else ""

    def __call__(self, uid: str) -> tuple[bytes | None, bytes | None]:
        """The recipient's unsubscribe link and web-edition link (None: the list or
        the issue has none). Raises ValueError for a uid no link can carry."""
        if not _UID.fullmatch(uid):
            raise ValueError(f"not a recipient uid: {uid!r}")
        u, e = self._unsubscribe, self._edition
        return (_signed(u, uid + self._slug_tail) if u is not None else None,
                _signed(e, uid + self._edition_tail) if e is not None else None)


def _sign(keyed: tuple[hashlib._Hash, hashlib._Hash, str], text: str) -> str:
    inner, outer, start = keyed
    return start + _signed((inner, outer, b""), text).decode("ascii")


def _signed(keyed: tuple[hashlib._Hash, hashlib._Hash, bytes], text: str) -> bytes:
    """``<start><payload>.<mac>`` for ``text``: the payload base64url, the MAC over
    those bytes (for ``_sign`` and ``LinkSigner`` alike)."""
    inner, outer, start = keyed
    payload = _b64_bytes(text.encode("ascii"))
    return b"".join((start, payload, b".", _mac_bytes(inner, outer, payload)))


def make_token(key: SigningKey, uid: str, list_slug: str) -> str:
    """Sign a token for ``uid`` on ``list_slug`` with ``key`` (normally the current key,
    ``config.signing_keys()[0]``); a campaign signs through one ``Signer``."""
    return Signer(key).unsubscribe(uid, list_slug)


def _verified_payload(
    keys: Sequence[SigningKey], token: object, now: dt.datetime, pattern: re.Pattern[str],
    *, context: bytes = _CONTEXT, version: str = VERSION,
) -> tuple[str, str] | None:
    """(key id, decoded payload) of a token of ``pattern``'s shape whose MAC one of
    ``keys`` made and whose key is still valid; else None, whatever the reason."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        return None
    m = pattern.fullmatch(token)
    if m is None:
        return None
    key_id, payload, given = m.groups()
    key = next((k for k in keys if k.key_id == key_id), None)
    expected = _mac(key.secret if key is not None else _DECOY_SECRET, key_id, payload,
                    context=context, version=version)
    if not hmac.compare_digest(expected.encode("ascii"), given.encode("ascii")):
        return None
    if key is None or (key.valid_until is not None and now >= key.valid_until):
        return None
    try:
        return key_id, _unb64(payload).decode("ascii")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None


def read_token(
    keys: Sequence[SigningKey], token: object, *, now: dt.datetime
) -> TokenClaims | None:
    """The claims of a token signed by one of ``keys`` (a key past its ``valid_until``
    no longer counts), else None. Never raises on any input."""
    found = _verified_payload(keys, token, now, _TOKEN)
    if found is None:
        return None
    key_id, text = found
    uid, sep, list_slug = text.partition(":")
    if not sep or not _UID.fullmatch(uid) or not _SLUG.fullmatch(list_slug):
        return None
    return TokenClaims(uid=uid, list_slug=list_slug, key_id=key_id)


def unsubscribe_url(base_url: str, token: str) -> str:
    """The page a token opens: ``<base_url>/u/<token>`` (for the List-Unsubscribe
    header and the link in the footer)."""
    return f"{base_url.rstrip('/')}/u/{token}"


# --- web-edition tokens -------------------------------------------------------------
# ``e1.<key id>.<payload>.<mac>``, the payload being ``<uid>:<list slug>:<issue id>:
# <issued>`` (issued: whole seconds since the epoch). Signed under their own context
# label, so an unsubscribe token is never accepted as one of these, nor the reverse.
# ``issued`` lets staff revoke every link of an address at once (links issued before
# the revocation stop working) without a row per link.

EDITION_VERSION = "e1"
_EDITION_CONTEXT = b"mailer/edition\x00"
_EDITION_TOKEN = re.compile(
    r"e1\.([A-Za-z0-9]{1,32})\.([A-Za-z0-9_-]{4,200})\.([A-Za-z0-9_-]{22})", re.ASCII
)
_NUMBER = re.compile(r"[0-9]{1,12}", re.ASCII)


@dataclass(frozen=True)
class EditionClaims:
    """What a verified web-edition token says: who, through which list, which issue,
    and when the link was made."""

    uid: str
    list_slug: str
    issue_id: int
    issued: int  # seconds since the epoch
    key_id: str


def make_edition_token(key: SigningKey, uid: str, list_slug: str, issue_id: int,
                       issued: int) -> str:
    """Sign a web-edition token (one HMAC: cheap enough per recipient)."""
    return Signer(key).edition(uid, list_slug, issue_id, issued)


def read_edition_token(
    keys: Sequence[SigningKey], token: object, *, now: dt.datetime
) -> EditionClaims | None:
    """The claims of a web-edition token signed by one of ``keys``, else None (for
    every kind of refusal alike). Never raises on any input."""
    found = _verified_payload(keys, token, now, _EDITION_TOKEN, context=_EDITION_CONTEXT,
                              version=EDITION_VERSION)
    if found is None:
        return None
    key_id, text = found
    fields = text.split(":")
    if len(fields) != 4:
        return None
    uid, list_slug, issue_id, issued = fields
    if not (_UID.fullmatch(uid) and _SLUG.fullmatch(list_slug)
            and _NUMBER.fullmatch(issue_id) and _NUMBER.fullmatch(issued)):
        return None
    return EditionClaims(uid=uid, list_slug=list_slug, issue_id=int(issue_id),
                         issued=int(issued), key_id=key_id)


def edition_url(base_url: str, token: str) -> str:
    """The web edition a token opens: ``<base_url>/w/<token>``; its archive and PDF
    are ``…/archive`` and ``…/pdf`` below it."""
    return f"{base_url.rstrip('/')}/w/{token}"
