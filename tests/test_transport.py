"""SMTPTransport against real aiosmtpd servers that behave well and badly."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mailer import eventloop
from mailer.config import SMTPConfig
from mailer.message import MessageParts, PreparedMessage, make_message_id
from mailer.transport import (
    Envelope,
    Outcome,
    Reply,
    SMTPSettings,
    SMTPSetupError,
    SMTPTransport,
    _utf8_headers,
    classify,
    send_one,
)

from .smtp_server import Behaviour, Server, smtp_server

T = TypeVar("T")
SENDER = "bulletin@example.org"
GOOD = "zhang@example.org"
BAD = "nobody@example.org"


def run(coro: Coroutine[Any, Any, T], limit: float = 30.0, loop: str = "asyncio") -> T:
    """Run a coroutine with a hard limit, so a hung test fails instead of hanging;
    on asyncio's own loop unless ``loop`` names uvloop (what the senders run on)."""
    return eventloop.run(asyncio.wait_for(coro, limit), loop=loop)


def settings(srv: Server, **changes: Any) -> SMTPSettings:
    base: dict[str, Any] = {
        "host": srv.host, "port": srv.port, "tls": "none", "username": None,
        "password": None, "timeout": 5.0, "local_hostname": "client.test",
    }
    return SMTPSettings(**{**base, **changes})


PREPARED = PreparedMessage.build(
    MessageParts(
        subject="简报 2015年第9期（总第33期）",
        html="<p>作为新社会组织成员的民办院校</p>\n<p><a href=\"%U%\">退订</a></p>\n",
        text=".第一行以点开头\n作为新社会组织成员的民办院校\n.\n退订：%U%\n",
        from_name="杭州市新经济与新社会组织党务工作者协会",
        from_address=SENDER,
        reply_to=None,
        list_id="简报发送名单 <send-to.bulletin.example.org>",
        unsubscribe_mailto="mailto:unsubscribe@example.org",
        html_placeholder="%U%",
        date=dt.datetime(2015, 11, 24, 9, tzinfo=dt.UTC),
    )
)


def message(to: str = GOOD, n: int = 1) -> tuple[Envelope, bytes]:
    """An envelope (wire form) and the plain bytes the server should record."""
    kw: dict[str, Any] = {
        "to_name": "张三", "to_address": to,
        "message_id": make_message_id(1, n, "example.org"),
        "unsubscribe_url": f"https://bulletin.example.org/u/tok{n}",
    }
    return Envelope(SENDER, to, PREPARED.personalise(**kw)), PREPARED.as_message(**kw)


async def send_all(s: SMTPSettings, envelopes: list[Envelope]) -> list[Reply]:
    t = SMTPTransport(s)
    try:
        return [await t.send(e) for e in envelopes]
    finally:
        await t.close()


def test_classify() -> None:
    assert classify(250) is Outcome.SENT
    assert classify(251) is Outcome.SENT
    assert classify(421) is Outcome.DEFERRED
    assert classify(451) is Outcome.DEFERRED
    assert classify(552) is Outcome.DEFERRED
    assert classify(550) is Outcome.FAILED
    assert classify(554) is Outcome.FAILED
    assert classify(0) is Outcome.DEFERRED


@pytest.mark.parametrize("pieces", [False, True])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("pipelining", [False, True])
def test_message_arrives_intact(pipelining: bool, loop: str, pieces: bool) -> None:
    env, plain = message()
    if pieces:  # as the engine sends it: the prepared chunks, not joined
        env = Envelope(env.sender, env.recipient, PREPARED.personalise_pieces(
            to_name="张三", to_address=GOOD, message_id=make_message_id(1, 1, "example.org"),
            unsubscribe_url="https://bulletin.example.org/u/tok1"))
    with smtp_server(Behaviour(pipelining=pipelining)) as srv:

        async def go() -> tuple[Reply, bool, bool]:
            t = SMTPTransport(settings(srv))
            await t.connect()
            try:
                return await t.send(env), t.eight_bit, t.pipelining
            finally:
                await t.close()

        reply, eight_bit, piped = run(go(), loop=loop)
    assert reply.outcome is Outcome.SENT and reply.code == 250, reply
    assert (eight_bit, piped) == (True, pipelining)
    [got] = srv.messages
    assert got.mail_from == SENDER and got.rcpt_tos == [GOOD]
    size = len(b"".join(env.data) if isinstance(env.data, list) else env.data)
    assert got.mail_options == ["BODY=8BITMIME", f"SIZE={size}"]
    assert got.data == plain  # dot-unstuffed by the server back to the original
    assert b"\r\n.\xe7\xac\xac" in got.data or got.data.count(b"\r\n.") >= 2


