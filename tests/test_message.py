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

import pytest

from mailer.message import (
    MessageParts,
    PreparedMessage,
    format_to,
    make_message_id,
    strip_controls,
)

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
    with pytest.raises(ValueError):
        PreparedMessage.build(make_parts(subject="简报\r\nBcc: v@x.org"))
    with pytest.raises(ValueError):
        prepared.personalise(**recipient(addr="a@x.org>\r\nBcc: v@x.org"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        prepared.personalise(**recipient(url="https://x.org/u/a\r\n.\r\n"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
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
    with pytest.raises(ValueError):
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
    with pytest.raises(ValueError, match="URL is required"):
        PreparedMessage.build(make_parts()).personalise(**recipient(url=None))  # type: ignore[arg-type]


def test_personalise_is_cheap(prepared: PreparedMessage) -> None:
    kw = recipient()
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        prepared.personalise(**kw)  # type: ignore[arg-type]
    per = (time.perf_counter() - start) / n
    size = len(prepared.personalise(**kw))  # type: ignore[arg-type]
    print(f"personalise: {per * 1e6:.1f} µs per {size // 1024} KB message")
    assert per < 0.002  # generous: EmailMessage per recipient would be several ms


def test_base64_helper_roundtrip() -> None:
    pm = PreparedMessage.build(make_parts(text="短\n", html="<p>短</p>\n"), eight_bit=False)
    raw = pm.as_message(**recipient())  # type: ignore[arg-type]
    body = raw.split(b"Content-Transfer-Encoding: base64\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0]
    assert base64.b64decode(body) == "短\r\n".encode()
