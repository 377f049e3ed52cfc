"""The seam to the network: one SMTP transaction per ``send``, and the pipelined bulk path.

``Transport`` is the one interface the sender sees; tests drive the real
``SMTPTransport`` against misbehaving aiosmtpd servers (tests/smtp_server.py).

How ``SMTPTransport`` is built
------------------------------
aiosmtplib does what it is good at: connecting, the greeting, EHLO, STARTTLS (made
mandatory with ``start_tls=True``: its default ``None`` silently stays in plaintext
when the server does not offer STARTTLS), implicit TLS, AUTH, and their errors.

The bulk path then leaves aiosmtplib's per-message code: its ``sendmail`` runs two
regex passes over each body (line endings, leading dots) and waits one round trip
per command, while our bodies are already CRLF and dot-stuffed once per (issue,
list) by ``mailer.message``. Its reply reader also cannot pipeline: it parses one
reply per ``data_received`` and discards bytes that arrive while a parsed reply
waits for pickup, so several replies in flight would be lost. So once the session
is set up, the established asyncio transport (TCP or TLS) is handed to
``_Wire``, a small protocol of ours (``transport.set_protocol``, public asyncio
API) that queues every complete reply in order. With PIPELINING (RFC 2920) a
transaction is one write of ``MAIL``/``RCPT``/``DATA``, three replies read in
order, then the body and the final reply: two round trips. Without it the same
commands go one at a time.

Replies: 2xx is SENT; 4xx, 552, a drop or a timeout is DEFERRED; other 5xx is
FAILED. A drop, a timeout, a 421 or a reply we cannot pair marks the connection
dead; the next ``send`` reconnects. A refused transaction on a live connection is
followed by RSET. Only problems no retry can fix (STARTTLS missing, TLS or login
rejected, the server refusing the session with 5xx) raise ``SMTPSetupError``:
reporting those per recipient would mark good addresses as bounced.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, cast

import aiosmtplib

from mailer.config import SMTPConfig
from mailer.errors import ConfigError, InvalidInput, RelayMisconfigured
from mailer.validate import wire_address

__all__ = [
    "Envelope",
    "Outcome",
    "Reply",
    "SMTPSettings",
    "SMTPSetupError",
    "SMTPTransport",
    "Transport",
    "classify",
    "send_one",
]


class Outcome(enum.Enum):
    SENT = "sent"  # 2xx
    DEFERRED = "deferred"  # 4xx, 552, drop, timeout: try again later
    FAILED = "failed"  # 5xx except 552: permanent


def classify(code: int) -> Outcome:
    """What an SMTP reply code means for the delivery (RFC 5321 §4.2.1; 552 is
    treated as temporary, as RFC 5321 §4.5.3.1.10 allows for mailbox-full)."""
    if 200 <= code < 300:
        return Outcome.SENT
    if 500 <= code < 600 and code != 552:
        return Outcome.FAILED
    return Outcome.DEFERRED


@dataclass(frozen=True)
class Reply:
    """The server's answer to one transaction. ``code`` 0: no answer (connection drop
    or timeout), ``text`` says what happened. ``stage`` names the step that gave the
    answer ("connect", "mail", "rcpt", "data" or "" for end of data): a 5xx at
    "mail" is about our sender, not about the recipient."""

    code: int
    text: str
    outcome: Outcome
    stage: str = ""
    # True when the refusal is ours, before anything was sent (an address that cannot
    # go on the wire, SMTPUTF8 needed but not offered): the relay never saw it, so it
    # says nothing about the mailbox and should not mark the address bounced.
    local: bool = False


def _reply(code: int, text: str, stage: str = "") -> Reply:
    return Reply(code, text, classify(code), stage)


def _lost(text: str, stage: str = "") -> Reply:
    return Reply(0, text, Outcome.DEFERRED, stage)


@dataclass(frozen=True)
class Envelope:
    """One transaction: ``data`` is the wire form from ``PreparedMessage.personalise``
    (CRLF, dot-stuffed, without the final ``.`` line), or the same in pieces
    (``personalise_pieces``), which the bulk path writes without joining them."""

    sender: str
    recipient: str
    data: bytes | list[bytes]
    # Whether the header holds UTF-8 (RFC 6532), when the message knows it (it is
    # known once per list, but for the To); None: the header is looked at.
    header_utf8: bool | None = None


class SMTPSetupError(RelayMisconfigured):
    """The SMTP server cannot be used as configured; retrying will not help."""


class Transport(Protocol):
    """The seam between the sender and the network."""

    async def connect(self) -> None:
        """Open the session; raise ``SMTPSetupError`` for configuration problems."""

    async def open(self) -> Reply | None:
        """Connect unless the session is up (not yet, or after a drop): None when it
        is, else the failure to report (stage "connect"). Raises ``SMTPSetupError``
        like ``connect``."""

    async def send(self, envelope: Envelope,
                   before_end: Callable[[], Awaitable[None]] | None = None) -> Reply:
        """One transaction. Never raises for SMTP-level failures; reconnects on the
        next call after a drop. ``before_end``, when given, is awaited before the
        message is ended (a big body is written first, a small one after): if it
        raises, the message is not ended
        (the connection is dropped, so nothing of it is delivered) and the error
        propagates."""

    async def close(self) -> None:
        """QUIT politely, without hanging on a dead server."""

    @property
    def eight_bit(self) -> bool:
        """The server offers 8BITMIME (known after connect)."""

    @property
    def relay(self) -> tuple[str, int]:
        """The server's host and port, for messages."""

    @property
    def smtputf8(self) -> bool:
        """The server offers SMTPUTF8, RFC 6531 (known after connect): needed for a
        non-ASCII local part, in the envelope and in the To header."""


