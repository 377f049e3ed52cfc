"""One pass over the bounce mailbox (IMAP, with imapclient).

Each message is read (``BODY.PEEK[]``: reading marks nothing), understood
(``classify``), tied to its delivery by a verified VERP address (``verp``), and
applied in one database transaction keyed by the SHA-256 of its bytes. Only then
is it moved (or flagged) in the mailbox, so a crash at any point loses nothing:
a message recorded but not yet moved is found again on the next pass, and the
key makes it count once.

Where messages go:

- understood and applied, or not a failure (delay, auto-reply): ``processed_folder``
  (or deleted with ``delete_processed``, or flagged ``$MailerProcessed`` in place);
- forged, for an unknown delivery, or another sender's mail: ``aside_folder`` (or
  flagged ``$MailerAside``); nothing changes for them;
- not understood: left in the folder, flagged ``$MailerUnreadable``, counted.

Nothing is deleted unless ``delete_processed`` says so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import hashlib
import re
import ssl
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email.message import Message

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from ..clock import utc_now
from ..config import BouncesConfig, Config
from ..errors import MailerError
from ..message import make_message_id
from ..store import BounceInput, Scoring, Store
from .classify import Kind, classify, decoded_header
from .verp import MAC_CHARS, VerpSigner

PROCESSED = b"$MailerProcessed"
ASIDE = b"$MailerAside"
UNREADABLE = b"$MailerUnreadable"
PROBE_HEADER = "X-Mailer-Probe"
BATCH = 20
# Headers of the bounce itself that carry the address it was sent to, best first.
_TO_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "X-Rcpt-To",
               "To", "Original-Recipient", "Final-Recipient")
# Ours: ``<c12.r345.<sig>@domain>``, the sig a VERP mac (signed, with [bounces]) or an
# unkeyed digest (mail sent before bounces were configured).
_MSGID = re.compile(r"<c([0-9]{1,12})\.r([0-9]{1,12})\.([a-z2-7]{16}|[0-9a-f]{10})"
                    r"@([A-Za-z0-9.-]+)>", re.ASCII)


class MailboxError(MailerError):
    """The bounce mailbox cannot be reached or used as configured."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host, self.port, self.reason = host, port, reason
        super().__init__(f"bounce mailbox {host}:{port}: {reason}")


@dataclass
class PassReport:
    """What one pass did, by outcome."""

    counts: dict[str, int] = field(default_factory=dict)
    unreadable_waiting: int = 0  # flagged unreadable, waiting for staff (this pass or before)

    def add(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    @property
    def read(self) -> int:
        return sum(self.counts.values())


def connect(cfg: BouncesConfig) -> IMAPClient:
    """A logged-in client, per ``imap_tls``; MailboxError when that fails. The
    password is sent only after TLS is up (or with "none", to a loopback host)."""
    password = cfg.imap_password
    if cfg.imap_user is None or password is None:
        raise MailboxError(cfg.imap_host, cfg.imap_port,
                           "set bounces.imap_user in the config and $MAILER_IMAP_PASSWORD")
    context = _tls_context(cfg)
    try:
        client = IMAPClient(cfg.imap_host, port=cfg.imap_port, ssl=cfg.imap_tls == "tls",
                            ssl_context=context, timeout=cfg.imap_timeout)
        if cfg.imap_tls == "starttls":
            if not client.has_capability("STARTTLS"):
                with contextlib.suppress(OSError, IMAPClientError):
                    client.shutdown()
                raise MailboxError(cfg.imap_host, cfg.imap_port,
                                   "the server does not offer STARTTLS; the password was not "
                                   "sent in clear (if it listens for TLS, usually on port 993, "
                                   'set imap_tls = "tls")')
            client.starttls(context)
        client.login(cfg.imap_user, password)
    except ssl.SSLCertVerificationError as e:
        hint = ("; set bounces.imap_ca_file to the CA certificate that signed it"
                if cfg.imap_ca_file is None else f" against {cfg.imap_ca_file}")
        raise MailboxError(cfg.imap_host, cfg.imap_port,
                           f"the server's certificate does not verify "
                           f"({e.verify_message}){hint}") from None
    except (OSError, IMAPClientError) as e:
        raise MailboxError(cfg.imap_host, cfg.imap_port, str(e) or type(e).__name__) from None
    return client


def _tls_context(cfg: BouncesConfig) -> ssl.SSLContext:
    """Verifying, with the system's CAs or only those of ``imap_ca_file``."""
    if cfg.imap_ca_file is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(cfg.imap_ca_file))
    except (OSError, ValueError) as e:  # missing, unreadable, or not PEM certificates
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise MailboxError(cfg.imap_host, cfg.imap_port,
                           f"bounces.imap_ca_file {cfg.imap_ca_file}: cannot be read as CA "
                           f"certificates ({reason})") from None