@pytest.mark.parametrize("pipelining", [False, True])
def test_several_messages_over_one_connection(pipelining: bool) -> None:
    msgs = [message(f"r{i}@example.org", i) for i in range(20)]
    with smtp_server(Behaviour(pipelining=pipelining)) as srv:
        replies = run(send_all(settings(srv), [e for e, _ in msgs]))
    assert [r.outcome for r in replies] == [Outcome.SENT] * 20
    expected = [f"OK message {i + 1} for r{i}@example.org" for i in range(20)]
    assert [r.text for r in replies] == expected  # each reply paired with its message
    assert len(srv.sessions) == 1
    assert [m.data for m in srv.messages] == [p for _, p in msgs]


def test_421_on_connect() -> None:
    with smtp_server(Behaviour(greeting_421=True)) as srv:
        [reply] = run(send_all(settings(srv), [message()[0]]))

        async def connect() -> None:
            await SMTPTransport(settings(srv)).connect()

        with pytest.raises(ConnectionError, match="421"):
            run(connect())
    assert (reply.code, reply.outcome, reply.stage) == (421, Outcome.DEFERRED, "connect")


def test_connection_refused_is_deferred() -> None:
    with smtp_server(Behaviour(silent=True)) as srv:
        port = srv.port
    srv_gone = Server(port, [], [])  # nothing listens there any more
    [reply] = run(send_all(settings(srv_gone), [message()[0]]))
    assert (reply.code, reply.outcome) == (0, Outcome.DEFERRED)


@pytest.mark.parametrize("pipelining", [False, True])
def test_421_after_mail_reconnects(pipelining: bool) -> None:
    with smtp_server(Behaviour(pipelining=pipelining, mail_421=True)) as srv:
        replies = run(send_all(settings(srv), [message()[0], message()[0]]))
    for r in replies:
        assert (r.code, r.outcome, r.stage) == (421, Outcome.DEFERRED, "mail")
    assert len(srv.sessions) == 2  # the second send opened a new connection
    assert srv.messages == []


@pytest.mark.parametrize("pipelining", [False, True])
@pytest.mark.parametrize("code", [451, 452])
def test_temporary_failure_then_success(pipelining: bool, code: int) -> None:
    env, plain = message()
    with smtp_server(Behaviour(pipelining=pipelining, temp_failures=1, temp_code=code)) as srv:
        first, second = run(send_all(settings(srv), [env, env]))
    assert (first.code, first.outcome, first.stage) == (code, Outcome.DEFERRED, "rcpt")
    assert second.outcome is Outcome.SENT
    assert len(srv.sessions) == 1  # RSET kept the connection usable
    assert [m.data for m in srv.messages] == [plain]


@pytest.mark.parametrize("pipelining", [False, True])
@pytest.mark.parametrize("code", [550, 553, 554])
def test_refused_recipient(pipelining: bool, code: int) -> None:
    with smtp_server(Behaviour(pipelining=pipelining, refuse={BAD: code})) as srv:
        bad, good = run(send_all(settings(srv), [message(BAD)[0], message(GOOD)[0]]))
    assert (bad.code, bad.outcome, bad.stage) == (code, Outcome.FAILED, "rcpt")
    assert BAD in bad.text
    assert good.outcome is Outcome.SENT
    assert [m.rcpt_tos for m in srv.messages] == [[GOOD]]


