from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import re
import time
from dataclasses import replace
from email.header import decode_header, make_header
from email.message import EmailMessage
from typing import Any

import pytest

from mailer import message as message_mod
from mailer.errors import UnsafeHeader, UnsendableRecipient
from mailer.message import (
    MAX_URL_LENGTH,
    MessageIds,
    MessageParts,
    PreparedMessage,
    format_to,
    is_wire_url,
    make_message_id,
    strip_controls,
)
from mailer.validate import _domain

from .conftest import SAMPLE_ISSUE

SUBJECT = "简报 2015年第9期（总第33期）"
ORG = "杭州市新经济与新社会组织党务工作者协会"
PLACEHOLDER = "%%UNSUBSCRIBE_URL%%"
URL_A = "https://bulletin.example.org/u/AAAAtokenA_-"
URL_B = "https://bulletin.example.org/u/BBBBtokenB_-xyz"
MAILTO = "mailto:unsubscribe@example.org?subject=unsubscribe"


def sample_text() -> str:
    return SAMPLE_ISSUE.read_text(encoding="utf-8")


def sample_html() -> str:
    # Like render's output: one long line per paragraph, inline styles, no spaces
    # in Chinese text; the sample has paragraphs of over 3,000 bytes.
    paras = "".join(
        f'<p style="margin:0 0 1em 0;line-height:1.8;font-size:16px">{line}</p>'
        for line in sample_text().splitlines()
        if line.strip()
    )
    return (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>简报</title>"
        "<style>p{margin:0}</style></head><body>"
        f"{paras}<p><a href=\"{PLACEHOLDER}\" style=\"color:#999\">退订</a></p></body></html>"
    )


def make_parts(**changes: object) -> MessageParts:
    parts = MessageParts(
        subject=SUBJECT,
        html=sample_html(),
        text=sample_text() + f"\n退订：{PLACEHOLDER}\n",
        from_name=ORG,
        from_address="bulletin@example.org",
        reply_to="secretariat@example.org",
        list_id="简报发送名单 <send-to.bulletin.example.org>",
        unsubscribe_mailto=MAILTO,
        html_placeholder=PLACEHOLDER,
        date=dt.datetime(2015, 11, 24, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))),
    )
    return replace(parts, **changes)  # type: ignore[arg-type]


def recipient(name: str | None = "张三", addr: str = "zhang@example.org", url: str | None = URL_A,
              rid: int = 345) -> dict[str, object]:
    return {
        "to_name": name,
        "to_address": addr,
        "message_id": make_message_id(12, rid, "bulletin.example.org"),
        "unsubscribe_url": url,
    }


