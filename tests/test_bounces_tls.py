"""`mailer bounces fetch` over implicit TLS and STARTTLS, from a real Dovecot.

Dovecot offers TLS with a throwaway self-signed certificate and logs no one in
before TLS, so a fetch that works proves the password went over TLS. The product
trusts that certificate only through ``bounces.imap_ca_file``: by default the
system's public CAs decide, and a certificate they do not vouch for is one
`Error:` line with nothing read or changed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailer import config as config_mod

from . import bounce_mail as bm
from .conftest import Run
from .imap_server import Dovecot, dovecot_server
from .smtp_server import Server
from .test_bounces import WANHUA, bounce, relay, sent, statuses, write_config  # noqa: F401
from .test_send_cli import import_lists, issue_file, secret  # noqa: F401 - fixtures


@pytest.fixture
def dovecot(certificate: tuple[Path, Path]) -> Iterator[Dovecot]:
    """Overrides test_bounces' plain server for the ``sent`` fixture used here."""
    with dovecot_server(tls=certificate) as server:
        yield server


def use_mailbox(config_file: Path, relay: Server, imap: Dovecot, *, tls: str,  # noqa: F811
                host: str = "127.0.0.1", ca_file: Path | None = None) -> None:
    write_config(config_file, relay.port, imap)
    port = imap.tls_port if tls == "tls" else imap.port
    lines = f'imap_tls = "{tls}"\nimap_port = {port}\nimap_host = "{host}"\n'
    if ca_file is not None:
        lines += f'imap_ca_file = "{ca_file}"\n'
    text = config_file.read_text("utf-8")
    for key in ("imap_tls", "imap_port", "imap_host"):
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(f"{key} ="))
    config_file.write_text(text.replace("[bounces]\n", "[bounces]\n" + lines) + "\n", "utf-8")


@pytest.mark.parametrize("tls", ["tls", "starttls"])
def test_fetch_over_tls_trusting_the_configured_ca(
        run: Run, sent: dict[str, tuple[str, str]], dovecot: Dovecot,  # noqa: F811
        config_file: Path, relay: Server, initialised: Path,  # noqa: F811
        certificate: tuple[Path, Path], tls: str) -> None:
    dovecot.append(bounce(sent, bm.postfix_user_unknown, WANHUA))
    use_mailbox(config_file, relay, dovecot, tls=tls, ca_file=certificate[0])
    assert config_mod.load(config_file).bounces.imap_tls == tls  # type: ignore[union-attr]
    result = run("bounces", "fetch")
    assert statuses(initialised)[(WANHUA, "send-to")] == ("bounced", "bounce")
    assert result.output == "read 1 message(s): 1 applied\n"
    assert dovecot.messages("INBOX") == {}
    assert len(dovecot.messages("Processed")) == 1


@pytest.mark.parametrize(("tls", "host", "ca", "reason"), [
    ("tls", "127.0.0.1", False, "self-signed certificate"),
    ("starttls", "127.0.0.1", False, "self-signed certificate"),
    # Trusted, but issued for 127.0.0.1, not for the name the config gives.
    ("tls", "localhost", True, "Hostname mismatch"),
])
def test_a_certificate_that_does_not_verify_is_one_line_and_changes_nothing(
        run: Run, sent: dict[str, tuple[str, str]], dovecot: Dovecot,  # noqa: F811
        config_file: Path, relay: Server, initialised: Path,  # noqa: F811
        certificate: tuple[Path, Path], tls: str, host: str, ca: bool,
        reason: str) -> None:
    dovecot.append(bounce(sent, bm.postfix_user_unknown, WANHUA))
    use_mailbox(config_file, relay, dovecot, tls=tls, host=host,
                ca_file=certificate[0] if ca else None)
    result = run("bounces", "fetch", ok=False)
    assert result.exit_code == 1
    port = dovecot.tls_port if tls == "tls" else dovecot.port
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: bounce mailbox {host}:{port}: the server's certificate "
                           f"does not verify ({reason}")
    assert ("imap_ca_file" in line) if not ca else (str(certificate[0]) in line)
    assert "Traceback" not in result.output
    assert statuses(initialised)[(WANHUA, "send-to")][0] == "active"
    [(_, flags)] = dovecot.messages("INBOX").values()
    assert not any(f.startswith(b"$Mailer") for f in flags)


def test_an_unreadable_ca_file_is_one_line(
        run: Run, sent: dict[str, tuple[str, str]], dovecot: Dovecot,  # noqa: F811
        config_file: Path, relay: Server, tmp_path: Path) -> None:  # noqa: F811
    missing, garbage = tmp_path / "missing.pem", tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for ca_file, why in [(missing, "No such file"), (garbage, "")]:
        use_mailbox(config_file, relay, dovecot, tls="tls", ca_file=ca_file)
        result = run("bounces", "fetch", ok=False)
        assert result.exit_code == 1
        [line] = result.stderr.splitlines()
        assert line.startswith(f"Error: bounce mailbox 127.0.0.1:{dovecot.tls_port}: "
                               f"bounces.imap_ca_file {ca_file}: cannot be read as CA "
                               f"certificates ("), line
        assert why in line


def test_a_ca_file_with_no_tls_is_refused(config_file: Path, tmp_path: Path) -> None:
    text = config_file.read_text("utf-8") + (
        '\n[bounces]\naddress = "bounces@example.org"\nimap_host = "127.0.0.1"\n'
        'imap_tls = "none"\nimap_ca_file = "ca.pem"\n')
    config_file.write_text(text, "utf-8")
    with pytest.raises(config_mod.ConfigError, match='no use with imap_tls = "none"'):
        config_mod.load(config_file)
    config_file.write_text(text.replace('imap_tls = "none"', 'imap_tls = "tls"'), "utf-8")
    cfg = config_mod.load(config_file).bounces
    assert cfg is not None and cfg.imap_ca_file == config_file.parent / "ca.pem"


def test_starttls_not_offered_is_refused_and_the_password_never_sent(
        run: Run, sent: dict[str, tuple[str, str]], config_file: Path,  # noqa: F811
        relay: Server, initialised: Path, certificate: tuple[Path, Path]) -> None:  # noqa: F811
    with dovecot_server() as plain:  # ssl = no: no STARTTLS in its capabilities
        plain.append(bounce(sent, bm.postfix_user_unknown, WANHUA))
        use_mailbox(config_file, relay, plain, tls="starttls", ca_file=certificate[0])
        logins = plain.log().count("Login: user=<bounces>")  # the start check, the append
        assert logins >= 1 and "no auth attempts" not in plain.log()
        result = run("bounces", "fetch", ok=False)
        assert result.exit_code == 1
        [line] = result.stderr.splitlines()
        assert line.startswith(f"Error: bounce mailbox 127.0.0.1:{plain.port}: the server "
                               "does not offer STARTTLS; the password was not sent")
        # Dovecot logs the connection as closed before any login attempt.
        log = ""
        for _ in range(100):  # its log process writes a moment later; bounded
            log = plain.log()
            if "no auth attempts" in log:
                break
            time.sleep(0.05)
        assert "Connection closed (no auth attempts" in log, log
        assert log.count("Login: user=<bounces>") == logins, log
        [(_, flags)] = plain.messages("INBOX").values()
        assert not any(f.startswith(b"$Mailer") for f in flags)
    assert statuses(initialised)[(WANHUA, "send-to")][0] == "active"