@pytest.mark.parametrize("broken_server", [False, True])
def test_refusal_in_the_middle_of_a_pipelined_run(broken_server: bool) -> None:
    """A refused RCPT among pipelined transactions: no body goes to nobody, and each
    later message gets its own reply, not a stale one. ``broken_server`` answers
    DATA with 354 even though the only RCPT was refused."""
    rcpts = ["a@example.org", BAD, "c@example.org", BAD, "e@example.org"]
    msgs = [message(r, i) for i, r in enumerate(rcpts)]
    b = Behaviour(pipelining=True, refuse={BAD: 550}, data_after_refusal=broken_server)
    with smtp_server(b) as srv:
        replies = run(send_all(settings(srv), [e for e, _ in msgs]))
    assert [r.outcome for r in replies] == [
        Outcome.SENT, Outcome.FAILED, Outcome.SENT, Outcome.FAILED, Outcome.SENT
    ]
    assert [r.code for r in replies] == [250, 550, 250, 550, 250]
    delivered = [m for m in srv.messages if m.data]
    assert [m.rcpt_tos for m in delivered] == [["a@example.org"], ["c@example.org"],
                                               ["e@example.org"]]
    assert [m.data for m in delivered] == [msgs[0][1], msgs[2][1], msgs[4][1]]
    # The broken server got an empty message for the refused address, never the body.
    assert all(m.data == b"" for m in srv.messages if BAD in m.rcpt_tos)
    assert len(srv.messages) == (5 if broken_server else 3)
    n = 5 if broken_server else 3
    assert replies[4].text == f"OK message {n} for e@example.org"
    assert len(srv.sessions) == 1


@pytest.mark.parametrize("pipelining", [False, True])
def test_552_at_end_of_data_is_deferred(pipelining: bool) -> None:
    with smtp_server(Behaviour(pipelining=pipelining, data_552=True)) as srv:
        first, second = run(send_all(settings(srv), [message()[0], message()[0]]))
    assert (first.code, first.outcome, first.stage) == (552, Outcome.DEFERRED, "")
    assert second.code == 552  # same connection, still in step
    assert len(srv.sessions) == 1


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("pipelining", [False, True])
def test_drop_after_data_then_reconnect(pipelining: bool, loop: str) -> None:
    env, plain = message()
    with smtp_server(Behaviour(pipelining=pipelining, drop_after_data=1)) as srv:
        first, second = run(send_all(settings(srv), [env, env]), loop=loop)
    assert (first.code, first.outcome) == (0, Outcome.DEFERRED)
    assert second.outcome is Outcome.SENT
    assert len(srv.sessions) == 2
    assert [m.data for m in srv.messages] == [plain]


def test_silent_server_times_out() -> None:
    # The bound is what a timeout that was not applied would run into; how much past
    # its 0.5 s the timeout fires depends on the machine's load, so no window.
    with smtp_server(Behaviour(silent=True)) as srv:
        [reply] = run(send_all(settings(srv, timeout=0.5), [message()[0]]), 10)
    assert (reply.code, reply.outcome, reply.stage) == (0, Outcome.DEFERRED, "connect")
    assert "timed out" in reply.text.lower()


def test_starttls_required_but_not_offered() -> None:
    with smtp_server() as srv:
        s = settings(srv, tls="starttls")
        with pytest.raises(SMTPSetupError, match=r"STARTTLS.*not fall back to plaintext"):
            run(SMTPTransport(s).connect())
        with pytest.raises(SMTPSetupError, match="STARTTLS"):
            run(send_all(s, [message()[0]]))
    assert srv.messages == []


