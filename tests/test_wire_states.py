"""The bulk path's transaction, moved on by its replies (``transport._Txn``), against
scripted servers on 127.0.0.1 that answer each step as the test needs: the cases
aiosmtpd cannot be made to do (stop reading mid-body, answer out of step, refuse
RSET, 421 at the end of data), the gate before a message's end, and a send given up
mid-way."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mailer.transport import Envelope, Outcome, Reply, SMTPTransport

from .smtp_server import Server
from .test_transport import message, run, settings

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
GREETING = b"220 scripted ESMTP\r\n"
EHLO = b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
ENVELOPE_OK = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"


async def greet(r: asyncio.StreamReader, w: asyncio.StreamWriter, ehlo: bytes = EHLO) -> None:
    w.write(GREETING)
    await r.readline()
    w.write(ehlo)


async def envelope(r: asyncio.StreamReader) -> list[bytes]:
    return [await r.readline() for _ in range(3)]  # MAIL, RCPT, DATA


async def with_server(handle: Handler, body: Callable[[Server], Awaitable[Any]]) -> Any:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await body(Server(port, [], []))
    finally:
        server.close()
        await server.wait_closed()


async def read_body(r: asyncio.StreamReader) -> bytes:
    """The body up to and with its end (``readuntil`` stops at its 64 KB limit)."""
    chunks: list[bytes] = []
    tail = b""
    while not tail.endswith(b"\r\n.\r\n"):
        chunk = await r.read(1 << 20)
        if not chunk:
            raise asyncio.IncompleteReadError(b"".join(chunks), None)
        chunks.append(chunk)
        tail = (tail + chunk)[-5:]
    return b"".join(chunks)


async def quit_politely(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    line = await r.readline()
    if line.startswith(b"QUIT"):
        w.write(b"221 2.0.0 Bye\r\n")
    w.close()


async def take_one(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                   reply: bytes = b"250 2.0.0 Ok\r\n") -> None:
    """A session that goes well, once its envelope is read: the message taken with
    ``reply``, then QUIT answered."""
    w.write(ENVELOPE_OK)
    await r.readuntil(b"\r\n.\r\n")
    w.write(reply)
    await quit_politely(r, w)


def big_envelope(size: int) -> Envelope:
    """A message whose body is ``size`` bytes of dot-free lines."""
    line = b"x" * 998 + b"\r\n"
    head = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: big\r\n\r\n"
    return Envelope("a@example.org", "b@example.org", head + line * (size // len(line)))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_body_that_waits_for_the_server_to_read_is_answered_after_it_drains(
        loop: str) -> None:
    """The server reads nothing of a 32 MB body for 1.2 s, then reads it and takes
    1.2 s more to answer: 2.4 s in all, past the 2 s timeout. Writing pauses, and
    the timeout of the reply runs only once the body has gone (as a timeout of the
    write does before it), so the message is sent. (The 0.8 s to spare are for the
    part of the body still in the kernel's buffers when the client's write ends,
    which a busy machine reads slowly: with 0.3 s, a CI run timed out.)"""
    got: list[int] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await greet(r, w)
        await envelope(r)
        w.write(ENVELOPE_OK)
        await asyncio.sleep(1.2)
        got.append(len(await read_body(r)))
        await asyncio.sleep(1.2)
        w.write(b"250 2.0.0 Ok: queued\r\n")
        await quit_politely(r, w)

    async def go(srv: Server) -> Reply:
        t = SMTPTransport(settings(srv, timeout=2.0))
        try:
            env = big_envelope(32_000_000)  # more than the kernel's buffers hold
            reply = await t.send(env)
            assert got == [len(env.data) + 3]
            return reply
        finally:
            await t.close()

    reply = run(with_server(handle, go), 60, loop=loop)
    assert (reply.code, reply.outcome) == (250, Outcome.SENT)


def test_a_server_that_stops_reading_the_body_times_out_writing() -> None:
    """The server takes the envelope and never reads the body: the write times out
    (the connection is given up, the delivery deferred), it does not hang."""
    released, over = asyncio.Event(), asyncio.Event()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await greet(r, w)
        await envelope(r)
        w.write(ENVELOPE_OK)
        await released.wait()  # reads nothing until the client has given up
        w.close()
        over.set()

    async def go(srv: Server) -> tuple[Reply, bool]:
        t = SMTPTransport(settings(srv, timeout=0.3))
        try:
            await t.connect()
            sock = t._wire.transport.get_extra_info("socket")  # type: ignore[union-attr]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            reply = await t.send(big_envelope(24_000_000))
            return reply, t.connected
        finally:
            await t.close()
            released.set()
            await over.wait()

    reply, connected = run(with_server(handle, go), 20)
    assert (reply.code, reply.outcome) == (0, Outcome.DEFERRED)
    assert reply.text == "timed out writing (0.3 s)"
    assert not connected


@pytest.mark.parametrize(("answer", "lost"), [
    # A 334 to MAIL is neither success nor refusal.
    (b"334 what?\r\n250 2.1.5 Ok\r\n354 go\r\n", "unexpected reply to MAIL: 334 what?"),
    # Not SMTP: whole lines read at once, or inside a reply of several lines.
    (b"hello there\r\n250 2.1.5 Ok\r\n354 go\r\n",
     "malformed reply b'hello there\\r\\n250 2.1.5 Ok\\r\\n354 go\\r\\n'"),
    (b"250-2.1.0 first line\r\nhello there\r\n", "malformed reply b'hello there\\r'"),
])
def test_a_reply_that_cannot_be_paired_gives_the_connection_up(answer: bytes,
                                                                lost: str) -> None:
    """After such a reply nothing can be paired with a command any more: the
    connection is dropped (the delivery deferred, never marked sent) and the next send
    opens a fresh one, which works."""
    sessions: list[int] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        sessions.append(len(sessions))
        await greet(r, w)
        await envelope(r)
        if len(sessions) == 1:
            w.write(answer)
            await r.read(65536)
            w.close()
            return
        await take_one(r, w)

    async def go(srv: Server) -> list[Reply]:
        t = SMTPTransport(settings(srv))
        try:
            return [await t.send(message()[0]), await t.send(message()[0])]
        finally:
            await t.close()

    first, second = run(with_server(handle, go), 20)
    assert (first.code, first.outcome, first.text) == (0, Outcome.DEFERRED, lost)
    assert (second.code, second.outcome) == (250, Outcome.SENT)
    assert len(sessions) == 2


def test_421_at_the_end_of_data_is_deferred_and_the_next_send_reconnects() -> None:
    sessions: list[int] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        sessions.append(len(sessions))
        await greet(r, w)
        await envelope(r)
        w.write(ENVELOPE_OK)
        await r.readuntil(b"\r\n.\r\n")
        if len(sessions) == 1:
            w.write(b"421 4.3.2 Shutting down\r\n")
            w.close()
            return
        w.write(b"250 2.0.0 Ok\r\n")
        await quit_politely(r, w)

    async def go(srv: Server) -> tuple[Reply, bool, Reply]:
        t = SMTPTransport(settings(srv))
        try:
            first = await t.send(message()[0])
            connected = t.connected
            return first, connected, await t.send(message()[0])
        finally:
            await t.close()

    first, connected, second = run(with_server(handle, go), 20)
    assert (first.code, first.outcome, first.stage) == (421, Outcome.DEFERRED, "")
    assert not connected
    assert (second.code, second.outcome) == (250, Outcome.SENT)


def test_a_refused_rset_gives_the_connection_up() -> None:
    """After a refused recipient the envelope is reset; a server that refuses RSET
    too is out of step, so the connection is dropped rather than reused."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await greet(r, w)
        await envelope(r)
        w.write(b"250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n554 5.5.1 No valid recipients\r\n")
        assert (await r.readline()).startswith(b"RSET")
        w.write(b"500 5.5.2 What?\r\n")
        await r.read(65536)
        w.close()

    async def go(srv: Server) -> tuple[Reply, bool]:
        t = SMTPTransport(settings(srv))
        try:
            reply = await t.send(message()[0])
            return reply, t.connected
        finally:
            await t.close()

    reply, connected = run(with_server(handle, go), 20)
    assert (reply.code, reply.outcome) == (0, Outcome.DEFERRED)
    assert reply.text == "RSET refused: 500 5.5.2 What?"
    assert not connected


