"""Does the relay keep our envelope sender? (for `mailer doctor`)

VERP works only if the relay sends with the envelope sender we give it. Some
relays (many commercial ones, Exchange connectors) rewrite it to their own
address: bounces then never name their delivery. The check sends one probe
message through the configured relay to the bounce mailbox itself, with a
signed probe address as the envelope sender, waits for it in the mailbox and
reads the ``Return-Path`` the final delivery added: equal to what we sent, or not.
The probe is then flagged processed, so the intake passes over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage

from imapclient.exceptions import IMAPClientError

from ..clock import utc_now
from ..config import Config
from ..errors import MailerError
from ..transport import Envelope, Outcome, SMTPSettings, send_one
from .intake import PROBE_HEADER, PROCESSED, MailboxError, connect
from .verp import VerpSigner


@dataclass(frozen=True)
class EnvelopeCheck:
    """The outcome, in one staff-readable line (``message``)."""

    ok: bool
    sent_as: str
    arrived_as: str | None  # the Return-Path in the mailbox; None: it never arrived
    message: str


def check_envelope_sender(config: Config, *, wait: float = 120.0, every: float = 2.0,
                          sleep: Callable[[float], None] = time.sleep) -> EnvelopeCheck:
    """Send the probe and look for it for up to ``wait`` seconds. Raises MailerError
    (one line) when there is no [bounces] table or the mailbox cannot be reached."""
    cfg = config.bounces
    if cfg is None:
        raise MailerError(f"{config.path.name}: no [bounces] table; bounces are not read")
    nonce = secrets.token_hex(8)
    signer = VerpSigner(cfg.address, config.signing_keys())
    probe = signer.probe_address(nonce)
    msg = EmailMessage()
    msg["From"] = config.sender.address
    msg["To"] = cfg.address
    msg["Subject"] = "mailer doctor: envelope sender check"
    msg[PROBE_HEADER] = nonce
    msg.set_content("A probe from `mailer doctor`; it may be deleted.\n")
    data = msg.as_bytes(policy=email.policy.SMTP)
    reply = asyncio.run(send_one(SMTPSettings.from_config(config.smtp),
                                 Envelope(probe, cfg.address, data)))
    if reply.outcome is not Outcome.SENT:
        return EnvelopeCheck(False, probe, None, f"the relay refused the probe to "
                             f"{cfg.address}: {reply.code} {reply.text}".strip())
    tries = max(round(wait / every), 0) + 1
    for i in range(tries):  # bounded in count (and so in time)
        arrived = _find_probe(config, nonce)
        if arrived is not None:
            if arrived.lower() == probe.lower():
                return EnvelopeCheck(True, probe, arrived, "the relay keeps the envelope "
                                     "sender: bounces name their delivery (VERP)")
            nonce_back = signer.verify_probe(arrived, now=utc_now())
            hint = "" if nonce_back is None else " (signed, but altered)"
            return EnvelopeCheck(False, probe, arrived, f"the relay rewrites the envelope "
                                 f"sender to {arrived or '<>'}{hint}: bounces will not name "
                                 "their delivery; ask the relay's operator to keep it")
        if i + 1 < tries:
            sleep(every)
    return EnvelopeCheck(False, probe, None, f"the probe did not reach the bounce mailbox "
                         f"({cfg.imap_host}, {cfg.folder}) within {wait:g} s: check that "
                         f"mail to {cfg.address} and its +addresses lands there")


def _find_probe(config: Config, nonce: str) -> str | None:
    """The Return-Path of the probe, once it is in the folder (or already processed)."""
    cfg = config.bounces
    assert cfg is not None
    client = connect(cfg)
    try:
        for folder in (cfg.folder, cfg.processed_folder):
            if folder is None or not client.folder_exists(folder):
                continue
            client.select_folder(folder)
            uids = client.search(["HEADER", PROBE_HEADER, nonce])
            if not uids:
                continue
            data = client.fetch(uids[:1], ["BODY.PEEK[HEADER]"])
            header = data[uids[0]][b"BODY[HEADER]"]
            client.add_flags(uids, [PROCESSED])
            msg = email.message_from_bytes(header, policy=email.policy.default)
            return str(msg.get("Return-Path", "")).strip().strip("<>")
        return None
    except (OSError, IMAPClientError) as e:
        raise MailboxError(cfg.imap_host, cfg.imap_port, str(e) or type(e).__name__) from None
    finally:
        with contextlib.suppress(OSError, IMAPClientError):
            client.logout()