def unstuff(wire: bytes) -> bytes:
    return re.sub(rb"(?m)^\.", b"", wire)


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def raw_header(raw: bytes, name: str) -> str:
    """The header's value as on the wire, unfolded, for RFC 2047 decoding with
    email.header (email.headerregistry inserts a space between adjacent encoded
    words in display names, which RFC 2047 §6.2 says to drop)."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    m = re.search(rf"^{name}: ([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head, re.M | re.I)
    assert m, name
    return re.sub(r"\r\n[ \t]", " ", m.group(1))


def decoded(raw: bytes, name: str) -> str:
    return str(make_header(decode_header(raw_header(raw, name))))


@pytest.fixture(scope="module")
def prepared() -> PreparedMessage:
    return PreparedMessage.build(make_parts())


def test_headers(prepared: PreparedMessage) -> None:
    raw = prepared.as_message(**recipient())  # type: ignore[arg-type]
    msg = parse(raw)
    assert msg["Subject"] == SUBJECT
    assert decoded(raw, "From") == f"{ORG} <bulletin@example.org>"
    assert msg["From"].addresses[0].addr_spec == "bulletin@example.org"
    assert decoded(raw, "To") == "张三 <zhang@example.org>"
    assert msg["To"].addresses[0].addr_spec == "zhang@example.org"
    assert msg["Reply-To"] == "secretariat@example.org"
    assert msg["Message-ID"] == make_message_id(12, 345, "bulletin.example.org")
    assert msg["Date"].datetime == dt.datetime(
        2015, 11, 24, 1, 0, tzinfo=dt.UTC
    )
    assert msg["MIME-Version"] == "1.0"
    assert decoded(raw, "List-Id") == "简报发送名单 <send-to.bulletin.example.org>"
    assert msg["List-Unsubscribe"] == f"<{URL_A}>, <{MAILTO}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")


def test_two_parts_text_first_with_personal_url(prepared: PreparedMessage) -> None:
    msg = parse(prepared.as_message(**recipient()))  # type: ignore[arg-type]
    assert msg.get_content_type() == "multipart/alternative"
    text, html = list(msg.iter_parts())
    assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    for part in (text, html):
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "8bit"
    text_body, html_body = text.get_content(), html.get_content()
    assert f"退订：{URL_A}" in text_body
    assert f'href="{URL_A}"' in html_body
    assert PLACEHOLDER not in text_body + html_body
    assert "MAILER" not in text_body + html_body
    # The bulletin survives: every paragraph of the sample is in the text part.
    for line in sample_text().splitlines():
        assert line in text_body.replace("\r\n", "")


def test_long_lines_are_wrapped_invisibly(prepared: PreparedMessage) -> None:
    raw = prepared.personalise(**recipient(url="https://x.example/u/" + "t" * 230))  # type: ignore[arg-type]
    assert max(map(len, raw.split(b"\r\n"))) <= 998
    html = parse(unstuff(raw)).get_body(("html",))
    assert html is not None
    body = html.get_content()
    # Breaks sit inside tags or in empty comments: no text gains a space.
    # (A break at a space keeps the space: HTML collapses the two into one.)
    visible = re.sub(r"\s+", " ", re.sub(r"<[^>]*>", "", body))
    assert "<!--\r\n-->" in body  # the sample's long Chinese paragraphs needed it
    for line in sample_text().splitlines():
        if line.strip():
            assert re.sub(r"\s+", " ", line) in visible


def test_base64_without_8bitmime() -> None:
    pm = PreparedMessage.build(make_parts(), eight_bit=False)
    a = pm.personalise(**recipient())  # type: ignore[arg-type]
    assert max(map(len, a.split(b"\r\n"))) <= 998
    msg = parse(unstuff(a))
    text, html = list(msg.iter_parts())
    assert text["Content-Transfer-Encoding"] == "base64"
    assert html["Content-Transfer-Encoding"] == "base64"
    assert f"退订：{URL_A}" in text.get_content()
    assert f'href="{URL_A}"' in html.get_content()
    assert all(b < 128 for b in a)
    b = pm.personalise(**recipient(url=URL_B))  # type: ignore[arg-type]
    assert f'href="{URL_B}"' in parse(unstuff(b)).get_body(("html",)).get_content()  # type: ignore[union-attr]


def test_8bit_is_not_quoted_printable_and_much_smaller() -> None:
    pm8 = PreparedMessage.build(make_parts())
    raw = pm8.personalise(**recipient())  # type: ignore[arg-type]
    assert "党建工作".encode() in raw  # raw UTF-8 on the wire
    assert len(raw) < 1.1 * len((sample_html() + sample_text()).encode())


def test_long_chinese_name_folds_into_valid_lines(prepared: PreparedMessage) -> None:
    name = "杭州市新经济与新社会组织党务工作者协会秘书处办公室主任" * 4
    raw = prepared.as_message(**recipient(name=name))  # type: ignore[arg-type]
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert max(map(len, head.split(b"\r\n"))) <= 78
    assert decoded(raw, "To") == f"{name} <zhang@example.org>"
    assert parse(raw)["To"].addresses[0].addr_spec == "zhang@example.org"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (None, b"a@example.org"),
        ("", b"a@example.org"),
        ("Zhang San", b"Zhang San <a@example.org>"),
        ('Zhang "Boss", San', None),  # specials: encoded, never bare
    ],
)
def test_format_to_ascii(name: str | None, expected: bytes | None) -> None:
    out = format_to(name, "a@example.org")
    if expected is not None:
        assert out == expected
    else:
        parsed = parse(b"To: " + out + b"\r\n\r\n")
        assert parsed["To"].addresses[0].display_name == name
        assert parsed["To"].addresses[0].addr_spec == "a@example.org"


@pytest.mark.parametrize("evil", ["张三\r\nBcc: victim@example.org", "Zhang\nBcc: v@x.org",
                                  "Zhang\rBcc: v@x.org", "张\x85三\u2028"])
def test_no_header_injection_through_names(prepared: PreparedMessage, evil: str) -> None:
    raw = prepared.as_message(**recipient(name=evil))  # type: ignore[arg-type]
    msg = parse(raw)
    assert msg["Bcc"] is None
    assert msg["To"].addresses[0].addr_spec == "zhang@example.org"
    assert strip_controls(evil) in decoded(raw, "To").replace(" <", "<")
    pm = PreparedMessage.build(make_parts(from_name=evil))
    raw = pm.as_message(**recipient())  # type: ignore[arg-type]
    assert parse(raw)["Bcc"] is None


def test_strip_controls() -> None:
    assert strip_controls("张\r\n三\t\x00\x7f\x9b四\u2029") == "张三四"


def test_injection_elsewhere_is_refused(prepared: PreparedMessage) -> None:
    with pytest.raises(UnsafeHeader, match="U\\+000D"):
        PreparedMessage.build(make_parts(subject="简报\r\nBcc: v@x.org"))
    # Per recipient: one error class, so the engine fails that delivery alone.
    with pytest.raises(UnsendableRecipient) as e:
        prepared.personalise(**recipient(addr="a@x.org>\r\nBcc: v@x.org"))  # type: ignore[arg-type]
    assert e.value.address == "a@x.org>\r\nBcc: v@x.org" and e.value.reason
    with pytest.raises(UnsendableRecipient):
        prepared.personalise(**recipient(url="https://x.org/u/a\r\n.\r\n"))  # type: ignore[arg-type]
    with pytest.raises(UnsendableRecipient):
        prepared.personalise(**{**recipient(), "message_id": "<a@b>\r\nX: y"})  # type: ignore[arg-type]


def test_dot_stuffing() -> None:
    pm = PreparedMessage.build(make_parts(text=".hidden line\n..two\nend\n.\n"))
    wire = pm.personalise(**recipient())  # type: ignore[arg-type]
    assert b"\r\n..hidden line\r\n" in wire
    assert b"\r\n...two\r\n" in wire
    assert b"\r\n.\r\n" not in wire  # a lone dot would end the message early
    assert b"\r\n..\r\n" in wire
    plain = pm.as_message(**recipient())  # type: ignore[arg-type]
    assert unstuff(wire) == plain
    text = parse(plain).get_body(("plain",))
    assert text is not None
    assert text.get_content() == ".hidden line\r\n..two\r\nend\r\n.\r\n"


def test_recipients_differ_only_in_to_message_id_and_url(prepared: PreparedMessage) -> None:
    a = prepared.personalise(**recipient())  # type: ignore[arg-type]
    b = prepared.personalise(**recipient(name="李四", addr="li@example.org", url=URL_B, rid=346))  # type: ignore[arg-type]
    ma, mb = parse(unstuff(a)), parse(unstuff(b))
    assert ma["Message-ID"] != mb["Message-ID"]
    assert decoded(b, "To") == "李四 <li@example.org>"
    assert URL_B in mb["List-Unsubscribe"]

    def neutral(raw: bytes, mid: str, url: str) -> bytes:
        raw = re.sub(rb"\r\nTo: [^\r]*(\r\n [^\r]*)*\r\n", b"\r\nTO\r\n", raw, count=1)
        return raw.replace(mid.encode(), b"MID").replace(url.encode(), b"URL")

    assert neutral(a, ma["Message-ID"], URL_A) == neutral(b, mb["Message-ID"], URL_B)
    # Same recipient twice: the same bytes.
    assert prepared.personalise(**recipient()) == a  # type: ignore[arg-type]


def test_message_id_is_stable() -> None:
    a = make_message_id(12, 345, "bulletin.example.org")
    assert a == make_message_id(12, 345, "bulletin.example.org")
    assert re.fullmatch(r"<c12\.r345\.[0-9a-f]{10}@bulletin\.example\.org>", a)
    assert a != make_message_id(12, 346, "bulletin.example.org")
    assert a != make_message_id(13, 345, "bulletin.example.org")
    with pytest.raises(UnsafeHeader):
        make_message_id(1, 2, "bad domain\r\n")


def test_list_without_unsubscribe() -> None:
    html = sample_html().replace(PLACEHOLDER, "https://bulletin.example.org/")
    parts = make_parts(unsubscribe_mailto=None, html=html, text=sample_text(),
                       list_id="简报报送名单 <report-to.bulletin.example.org>")
    pm = PreparedMessage.build(parts)
    msg = parse(pm.as_message(**recipient(url=None)))  # type: ignore[arg-type]
    assert msg["List-Unsubscribe"] is None
    assert msg["List-Unsubscribe-Post"] is None
    assert msg["List-Id"] is not None
    # The unsubscribe link in a list that allows none is a rendering mistake.
    with pytest.raises(ValueError, match="does not allow unsubscribing"):
        PreparedMessage.build(make_parts(unsubscribe_mailto=None))
    with pytest.raises(UnsendableRecipient, match="URL is required"):
        PreparedMessage.build(make_parts()).personalise(**recipient(url=None))  # type: ignore[arg-type]


def test_personalise_is_cheap(prepared: PreparedMessage,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Per recipient only prepared chunks are joined: no EmailMessage (several ms
    each) is built. Counted, not timed (the speed is the benchmark's: make bench)."""
    built = []

    class Counted(message_mod.EmailMessage):
        def __init__(self, *args: Any, **kw: Any) -> None:
            built.append(1)
            super().__init__(*args, **kw)

    monkeypatch.setattr(message_mod, "EmailMessage", Counted)
    kw = recipient()
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        prepared.personalise(**kw)  # type: ignore[arg-type]
    per = (time.perf_counter() - start) / n
    size = len(prepared.personalise(**kw))  # type: ignore[arg-type]
    print(f"personalise: {per * 1e6:.1f} µs per {size // 1024} KB message")
    assert built == []
    PreparedMessage.build(make_parts())  # the counter works: a build makes one
    assert built


