"""A bounce written by a real MTA: Postfix refused by the next hop, its DSN read back.

The campaign goes to a throwaway Postfix on loopback, which relays it to an
aiosmtpd server that answers 550 for one member unit's address. Postfix then
writes its own RFC 3464 report to that delivery's VERP envelope sender and relays
it to the same aiosmtpd server; the test APPENDs what arrived there to Dovecot
and `mailer bounces fetch` must stop exactly that address.
"""

from __future__ import annotations

import email
import email.policy
import time
from pathlib import Path

import pytest

from mailer import config as config_mod

from .conftest import Run
from .imap_server import Dovecot, dovecot  # noqa: F401 - the fixture
from .mta_server import HOSTNAME, postfix_server
from .smtp_server import Behaviour, Received, smtp_server
from .test_bounces import WANHUA, statuses, write_config
from .test_send_cli import import_lists, issue_file, secret  # noqa: F401 - fixtures

DELIVERIES = 21  # both sample lists, as in test_bounces
NULL_SENDER = "<>"  # as aiosmtpd records a bounce's empty MAIL FROM


def test_a_postfix_dsn_stops_the_refused_address(
        run: Run, config_file: Path, initialised: Path, secret: None,  # noqa: F811
        dovecot: Dovecot, issue_file: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    with smtp_server(Behaviour(refuse={WANHUA: 550})) as hop, \
            postfix_server(hop.port) as mta:
        write_config(config_file, mta.port, dovecot)
        monkeypatch.setenv(config_mod.ENV_IMAP_PASSWORD, dovecot.password)
        import_lists(run)
        run("send", str(issue_file))
        reports: list[Received] = []
        for _ in range(600):  # Postfix relays and reports within moments; bounded
            reports = [m for m in hop.messages if m.mail_from == NULL_SENDER]
            if reports and len(hop.messages) == DELIVERIES:  # all but one, and the report
                break
            time.sleep(0.05)
        assert len(hop.messages) == DELIVERIES, mta.log()
    [report] = reports
    assert not any(WANHUA in m.rcpt_tos for m in hop.messages)  # refused, never delivered
    verp = next(iter(report.rcpt_tos))
    assert verp.startswith("bounces+c1-") and verp.endswith("@example.org")
    dsn = email.message_from_bytes(report.data, policy=email.policy.default)
    assert dsn.get_content_type() == "multipart/report"
    assert f"Reporting-MTA: dns; {HOSTNAME}" in report.data.decode()
    assert "Status: 5.1.1" in report.data.decode()  # Postfix's reading of the 550
    assert statuses(initialised)[(WANHUA, "send-to")][0] == "active"  # the relay said 250

    dovecot.append(report.data)
    result = run("bounces", "fetch")
    assert result.output == "read 1 message(s): 1 applied\n"
    after = statuses(initialised)
    assert after[(WANHUA, "send-to")] == ("bounced", "bounce")
    assert [k for k, (status, _) in after.items() if status == "bounced"] == \
        [(WANHUA, "send-to")]