@dataclass(frozen=True)
class SMTPSettings:
    host: str
    port: int
    tls: Literal["starttls", "tls", "none"]
    username: str | None
    password: str | None
    timeout: float = 30.0
    local_hostname: str | None = None
    tls_context: ssl.SSLContext | None = None  # e.g. trusting a test certificate

    @classmethod
    def from_config(cls, smtp: SMTPConfig, *, local_hostname: str | None = None) -> SMTPSettings:
        """The settings of the ``[smtp]`` table (password from the environment)."""
        tls: Literal["starttls", "tls", "none"]
        if smtp.tls == "starttls":
            tls = "starttls"
        elif smtp.tls == "tls":
            tls = "tls"
        elif smtp.tls == "none":
            tls = "none"
        else:
            raise ConfigError(f"[smtp] tls = {smtp.tls!r}; use starttls, tls or none")
        return cls(
            host=smtp.host, port=smtp.port, tls=tls, username=smtp.username,
            password=smtp.password, timeout=smtp.timeout, local_hostname=local_hostname,
        )


class _Unavailable(Exception):
    """Connecting failed in a way a later retry may fix."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


def _client(settings: SMTPSettings) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname=settings.host,
        port=settings.port,
        username=settings.username,
        password=settings.password,
        local_hostname=settings.local_hostname,
        timeout=settings.timeout,
        use_tls=settings.tls == "tls",
        start_tls=settings.tls == "starttls",  # never None: no silent plaintext
        tls_context=settings.tls_context,
    )


async def _open(settings: SMTPSettings) -> aiosmtplib.SMTP:
    """Connect, greet, STARTTLS/TLS, EHLO and AUTH; translate aiosmtplib's errors
    into ``SMTPSetupError`` (permanent) or ``_Unavailable`` (retry later)."""
    where = f"{settings.host}:{settings.port}"
    smtp = _client(settings)
    try:
        await smtp.connect()
        if smtp.is_ehlo_or_helo_needed:
            try:
                await smtp.ehlo()
            except aiosmtplib.SMTPHeloError as exc:
                if exc.code != 421 and 500 <= exc.code < 600:
                    await smtp.helo()
                else:
                    raise
    except aiosmtplib.SMTPResponseException as exc:
        smtp.close()
        if 500 <= exc.code < 600:
            what = "login" if isinstance(exc, aiosmtplib.SMTPAuthenticationError) else "session"
            raise SMTPSetupError(
                settings.host, settings.port,
                f"SMTP server {where} refused the {what}: {exc.code} {exc.message}; "
                "check [smtp] host, port, tls, username and the password in $MAILER_SMTP_PASSWORD"
            ) from exc
        raise _Unavailable(_reply(exc.code, exc.message, "connect")) from exc
    except (aiosmtplib.SMTPTimeoutError, TimeoutError) as exc:
        smtp.close()
        raise _Unavailable(_lost(f"timed out connecting to {where}: {exc}", "connect")) from exc
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, OSError) as exc:
        smtp.close()
        if isinstance(exc.__cause__, ssl.SSLError) or isinstance(exc, ssl.SSLError):
            raise SMTPSetupError(
                settings.host, settings.port,
                f"TLS with SMTP server {where} failed: {exc.__cause__ or exc}; "
                "check tls and the server's certificate"
            ) from exc
        raise _Unavailable(_lost(f"cannot connect to {where}: {exc}", "connect")) from exc
    except aiosmtplib.SMTPException as exc:
        # aiosmtplib's own refusals: STARTTLS or AUTH not offered, no usable AUTH method.
        smtp.close()
        hint = ""
        if "AUTH extension" in str(exc):
            # aiosmtplib's own text suggests TLS; for a relay that offers no login at
            # all the fix is in our config (`mailer doctor` tells the two apart).
            hint = "; the server offers no login: remove username from [smtp]"
        elif "STARTTLS" in str(exc):
            hint = (
                "; mailer will not fall back to plaintext: use tls = \"tls\" for port 465, "
                "or tls = \"none\" only for a trusted local relay"
            )
        raise SMTPSetupError(settings.host, settings.port,
                             f"SMTP server {where}: {exc}{hint}") from exc
    return smtp


# --- the wire -------------------------------------------------------------------

_MAX_REPLY = 32 * 1024
_END = b".\r\n"  # the end of DATA, after a body that ends with CRLF
# A body at least this big is written before the wait for the previous message's
# commit (``before_end``) rather than after it.
EARLY_BODY_BYTES = 32 * 1024


class _ConnectionDead(Exception):
    """The connection is gone or out of step; the next send reconnects."""


class _Wire(asyncio.Protocol):
    """Reads every SMTP reply off the connection into a queue, in order, so that
    pipelined replies are never lost; writes raw bytes with flow control."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._buffer = bytearray()
        self._replies: collections.deque[tuple[int, str]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False
        self.error: str | None = None
        # Kept: asyncio.get_running_loop() asks the kernel for the pid on each call,
        # and a read waits on a fresh future for nearly every reply.
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        # The read timeout: one timer per connection, moved on lazily (``_deadline``
        # is the loop time by which the pending read must see a reply) rather than a
        # timer made and cancelled for every read.
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    # asyncio callbacks

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        start = 0
        while True:
            end = self._find_reply_end(start)
            if end < 0:
                break
            if not buf[start : start + 3].isdigit():
                self._fail(f"malformed reply {bytes(buf[start : start + 80])!r}")
                return
            code = int(buf[start : start + 3])
            if buf[start + 3 : start + 4] == b"-":
                lines = buf[start:end].split(b"\n")[:-1]
                text = "\n".join(ln[4:].strip().decode("utf-8", "replace") for ln in lines)
            else:  # one line, as nearly every reply on the bulk path
                text = buf[start + 4 : end].strip().decode("utf-8", "replace")
            self._replies.append((code, text))
            start = end
        if start:
            del buf[:start]  # once per read, not once per reply
        if len(buf) > _MAX_REPLY:
            self._fail("reply too long")
            return
        # Bytes that are not yet a whole reply wake nobody: TCP, TLS records and
        # proxies cut replies anywhere, and the rest follows in a later read.
        if self._replies:
            self._wake()

    def _find_reply_end(self, start: int) -> int:
        """Offset just past the last line of the first complete reply from ``start``,
        or -1."""
        while True:
            nl = self._buffer.find(b"\n", start)
            if nl < 0:
                return -1
            if self._buffer[start + 3 : start + 4] != b"-":
                return nl + 1
            start = nl + 1

    def eof_received(self) -> bool:
        self._fail("server closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc}" if exc else "connection lost")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
        self.transport.close()
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # used by SMTPTransport

    def abort(self, error: str) -> None:
        """Drop the connection at once, without sending what is still buffered."""
        if self.error is None:
            self.error = error
        self.transport.abort()
        self._wake()

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise _ConnectionDead(self.error)
        self.transport.write(data)

    def writelines(self, chunks: Sequence[bytes]) -> None:
        """Several chunks in one write: uvloop (and asyncio from Python 3.12) hands
        them to one vectored send without joining them; asyncio on 3.11 joins."""
        if self.error is not None:
            raise _ConnectionDead(self.error)
        self.transport.writelines(chunks)

    async def drain(self, timeout: float) -> None:
        if self._paused and self.error is None:
            self._drain = self._loop.create_future()
            try:
                await asyncio.wait_for(self._drain, timeout)
            except TimeoutError:
                raise _ConnectionDead(f"timed out writing ({timeout:g} s)") from None
        if self.error is not None:
            raise _ConnectionDead(self.error)

    async def read(self, timeout: float) -> tuple[int, str]:
        """The next complete reply. Only the end of the connection or ``timeout``
        seconds without a complete reply raise ``_ConnectionDead``."""
        if not self._replies and self.error is None:
            loop = self._loop
            self._deadline = loop.time() + timeout
            if self._timer is None or self._timer.when() > self._deadline:
                self._arm(self._deadline)  # none yet, or set for a longer timeout
            try:
                # Woken only by a complete reply, a failure or the deadline; the loop
                # is a guard, so that a wake-up without a reply never passes for one.
                while not self._replies and self.error is None:
                    if self._expired:
                        raise _ConnectionDead(f"no reply within {timeout:g} s")
                    self._waiter = loop.create_future()
                    await self._waiter
            finally:
                self._waiter = None
                self._deadline = None
                self._expired = False
        if self._replies:
            return self._replies.popleft()
        raise _ConnectionDead(self.error or "connection lost")

    def _check_deadline(self) -> None:
        """The timer's callback: the read waiting now has run out of time, or the
        timer moves on to that read's deadline (or stops: no read is waiting)."""
        self._timer = None
        if self._deadline is None or self.error is not None:
            return
        if self._loop.time() < self._deadline:
            self._arm(self._deadline)
            return
        self._expired = True
        self._wake()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._check_deadline)


