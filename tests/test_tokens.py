"""Unsubscribe tokens: round trip, rotation, and nothing forged or garbled accepted."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import inspect
import random
import secrets
import string

import pytest

from mailer import tokens
from mailer.config import SigningKey
from mailer.tokens import (
    TokenClaims,
    make_edition_token,
    make_token,
    read_edition_token,
    read_token,
    unsubscribe_url,
)

NOW = dt.datetime(2026, 5, 1, 8, 0, tzinfo=dt.UTC)
CURRENT = SigningKey("k2", b"current-secret-0123456789")
PREVIOUS = SigningKey("k1", b"previous-secret-0123456789", NOW + dt.timedelta(days=1))
KEYS = (CURRENT, PREVIOUS)
UID = "Xq3v_9-aB2cD4eF6"  # the shape of secrets.token_urlsafe(12)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_round_trip() -> None:
    token = make_token(CURRENT, UID, "send-to")
    assert read_token(KEYS, token, now=NOW) == TokenClaims(UID, "send-to", "k2")


def test_format_is_short_ascii_url_safe_with_the_key_id() -> None:
    token = make_token(CURRENT, UID, "send-to")
    version, kid, payload, mac = token.split(".")
    assert (version, kid) == ("v1", "k2")
    assert unb64(payload) == f"{UID}:send-to".encode()
    assert len(unb64(mac)) == 16
    assert token.isascii() and "=" not in token
    assert set(token) <= set(string.ascii_letters + string.digits + "-_.")
    assert len(token) < 80


def test_mac_is_hmac_sha256_over_version_key_id_and_payload() -> None:
    token = make_token(CURRENT, UID, "send-to")
    _, kid, payload, mac = token.split(".")
    signed = b"mailer/unsubscribe\x00" + f"v1.{kid}.{payload}".encode()
    assert unb64(mac) == hmac.new(CURRENT.secret, signed, hashlib.sha256).digest()[:16]


@pytest.mark.parametrize("length", [0, 1, 31, 32, 63, 64, 65, 200])
def test_mac_agrees_with_hmac_for_every_key_length(length: int) -> None:
    """The MAC is keyed once per secret from hashlib (RFC 2104); keys longer than
    the block are hashed first, shorter ones padded, exactly as ``hmac`` does."""
    rng = random.Random(length)
    secret = bytes(rng.randrange(256) for _ in range(length))
    key = SigningKey("k9", secret)
    for uid in (UID, "a", "Z" * 64):
        token = make_token(key, uid, "report-to")
        _, kid, payload, mac = token.split(".")
        signed = b"mailer/unsubscribe\x00" + f"v1.{kid}.{payload}".encode()
        assert unb64(mac) == hmac.new(secret, signed, hashlib.sha256).digest()[:16]
        assert read_token([key], token, now=NOW) == TokenClaims(uid, "report-to", "k9")


def test_same_inputs_same_token_different_inputs_different_tokens() -> None:
    a = make_token(CURRENT, UID, "send-to")
    assert a == make_token(CURRENT, UID, "send-to")
    assert a != make_token(CURRENT, UID, "report-to")
    assert a != make_token(CURRENT, UID[:-1] + "x", "send-to")


def test_unsubscribe_url() -> None:
    token = make_token(CURRENT, UID, "send-to")
    assert unsubscribe_url("https://b.example.org", token) == f"https://b.example.org/u/{token}"
    assert unsubscribe_url("https://b.example.org/", token) == f"https://b.example.org/u/{token}"


@pytest.mark.parametrize(
    ("uid", "slug"), [("", "send-to"), ("a:b", "send-to"), (UID, "send:to"), ("é", "x"),
                      (UID, ""), ("a.b", "send-to")]
)
def test_make_token_refuses_what_cannot_travel(uid: str, slug: str) -> None:
    with pytest.raises(ValueError):
        make_token(CURRENT, uid, slug)


# --- rotation ---------------------------------------------------------------


def test_previous_key_accepted_until_valid_until() -> None:
    old = make_token(PREVIOUS, UID, "send-to")
    assert read_token(KEYS, old, now=NOW) == TokenClaims(UID, "send-to", "k1")
    end = PREVIOUS.valid_until
    assert end is not None
    assert read_token(KEYS, old, now=end - dt.timedelta(seconds=1)) is not None
    assert read_token(KEYS, old, now=end) is None
    assert read_token(KEYS, old, now=NOW + dt.timedelta(days=30)) is None
    # The current key has no end.
    assert read_token(KEYS, make_token(CURRENT, UID, "send-to"), now=NOW.replace(year=2099))


def test_unknown_key_id_and_a_key_id_swapped_for_another() -> None:
    token = make_token(CURRENT, UID, "send-to")
    assert read_token((PREVIOUS,), token, now=NOW) is None
    # Relabelling a token with the other key's id does not make it verify.
    assert read_token(KEYS, token.replace("v1.k2.", "v1.k1.", 1), now=NOW) is None
    assert read_token(KEYS, token.replace("v1.k2.", "v1.k9.", 1), now=NOW) is None
    # A token signed with a secret we do not have, under our key id.
    stranger = SigningKey("k2", b"someone-elses-secret-0123")
    assert read_token(KEYS, make_token(stranger, UID, "send-to"), now=NOW) is None


# --- tampering ----------------------------------------------------------------


def test_tamper_each_part() -> None:
    token = make_token(CURRENT, UID, "send-to")
    version, kid, payload, mac = token.split(".")
    other_payload = b64(f"{UID}:report-to".encode())
    for forged in [
        f"v2.{kid}.{payload}.{mac}",
        f"V1.{kid}.{payload}.{mac}",
        f"v0.{kid}.{payload}.{mac}",
        f"{version}.{kid}x.{payload}.{mac}",
        f"{version}.{kid}.{other_payload}.{mac}",
        f"{version}.{kid}.{payload[:-1]}.{mac}",
        f"{version}.{kid}.{payload}A.{mac}",
        f"{version}.{kid}.{payload}.{mac[:-1]}",
        f"{version}.{kid}.{payload}.{mac}A",
        f"{version}.{kid}.{payload}.{b64(bytes(16))}",
        f"{version}.{kid}.{payload}",
        f"{version}.{kid}.{payload}.{mac}.{mac}",
    ]:
        assert read_token(KEYS, forged, now=NOW) is None, forged


def test_flipping_any_single_byte_of_the_mac_fails() -> None:
    token = make_token(CURRENT, UID, "send-to")
    head, mac = token.rsplit(".", 1)
    raw = unb64(mac)
    for i in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[i] ^= 1 << bit
            assert read_token(KEYS, f"{head}.{b64(bytes(flipped))}", now=NOW) is None


def test_every_other_spelling_of_the_mac_fails() -> None:
    """Base64 of 16 bytes has 4 spare bits in its last character: a MAC spelled with
    them set decodes to the same bytes, and must still be refused."""
    token = make_token(CURRENT, UID, "send-to")
    alphabet = string.ascii_letters + string.digits + "-_"
    accepted = [
        c for c in alphabet if read_token(KEYS, token[:-1] + c, now=NOW) is not None
    ]
    assert accepted == [token[-1]]


def test_every_single_character_change_fails() -> None:
    token = make_token(CURRENT, UID, "send-to")
    alphabet = string.ascii_letters + string.digits + "-_.="
    for i in range(len(token)):
        for c in alphabet:
            if c != token[i]:
                forged = token[:i] + c + token[i + 1:]
                assert read_token(KEYS, forged, now=NOW) is None, forged


def test_mac_is_compared_in_constant_time() -> None:
    """The MAC check goes through hmac.compare_digest and nowhere else."""
    source = inspect.getsource(tokens._verified_payload)  # read_token and the edition reader
    assert "hmac.compare_digest(expected" in source
    assert "expected ==" not in source and "== given" not in source
    assert "expected !=" not in source and "!= given" not in source


@pytest.mark.parametrize(
    "garbage",
    [
        "", ".", "...", "v1", "v1.", "v1..", "v1...", "v1.k2..", "null", "../../etc/passwd",
        "v1.k2.=.=", "v1.k2.YWJj=.AAAAAAAAAAAAAAAAAAAAAA==", "v1.k2.YWJj.AAAAAAAAAAAAAAAAAAAAAA==",
        "v1.k2.YWJj.AAAAAAAAAAAAAAAAAAAAAA\n", "\nv1.k2.YWJj.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.k２.YWJj.AAAAAAAAAAAAAAAAAAAAAA", "v1.k2.YWJj.ＡAAAAAAAAAAAAAAAAAAAAA",
        "v1.k2.5LiA.AAAAAAAAAAAAAAAAAAAAAA", "v1.k2.%00.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.k2.YW Jj.AAAAAAAAAAAAAAAAAAAAAA", "v1.k2.YWJj+/.AAAAAAAAAAAAAAAAAAAAAA",
        "退订", "\x00" * 40, "v1." + "A" * 10_000, "v1.k2." + "A" * 300 + ".AAAAAAAAAAAAAAAAAAAAAA",
        "\ud800", "v1.k2.\udcff.AAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_garbage_returns_none(garbage: str) -> None:
    assert read_token(KEYS, garbage, now=NOW) is None


@pytest.mark.parametrize("not_text", [None, b"v1.k2.abc.def", 12, ["v1"], object()])
def test_non_strings_return_none(not_text: object) -> None:
    assert read_token(KEYS, not_text, now=NOW) is None


def test_correctly_signed_but_malformed_payload_is_refused() -> None:
    """Even with a valid MAC, a payload that is not uid:slug is not a claim."""
    for raw in [b"no-colon", b":send-to", b"uid:", b"uid:send:to", b"\xff\xfe:send-to",
                "单位:send-to".encode()]:
        payload = b64(raw)
        token = f"v1.k2.{payload}.{tokens._mac(CURRENT.secret, 'k2', payload)}"
        assert read_token(KEYS, token, now=NOW) is None, raw


def test_100k_random_and_tampered_tokens_none_accepted() -> None:
    rng = random.Random(20260501)
    good = [make_token(CURRENT, secrets.token_urlsafe(12), "send-to") for _ in range(50)]
    alphabet = string.ascii_letters + string.digits + "-_."
    accepted = 0
    for i in range(100_000):
        kind = i % 4
        if kind == 0:  # random strings in the token's alphabet and shape
            token = "v1.k2.{}.{}".format(
                "".join(rng.choices(alphabet[:-1], k=rng.randint(4, 40))),
                "".join(rng.choices(alphabet[:-1], k=22)),
            )
        elif kind == 1:  # a real token with one character changed
            t = rng.choice(good)
            pos = rng.randrange(len(t))
            c = rng.choice([ch for ch in alphabet if ch != t[pos]])
            token = t[:pos] + c + t[pos + 1:]
        elif kind == 2:  # a real token's payload with another token's MAC
            a, b = rng.sample(good, 2)
            token = a.rsplit(".", 1)[0] + "." + b.rsplit(".", 1)[1]
        else:  # a random payload naming a random uid, with a random MAC
            payload = b64(f"{secrets.token_urlsafe(12)}:send-to".encode())
            token = f"v1.{rng.choice(['k1', 'k2', 'k3'])}.{payload}.{b64(rng.randbytes(16))}"
        if read_token(KEYS, token, now=NOW) is not None:
            accepted += 1
    assert accepted == 0
    assert all(read_token(KEYS, t, now=NOW) is not None for t in good)


# --- web-edition tokens ----------------------------------------------------------------


def test_edition_token_round_trip_and_purpose() -> None:
    token = make_edition_token(KEYS[0], "abcDEF123_-", "send-to", 42, 1_700_000_000)
    claims = read_edition_token(KEYS, token, now=NOW)
    assert claims is not None
    assert (claims.uid, claims.list_slug, claims.issue_id, claims.issued) == (
        "abcDEF123_-", "send-to", 42, 1_700_000_000)
    # Signed for a different purpose: neither reader takes the other's token.
    assert read_token(KEYS, token, now=NOW) is None
    assert read_edition_token(KEYS, make_token(KEYS[0], "abcDEF123_-", "send-to"),
                              now=NOW) is None
    # Any changed character breaks it.
    for i in range(len(token)):
        changed = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
        assert read_edition_token(KEYS, changed, now=NOW) is None, i


@pytest.mark.parametrize("garbage", ["", "e1", "e1.k2..", "e1.k2.YWJj.AAAAAAAAAAAAAAAAAAAAAA",
                                     "e1." + "A" * 10_000, None, 12])
def test_edition_garbage_returns_none(garbage: object) -> None:
    assert read_edition_token(KEYS, garbage, now=NOW) is None


# --- links in wire form ----------------------------------------------------------------


@pytest.mark.parametrize("uid", [UID, "a", "abcDEF123_-", "x" * 64, "0" * 17])
def test_link_signer_makes_the_links_text_would_make(uid: str) -> None:
    """The bytes a campaign's messages carry are the URLs of the tokens made one by one,
    and both readers take them."""
    base = "https://bulletin.example.org"
    signer = tokens.Signer(CURRENT)
    unsubscribe, edition = tokens.LinkSigner(signer, base, "send-to", unsubscribe=True,
                                             edition=(42, 1_700_000_000))(uid)
    assert unsubscribe == unsubscribe_url(base, signer.unsubscribe(uid, "send-to")).encode()
    assert edition == tokens.edition_url(
        base, signer.edition(uid, "send-to", 42, 1_700_000_000)).encode()
    assert unsubscribe is not None and edition is not None
    claims = read_token(KEYS, unsubscribe.decode().rpartition("/u/")[2], now=NOW)
    assert claims == TokenClaims(uid, "send-to", "k2")
    e = read_edition_token(KEYS, edition.decode().rpartition("/w/")[2], now=NOW)
    assert e is not None and (e.uid, e.list_slug, e.issue_id) == (uid, "send-to", 42)


def test_link_signer_without_either_link_and_with_what_cannot_travel() -> None:
    signer = tokens.Signer(CURRENT)
    base = "https://bulletin.example.org"
    none = tokens.LinkSigner(signer, base, "report-to", unsubscribe=False, edition=None)
    assert none(UID) == (None, None) and none.starts == ()
    only = tokens.LinkSigner(signer, base, "send-to", unsubscribe=True, edition=None)
    assert only(UID)[1] is None and only.starts == (f"{base}/u/v1.k2.",)
    both = tokens.LinkSigner(signer, base, "send-to", unsubscribe=True, edition=(1, 2))
    for bad in ("", "a b", "名字", "x" * 65, "a:b"):
        with pytest.raises(ValueError, match="uid"):
            both(bad)
    with pytest.raises(ValueError, match="slug"):
        tokens.LinkSigner(signer, base, "send to", unsubscribe=True, edition=None)
    with pytest.raises(ValueError, match="negative"):
        tokens.LinkSigner(signer, base, "send-to", unsubscribe=True, edition=(-1, 2))
