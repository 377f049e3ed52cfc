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
API) that reads every complete reply in order. A transaction runs in its
callbacks, moved on by each reply, and ends by calling the sender back from the
callback that read its last reply (``SMTPTransport.start``), so the sender can
begin the next one there without a task waking up. With PIPELINING (RFC 2920) a
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
import functools
import re
import ssl
from collections.abc import Callable, Sequence
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
    "Transaction",
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


class Reply(NamedTuple):
    """The server's answer to one transaction. ``code`` 0: no answer (connection drop
    or timeout), ``text`` says what happened. ``stage`` names the step that gave the
    answer ("connect", "mail", "rcpt", "data" or "" for end of data): a 5xx at
    "mail" is about our sender, not about the recipient. (A tuple, as ``Envelope``:
    one per message, and a frozen dataclass costs twice as much to make.)"""

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


class Envelope(NamedTuple):
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

    def start(self, envelope: Envelope, gate: Gate | None, done: Done,
              feed: Feed | None = None) -> Reply | None:
        """Begin one transaction on the open connection, from a callback: the reply at
        once for a local refusal, else None and ``done`` follows (see
        ``SMTPTransport.start``). ``gate``, when given, is asked before the message
        is ended; ``feed`` gives the
        next transaction as the message is ended."""

    def prepare(self, envelope: Envelope, gate: Gate | None, done: Done,
                feed: Feed | None = None) -> Transaction | Reply:
        """The transaction for ``envelope`` (what a ``Feed`` returns), or its local
        refusal."""

    def begin(self, txn: Transaction) -> Reply | None:
        """Put a prepared transaction on the wire (see ``SMTPTransport.begin``)."""

    async def send(self, envelope: Envelope) -> Reply:
        """One transaction. Never raises for SMTP-level failures; reconnects on the
        next call after a drop."""

    def abort(self) -> None:
        """Give up the transaction in flight and drop the connection (cancelled)."""

    @property
    def connected(self) -> bool:
        """The session is up: ``start`` may be called."""

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
_CRLF_END = b"\r\n" + _END
_STAGES = ("mail", "rcpt", "data")

# Where a transaction stands (``_Txn.state``): waiting for the replies to MAIL, RCPT
# and DATA; for the reply to an empty message's end (DATA accepted although MAIL or
# RCPT was refused); for the gate to open; for the body to drain; for the reply to
# the end of the message; for the reply to RSET.
_ENVELOPE, _EMPTY_DATA, _GATE, _DRAIN, _FINAL, _RSET = range(6)

# The gate of a message (``Transport.start``): called with a ``resume`` callback once
# the body may be ended; True means "end it now" (``resume`` is not called), False
# means ``resume(None)`` ends it later, or ``resume(error)`` drops the connection
# instead, so that nothing of the message is delivered.
Resume = Callable[[BaseException | None], None]
Gate = Callable[[Resume], bool]
# How a transaction ends: its reply, or the error its gate gave (then None).
Done = Callable[[Reply | None, BaseException | None], None]
# The sender's next transaction (``SMTPTransport.prepare``), asked for as a message is
# ended: with PIPELINING its commands go in the same write as that end, so a message
# costs one round trip and one write instead of two. None: nothing more for now.
Feed = Callable[[], "Transaction | None"]


# A reply's three digits to its code, looked up: int() of bytes goes through the
# parser of numbers in any base, four times per message.
_CODES = {b"%03d" % n: n for n in range(1000)}


class _ConnectionDead(Exception):
    """The connection is gone or out of step; the next send reconnects."""


class _Txn:
    """One transaction on the wire, moved on by its replies (``_Wire.begin``)."""

    __slots__ = ("answered", "commands", "done", "end", "feed", "gate", "pieces",
                 "pipelined", "refusal", "result", "state", "timeout", "written")

    def __init__(self, commands: list[bytes], pipelined: bool, pieces: Sequence[bytes],
                 end: bytes, gate: Gate | None, done: Done,
                 timeout: float, feed: Feed | None) -> None:
        self.commands = commands
        self.feed = feed
        self.pipelined = pipelined
        self.pieces = pieces
        self.end = end
        self.gate = gate
        self.done = done
        self.timeout = timeout
        self.state = _ENVELOPE
        self.written = 0  # commands written
        self.answered = 0  # replies to them read
        self.refusal: Reply | None = None  # the first refusal of MAIL, RCPT or DATA
        self.result: Reply | None = None  # what to report once RSET is answered


Transaction = _Txn  # what ``prepare`` makes, and a ``Feed`` gives back


