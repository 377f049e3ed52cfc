"""`mailer doctor`, and the same quick checks in `send`, `schedule` and `run`: the real
CLI on real SQLite files, against real aiosmtpd relays on 127.0.0.1.

Network checks only ever talk to 127.0.0.1: every config given to a doctor run
without --offline points web.base_url at a loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailer import config as config_mod

from .conftest import CONFIG, REPO, SENDER, Run, assert_one_line_error, snapshot
from .imap_server import Dovecot, dovecot  # noqa: F401 - the fixture
from .processes import start_mailer
from .smtp_server import Behaviour, Server, smtp_server
from .test_bounce_envelope import delivering_relay
from .test_bounces import BOUNCES

SECRET = "doctor-secret-0123456789abcdef"
EXAMPLE = (REPO / "config.example.toml").read_text(encoding="utf-8")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write(config_file: Path, text: str) -> None:
    config_file.write_text(text, encoding="utf-8")
    config_file.chmod(0o600)


def relay_config(port: int, smtp: str = 'tls = "none"', *, base_url: str | None = None) -> str:
    """The test config against a relay on 127.0.0.1:port; the unsubscribe address on
    a closed loopback port unless given (doctor fetches it)."""
    url = base_url or f"http://127.0.0.1:{_free_port()}"
    return (CONFIG.replace("port = 2525", f"port = {port}\ntimeout = 5")
            .replace('tls = "none"', smtp)
            .replace('base_url = "https://jianbao.assoc.example.net"', f'base_url = "{url}"'))


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config_mod.ENV_SECRET, SECRET)
    monkeypatch.delenv(config_mod.ENV_PASSWORD, raising=False)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "bulletin.txt"
    shutil.copy(REPO / "tests" / "data" / "bulletin-2015-09.txt", path)
    return path


def lines(out: str, level: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith(level)]


# --- the whole doctor -----------------------------------------------------------------

def test_a_ready_installation_passes(run: Run, config_file: Path, initialised: Path) -> None:
    with smtp_server() as srv:
        write(config_file, relay_config(srv.port))
        result = run("doctor")
    out = result.stdout
    assert lines(out, "FAIL") == [], out
    for fragment in ("no example value left in place", "initialised, schema current",
                     f"127.0.0.1:{srv.port} answered EHLO",
                     f"accepts mail from {SENDER}", "no [bounces] table"):
        assert fragment in out, out
    # The unsubscribe address is on this machine and nothing listens: warnings, rc 0.
    warned = lines(out, "warn")
    assert any("members cannot open their unsubscribe links" in w for w in warned), out
    assert any("cannot be reached" in w for w in warned), out
    assert "ready to send (2 warnings)" in out
    assert srv.messages == []  # doctor sends nothing


def test_offline_leaves_the_network_alone(run: Run, config_file: Path,
                                          initialised: Path) -> None:
    # smtp port 2525 has no server: without --offline this would fail.
    result = run("doctor", "--offline")
    assert "not checked (--offline)" in result.stdout
    assert "relay:" not in result.stdout
    assert lines(result.stdout, "FAIL") == []


def test_every_finding_is_one_line_with_a_check_name(run: Run, config_file: Path,
                                                     initialised: Path) -> None:
    for line in run("doctor", "--offline").stdout.splitlines()[:-1]:
        level, _, rest = line.partition("  ")
        assert level.strip() in ("ok", "warn", "FAIL") and ": " in rest, line


# --- example values -------------------------------------------------------------------

def _example_value(key: str) -> str:
    import tomllib

    data = tomllib.loads(EXAMPLE)
    section, name = key.split(".")
    value = data[section][name]
    assert isinstance(value, str)
    return value


def test_a_copied_example_config_fails_the_doctor(run: Run, config_file: Path,
                                                  tmp_path: Path) -> None:
    key = tmp_path / "secret.key"
    key.write_text(SECRET, encoding="utf-8")
    key.chmod(0o600)
    write(config_file, EXAMPLE)
    run("init")
    result = run("doctor", "--offline", ok=False)
    assert result.exit_code == 1
    failed = "\n".join(lines(result.stdout, "FAIL"))
    for k in ("sender.address", "web.base_url", "contact.line", "smtp.host"):
        assert f"{k} is still the example's" in failed, failed
    assert "MAILER_SMTP_PASSWORD" in failed  # username set, no password
    assert "mend the FAIL lines above" in result.stderr


def _with_example(text: str, key: str) -> str:
    """The test config with one of config.example.toml's values put back."""
    value = _example_value(key)
    if key == "sender.address":
        return text.replace(f'address = "{SENDER}"', f'address = "{value}"')
    if key == "web.base_url":
        return text.replace('base_url = "https://jianbao.assoc.example.net"',
                            f'base_url = "{value}"')
    assert key == "contact.line"
    return text + f'\n[contact]\nline = "{value}"\n'


