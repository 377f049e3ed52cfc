"""Real SMTP servers on 127.0.0.1 for tests: aiosmtpd with selectable misbehaviour.

    with smtp_server(Behaviour(pipelining=True, refuse={"x@example.org": 550})) as srv:
        ... send to 127.0.0.1:srv.port ...
        assert srv.messages[0].rcpt_tos == ["a@example.org"]

``Behaviour`` picks what the server does; ``srv.messages`` records every message it
accepted (envelope and the bytes as received, dot-unstuffed by aiosmtpd). Two
behaviours need a server that is not SMTP at all: ``greeting_421`` (answers 421 and
hangs up) and ``silent`` (accepts the connection and never answers); those run on a
plain socket server. Everything is stopped, threads joined and sockets closed when
the ``with`` block ends.

The module needs aiosmtpd only (no pytest): bench/faults.py runs the same servers.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class Behaviour:
    pipelining: bool = False  # advertise PIPELINING (aiosmtpd reads pipelined commands)
    greeting_421: bool = False  # plain socket: "421" at connect, then hang up
    silent: bool = False  # plain socket: accept, never answer
    mail_421: bool = False  # 421 to MAIL FROM, then close
    refuse_sender: int = 0  # answer MAIL FROM with this 5xx code
    temp_failures: int = 0  # the first N RCPTs get temp_code
    temp_code: int = 451
    refuse: dict[str, int] = field(default_factory=dict)  # recipient -> 550/553/554
    # A broken server that answers DATA with 354 even though every RCPT was refused.
    data_after_refusal: bool = False
    data_552: bool = False  # 552 at the end of DATA
    drop_after_data: int = 0  # hang up without replying after the final "." this many times
    starttls: ssl.SSLContext | None = None  # offer STARTTLS with this server context
    # Cut every reply the server writes: "random" into 1-4 pieces at random byte
    # offsets, "bytes" one byte at a time; each piece is its own write (its own TLS
    # record under STARTTLS), a little later than the one before.
    split: str = ""
    seed: int = 0
    multiline: bool = False  # answer MAIL, RCPT and the end of DATA in two lines
    ehlo_421: int = 0  # the first N sessions get 421 to EHLO, then the server hangs up
    ehlo_421_at: tuple[int, ...] = ()  # these sessions (1 is the first) get the same
    smtputf8: bool = True  # advertise SMTPUTF8 (RFC 6531), as aiosmtpd's Controller does
    eight_bit_sessions: int = 0  # >0: only the first N sessions advertise 8BITMIME
    # Faults at random (drawn from ``seed``), for storms: the share of sessions that
    # get 421 to EHLO (then the server hangs up), of MAIL commands that get 421 (the
    # same), of RCPTs that get ``temp_code``, and of messages the server takes and
    # then hangs up without replying to: the relay has it, the sender cannot know, so
    # the retry is a duplicate (each one is listed in ``Server.dropped``).
    ehlo_421_rate: float = 0.0
    mail_421_rate: float = 0.0
    temp_rate: float = 0.0
    drop_rate: float = 0.0
    headers_only: bool = False  # record only each message's header section (saves memory)
    require_starttls: bool = False  # with starttls: refuse MAIL before STARTTLS (530)
    # Offer AUTH (also without TLS) and accept only these user -> password logins.
    logins: dict[str, str] | None = None


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # as received, dot-unstuffed
    mail_options: list[str]


class _Handler:
    def __init__(self, behaviour: Behaviour, messages: list[Received], sessions: list[str],
                 dropped: list[str]) -> None:
        self.b = behaviour
        self.messages = messages
        self.sessions = sessions
        self.dropped = dropped
        self.rng = random.Random(behaviour.seed + 1)  # the faults', not the splitter's
        self.temp_left = behaviour.temp_failures
        self.drops_left = behaviour.drop_after_data
        self.ehlo_421_left = behaviour.ehlo_421
        self.count = 0

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        self.sessions.append(hostname)
        if self.ehlo_421_left > 0 or len(self.sessions) in self.b.ehlo_421_at \
                or self._chance(self.b.ehlo_421_rate):
            self.ehlo_421_left = max(self.ehlo_421_left - 1, 0)
            asyncio.get_running_loop().call_soon(server.transport.close)
            return ["421 4.3.2 Too busy, come back later"]
        if self.b.pipelining:
            responses.insert(-1, "250-PIPELINING")
        if self.b.eight_bit_sessions and len(self.sessions) > self.b.eight_bit_sessions:
            responses = [r for r in responses if r != "250-8BITMIME"]
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        options: list[str],
    ) -> str:
        if self.b.mail_421 or self._chance(self.b.mail_421_rate):
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.3.2 Service shutting down"
        if self.b.refuse_sender:
            return f"{self.b.refuse_sender} 5.7.1 <{address}>: sender not allowed"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250-Sender\r\n250 OK" if self.b.multiline else "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        options: list[str],
    ) -> str:
        if self.temp_left > 0 or self._chance(self.b.temp_rate):
            self.temp_left = max(self.temp_left - 1, 0)
            return f"{self.b.temp_code} 4.3.0 Try again later"
        if address in self.b.refuse:
            if self.b.data_after_refusal:
                envelope.rcpt_tos.append(address)  # the bug: remembers it anyway
            return f"{self.b.refuse[address]} 5.1.1 <{address}>: refused"
        envelope.rcpt_tos.append(address)
        return "250-Recipient\r\n250 OK" if self.b.multiline else "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.drops_left > 0:
            self.drops_left -= 1
            server.transport.abort()  # no reply at all (abort drops the 250 too)
            return "250 never sent"
        if self.b.data_552:
            return "552 5.3.4 Message too big"
        self.count += 1
        data = bytes(envelope.original_content or b"")
        if self.b.headers_only:
            data = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        self.messages.append(Received(
            envelope.mail_from or "", list(envelope.rcpt_tos), data, list(envelope.mail_options),
        ))
        if self._chance(self.b.drop_rate):
            self.dropped.extend(envelope.rcpt_tos)
            server.transport.abort()  # taken, but the 250 never leaves
            return "250 never sent"
        done = f"250 OK message {self.count} for {','.join(envelope.rcpt_tos)}"
        return f"250-2.0.0 Queued\r\n250-as {self.count}\r\n{done}" if self.b.multiline else done

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate


class _Logins:
    """aiosmtpd's authenticator: a login is good when user and password match."""

    def __init__(self, logins: dict[str, str]) -> None:
        self.logins = logins

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: Any) -> AuthResult:
        user = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else ""
        good = user in self.logins and auth_data.password.decode() == self.logins[user]
        return AuthResult(success=good, handled=False)