@pytest.mark.parametrize("pipelining", [False, True])
def test_starttls_then_bulk_path_over_tls(certificate: tuple[Path, Path], pipelining: bool) -> None:
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    msgs = [message(f"r{i}@example.org", i) for i in range(3)]
    with smtp_server(Behaviour(pipelining=pipelining, starttls=server_ctx)) as srv:
        s = settings(srv, tls="starttls", tls_context=client_ctx)
        replies = run(send_all(s, [e for e, _ in msgs]))
    assert [r.outcome for r in replies] == [Outcome.SENT] * 3
    assert len(srv.sessions) == 2  # EHLO before and after STARTTLS, one connection
    assert [m.data for m in srv.messages] == [p for _, p in msgs]


def test_send_one() -> None:
    env, plain = message()
    with smtp_server() as srv:
        reply = run(send_one(settings(srv), env))
        refused = run(send_one(settings(srv), message(BAD)[0]))
    assert reply.outcome is Outcome.SENT
    got = srv.messages[0]
    assert got.data == plain and "BODY=8BITMIME" in got.mail_options
    assert refused.outcome is Outcome.SENT  # this server refuses nobody
    with smtp_server(Behaviour(refuse={BAD: 550})) as srv:
        refused = run(send_one(settings(srv), message(BAD)[0]))
    assert (refused.code, refused.outcome, refused.stage) == (550, Outcome.FAILED, "rcpt")
    with smtp_server(Behaviour(silent=True)) as srv:
        silent = run(send_one(settings(srv, timeout=0.5), env))
    assert silent.outcome is Outcome.DEFERRED


def test_unsendable_address_is_refused_locally() -> None:
    with smtp_server() as srv:
        [reply] = run(send_all(settings(srv), [Envelope(SENDER, "a@b.org>\r\nRSET", b"x\r\n")]))
    assert reply.outcome is Outcome.FAILED and reply.text.startswith("local:")
    assert srv.messages == []