class _Wire(asyncio.Protocol):
    """Reads every SMTP reply off the connection, in order, so that pipelined replies
    are never lost; writes raw bytes with flow control.

    A transaction (``begin``) runs in the protocol's own callbacks: each reply moves
    it on, and its ``done`` is called from the callback that read the last reply, so
    the sender can begin the next one there (no task wakes up per reply). Replies
    read with no transaction waiting for them are queued, for ``read`` or for the
    next transaction, always in order."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._buffer = bytearray()
        # Each reply's code, and its text as read: a line (bytes, code and all) whose
        # text is decoded only when it is wanted (``_text``); a reply of several
        # lines is joined as text at once.
        self._replies: collections.deque[tuple[int, bytes | str]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.error: str | None = None
        self._txn: _Txn | None = None  # the transaction whose replies come first
        self._queued: _Txn | None = None  # the next, its commands already written
        # Kept: asyncio.get_running_loop() asks the kernel for the pid on each call.
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
        if not self._buffer and data.endswith(b"\n"):
            # Nearly every read on the bulk path: whole one-line replies, nothing
            # left over (a reply cut across reads, or one of several lines, takes
            # the general way below from the line where it starts).
            whole = data.split(b"\n")
            whole.pop()  # after the last newline: nothing
            replies = self._replies
            codes = _CODES
            for i, line in enumerate(whole):
                code = codes.get(line[:3])
                if code is None or line[3:4] == b"-":
                    data = b"\n".join(whole[i:]) + b"\n"
                    break
                replies.append((code, line))
            else:
                self._handle_replies()
                return
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
                for ln in lines:  # RFC 5321 §4.2.1: every line begins with the code
                    if ln[:3] != buf[start : start + 3]:
                        self._fail(f"malformed reply {bytes(ln[:80])!r}")
                        return
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
        self._handle_replies()

    def _handle_replies(self) -> None:
        # Bytes that are not yet a whole reply wake nobody: TCP, TLS records and
        # proxies cut replies anywhere, and the rest follows in a later read.
        if self._replies:
            if self._txn is not None:
                self._pump()
            else:
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
        txn = self._txn
        if txn is not None and txn.state == _DRAIN:
            txn.state = _FINAL
            self._pump()

    def _fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
        self.transport.close()
        self._wake()
        if self._txn is not None:
            self._abandon(_lost(self.error))

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # the transaction in flight

    def begin(self, txn: _Txn) -> None:
        """Start ``txn`` (none may be in flight): MAIL, RCPT and DATA in one write with
        PIPELINING, else one at a time; ``txn.done`` follows from a callback."""
        self._txn = txn
        if txn.pipelined:
            self.transport.write(b"".join(txn.commands))
            txn.written = len(txn.commands)
        else:
            self.transport.write(txn.commands[0])
            txn.written = 1
        self._pump()

    def _pump(self) -> None:
        """Hand the queued replies to the transaction in flight, in order; when it
        waits for one more, its read timeout runs from now."""
        while (txn := self._txn) is not None and txn.state != _GATE and txn.state != _DRAIN:
            if not self._replies:
                self._deadline = deadline = self._loop.time() + txn.timeout
                if self._timer is None or self._timer.when() > deadline:
                    self._arm(deadline)  # none yet, or set for a longer timeout
                return
            code, raw = self._replies.popleft()
            self._step(txn, code, raw)

    def _step(self, txn: _Txn, code: int, raw: bytes | str) -> None:
        """One reply to ``txn`` (its text as read: ``_text``)."""
        state = txn.state
        if state == _ENVELOPE:
            stage = _STAGES[txn.answered]
            txn.answered += 1
            if code == 421:  # the server is closing: no other reply is read
                self._closing(_reply(code, _text(raw), stage))
                return
            if code != 250 or stage == "data":  # 250 to MAIL and RCPT: nearly always
                try:
                    refusal = _refusal(stage, code, raw)
                except _ConnectionDead as e:
                    self._die(str(e))
                    return
                if txn.refusal is None:
                    txn.refusal = refusal
            if txn.answered < txn.written:
                return  # pipelined: every reply asked for is read, so that the next
                # transaction is paired with its own
            if txn.refusal is None and txn.written < len(txn.commands):
                self.transport.write(txn.commands[txn.written])  # one at a time
                txn.written += 1
                return
            if txn.refusal is not None:
                if code == 354:
                    # The server wants data although MAIL or RCPT was refused (RFC 2920
                    # §3.1): end an empty message rather than deliver the body to nobody.
                    self.transport.write(_END)
                    txn.state = _EMPTY_DATA
                    return
                self._reset(txn, txn.refusal)
                return
            self._body(txn)
        elif state == _FINAL:
            text = _text(raw)
            if code // 100 == 2:
                self._finish(_reply(code, text))
            elif code == 421:
                self._closing(_reply(code, text))
            elif self._queued is not None:
                # The reply to the end of data ends the transaction, whatever it is
                # (RFC 5321 §4.1.1.4): the next one, already on its way, starts clean.
                self._finish(_reply(code, text))
            else:
                self._reset(txn, _reply(code, text))
        elif state == _EMPTY_DATA:  # its reply says nothing more
            assert txn.refusal is not None
            self._reset(txn, txn.refusal)
        elif code // 100 == 2:  # _RSET
            assert txn.result is not None
            self._finish(txn.result)
        else:
            self._die(f"RSET refused: {code} {_text(raw)}")

    def _body(self, txn: _Txn) -> None:
        """DATA is accepted: the body and its end, in one write once the gate is open
        (the gate waits at most for the end of the loop's turn: writing a big body
        ahead of it, as when it waited for a commit, only cost a second write)."""
        if txn.gate is not None:
            txn.state = _GATE
            self._deadline = None  # no read is waiting
            if not txn.gate(self._gate_opened):
                return
        self._end(txn)

    def _gate_opened(self, error: BaseException | None) -> None:
        txn = self._txn
        if txn is None or txn.state != _GATE:
            return  # the connection ended meanwhile: reported already
        if error is not None:
            # Not to be ended: dropped in DATA, nothing of the message is delivered.
            self.abort("the message was not to be ended")
            self._txn = None
            txn.done(None, error)
            self._abandon(None)
            return
        self._end(txn)
        self._pump()

    def _end(self, txn: _Txn) -> None:
        nxt = txn.feed() if txn.pipelined and txn.feed is not None else None
        if nxt is None:
            self.transport.writelines((*txn.pieces, txn.end))
        else:  # RFC 2920 §3.1: MAIL may follow the end of data in the same group
            self.transport.writelines((*txn.pieces, txn.end, *nxt.commands))
            nxt.written = len(nxt.commands)
            self._queued = nxt
        txn.pieces = ()
        if self._paused:  # the reply is read once the body is written (or times out)
            txn.state = _DRAIN
            self._deadline = deadline = self._loop.time() + txn.timeout
            self._arm(deadline)
        else:
            txn.state = _FINAL

    def _reset(self, txn: _Txn, result: Reply) -> None:
        """Reset the envelope after a refused transaction, so the next one starts clean;
        ``result`` is reported once RSET is answered."""
        self.transport.write(b"RSET\r\n")
        txn.state = _RSET
        txn.result = result

    def _closing(self, reply: Reply) -> None:
        """A 421: reported, and the connection is done with."""
        if self.error is None:
            self.error = f"the server is closing: {reply.code} {reply.text}"
        self.transport.close()
        self._abandon(reply)

    def _die(self, error: str) -> None:
        """Out of step or timed out: the transaction is lost, the connection closed."""
        if self.error is None:
            self.error = error
        self.transport.close()
        self._abandon(_lost(error))

    def _finish(self, reply: Reply) -> None:
        """``reply`` ends the first transaction; the queued one (if any) is next."""
        txn = self._txn
        assert txn is not None
        self._txn, self._queued = self._queued, None
        self._deadline = None
        txn.done(reply, None)

    def _abandon(self, reply: Reply | None) -> None:
        """The connection is over: the first transaction ends with ``reply`` (unless
        reported already: None), and a queued one, whose MAIL may have been read but
        none of whose replies were, as never tried (stage "queued")."""
        txn, queued = self._txn, self._queued
        self._txn = self._queued = None
        self._deadline = None
        if txn is not None and reply is not None:
            txn.done(reply, None)
        if queued is not None:
            queued.done(_lost(self.error or "connection lost", "queued"), None)

    # used by SMTPTransport

    def abort(self, error: str) -> None:
        """Drop the connection at once, without sending what is still buffered."""
        if self.error is None:
            self.error = error
        self.transport.abort()
        self._wake()

    def cancel(self) -> None:
        """Forget the transactions in flight, and drop the connection at once."""
        self._txn = self._queued = None
        self.abort("the transaction was given up")

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise _ConnectionDead(self.error)
        self.transport.write(data)

    async def read(self, timeout: float) -> tuple[int, str]:
        """The next complete reply, outside a transaction (QUIT). Only the end of the
        connection or ``timeout`` seconds without a complete reply raise
        ``_ConnectionDead``."""
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
            code, raw = self._replies.popleft()
            return code, _text(raw)
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
        txn = self._txn
        if txn is not None:
            self._die(f"timed out writing ({txn.timeout:g} s)" if txn.state == _DRAIN
                      else f"no reply within {txn.timeout:g} s")
            return
        self._expired = True
        self._wake()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._check_deadline)


# --- the transport --------------------------------------------------------------


def _refusal(stage: str, code: int, raw: bytes | str) -> Reply | None:
    """None if ``code`` is the expected reply at ``stage``, else the Reply to report.
    A reply that is neither expected nor an error means we are out of step."""
    if (code == 354) if stage == "data" else (code // 100 == 2):
        return None
    if code >= 400:
        return _reply(code, _text(raw), stage)
    raise _ConnectionDead(f"unexpected reply to {stage.upper()}: {code} {_text(raw)}")


def _text(raw: bytes | str) -> str:
    """A reply's text (``_Wire._replies``): a line read as it came, code and all,
    decoded now; text already joined, as it is. Three of a message's four replies
    never need theirs."""
    if isinstance(raw, str):
        return raw
    return raw[4:].strip().decode("utf-8", "replace")


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


@functools.lru_cache(maxsize=64)
def _sender_mailbox(address: str) -> tuple[bytes, bool] | Reply:
    """``_mailbox`` for MAIL: checked once per sender address, not per message (one
    address for a whole campaign, unless each delivery has its own, VERP)."""
    return _mailbox(address, "mail")


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
    sender = _sender_mailbox(envelope.sender)
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

    def start(self, envelope: Envelope, gate: Gate | None, done: Done,
              feed: Feed | None = None) -> Reply | None:
        """Begin one transaction on the open connection (``connected``); callable from
        a callback. Returns the reply at once when nothing is to go on the wire (a
        local refusal); else None, and ``done(reply, None)`` follows from a callback
        of the connection, or ``done(None, error)`` when the gate gave ``error``.
        After a reply that ends the connection (a drop, a timeout, 421),
        ``connected`` is False. With ``feed``, the next transaction is asked for as
        this message is ended (``Feed``); each one's ``done`` comes in order, and one
        that never got a reply before the connection ended is reported with stage
        "queued": nothing of it was tried."""
        txn = self.prepare(envelope, gate, done, feed)
        if isinstance(txn, Reply):
            return txn
        return self.begin(txn)

    def begin(self, txn: Transaction) -> Reply | None:
        """Put a prepared transaction on the wire; the reply at once (stage "connect":
        nothing was tried) when the session has ended meanwhile."""
        wire = self._wire
        if wire is None or wire.error is not None:
            return _lost(wire.error or "not connected" if wire else "not connected", "connect")
        wire.begin(txn)
        return None

    def prepare(self, envelope: Envelope, gate: Gate | None, done: Done,
                feed: Feed | None = None) -> Transaction | Reply:
        """The transaction for ``envelope``, ready to go on this connection (for
        ``start``, or for a ``Feed`` to return); or its local refusal, which comes
        before anything is written: an address that cannot go on an SMTP command
        line, a message that needs SMTPUTF8 the relay lacks."""
        wired = _wired(envelope)
        if isinstance(wired, Reply):
            return wired
        if wired.utf8 and not self._smtputf8:
            return _no_smtputf8(envelope, wired.sender_utf8)
        params = b" BODY=8BITMIME" if self._eight_bit else b""
        if wired.utf8:  # RFC 6531 §3.4: the whole transaction, envelope and header, is UTF-8
            params += b" SMTPUTF8"
        data = envelope.data
        pieces = (data,) if isinstance(data, bytes) else data
        if self._size:  # RFC 1870: lets the server refuse an oversized message early
            params += b" SIZE=%d" % sum(map(len, pieces))
        commands = [b"MAIL FROM:<" + wired.sender + b">" + params + b"\r\n",
                    b"RCPT TO:<" + wired.recipient + b">\r\n", b"DATA\r\n"]
        end = _CRLF_END  # unless the body's last bytes are a CRLF
        for piece in reversed(pieces):
            if piece:
                if piece.endswith(b"\r\n"):
                    end = _END
                break
        return _Txn(commands, self.pipelining, pieces, end, gate, done, self.settings.timeout,
                    feed)

    async def send(self, envelope: Envelope) -> Reply:
        """One transaction (``start``), connecting first if need be."""
        wired = _wired(envelope)
        if isinstance(wired, Reply):
            return wired
        failure = await self.open()
        if failure is not None:
            return failure
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def done(reply: Reply | None, error: BaseException | None) -> None:
            if not fut.done():
                assert reply is not None  # no gate, so no gate's error
                fut.set_result(reply)

        reply = self.start(envelope, None, done)
        if reply is None:
            try:
                reply = await fut
            except asyncio.CancelledError:
                self.abort()
                raise
        if not self.connected:
            await self._drop()
        return reply

    def abort(self) -> None:
        """Give up the transaction in flight (cancelled): its replies may still be on
        the way, so this connection can never be trusted to pair them again."""
        if self._wire is not None:
            self._wire.cancel()

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