@pytest.fixture
def imported(run: Run, config_file: Path, initialised: Path) -> Path:
    run("recipients", "import", str(REPO / "recipients" / "send-to.csv"), "--list", "send-to")
    return initialised


@pytest.mark.parametrize("key", ["sender.address", "web.base_url", "contact.line"])
def test_send_refuses_an_example_value_and_writes_nothing(
        run: Run, config_file: Path, imported: Path, sample: Path, key: str) -> None:
    with smtp_server() as srv:
        write(config_file, _with_example(relay_config(srv.port,
                                                      base_url="https://jianbao.assoc.example.net"),
                                         key))
        before = snapshot(imported)
        result = run("send", str(sample), "--list", "send-to", ok=False)
        assert srv.messages == []
    assert_one_line_error(result, f"{key} is still the example's {_example_value(key)!r}",
                          "nothing was sent or saved")
    assert snapshot(imported) == before


def test_schedule_and_run_refuse_an_example_value(run: Run, config_file: Path,
                                                  imported: Path, sample: Path) -> None:
    write(config_file, _with_example(CONFIG, "sender.address"))
    before = snapshot(imported)
    result = run("schedule", str(sample), "--at", "2099-11-24 09:00", ok=False)
    assert_one_line_error(result, "sender.address is still the example's",
                          "set [sender] address")
    result = run("run", ok=False)
    assert_one_line_error(result, "sender.address is still the example's")
    assert snapshot(imported) == before


def test_a_dry_run_says_it_would_be_refused(run: Run, config_file: Path, imported: Path,
                                            sample: Path) -> None:
    write(config_file, _with_example(CONFIG, "web.base_url"))
    result = run("send", str(sample), "--list", "send-to", "--dry-run")
    assert "would be refused: config.toml: web.base_url is still the example's" in result.stderr
    assert "dry run: nothing was sent or saved" in result.stdout


def test_the_test_config_is_not_the_example() -> None:
    """The suite's own config must not coincide with the example's values, or every
    send test would be refused (and the check weakened to let it pass)."""
    for key in ("sender.address", "web.base_url"):
        assert _example_value(key) not in CONFIG, key


# --- files, secret, database ----------------------------------------------------------