def test_replies_arriving_together_are_all_read() -> None:
    """Postfix answers a pipelined group in one write. aiosmtplib's own reader keeps
    only the first reply of such a segment; the bulk path must pair all three."""
    received: list[bytes] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 scripted ESMTP\r\n")
        await r.readline()  # EHLO
        w.write(b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        for n in (1, 2):
            for _ in range(3):  # MAIL, RCPT, DATA, pipelined
                await r.readline()
            w.write(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n")
            received.append(await r.readuntil(b"\r\n.\r\n"))
            w.write(b"250 2.0.0 Ok: queued as %d\r\n" % n)
        if (await r.readline()).startswith(b"QUIT"):
            w.write(b"221 2.0.0 Bye\r\n")
        w.close()

    async def go() -> list[Reply]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await send_all(settings(Server(port, [], [])), [message()[0], message()[0]])
        finally:
            server.close()
            await server.wait_closed()

    replies = run(go(), 10)
    assert [(r.code, r.text) for r in replies] == [
        (250, "2.0.0 Ok: queued as 1"), (250, "2.0.0 Ok: queued as 2")
    ]
    assert received[0] == message()[0].data + b".\r\n"


def test_settings_from_config() -> None:
    cfg = SMTPConfig(host="mail.example.org", port=587, tls="starttls", username="u",
                     concurrency=4, timeout=12.0)
    s = SMTPSettings.from_config(cfg, local_hostname="bulletin.example.org")
    assert (s.host, s.port, s.tls, s.username, s.timeout) == (
        "mail.example.org", 587, "starttls", "u", 12.0
    )


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_each_read_has_its_own_timeout_on_the_connections_one_timer(loop: str) -> None:
    """The wire keeps one read timer per connection and moves it on lazily: a read
    with a short timeout after reads with a long one still times out at its own
    (as close() does with its 5 s cap), and a reply in time is never cut short."""
    from mailer.transport import _ConnectionDead, _Wire

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for _ in range(3):  # three prompt replies, then mute
            await r.readline()
            w.write(b"250 ok\r\n")
        while await r.read(65536):
            pass
        w.close()

    async def go() -> tuple[list[int], str, float]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await asyncio.get_running_loop().create_connection(
            asyncio.Protocol, "127.0.0.1", port)
        wire = _Wire(transport)  # type: ignore[arg-type]
        transport.set_protocol(wire)
        try:
            codes = []
            for _ in range(3):
                wire.write(b"NOOP\r\n")
                codes.append((await wire.read(600.0))[0])
            wire.write(b"NOOP\r\n")
            t0 = asyncio.get_running_loop().time()
            try:
                await wire.read(0.2)
            except _ConnectionDead as e:
                return codes, str(e), asyncio.get_running_loop().time() - t0
            return codes, "no timeout", 0.0
        finally:
            transport.close()
            server.close()
            await server.wait_closed()

    # The hard limit (20 s) is far below the long reads' 600 s: only the short
    # read's own timeout can end it in time.
    codes, error, _ = run(go(), 20, loop=loop)
    assert codes == [250, 250, 250]
    assert error == "no reply within 0.2 s"


def test_server_that_goes_mute_mid_session() -> None:
    """Greets, answers EHLO, then never answers again: the send gives up after the
    timeout, and close() (whose QUIT gets no answer either) does not hang."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 mute ESMTP\r\n")
        await r.readline()
        w.write(b"250-mute\r\n250 PIPELINING\r\n")
        while await r.read(65536):
            pass
        w.close()

    async def go() -> tuple[Reply, Reply]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        t = SMTPTransport(settings(Server(port, [], []), timeout=0.3))
        try:
            first = await t.send(message()[0])
            await t.connect()
            await t.close()
            return first, await t.send(message()[0])
        finally:
            await t.close()
            server.close()
            await server.wait_closed()

    # Both timeouts fire well within the bound; the reply names the 0.3 s one.
    first, again = run(go(), 10)
    assert (first.code, first.outcome) == (0, Outcome.DEFERRED)
    assert "no reply within 0.3 s" in first.text
    assert again.outcome is Outcome.DEFERRED  # reconnected, timed out again


# --- replies cut anywhere ----------------------------------------------------------
# TCP keeps no reply boundaries, and TLS records and proxies cut replies too: every
# reply must be read whole, whatever the segmentation, and only EOF or a timeout may
# count as a lost connection (a wrongly lost reply resends accepted mail).


@pytest.mark.parametrize(("split", "multiline", "pipelining", "count"), [
    ("random", False, True, 120),
    ("random", True, True, 120),
    ("random", True, False, 60),
    ("bytes", False, True, 25),
    ("bytes", True, True, 15),
])
def test_segmented_replies_each_message_once(
    split: str, multiline: bool, pipelining: bool, count: int
) -> None:
    msgs = [message(f"r{i}@example.org", i) for i in range(count)]
    behaviour = Behaviour(pipelining=pipelining, split=split, multiline=multiline, seed=count)
    with smtp_server(behaviour) as srv:
        replies = run(send_all(settings(srv), [e for e, _ in msgs]), 120)
    assert [r.outcome for r in replies] == [Outcome.SENT] * count, replies[:3]
    assert [m.rcpt_tos[0] for m in srv.messages] == [f"r{i}@example.org" for i in range(count)]
    assert len(srv.sessions) == 1  # never reconnected: no reply was taken for a drop
    last = replies[-1].text
    assert last.endswith(f"OK message {count} for r{count - 1}@example.org")
    if multiline:
        assert last.startswith(f"2.0.0 Queued\nas {count}\n")


@pytest.mark.parametrize("split", ["random", "bytes"])
def test_segmented_replies_over_tls(certificate: tuple[Path, Path], split: str) -> None:
    """Under STARTTLS each piece is its own TLS record, so the client's TLS layer
    hands the reader part of a reply at a time."""
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    count = 60 if split == "random" else 10
    msgs = [message(f"r{i}@example.org", i) for i in range(count)]
    behaviour = Behaviour(pipelining=True, starttls=server_ctx, split=split, multiline=True)
    with smtp_server(behaviour) as srv:
        s = settings(srv, tls="starttls", tls_context=client_ctx)
        replies = run(send_all(s, [e for e, _ in msgs]), 120)
    assert [r.outcome for r in replies] == [Outcome.SENT] * count
    assert [m.data for m in srv.messages] == [p for _, p in msgs]
    assert len(srv.sessions) == 2  # EHLO before and after STARTTLS, one connection


def test_reply_completed_30_ms_later() -> None:
    """The reported storm: ``250 … queued as N`` and its CRLF 30 ms apart."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 slow ESMTP\r\n")
        await r.readline()
        w.write(b"250-slow\r\n250 PIPELINING\r\n")
        n = 0
        while (line := await r.readline()).startswith(b"MAIL"):
            await r.readline()
            await r.readline()
            w.write(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n")
            await r.readuntil(b"\r\n.\r\n")
            n += 1
            w.write(b"250 2.0.0 Ok: queued as %d" % n)
            await w.drain()
            await asyncio.sleep(0.03)
            w.write(b"\r\n")
        if line.startswith(b"QUIT"):
            w.write(b"221 Bye\r\n")
        w.close()

    async def go() -> list[Reply]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await send_all(settings(Server(port, [], [])), [message()[0]] * 5)
        finally:
            server.close()
            await server.wait_closed()

    replies = run(go(), 20)
    assert [(r.code, r.text) for r in replies] == [
        (250, f"2.0.0 Ok: queued as {n}") for n in range(1, 6)
    ]


# --- internationalised addresses ------------------------------------------------------

IDN = "info@例子.中国"
IDN_ASCII = "info@xn--fsqu00a.xn--fiqs8s"
UTF8 = "用户@例子.中国"
UTF8_WIRE = "用户@xn--fsqu00a.xn--fiqs8s"


def to_message(to: str, envelope_to: str | None = None, n: int = 1) -> Envelope:
    """As the engine builds it: the stored address for the header, its ASCII form
    (when there is one) for the envelope."""
    data = PREPARED.personalise(
        to_name="张三", to_address=to, message_id=make_message_id(1, n, "example.org"),
        unsubscribe_url=f"https://bulletin.example.org/u/tok{n}",
    )
    return Envelope(SENDER, envelope_to or to, data)


def parsed_to(data: bytes) -> str:
    import email
    import email.policy

    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["Bcc"] is None
    addr = msg["To"].addresses[0].addr_spec
    return str(addr).encode("ascii", "surrogateescape").decode("utf-8")


@pytest.mark.parametrize("pipelining", [False, True])
@pytest.mark.parametrize("envelope_to", [IDN, IDN_ASCII])
def test_an_idn_domain_goes_in_punycode(pipelining: bool, envelope_to: str) -> None:
    with smtp_server(Behaviour(pipelining=pipelining, smtputf8=False)) as srv:
        [reply] = run(send_all(settings(srv), [to_message(IDN, envelope_to)]))
    assert reply.outcome is Outcome.SENT, reply
    [got] = srv.messages
    assert got.rcpt_tos == [IDN_ASCII]
    assert "SMTPUTF8" not in got.mail_options
    assert got.data.split(b"\r\n\r\n", 1)[0].isascii()
    assert parsed_to(got.data) == IDN_ASCII


@pytest.mark.parametrize("pipelining", [False, True])
def test_a_utf8_local_part_goes_over_smtputf8(pipelining: bool) -> None:
    with smtp_server(Behaviour(pipelining=pipelining)) as srv:

        async def go() -> tuple[Reply, bool]:
            t = SMTPTransport(settings(srv))
            try:
                return await t.send(to_message(UTF8)), t.smtputf8
            finally:
                await t.close()

        reply, offered = run(go())
    assert reply.outcome is Outcome.SENT, reply
    assert offered
    [got] = srv.messages
    assert got.rcpt_tos == [UTF8_WIRE]  # envelope: A-label domain
    assert "SMTPUTF8" in got.mail_options and "BODY=8BITMIME" in got.mail_options
    assert ("\r\nTo: =?utf-8?b?5byg5LiJ?=\r\n <" + UTF8 + ">\r\n").encode() in got.data
    assert parsed_to(got.data) == UTF8


@pytest.mark.parametrize("pipelining", [False, True])
def test_a_utf8_local_part_fails_alone_without_smtputf8(pipelining: bool) -> None:
    envelopes = [to_message(GOOD, n=1), to_message(UTF8, n=2), to_message(IDN, IDN_ASCII, n=3)]
    with smtp_server(Behaviour(pipelining=pipelining, smtputf8=False)) as srv:
        first, bad, last = run(send_all(settings(srv), envelopes))
    assert first.outcome is Outcome.SENT and last.outcome is Outcome.SENT
    assert (bad.code, bad.outcome, bad.stage, bad.local) == (553, Outcome.FAILED, "rcpt", True)
    assert bad.text == f"local: 5.6.7 the relay does not offer SMTPUTF8, needed for {UTF8}"
    assert [m.rcpt_tos for m in srv.messages] == [[GOOD], [IDN_ASCII]]
    assert len(srv.sessions) == 1  # nothing was written for it: the session goes on


def test_a_utf8_header_is_never_sent_without_smtputf8() -> None:
    # The envelope is ASCII but the header is not (an engine that put the ASCII form
    # on the envelope): the message still needs SMTPUTF8 (RFC 6532 §3).
    env = to_message(UTF8, "someone@example.org")
    with smtp_server(Behaviour(smtputf8=False)) as srv:
        [reply] = run(send_all(settings(srv), [env]))
    assert (reply.code, reply.outcome, reply.local) == (553, Outcome.FAILED, True)
    assert "SMTPUTF8" in reply.text
    assert srv.messages == []
    with smtp_server() as srv:
        [reply] = run(send_all(settings(srv), [env]))
    assert reply.outcome is Outcome.SENT
    assert "SMTPUTF8" in srv.messages[0].mail_options


@pytest.mark.parametrize("address", ["a b@example.org", "a@x.org>\r\nRSET", "用 户@例子.中国",
                                     "a@-bad-.中国"])
def test_an_address_that_cannot_go_on_the_wire_is_refused_locally(address: str) -> None:
    env = Envelope(SENDER, address, message()[0].data)
    with smtp_server(Behaviour(pipelining=True)) as srv:
        bad, good = run(send_all(settings(srv), [env, message()[0]]))
    assert (bad.code, bad.outcome, bad.stage, bad.local) == (553, Outcome.FAILED, "rcpt", True)
    assert good.outcome is Outcome.SENT
    assert [m.rcpt_tos for m in srv.messages] == [[GOOD]]


@pytest.mark.parametrize("offered", [True, False])
def test_send_one_with_a_utf8_local_part(offered: bool) -> None:
    with smtp_server(Behaviour(smtputf8=offered)) as srv:
        reply = run(send_one(settings(srv), to_message(UTF8)))
    if offered:
        assert reply.outcome is Outcome.SENT, reply
        [got] = srv.messages
        assert got.rcpt_tos == [UTF8_WIRE] and "SMTPUTF8" in got.mail_options
        assert parsed_to(got.data) == UTF8
    else:
        assert (reply.code, reply.outcome, reply.local) == (553, Outcome.FAILED, True)
        assert srv.messages == []


@pytest.mark.parametrize("to", [GOOD, IDN, UTF8])
def test_the_message_knows_whether_a_header_needs_utf8(to: str) -> None:
    """The engine takes the flag from the message (once per list, but for the To)
    instead of the transport scanning each header: both must agree."""
    data = to_message(to).data
    assert PREPARED.header_utf8(to) is _utf8_headers(data) is (to == UTF8)
    env = Envelope(SENDER, to, data, header_utf8=PREPARED.header_utf8(to))
    with smtp_server(Behaviour(pipelining=True, smtputf8=False)) as srv:
        [reply] = run(send_all(settings(srv), [env]))
    if to == UTF8:  # only SMTPUTF8 can carry it: refused here, before anything is sent
        assert (reply.code, reply.local) == (553, True) and srv.messages == []
    else:
        assert reply.outcome is Outcome.SENT, reply
