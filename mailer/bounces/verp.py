"""VERP envelope senders: each delivery's bounce address names it, signed with HMAC.

With ``bounces.address = "bounces@example.org"`` the delivery of campaign 12 to
recipient 345 goes out with the envelope sender
``bounces+c12-r345-<mac>@example.org``. The mac is HMAC-SHA256 over a fixed
context label and ``c12-r345``, truncated to 10 bytes and written in lowercase
base32 (16 characters): some relays fold local parts to lower case, and base32
survives that. A bounce that comes back to such an address names its delivery;
one whose mac does not verify is forged (or mangled) and changes nothing.

The keys are the unsubscribe tokens' keys (``Config.signing_keys()``): the
current key signs, and the previous one still verifies until its
``valid_until``, so a bounce arriving days after a key rotation is still read.

``VerpSigner.sender_for`` runs once per recipient inside the engine: one HMAC on
a key prepared once (``hmac.copy``), one small string format.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import SigningKey

_CONTEXT = b"mailer/verp\x00"
MAC_BYTES = 10
MAC_CHARS = 16  # base32 of 10 bytes, no padding needed


@dataclass(frozen=True)
class VerpClaim:
    """What a verified VERP address says: which delivery it was."""

    campaign_id: int
    recipient_id: int


def _mac(key: hmac.HMAC, body: str) -> str:
    h = key.copy()
    h.update(body.encode("ascii"))
    return base64.b32encode(h.digest()[:MAC_BYTES]).decode("ascii").lower()


class VerpSigner:
    """Builds and reads the VERP addresses of one base address.

    ``keys[0]`` signs; every key in ``keys`` verifies (until its ``valid_until``)."""

    def __init__(self, base_address: str, keys: Sequence[SigningKey]) -> None:
        local, sep, domain = base_address.rpartition("@")
        if not sep or not local or not domain or not base_address.isascii():
            raise ValueError(f"not an ASCII address: {base_address!r}")
        if not keys:
            raise ValueError("no signing key")
        self.local = local
        self.domain = domain.lower()
        self.base_address = base_address
        self._keys = [(k, hmac.new(k.secret, _CONTEXT, hashlib.sha256)) for k in keys]
        self._sign = self._keys[0][1]
        self._prefix = f"{local}+c"
        self._suffix = f"@{domain}"
        self._pattern = re.compile(
            re.escape(local) + r"\+c([0-9]{1,12})-r([0-9]{1,12})-([a-z2-7]{16})@"
            + re.escape(domain), re.IGNORECASE | re.ASCII)

    def mac(self, campaign_id: int, recipient_id: int) -> str:
        """The signature of one delivery, as its VERP address and Message-ID carry it."""
        return _mac(self._sign, f"c{campaign_id}-r{recipient_id}")

    def address(self, campaign_id: int, recipient_id: int, mac: str | None = None) -> str:
        """The envelope sender of one delivery (called for every recipient)."""
        mac = mac or self.mac(campaign_id, recipient_id)
        return f"{self._prefix}{campaign_id}-r{recipient_id}-{mac}{self._suffix}"

    def find(self, text: str) -> list[tuple[str, str, str]]:
        """Every VERP-shaped address of this base in ``text``, as (campaign, recipient,
        mac) strings, verified or not."""
        return [(m.group(1), m.group(2), m.group(3).lower()) for m in
                self._pattern.finditer(text)]

    def verify(self, campaign: str, recipient: str, mac: str, *, now: dt.datetime
               ) -> VerpClaim | None:
        """The delivery a VERP address names, if one of the keys signed it; else None."""
        body = f"c{int(campaign)}-r{int(recipient)}"
        ok = False
        for key, prepared in self._keys:
            if key.valid_until is not None and now >= key.valid_until:
                continue
            # Every key is tried, so the time taken does not tell which one matched.
            ok |= hmac.compare_digest(_mac(prepared, body), mac.lower())
        return VerpClaim(int(campaign), int(recipient)) if ok else None

    def probe_address(self, nonce: str) -> str:
        """A signed address for the envelope check of `mailer doctor` (no delivery)."""
        return f"{self.local}+probe-{nonce}-{_mac(self._sign, 'probe-' + nonce)}{self._suffix}"

    def verify_probe(self, address: str, *, now: dt.datetime) -> str | None:
        """The nonce of a probe address signed by one of the keys, else None."""
        m = re.fullmatch(re.escape(self.local) + r"\+probe-([a-z0-9]{8,32})-([a-z2-7]{16})@"
                         + re.escape(self.domain), address.strip().strip("<>"),
                         re.IGNORECASE | re.ASCII)
        if m is None:
            return None
        nonce, mac = m.group(1).lower(), m.group(2).lower()
        for key, prepared in self._keys:
            if key.valid_until is not None and now >= key.valid_until:
                continue
            if hmac.compare_digest(_mac(prepared, "probe-" + nonce), mac):
                return nonce
        return None
