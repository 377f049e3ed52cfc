"""The envelope-sender check for `mailer doctor`: a real aiosmtpd relay that delivers
into a real Dovecot, once keeping our envelope sender and once rewriting it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from mailer import config as config_mod
from mailer.bounces.envelope import check_envelope_sender
from mailer.bounces.intake import PROCESSED

from .imap_server import Dovecot, dovecot  # noqa: F401 - the fixture
from .test_bounces import write_config
from .test_send_cli import secret  # noqa: F401 - the fixture


class _Deliver:
    """Delivers each message into the mailbox with the Return-Path a final MTA adds:
    the envelope sender, or ``rewrite`` (what a relay that rewrites it would send)."""

    def __init__(self, mailbox: Dovecot, rewrite: str | None) -> None:
        self.mailbox, self.rewrite = mailbox, rewrite

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        sender = self.rewrite or envelope.mail_from
        self.mailbox.append(f"Return-Path: <{sender}>\r\n".encode() + envelope.content)
        return "250 OK delivered"


class _PortZero(Controller):  # type: ignore[misc]
    """Port 0: learn the real port before the controller tests itself."""

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@contextmanager
def delivering_relay(mailbox: Dovecot, rewrite: str | None = None) -> Iterator[int]:
    controller = _PortZero(_Deliver(mailbox, rewrite), hostname="127.0.0.1", port=0,
                            ready_timeout=5)
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


@pytest.fixture
def ready(config_file: Path, secret: None, dovecot: Dovecot,  # noqa: F811
          monkeypatch: pytest.MonkeyPatch) -> Dovecot:
    monkeypatch.setenv(config_mod.ENV_IMAP_PASSWORD, dovecot.password)
    return dovecot


def test_a_relay_that_keeps_the_envelope_sender(config_file: Path, ready: Dovecot) -> None:
    with delivering_relay(ready) as port:
        write_config(config_file, port, ready)
        result = check_envelope_sender(config_mod.load(config_file), wait=10, every=0.1)
    assert result.ok, result.message
    assert result.arrived_as == result.sent_as
    assert result.sent_as.startswith("bounces+probe-")
    [(_, flags)] = ready.messages().values()
    assert PROCESSED in flags  # the intake passes over it


def test_a_relay_that_rewrites_it_is_reported(config_file: Path, ready: Dovecot) -> None:
    with delivering_relay(ready, rewrite="srs0=abcd@relay.example.net") as port:
        write_config(config_file, port, ready)
        result = check_envelope_sender(config_mod.load(config_file), wait=10, every=0.1)
    assert not result.ok
    assert result.arrived_as == "srs0=abcd@relay.example.net"
    assert "rewrites the envelope sender to srs0=abcd@relay.example.net" in result.message


def test_a_probe_that_never_arrives(config_file: Path, ready: Dovecot) -> None:
    waits: list[float] = []
    with delivering_relay(ready) as port:
        write_config(config_file, port, ready)
        cfg = config_mod.load(config_file)
        assert cfg.bounces is not None
        # The relay delivers elsewhere: the mailbox's folder does not get it.
        cfg = dataclasses.replace(
            cfg, bounces=dataclasses.replace(cfg.bounces, folder="Elsewhere"))
        result = check_envelope_sender(cfg, wait=0.3, every=0.1, sleep=waits.append)
    assert not result.ok and result.arrived_as is None
    assert "did not reach the bounce mailbox" in result.message
    assert len(waits) == 3  # bounded: wait / every tries, then one line