class Reader:
    """Understands messages and ties them to deliveries (no mailbox, no database)."""

    def __init__(self, config: Config) -> None:
        assert config.bounces is not None
        self.signer = VerpSigner(config.bounces.address, config.signing_keys())
        self.msgid_domain = config.sender.address.rpartition("@")[2]

    def read(self, raw: bytes, folder: str, *, now: dt.datetime) -> BounceInput:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        item = BounceInput(key=hashlib.sha256(raw).hexdigest(), folder=folder,
                           subject=decoded_header(msg, "Subject"),
                           sender=decoded_header(msg, "From"), kind=Kind.UNREADABLE.value,
                           status=None, text="")
        if msg.get(PROBE_HEADER) is not None:
            return replace(item, kind="probe", text="a `mailer doctor` envelope check")
        try:
            reading = classify(msg)
            candidates = list(self._verp_candidates(msg))
            msgids = list(self._message_ids(msg))
        except Exception as e:  # a message no parser copes with: left for staff
            return replace(item, text=f"cannot be read: {type(e).__name__}")
        item = replace(item, kind=reading.kind.value, status=reading.status, text=reading.text)
        if reading.kind is Kind.UNREADABLE:
            return item
        for campaign, recipient, mac in candidates:
            claim = self.signer.verify(campaign, recipient, mac, now=now)
            if claim is not None:
                return replace(item, campaign_id=claim.campaign_id,
                               recipient_id=claim.recipient_id)
        if candidates:
            c, r, _ = candidates[0]
            return replace(item, aside=f"forged or altered VERP address (c{c}-r{r}: the "
                                       "signature does not match)")
        for cid, rid, domain, sig in msgids:
            # A signed Message-ID names its delivery as surely as a VERP address (the
            # relay rewrote the envelope sender, or the bounce quotes only headers).
            if len(sig) == MAC_CHARS:
                claim = self.signer.verify(str(cid), str(rid), sig, now=now)
                if claim is not None:
                    return replace(item, campaign_id=claim.campaign_id,
                                   recipient_id=claim.recipient_id)
                return replace(item, aside=f"forged or altered Message-ID (c{cid}.r{rid}: the "
                                           "signature does not match)")
            # An unsigned one (mail sent before [bounces]) names the delivery for staff,
            # but a forged one must not stop anyone's mail: nothing changes on it alone.
            return replace(item, campaign_id=cid, recipient_id=rid,
                           aside=f"names campaign {cid} recipient {rid} only by Message-ID "
                                 f"(@{domain}), without a signed VERP address: the relay "
                                 "may rewrite the envelope sender; check by hand")
        return replace(item, aside="not about our mail (no VERP address, no Message-ID "
                                   "of ours)")

    def _verp_candidates(self, msg: Message) -> Iterator[tuple[str, str, str]]:
        for name in _TO_HEADERS:
            for value in msg.get_all(name) or ():
                yield from self.signer.find(str(value))
        for text in _texts(msg):
            yield from self.signer.find(text)

    def _message_ids(self, msg: Message) -> Iterator[tuple[int, int, str, str]]:
        for text in _texts(msg):
            for m in _MSGID.finditer(text):
                cid, rid, sig, domain = int(m.group(1)), int(m.group(2)), m.group(3), \
                    m.group(4)
                if domain.lower() != self.msgid_domain.lower():
                    continue
                if len(sig) == MAC_CHARS or m.group(0) == make_message_id(cid, rid, domain):
                    yield cid, rid, domain, sig


def _texts(msg: Message) -> Iterator[str]:
    """Every header block and every text body of every part, returned messages too."""
    for part in msg.walk():
        yield "\n".join(f"{k}: {v}" for k, v in part.items())
        if part.get_content_maintype() == "text" and not part.is_multipart():
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                yield payload.decode("utf-8", "replace")