def test_file_modes(run: Run, config_file: Path, initialised: Path, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    config_file.chmod(0o644)
    result = run("doctor", "--offline")  # a warning: the config holds no secret
    assert any(f"run `chmod 600 {config_file}`" in w for w in lines(result.stdout, "warn"))
    initialised.chmod(0o644)
    result = run("doctor", "--offline")
    assert any("members' addresses" in w and "chmod 600" in w
               for w in lines(result.stdout, "warn")), result.stdout

    monkeypatch.delenv(config_mod.ENV_SECRET)
    key = tmp_path / "secret.key"
    key.write_text(SECRET, encoding="utf-8")
    key.chmod(0o644)
    write(config_file, CONFIG.replace("[web]\n", '[web]\nsecret_file = "secret.key"\n'))
    result = run("doctor", "--offline", ok=False)
    assert result.exit_code == 1
    [failed] = lines(result.stdout, "FAIL")
    assert "the signing secret is readable by group/others (mode 0644)" in failed
    assert f"chmod 600 {key}" in failed
    key.chmod(0o600)
    assert lines(run("doctor", "--offline").stdout, "FAIL") == []


def test_no_secret(run: Run, config_file: Path, initialised: Path, sample: Path,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config_mod.ENV_SECRET)
    result = run("doctor", "--offline", ok=False)
    [failed] = lines(result.stdout, "FAIL")
    assert "no signing secret" in failed and "MAILER_SECRET" in failed
    result = run("send", str(sample), "--list", "send-to", ok=False)
    assert_one_line_error(result, "no signing secret")


def test_database_missing_and_behind(run: Run, config_file: Path, db_path: Path) -> None:
    import sqlite3

    result = run("doctor", "--offline", ok=False)
    [failed] = lines(result.stdout, "FAIL")
    assert "no database; run `mailer init`" in failed
    assert not db_path.exists()  # the doctor only looks

    run("init")
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("DELETE FROM _sqlite_migrations WHERE rowid = "
                     "(SELECT MAX(rowid) FROM _sqlite_migrations)")
    conn.close()
    result = run("doctor", "--offline")
    assert any("the schema is 1 step behind; `mailer init`" in w
               for w in lines(result.stdout, "warn")), result.stdout
    conn = sqlite3.connect(db_path)
    try:  # still behind: looking changed nothing
        assert conn.execute("SELECT COUNT(*) FROM _sqlite_migrations").fetchone()[0] >= 1
        pending = run("doctor", "--offline").stdout
        assert "1 step behind" in pending
    finally:
        conn.close()

    db_path.write_bytes(b"not a database at all, just text" * 100)
    result = run("doctor", "--offline", ok=False)
    assert any("not a mailer database" in f for f in lines(result.stdout, "FAIL"))


# --- the relay ------------------------------------------------------------------------

def test_a_relay_without_auth_and_a_username(run: Run, config_file: Path, initialised: Path,
                                             sample: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config_mod.ENV_PASSWORD, "secret")
    with smtp_server() as srv:
        write(config_file, relay_config(srv.port, 'tls = "none"\nusername = "bulletin"'))
        result = run("doctor", ok=False)
        assert result.exit_code == 1
        [failed] = lines(result.stdout, "FAIL")
        assert "offers no login (AUTH): remove username from [smtp]" in failed
        # send says the same in its own words (not aiosmtplib's "try TLS").
        run("recipients", "import", str(REPO / "recipients" / "send-to.csv"),
            "--list", "send-to")
        write(config_file, relay_config(srv.port, 'tls = "none"\nusername = "bulletin"',
                                        base_url="https://jianbao.assoc.example.net"))
        result = run("send", str(sample), "--list", "send-to", ok=False)
        assert_one_line_error(result, "remove username from [smtp]")
        assert srv.messages == []


def test_a_username_without_the_password_variable(run: Run, config_file: Path,
                                                  imported: Path, sample: Path) -> None:
    with smtp_server(Behaviour(logins={"bulletin": "right"})) as srv:
        write(config_file, relay_config(srv.port, 'tls = "none"\nusername = "bulletin"'))
        result = run("doctor", ok=False)
        failed = lines(result.stdout, "FAIL")
        assert failed and all("MAILER_SMTP_PASSWORD" in f for f in failed), failed
        write(config_file, relay_config(srv.port, 'tls = "none"\nusername = "bulletin"',
                                        base_url="https://jianbao.assoc.example.net"))
        before = snapshot(imported)
        result = run("send", str(sample), "--list", "send-to", ok=False)
        assert_one_line_error(result, "username is 'bulletin' but $MAILER_SMTP_PASSWORD is "
                                      "not set")
        assert snapshot(imported) == before and srv.messages == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_a_wrong_and_a_right_password(run: Run, config_file: Path, initialised: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with smtp_server(Behaviour(logins={"bulletin": "right"})) as srv:
        write(config_file, relay_config(srv.port, 'tls = "none"\nusername = "bulletin"'))
        monkeypatch.setenv(config_mod.ENV_PASSWORD, "wrong")
        result = run("doctor", ok=False)
        [failed] = lines(result.stdout, "FAIL")
        assert "refused the login for bulletin: 535" in failed
        assert "MAILER_SMTP_PASSWORD" in failed
        assert "AUTH offered (" in result.stdout

        monkeypatch.setenv(config_mod.ENV_PASSWORD, "right")
        result = run("doctor")
        assert "AUTH accepted for bulletin" in result.stdout
        assert lines(result.stdout, "FAIL") == []


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def tls_relay(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """A relay that requires STARTTLS before MAIL, with a certificate for 127.0.0.1."""
    cert, key = _certificate(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    with smtp_server(Behaviour(starttls=ctx, require_starttls=True)) as srv:
        yield srv, cert


def test_a_relay_requiring_starttls(run: Run, config_file: Path, initialised: Path,
                                    tls_relay: tuple[Server, Path],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    srv, cert = tls_relay
    write(config_file, relay_config(srv.port, 'tls = "none"'))
    result = run("doctor", ok=False)
    [failed] = lines(result.stdout, "FAIL")
    assert "refuses mail from" in failed and 'set tls = "starttls"' in failed, failed

    # STARTTLS with a certificate nobody trusts: one line naming the certificate.
    write(config_file, relay_config(srv.port, 'tls = "starttls"'))
    result = run("doctor", ok=False)
    [failed] = lines(result.stdout, "FAIL")
    assert "STARTTLS with" in failed and "certificate" in failed.lower(), failed

    # Trusted (as a real provider's is, through the system's store): it passes.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    result = run("doctor")
    assert "STARTTLS: the session is encrypted" in result.stdout
    assert f"accepts mail from {SENDER}" in result.stdout
    assert lines(result.stdout, "FAIL") == []


def test_starttls_configured_but_not_offered(run: Run, config_file: Path,
                                             initialised: Path) -> None:
    with smtp_server() as srv:
        write(config_file, relay_config(srv.port, 'tls = "starttls"'))
        result = run("doctor", ok=False)
    [failed] = lines(result.stdout, "FAIL")
    assert "does not offer STARTTLS" in failed and 'tls = "tls"' in failed


def test_a_relay_that_is_not_there(run: Run, config_file: Path, initialised: Path) -> None:
    write(config_file, relay_config(_free_port()))
    result = run("doctor", ok=False)
    [failed] = lines(result.stdout, "FAIL")
    assert "cannot connect to 127.0.0.1:" in failed and "check [smtp] host and port" in failed


# --- the unsubscribe address ------------------------------------------------------------

def test_the_unsubscribe_address_answers(run: Run, config_file: Path, initialised: Path,
                                         tmp_path: Path) -> None:
    import time
    import urllib.request

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MAILER_SECRET": SECRET, "PYTHONPATH": str(REPO)}
    with smtp_server() as srv:
        write(config_file, relay_config(srv.port, base_url=base))
        proc = start_mailer("--config", str(config_file), "serve", "--port", str(port),
                            env=env, log=tmp_path / "serve.log")
        try:
            for _ in range(200):  # bounded: 20 s at most
                assert proc.poll() is None, "mailer serve exited"
                try:
                    with urllib.request.urlopen(f"{base}/healthz", timeout=1):
                        break
                except OSError:
                    time.sleep(0.1)
            result = run("doctor")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    assert f"{base}/healthz answers: unsubscribe links open" in result.stdout


def test_an_unsubscribe_address_that_is_not_https(run: Run, config_file: Path,
                                                  initialised: Path) -> None:
    write(config_file, CONFIG.replace("https://jianbao", "http://jianbao"))
    result = run("doctor", "--offline")
    assert any("is not https" in w for w in lines(result.stdout, "warn")), result.stdout


# --- the question before a big send ----------------------------------------------------

def at_terminal(args: list[str], answer: str | None, *, timeout: float = 60.0
                ) -> tuple[int, str]:
    """Run `mailer` (tests/processes.py) with a pseudo-terminal as stdin, stdout and
    stderr, answer ``answer`` to a [y/N] question if one comes, and return (exit code,
    everything it wrote). Bounded: ``timeout`` seconds at most."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    env = {**os.environ, "MAILER_SECRET": SECRET, "PYTHONPATH": str(REPO), "COLUMNS": "100"}
    proc = start_mailer(*args, env=env, terminal=os.ttyname(slave))
    out = b""
    answered = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                out += os.read(master, 4096)
            if answer is not None and not answered and b"[y/N]" in out:
                os.write(master, answer.encode() + b"\n")
                answered = True
            if proc.poll() is not None and not ready:
                break
        rc = proc.wait(max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        # Held open to the end (the child opens the terminal by its name), so reading
        # never fails for want of a process on the other side.
        os.close(slave)
        os.close(master)
    return rc, out.decode("utf-8", "replace")


@pytest.fixture
def big_send(config_file: Path, imported: Path) -> Iterator[tuple[Server, Path]]:
    """A relay, and a config that asks above 5 people (the sample send-to list has 14)."""
    with smtp_server() as srv:
        write(config_file, CONFIG.replace("port = 2525", f"port = {srv.port}")
              + "\n[sending]\nconfirm_above = 5\n")
        yield srv, imported


def test_a_send_at_a_terminal_asks_and_no_writes_nothing(
        config_file: Path, big_send: tuple[Server, Path], sample: Path) -> None:
    srv, db = big_send
    before = snapshot(db)
    rc, out = at_terminal(["--config", str(config_file), "send", str(sample),
                           "--list", "send-to"], "n")
    assert "to 14 people (send-to 14) from jianbao@assoc.example.net now? [y/N]" in out, out
    assert rc == 1, out
    assert "not sent; nothing was saved" in out
    assert snapshot(db) == before and srv.messages == []


def test_a_send_at_a_terminal_goes_on_after_yes(
        config_file: Path, big_send: tuple[Server, Path], sample: Path) -> None:
    srv, _ = big_send
    rc, out = at_terminal(["--config", str(config_file), "send", str(sample),
                           "--list", "send-to"], "y")
    assert "[y/N]" in out and rc == 0, out
    assert len(srv.messages) == 14


def test_yes_skips_the_question(config_file: Path, big_send: tuple[Server, Path],
                                sample: Path) -> None:
    srv, _ = big_send
    rc, out = at_terminal(["--config", str(config_file), "send", str(sample),
                           "--list", "send-to", "--yes"], None)
    assert rc == 0, out
    assert "[y/N]" not in out
    assert len(srv.messages) == 14


def test_a_small_send_at_a_terminal_does_not_ask(config_file: Path, imported: Path,
                                                 sample: Path) -> None:
    with smtp_server() as srv:
        write(config_file, CONFIG.replace("port = 2525", f"port = {srv.port}")
              + "\n[sending]\nconfirm_above = 14\n")
        rc, out = at_terminal(["--config", str(config_file), "send", str(sample),
                               "--list", "send-to"], None)
    assert rc == 0 and "[y/N]" not in out, out
    assert len(srv.messages) == 14


def test_without_a_terminal_it_does_not_ask(run: Run, big_send: tuple[Server, Path],
                                            sample: Path) -> None:
    srv, _ = big_send
    result = run("send", str(sample), "--list", "send-to")  # CliRunner: stdin is no tty
    assert "[y/N]" not in result.output
    assert len(srv.messages) == 14


# --- the bounce mailbox ---------------------------------------------------------------

@pytest.fixture
def mailbox(dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch) -> Dovecot:  # noqa: F811
    monkeypatch.setenv(config_mod.ENV_IMAP_PASSWORD, dovecot.password)
    return dovecot


@pytest.mark.parametrize("rewrite", [None, "srs0=abcd@relay.example.net"])
def test_the_bounce_mailbox_probe(run: Run, config_file: Path, initialised: Path,
                                  mailbox: Dovecot, rewrite: str | None) -> None:
    with delivering_relay(mailbox, rewrite) as port:
        write(config_file, relay_config(port) + BOUNCES.format(port=mailbox.port, poll=0))
        result = run("doctor", "--bounce-wait", "10", ok=False)
    [bounce] = [ln for ln in result.stdout.splitlines() if "bounces:" in ln]
    if rewrite is None:
        assert result.exit_code == 0, result.output
        assert bounce.startswith("ok") and "keeps the envelope sender" in bounce
    else:
        assert result.exit_code == 1, result.output
        assert bounce.startswith("FAIL") and f"rewrites the envelope sender to {rewrite}" in bounce
    assert len(mailbox.messages()) == 1  # the one probe, nothing else


def test_an_unreachable_bounce_mailbox_and_offline(run: Run, config_file: Path,
                                                   initialised: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config_mod.ENV_IMAP_PASSWORD, "x")
    with smtp_server() as srv:
        write(config_file, relay_config(srv.port) + BOUNCES.format(port=_free_port(), poll=0))
        result = run("doctor", "--bounce-wait", "0", ok=False)
        [failed] = lines(result.stdout, "FAIL")
        assert failed.startswith("FAIL  bounces: bounce mailbox 127.0.0.1:"), failed
        result = run("doctor", "--offline")
        assert "bounce mailbox not checked (--offline)" in result.stdout
        assert srv.messages == []  # no probe into a mailbox that cannot be read


# --- what stays out of version control ---------------------------------------------------

WRITTEN = ["config.toml", "secret.key", "data/mailer.db", "data/mailer.db-wal",
           "data/mailer.db-shm", "data/mailer.db.campaign-3.lock", "data/mailer.db.daemon.lock",
           "demo/outbox/1.eml"]


def test_the_gitignore_covers_what_mailer_writes() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(["git", "check-ignore", "--no-index", "--verbose", *WRITTEN],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    ignored = {line.split("\t")[1] for line in done.stdout.splitlines()}
    assert ignored == set(WRITTEN), done.stdout
    # The README's example is the repository's own lines.
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = readme.split("```gitignore\n", 1)[1].split("```", 1)[0].split()
    own = (REPO / ".gitignore").read_text(encoding="utf-8").split()
    assert set(example) <= set(own)
    for kept in ("config.example.toml", "mailer/config.example.toml"):  # exit 1: not ignored
        assert subprocess.run(["git", "check-ignore", "--no-index", "-q", kept], cwd=REPO,
                              timeout=30).returncode == 1, kept