def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    """A server that does not offer PIPELINING gets MAIL, RCPT and DATA one at a
    time: it checks that nothing else has arrived before it answers each."""
    extra: list[bytes] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await greet(r, w, ehlo=b"250-scripted\r\n250 8BITMIME\r\n")
        for answer in (b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", b"354 go\r\n"):
            await r.readline()
            with contextlib.suppress(TimeoutError):  # a command sent ahead of its turn
                extra.append(await asyncio.wait_for(r.read(1), 0.05))
            w.write(answer)
        await r.readuntil(b"\r\n.\r\n")
        w.write(b"250 2.0.0 Ok\r\n")
        await quit_politely(r, w)

    async def go(srv: Server) -> Reply:
        t = SMTPTransport(settings(srv))
        try:
            return await t.send(message()[0])
        finally:
            await t.close()

    reply = run(with_server(handle, go), 20)
    assert (reply.code, reply.outcome) == (250, Outcome.SENT)
    assert extra == []


@pytest.mark.parametrize("size", [2_000, 200_000])  # nothing of either goes before the gate
def test_the_gate_holds_the_end_of_the_message(size: int) -> None:
    """``start`` with a gate: the message is not ended until the gate opens; a gate
    that gives an error drops the connection in DATA, so nothing is delivered, and
    the error comes back to the caller."""
    ended: list[bool] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await greet(r, w)
        while await r.readline():  # MAIL (or EOF)
            await r.readline()
            await r.readline()
            w.write(ENVELOPE_OK)
            try:
                await read_body(r)
            except asyncio.IncompleteReadError:
                ended.append(False)
                w.close()
                return
            ended.append(True)
            w.write(b"250 2.0.0 Ok\r\n")
        w.close()

    async def go(srv: Server) -> tuple[Reply | None, BaseException | None, list[bool], str]:
        loop = asyncio.get_running_loop()
        t = SMTPTransport(settings(srv))
        await t.connect()
        resumes: list[Callable[[BaseException | None], None]] = []
        asked = asyncio.Event()
        outcome: asyncio.Future[tuple[Reply | None, BaseException | None]] = \
            loop.create_future()

        def gate(resume: Callable[[BaseException | None], None]) -> bool:
            resumes.append(resume)
            asked.set()
            return False

        def done(reply: Reply | None, error: BaseException | None) -> None:
            outcome.set_result((reply, error))

        env = big_envelope(size)
        assert t.start(env, gate, done) is None
        await asked.wait()
        await asyncio.sleep(0.2)  # the server would have had the end by now
        before = list(ended)
        resumes[0](None)
        first, _ = await outcome
        assert first is not None and first.code == 250
        # The next one: its gate says no.
        outcome = loop.create_future()
        asked.clear()
        assert t.start(env, gate, done) is None
        await asked.wait()
        resumes[1](RuntimeError("the last commit failed"))
        reply, error = await outcome
        for _ in range(200):  # bounded: until the server has seen the drop
            if len(ended) == 2:
                break
            await asyncio.sleep(0.01)
        connected = t.connected
        await t.close()
        return reply, error, before + ended, str(connected)

    reply, error, seen, connected = run(with_server(handle, go), 20)
    assert seen == [True, False]  # nothing before the gate; ended once; then dropped
    assert reply is None and isinstance(error, RuntimeError)
    assert connected == "False"


def test_a_send_given_up_mid_way_never_pairs_its_replies_again() -> None:
    """A send cancelled while its reply is on the way drops the connection: the
    late reply can never be taken for the next message's. The next send reconnects
    and gets its own reply."""
    sessions: list[int] = []
    first_over = asyncio.Event()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        sessions.append(len(sessions))
        await greet(r, w)
        await envelope(r)
        if len(sessions) == 1:
            await asyncio.sleep(0.5)  # the client gives up meanwhile
            w.write(ENVELOPE_OK)
            await r.read(65536)
            w.close()
            first_over.set()
            return
        await take_one(r, w, b"250 2.0.0 Ok: the second\r\n")

    async def go(srv: Server) -> tuple[bool, Reply]:
        t = SMTPTransport(settings(srv))
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(t.send(message()[0]), 0.1)
            connected = t.connected
            second = await t.send(message()[0])
            await first_over.wait()
            return connected, second
        finally:
            await t.close()

    connected, second = run(with_server(handle, go), 20)
    assert not connected
    assert (second.code, second.text) == (250, "2.0.0 Ok: the second")
    assert len(sessions) == 2