class _CountingSMTP(SMTP):  # type: ignore[misc]
    """aiosmtpd's server, counting its open connections (``Server.connections``): once
    none is open, every message whose DATA arrived has been stored (aiosmtpd drops
    what is left unread at a hang-up)."""

    def __init__(self, *args: Any, live: list[int], open: set[Any], closing: list[bool],
                 **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._live = live
        self._open = open  # every session's transports, for the stop
        self._closing = closing  # the server is stopping (``_Controller.cancel_tasks``)
        self._mine: list[Any] = []  # this session's (a second one after STARTTLS)

    def connection_made(self, transport: Any) -> None:
        if not self._mine:  # after STARTTLS it is called again, for the same connection
            self._live[0] += 1
        self._open.add(transport)
        self._mine.append(transport)
        super().connection_made(transport)
        if self._closing[0]:  # accepted just before the listener closed
            transport.abort()

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self._live[0] -= 1
            self._open.difference_update(self._mine)


def _abort_all(transports: set[Any]) -> None:
    for t in list(transports):
        t.abort()


class _SplittingSMTP(_CountingSMTP):
    """aiosmtpd's server, writing each reply in pieces (``Behaviour.split``), all but
    the greeting: the Controller's own start-up probe reads only its first recv."""

    def __init__(self, *args: Any, behaviour: Behaviour, rng: random.Random, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.behaviour = behaviour
        self.rng = rng
        self.greeted = False

    async def push(self, status: str | bytes) -> None:
        if not self.greeted:
            self.greeted = True
            await super().push(status)
            return
        raw = status.encode() if isinstance(status, str) else status
        raw += b"\r\n"
        if self.behaviour.split == "bytes":
            cuts = list(range(1, len(raw)))
        else:
            cuts = sorted(self.rng.sample(range(1, len(raw)), min(len(raw) - 1,
                                                                 self.rng.randint(0, 3))))
        for start, end in zip([0, *cuts], [*cuts, len(raw)], strict=True):
            self._writer.write(raw[start:end])
            await self._writer.drain()
            if end < len(raw):
                # Long enough for the client to read the piece on its own.
                await asyncio.sleep(self.rng.choice((0.0005, 0.001, 0.003)))


class _Controller(Controller):  # type: ignore[misc]
    """aiosmtpd's Controller on port 0: learn the real port before it tests itself."""

    def __init__(self, handler: _Handler, *, live: list[int], **kw: Any) -> None:
        super().__init__(handler, **kw)
        self.behaviour = handler.b
        self.rng = random.Random(handler.b.seed)
        self.live = live
        self.open: set[Any] = set()
        self.closing = [False]  # set once the server is stopping

    def cancel_tasks(self, stop_loop: bool = True) -> None:
        """aiosmtpd's stop, on the server's loop, once every session is closed by the
        server itself: aiosmtpd's leaves open ones unclosed (a client that has just
        hung up, which this thread has not seen yet on a loaded machine; a relay that
        "goes away" under its clients), a ResourceWarning that fails whichever test
        is running when it is collected. The listener goes first, so that no session
        starts meanwhile; one accepted just before, whose ``connection_made`` is still
        queued, closes itself there (``closing``); the loop stops two turns later,
        once every close has run."""
        self.closing[0] = True
        if self.server is not None:
            self.server.close()
        _abort_all(self.open)

        def stop_later(turns: int) -> None:
            if turns:
                self.loop.call_soon(stop_later, turns - 1)
            else:
                _abort_all(self.open)
                super(_Controller, self).cancel_tasks(stop_loop)

        self.loop.call_soon(stop_later, 2)

    def factory(self) -> SMTP:
        if not self.behaviour.split:
            return _CountingSMTP(self.handler, live=self.live, open=self.open,
                                 closing=self.closing, **self.SMTP_kwargs)
        return _SplittingSMTP(self.handler, behaviour=self.behaviour, rng=self.rng,
                              live=self.live, open=self.open, closing=self.closing,
                              **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class _RawServer:
    """A socket server on its own thread: greets with ``greeting`` (or nothing) and
    then only reads, until stopped."""

    def __init__(self, greeting: bytes | None) -> None:
        self.greeting = greeting
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.clients: list[socket.socket] = []
        self.connects: list[float] = []  # time.monotonic() of each connection accepted
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.clients.append(conn)
            self.connects.append(time.monotonic())
            if self.greeting is not None:
                conn.sendall(self.greeting)
                conn.close()

    def __enter__(self) -> _RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        for c in self.clients:
            c.close()
        self.listener.close()


@dataclass
class Server:
    port: int
    messages: list[Received]  # every message accepted, in order
    sessions: list[str]  # one EHLO name per session (after STARTTLS: two)
    host: str = "127.0.0.1"
    # Recipients of messages taken and then dropped unanswered (``drop_rate``).
    dropped: list[str] = field(default_factory=list)
    # Plain socket servers: when each connection was accepted.
    connects: list[float] = field(default_factory=list)
    live: list[int] = field(default_factory=lambda: [0])  # [open connections]

    @property
    def connections(self) -> int:
        """Connections open now (aiosmtpd servers; the plain socket ones say 0)."""
        return self.live[0]

    def settle(self, timeout: float = 120.0) -> None:
        """Let a message whose DATA was complete when its sender was killed be stored:
        once the sender's connections are closed (the kernel closes a killed
        process's sockets), the server has handled everything it will ever store."""
        deadline = time.monotonic() + timeout
        while self.connections:
            assert time.monotonic() < deadline, f"{self.connections} connections still open"
            time.sleep(0.01)


def make_certificate(folder: Path) -> tuple[Path, Path] | None:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem in ``folder``), for
    STARTTLS servers; None without the openssl command."""
    if shutil.which("openssl") is None:
        return None
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@contextmanager
def smtp_server(behaviour: Behaviour | None = None) -> Iterator[Server]:
    """Run a test SMTP server on 127.0.0.1 for the duration of the ``with`` block."""
    b = behaviour or Behaviour()
    messages: list[Received] = []
    sessions: list[str] = []
    if b.greeting_421 or b.silent:
        with _RawServer(b"421 4.3.2 Too busy, try later\r\n" if b.greeting_421 else None) as raw:
            yield Server(raw.port, messages, sessions, connects=raw.connects)
        return
    dropped: list[str] = []
    kwargs: dict[str, Any] = {"enable_SMTPUTF8": b.smtputf8}
    if b.starttls is not None:
        kwargs["tls_context"] = b.starttls
        kwargs["require_starttls"] = b.require_starttls
    if b.logins is not None:
        kwargs["authenticator"] = _Logins(b.logins)
        kwargs["auth_require_tls"] = False
    live = [0]
    controller = _Controller(_Handler(b, messages, sessions, dropped), live=live,
                             hostname="127.0.0.1", port=0, ready_timeout=5, **kwargs)
    controller.start()
    try:
        yield Server(controller.port, messages, sessions, dropped=dropped, live=live)
    finally:
        controller.stop()  # sessions still open are closed first (``cancel_tasks``)