def scoring(config: Config, now: dt.datetime) -> Scoring:
    assert config.bounces is not None
    day = now.astimezone(zoneinfo.ZoneInfo(config.timezone)).date().isoformat()
    return Scoring(config.bounces.soft_threshold, config.bounces.score_stale_days, day)


_AFTER_RECORD = Callable[[int, str], None]


def fetch_pass(config: Config, *, clock: Callable[[], dt.datetime] = utc_now,
               limit: int = 1000, after_record: _AFTER_RECORD | None = None) -> PassReport:
    """Read the bounce mailbox once: at most ``limit`` new messages. ``after_record``
    is called with (uid, outcome) after each message is committed and before the
    mailbox is touched (the seam where a test kills the process)."""
    cfg = config.bounces
    if cfg is None:
        raise MailerError(f"{config.path.name}: no [bounces] table; see config.example.toml")
    reader = Reader(config)
    report = PassReport()
    client = connect(cfg)
    try:
        with Store.open(config.database, clock=clock, actor="bounce") as store:
            _pass(client, cfg, store, reader, report, clock=clock, limit=limit,
                  after_record=after_record, config=config)
    except (OSError, IMAPClientError) as e:
        raise MailboxError(cfg.imap_host, cfg.imap_port, str(e) or type(e).__name__) from None
    finally:
        with contextlib.suppress(OSError, IMAPClientError):
            client.logout()
    return report


def _pass(client: IMAPClient, cfg: BouncesConfig, store: Store, reader: Reader,
          report: PassReport, *, clock: Callable[[], dt.datetime], limit: int,
          after_record: _AFTER_RECORD | None, config: Config) -> None:
    for folder in (cfg.processed_folder, cfg.aside_folder):
        if folder is not None and not client.folder_exists(folder):
            client.create_folder(folder)
    client.select_folder(cfg.folder)
    uids = client.search(["NOT", "DELETED", "NOT", "KEYWORD", PROCESSED.decode(), "NOT",
                          "KEYWORD", ASIDE.decode(), "NOT", "KEYWORD", UNREADABLE.decode()])
    uids = sorted(uids)[:limit]
    sizes = {uid: d.get(b"RFC822.SIZE", 0) for uid, d in
             client.fetch(uids, ["RFC822.SIZE"]).items()} if uids else {}
    for start in range(0, len(uids), BATCH):
        batch = uids[start:start + BATCH]
        small = [u for u in batch if sizes.get(u, 0) <= cfg.max_message_kb * 1024]
        for uid in batch:
            if uid not in small:
                client.add_flags([uid], [UNREADABLE])
                report.add("too large")
        bodies = client.fetch(small, ["BODY.PEEK[]"]) if small else {}
        for uid in small:
            raw = bodies.get(uid, {}).get(b"BODY[]")
            if not isinstance(raw, bytes):
                continue  # expunged meanwhile by someone else
            item = reader.read(raw, cfg.folder, now=clock())
            outcome, first = store.apply_bounce(item, scoring(config, clock()))
            if after_record is not None:
                after_record(uid, outcome)
            _file(client, cfg, uid, outcome)
            report.add(outcome if first else "duplicate")
    report.unreadable_waiting = len(client.search(["NOT", "DELETED", "KEYWORD",
                                                   UNREADABLE.decode()]))


def _file(client: IMAPClient, cfg: BouncesConfig, uid: int, outcome: str) -> None:
    if outcome == "unreadable":
        client.add_flags([uid], [UNREADABLE])
        return
    aside = outcome == "aside"
    target = cfg.aside_folder if aside else cfg.processed_folder
    if target is not None:
        client.add_flags([uid], [ASIDE if aside else PROCESSED])  # in case MOVE is cut off
        _move(client, uid, target)
    elif not aside and cfg.delete_processed:
        client.add_flags([uid], [b"\\Deleted"])
        _expunge(client, uid)
    else:
        client.add_flags([uid], [ASIDE if aside else PROCESSED])


def _move(client: IMAPClient, uid: int, folder: str) -> None:
    if client.has_capability("MOVE"):
        client.move([uid], folder)
        return
    client.copy([uid], folder)
    client.add_flags([uid], [b"\\Deleted"])
    _expunge(client, uid)


def _expunge(client: IMAPClient, uid: int) -> None:
    if client.has_capability("UIDPLUS"):
        client.uid_expunge([uid])
    # Without UIDPLUS an EXPUNGE would also remove other people's \Deleted mail:
    # the message stays flagged \Deleted for the server's own clean-up.