# --- the transport --------------------------------------------------------------


def _refusal(stage: str, code: int, text: str) -> Reply | None:
    """None if ``code`` is the expected reply at ``stage``, else the Reply to report.
    A reply that is neither expected nor an error means we are out of step."""
    if (code == 354) if stage == "data" else (code // 100 == 2):
        return None
    if code >= 400:
        return _reply(code, text, stage)
    raise _ConnectionDead(f"unexpected reply to {stage.upper()}: {code} {text}")


_ADDR = re.compile(r"[!-;=?-~]+")  # printable ASCII without < > or spaces


def _local(code: int, text: str, stage: str) -> Reply:
    return Reply(code, f"local: {text}", classify(code), stage, local=True)


def _mailbox(address: str, stage: str) -> tuple[bytes, bool] | Reply:
    """The address as it goes between ``<>`` on MAIL/RCPT and whether it needs
    SMTPUTF8; or the local refusal when it cannot go on the wire at all. An IDN
    domain goes in punycode (A-labels), whatever the relay offers."""
    if address.isascii() and _ADDR.fullmatch(address):
        return address.encode("ascii"), False
    try:
        wire = wire_address(address)
    except InvalidInput as e:
        return _local(553, f"5.1.3 address not acceptable: {address!r} ({e})", stage)
    return wire.envelope.encode("utf-8"), wire.smtputf8


class _Wired(NamedTuple):
    """An envelope's addresses as they go on MAIL/RCPT, and whether the transaction
    needs SMTPUTF8. (A tuple: built for every message, a frozen dataclass cost more
    than the checks.)"""

    sender: bytes
    recipient: bytes
    utf8: bool
    sender_utf8: bool


def _wired(envelope: Envelope) -> _Wired | Reply:
    """The envelope ready for the wire, or the local refusal that comes before
    anything is written: an address that cannot go on an SMTP command line."""
    sender = _mailbox(envelope.sender, "mail")
    if isinstance(sender, Reply):
        return sender
    recipient = _mailbox(envelope.recipient, "rcpt")
    if isinstance(recipient, Reply):
        return recipient
    header = envelope.header_utf8
    if header is None:
        header = _utf8_headers(_joined(envelope.data))
    return _Wired(sender[0], recipient[0], sender[1] or recipient[1] or header, sender[1])


def _joined(data: bytes | list[bytes]) -> bytes:
    return data if isinstance(data, bytes) else b"".join(data)


def _utf8_headers(data: bytes) -> bool:
    """The message's header holds UTF-8 (RFC 6532), e.g. a To with a non-ASCII local
    part. Looks at the header only: the body may be 8bit (that is 8BITMIME's job)."""
    end = data.find(b"\r\n\r\n")
    return not (data[:end] if end >= 0 else data).isascii()


class SMTPTransport:
    """One SMTP connection for the bulk path (see the module docstring)."""

    def __init__(self, settings: SMTPSettings) -> None:
        self.settings = settings
        self._smtp: aiosmtplib.SMTP | None = None
        self._wire: _Wire | None = None
        self._eight_bit = False
        self._smtputf8 = False
        self._size = False
        self.pipelining = False

    @property
    def eight_bit(self) -> bool:
        return self._eight_bit

    @property
    def relay(self) -> tuple[str, int]:
        return self.settings.host, self.settings.port

    @property
    def smtputf8(self) -> bool:
        return self._smtputf8

    @property
    def connected(self) -> bool:
        return self._wire is not None and self._wire.error is None

    async def connect(self) -> None:
        """Open the session. Raises ``SMTPSetupError`` when the settings cannot work,
        and ``ConnectionError`` when the server is unavailable for now."""
        try:
            await self._connect()
        except _Unavailable as exc:
            r = exc.reply
            raise ConnectionError(f"{r.code} {r.text}" if r.code else r.text) from exc

    async def _connect(self) -> None:
        await self._drop()
        smtp = await _open(self.settings)
        if smtp.transport is None:  # pragma: no cover
            smtp.close()
            raise _Unavailable(_lost("aiosmtplib gave no transport", "connect"))
        # uvloop's transports do not derive from asyncio.Transport (Cython classes),
        # yet are one: the same methods, set_protocol included.
        transport = cast(asyncio.Transport, smtp.transport)
        self._eight_bit = smtp.supports_extension("8bitmime")
        self._smtputf8 = smtp.supports_extension("smtputf8")
        self.pipelining = smtp.supports_extension("pipelining")
        self._size = smtp.supports_extension("size")
        # From here on the connection's bytes come to _Wire, not to aiosmtplib.
        wire = _Wire(transport)
        transport.set_protocol(wire)
        self._smtp, self._wire = smtp, wire

    async def open(self) -> Reply | None:
        if self.connected:
            return None
        try:
            await self._connect()
        except _Unavailable as exc:
            return exc.reply
        return None

    async def send(self, envelope: Envelope,
                   before_end: Callable[[], Awaitable[None]] | None = None) -> Reply:
        # Local refusals come before anything is written: an address that cannot go
        # on an SMTP command line, a message that needs SMTPUTF8 the relay lacks.
        wired = _wired(envelope)
        if isinstance(wired, Reply):
            return wired
        failure = await self.open()
        if failure is not None:
            return failure
        assert self._wire is not None
        wire = self._wire
        if wired.utf8 and not self._smtputf8:
            return _no_smtputf8(envelope, wired.sender_utf8)
        try:
            reply = await self._transaction(wire, envelope, wired.sender, wired.recipient,
                                            wired.utf8, before_end)
        except _ConnectionDead as exc:
            await self._drop()
            return _lost(str(exc))
        except asyncio.CancelledError:
            # Cancelled mid-transaction: replies may still be on the way, so this
            # connection can never be trusted to pair them again.
            wire.transport.abort()
            raise
        if reply.code == 421:
            await self._drop()
        return reply

    async def _transaction(self, wire: _Wire, env: Envelope, sender: bytes, recipient: bytes,
                           utf8: bool, before_end: Callable[[], Awaitable[None]] | None
                           ) -> Reply:
        timeout = self.settings.timeout
        params = b" BODY=8BITMIME" if self._eight_bit else b""
        if utf8:  # RFC 6531 §3.4: the whole transaction, envelope and header, is UTF-8
            params += b" SMTPUTF8"
        pieces = [env.data] if isinstance(env.data, bytes) else env.data
        size = sum(map(len, pieces))
        if self._size:  # RFC 1870: lets the server refuse an oversized message early
            params += b" SIZE=%d" % size
        commands = [
            ("mail", b"MAIL FROM:<" + sender + b">" + params + b"\r\n"),
            ("rcpt", b"RCPT TO:<" + recipient + b">\r\n"),
            ("data", b"DATA\r\n"),
        ]
        refusal: Reply | None = None
        if self.pipelining:
            wire.write(b"".join(cmd for _, cmd in commands))
            # Read every reply we asked for, so that the next transaction is paired
            # with its own replies; stop early only on 421 (the server is closing).
            for stage, _ in commands:
                code, text = await wire.read(timeout)
                if code == 421:
                    return _reply(code, text, stage)
                refusal = refusal or _refusal(stage, code, text)
        else:
            for stage, cmd in commands:
                wire.write(cmd)
                code, text = await wire.read(timeout)
                refusal = _refusal(stage, code, text)
                if refusal is not None:
                    break
        data_code = code
        if data_code == 354 and refusal is not None:
            # The server wants data although MAIL or RCPT was refused (RFC 2920 §3.1):
            # end an empty message rather than deliver the body to nobody.
            wire.write(b".\r\n")
            await wire.read(timeout)
        if refusal is not None:
            if refusal.code != 421:
                await self._rset(wire)
            return refusal
        last = next((p for p in reversed(pieces) if p), b"")
        end = _END if last.endswith(b"\r\n") else b"\r\n" + _END
        if before_end is not None:
            # A big body goes out while we wait, for the server to read meanwhile; a
            # small one waits, so that body and end stay one write.
            early = size >= EARLY_BODY_BYTES
            if early:
                wire.writelines(pieces)
            try:
                await before_end()
            except BaseException:
                # Not to be ended: dropped in DATA, nothing of the message is delivered.
                wire.abort("the message was not to be ended")
                raise
            if early:
                pieces = []
        wire.writelines((*pieces, end))
        await wire.drain(timeout)
        code, text = await wire.read(timeout)
        if code // 100 != 2 and code != 421:
            await self._rset(wire)
        return _reply(code, text)

    async def _rset(self, wire: _Wire) -> None:
        """Reset the envelope after a refused transaction, so the next one starts clean."""
        wire.write(b"RSET\r\n")
        code, text = await wire.read(self.settings.timeout)
        if code // 100 != 2:
            raise _ConnectionDead(f"RSET refused: {code} {text}")

    async def close(self) -> None:
        """QUIT and close; waits at most a few seconds for a dead server."""
        wire = self._wire
        if wire is not None and wire.error is None:
            try:
                wire.write(b"QUIT\r\n")
                await wire.read(min(self.settings.timeout, 5.0))
            except _ConnectionDead:
                pass
        await self._drop()

    async def _drop(self) -> None:
        """Close the connection (if any) and wait briefly until its socket is shut."""
        smtp, wire = self._smtp, self._wire
        self._smtp = self._wire = None
        if smtp is not None:
            smtp.close()  # closes the transport and releases aiosmtplib's connect lock
        if wire is not None:
            wire.transport.close()
            try:
                await asyncio.wait_for(asyncio.shield(wire.closed), 5.0)
            except TimeoutError:
                wire.transport.abort()


def _no_smtputf8(envelope: Envelope, sender_needs_it: bool) -> Reply:
    """The local refusal of a message that only SMTPUTF8 can carry (RFC 6531 §3.2:
    never downgraded). Enhanced codes as RFC 6533 §3: 5.6.7 for the address."""
    if sender_needs_it:
        return _local(553, "5.6.7 the relay does not offer SMTPUTF8, needed for the sender "
                      f"{envelope.sender}", "mail")
    return _local(553, "5.6.7 the relay does not offer SMTPUTF8, needed for "
                  f"{envelope.recipient}", "rcpt")


# --- the single-message path ----------------------------------------------------

_STUFFED = re.compile(rb"(?m)^\.\.")


async def send_one(settings: SMTPSettings, envelope: Envelope) -> Reply:
    """Send one message with plain aiosmtplib (test sends). ``envelope.data`` is the
    same wire form as for the bulk path; aiosmtplib stuffs dots itself, so they are
    unstuffed first. Raises ``SMTPSetupError`` like ``SMTPTransport.connect``."""
    wired = _wired(envelope)
    if isinstance(wired, Reply):
        return wired
    try:
        smtp = await _open(settings)
    except _Unavailable as exc:
        return exc.reply
    if wired.utf8 and not smtp.supports_extension("smtputf8"):
        smtp.close()
        return _no_smtputf8(envelope, wired.sender_utf8)
    options = ["BODY=8BITMIME"] if smtp.supports_extension("8bitmime") else []
    if wired.utf8:
        options.append("SMTPUTF8")
    message = _STUFFED.sub(b".", _joined(envelope.data))
    try:
        _, text = await smtp.sendmail(
            wired.sender.decode(), [wired.recipient.decode()], message, mail_options=options
        )
        reply = _reply(250, text)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        first = exc.recipients[0]
        reply = _reply(first.code, first.message, "rcpt")
    except aiosmtplib.SMTPSenderRefused as exc:
        reply = _reply(exc.code, exc.message, "mail")
    except aiosmtplib.SMTPResponseException as exc:
        reply = _reply(exc.code, exc.message)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
        return _lost(str(exc))
    finally:
        if not smtp.is_connected:
            smtp.close()
    try:
        await asyncio.wait_for(smtp.quit(), min(settings.timeout, 5.0))
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        smtp.close()
    return reply