@pytest.mark.parametrize("eight_bit", [True, False])
def test_pieces_join_to_the_message_and_reuse_the_prepared_chunks(eight_bit: bool) -> None:
    """What the engine writes (vectored, not joined): the same bytes as
    ``personalise``; the big pieces are the prepared chunks themselves, not copies."""
    prepared = PreparedMessage.build(make_parts(), eight_bit=eight_bit)
    kw = recipient()
    pieces = prepared.personalise_pieces(**kw)  # type: ignore[arg-type]
    assert b"".join(pieces) == prepared.personalise(**kw)  # type: ignore[arg-type]
    again = prepared.personalise_pieces(**kw)  # type: ignore[arg-type]
    biggest = max(range(len(pieces)), key=lambda i: len(pieces[i]))
    assert len(pieces[biggest]) > 1000
    assert (pieces[biggest] is again[biggest]) is eight_bit  # base64 bodies: per recipient


def test_base64_helper_roundtrip() -> None:
    pm = PreparedMessage.build(make_parts(text="短\n", html="<p>短</p>\n"), eight_bit=False)
    raw = pm.as_message(**recipient())  # type: ignore[arg-type]
    body = raw.split(b"Content-Transfer-Encoding: base64\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0]
    assert base64.b64decode(body) == "短\r\n".encode()


# --- hostile names and subjects -----------------------------------------------------

# Decodes to "Bcc: evil@attacker.example" and to "\r\nBcc: evil@attacker.example".
EW_BCC = "=?utf-8?b?QmNjOiBldmlsQGF0dGFja2VyLmV4YW1wbGU=?="
EW_CRLF = "=?utf-8?b?DQpCY2M6IGV2aWxAYXR0YWNrZXIuZXhhbXBsZQ==?="


def no_defects(msg: EmailMessage) -> None:
    assert not msg.defects
    for name in msg:
        assert not getattr(msg[name], "defects", ()), name


@pytest.mark.parametrize("name", [EW_BCC, EW_CRLF, f"张三 {EW_BCC}", f"a{EW_CRLF}b", "=?x"])
def test_a_name_that_looks_like_an_encoded_word_is_encoded(name: str) -> None:
    pm = PreparedMessage.build(make_parts(
        from_name=name, subject=name, list_id=f"{name} <send-to.bulletin.example.org>"))
    raw = pm.as_message(**recipient(name=name))  # type: ignore[arg-type]
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert name.encode() not in head  # never raw: a client would decode it
    msg = parse(raw)
    no_defects(msg)
    assert msg["Bcc"] is None
    assert decoded(raw, "To") == f"{name} <zhang@example.org>"
    assert decoded(raw, "From") == f"{name} <bulletin@example.org>"
    # Python's parser puts a space between adjacent encoded words (see raw_header).
    assert msg["To"].addresses[0].display_name.replace(" ", "") == name.replace(" ", "")
    assert msg["To"].addresses[0].addr_spec == "zhang@example.org"
    assert msg["From"].addresses[0].display_name.replace(" ", "") == name.replace(" ", "")
    assert msg["Subject"] == name
    assert decoded(raw, "List-Id") == f"{name} <send-to.bulletin.example.org>"
    assert len(msg["To"].addresses) == len(msg["From"].addresses) == 1


CONTROLS = ["\x00", "\t", "\r", "\n", "\r\n", "\x0b", "\x1b", "\x7f", "\x85", "\x9b",
            "\u2028", "\u2029", "\ud800"]


@pytest.mark.parametrize("c", CONTROLS)
def test_control_characters_are_removed_from_names(c: str) -> None:
    name = f"张{c}三 Zhang{c}San"
    pm = PreparedMessage.build(make_parts(from_name=name))
    raw = pm.as_message(**recipient(name=name))  # type: ignore[arg-type]
    msg = parse(raw)
    no_defects(msg)
    assert msg["Bcc"] is None
    assert msg["To"].addresses[0].display_name == "张三 ZhangSan"
    assert msg["From"].addresses[0].display_name == "张三 ZhangSan"
    assert strip_controls(name) == "张三 ZhangSan"


@pytest.mark.parametrize("c", CONTROLS)
def test_a_subject_with_a_control_character_is_refused(c: str) -> None:
    with pytest.raises(UnsafeHeader, match=r"subject .* holds the control character U\+"):
        PreparedMessage.build(make_parts(subject=f"简报{c}Bcc: evil@attacker.example"))


def test_subjects_are_encoded_only_when_needed() -> None:
    for subject in ["Bulletin 9", "简报 2015年第9期", " leading space", "x" * 1000, "a =? b"]:
        raw = PreparedMessage.build(make_parts(subject=subject)).as_message(**recipient())  # type: ignore[arg-type]
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert max(map(len, head.split(b"\r\n"))) <= 78 or subject == "Bulletin 9"
        assert parse(raw)["Subject"] == subject
    raw = PreparedMessage.build(make_parts(subject="Bulletin 9")).as_message(**recipient())  # type: ignore[arg-type]
    assert b"\r\nSubject: Bulletin 9\r\n" in raw


# --- addresses the store accepts --------------------------------------------------------


def test_an_idn_domain_goes_in_punycode() -> None:
    assert format_to(None, "info@例子.中国") == b"info@xn--fsqu00a.xn--fiqs8s"
    pm = PreparedMessage.build(make_parts())
    raw = pm.as_message(**recipient(addr="info@例子.中国"))  # type: ignore[arg-type]
    assert raw.split(b"\r\n\r\n", 1)[0].isascii()  # a plain RFC 5322 message
    assert parse(raw)["To"].addresses[0].addr_spec == "info@xn--fsqu00a.xn--fiqs8s"
    assert decoded(raw, "To") == "张三 <info@xn--fsqu00a.xn--fiqs8s>"


def test_a_utf8_local_part_goes_as_utf8_in_the_header() -> None:
    # RFC 6532: the address as it is, UTF-8 (NFC); the transport sends such a
    # message only over SMTPUTF8. The display name stays RFC 2047-encoded.
    assert format_to(None, "用户@例子.中国") == "用户@例子.中国".encode()
    decomposed = "e\u0301@example.org"  # é as e + combining accent
    assert format_to(None, decomposed) == "\u00e9@example.org".encode()
    pm = PreparedMessage.build(make_parts())
    raw = pm.as_message(**recipient(addr="用户@例子.中国"))  # type: ignore[arg-type]
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nTo: =?utf-8?b?5byg5LiJ?=\r\n <" + "用户@例子.中国".encode() + b">\r\n" in head
    to = parse(raw)["To"].addresses[0]  # the parser leaves 8-bit bytes as surrogates
    assert to.addr_spec.encode("ascii", "surrogateescape").decode() == "用户@例子.中国"
    assert to.display_name == "张三"


@pytest.mark.parametrize("address", [
    "a b@example.org", "a,b@example.org", "<a@x.org>", "a@x.org>\r\nBcc: v@x.org",
    "\u200b用户@例子.中国", "用户\u2028@例子.中国", "用 户@例子.中国", "用户..x@例子.中国",
    "用户@例子..中国", "a@-bad-.中国", "no-at-sign", "@example.org", "a@", "a@b@例子.中国",
])
def test_an_address_no_header_can_carry_fails_alone(address: str) -> None:
    pm = PreparedMessage.build(make_parts())
    with pytest.raises(UnsendableRecipient) as e:
        pm.personalise(**recipient(addr=address))  # type: ignore[arg-type]
    assert e.value.address == address
    assert e.value.reason and "\n" not in str(e.value)


def test_an_idn_sender_goes_in_punycode_and_a_utf8_sender_is_refused() -> None:
    pm = PreparedMessage.build(make_parts(from_address="bulletin@协会.中国",
                                          reply_to="office@协会.中国"))
    raw = pm.as_message(**recipient())  # type: ignore[arg-type]
    msg = parse(raw)
    puny = "协会.中国".encode("idna").decode()
    assert msg["From"].addresses[0].addr_spec == f"bulletin@{puny}"
    assert msg["Reply-To"].addresses[0].addr_spec == f"office@{puny}"
    assert make_message_id(1, 2, "协会.中国").endswith(f"@{puny}>")
    with pytest.raises(UnsafeHeader, match="SMTPUTF8"):
        PreparedMessage.build(make_parts(from_address="秘书处@协会.中国"))


def test_personalise_stays_cheap_for_idn_recipients(prepared: PreparedMessage) -> None:
    """The domain's IDNA conversion (about 2 ms in email-validator) runs once per
    domain, not once per recipient: counted on its cache."""
    _domain.cache_clear()
    for i in range(500):
        prepared.personalise(**recipient(addr=f"u{i}@例子.中国"))  # type: ignore[arg-type]
    info = _domain.cache_info()
    assert info.misses == 1 and info.hits >= 499


# --- the web-edition link (网页版) ---------------------------------------------------

WEB = "https://mailer.invalid/w/WEB_PLACEHOLDER"


@pytest.mark.parametrize("eight_bit", [True, False])
def test_web_edition_url_is_personalised_in_both_bodies(eight_bit: bool) -> None:
    parts = make_parts(
        html=sample_html().replace("</body>", f'<a href="{WEB}">网页版</a></body>'),
        text=f"网页版：{WEB}\n" + sample_text() + f"\n退订：{PLACEHOLDER}\n",
        web_placeholder=WEB,
    )
    pm = PreparedMessage.build(parts, eight_bit=eight_bit)
    web_a = "https://bulletin.example.org/w/e1.k1." + "a" * 150
    web_b = "https://bulletin.example.org/w/e1.k1.bbbb"
    a = parse(pm.as_message(**recipient(), web_edition_url=web_a))  # type: ignore[arg-type]
    b = parse(pm.as_message(**recipient(url=URL_B), web_edition_url=web_b))  # type: ignore[arg-type]
    for msg, web, url in ((a, web_a, URL_A), (b, web_b, URL_B)):
        html_part, text_part = msg.get_body(("html",)), msg.get_body(("plain",))
        assert html_part is not None and text_part is not None
        assert f'href="{web}"' in html_part.get_content()
        assert web in text_part.get_content() and url in text_part.get_content()
        assert WEB not in msg.as_string()
    wire = pm.personalise(**recipient(), web_edition_url=web_a)  # type: ignore[arg-type]
    assert max(len(line) for line in wire.split(b"\r\n")) <= 998
    with pytest.raises(UnsendableRecipient, match="web-edition URL"):
        pm.personalise(**recipient())  # type: ignore[arg-type]
    with pytest.raises(UnsendableRecipient):
        pm.personalise(**recipient(), web_edition_url="javascript:x")  # type: ignore[arg-type]


def test_bodies_without_the_web_link_need_no_url() -> None:
    pm = PreparedMessage.build(make_parts(web_placeholder=WEB))
    assert pm.web_edition is False
    assert b"Subject:" in pm.personalise(**recipient())  # type: ignore[arg-type]


@pytest.mark.parametrize("eight_bit", [True, False])
def test_links_in_wire_form_go_in_as_they_are_but_for_their_length(eight_bit: bool) -> None:
    """The sender's own links come as bytes (``tokens.LinkSigner``): the same message as
    with the same links as text; one longer than any link may be is refused all
    the same, and text is still checked."""
    parts = make_parts(
        html=sample_html().replace("</body>", f'<a href="{WEB}">网页版</a></body>'),
        text=f"网页版：{WEB}\n" + sample_text() + f"\n退订：{PLACEHOLDER}\n",
        web_placeholder=WEB,
    )
    pm = PreparedMessage.build(parts, eight_bit=eight_bit)
    web = "https://bulletin.example.org/w/e1.k1.cccc.dddd"
    as_text = pm.personalise(**recipient(), web_edition_url=web)  # type: ignore[arg-type]
    as_bytes = pm.personalise(**{**recipient(), "unsubscribe_url": URL_A.encode()},  # type: ignore[arg-type]
                              web_edition_url=web.encode())
    assert as_bytes == as_text
    too_long = ("https://bulletin.example.org/w/" + "e" * MAX_URL_LENGTH).encode()
    with pytest.raises(UnsendableRecipient, match="at most"):
        pm.personalise(**recipient(), web_edition_url=too_long)  # type: ignore[arg-type]
    with pytest.raises(UnsendableRecipient):
        pm.personalise(**recipient(), web_edition_url="https://x.example.org/a b")  # type: ignore[arg-type]


def test_is_wire_url() -> None:
    assert is_wire_url("https://bulletin.example.org/u/v1.k1.")
    assert not is_wire_url("https://bulletin.example.org/a b/u/")
    assert not is_wire_url("https://简报.example.org/u/")
    assert not is_wire_url("javascript:alert(1)")
    assert not is_wire_url("https://x.example.org/" + "a" * MAX_URL_LENGTH)


def test_message_ids_of_a_campaign_are_make_message_id() -> None:
    """What a run makes per message (the fixed parts once) is ``make_message_id``."""
    ids = MessageIds(12, "协会.中国")
    for rid in (0, 1, 345, 10**12):
        assert ids(rid) == make_message_id(12, rid, "协会.中国")
    assert MessageIds(13, "example.org")(345) != MessageIds(12, "example.org")(345)
    with pytest.raises(UnsafeHeader):
        MessageIds(1, "bad domain\r\n")
