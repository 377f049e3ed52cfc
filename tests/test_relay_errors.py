"""Bad conditions during `mailer send`: one clear line, and the campaign stays resumable."""

from __future__ import annotations

import json
import shutil
import sqlite3
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlite_utils import hookimpl
from sqlite_utils.plugins import pm

from .conftest import CONFIG, REPO, Run, assert_one_line_error
from .smtp_server import Behaviour, smtp_server

SECRET = "relay-secret-0123456789abcdef"


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "bulletin.txt"
    shutil.copy(REPO / "tests" / "data" / "bulletin-2015-09.txt", path)
    return path


def configure(run: Run, config_file: Path, port: int, smtp: str = 'tls = "none"') -> None:
    text = CONFIG.replace("port = 2525", f"port = {port}\ntimeout = 5").replace(
        'tls = "none"', smtp)
    config_file.write_text(text, encoding="utf-8")
    run("init")
    run("recipients", "import", str(REPO / "recipients" / "send-to.csv"), "--list", "send-to")


def campaign(run: Run) -> dict[str, Any]:
    rows: list[dict[str, Any]] = json.loads(run("log", "--json").stdout)
    assert len(rows) == 1
    return rows[0]


class _Accepting:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


@contextmanager
def password_server() -> Iterator[int]:
    """A relay that asks for AUTH and refuses every password."""

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        return AuthResult(success=False, handled=False)

    c = Controller(_Accepting(), hostname="127.0.0.1", port=0, authenticator=authenticator,
                   auth_require_tls=False, auth_required=True, ready_timeout=5)
    c.port = 0

    def trigger(self: Controller = c) -> None:  # learn the real port, as smtp_server does
        self.port = self.server.sockets[0].getsockname()[1]
        Controller._trigger_server(self)

    c._trigger_server = trigger  # type: ignore[method-assign]
    c.start()
    try:
        yield int(c.port)
    finally:
        c.stop()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_wrong_password(run: Run, config_file: Path, sample: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_SECRET", SECRET)
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", "wrong")
    with password_server() as port:
        configure(run, config_file, port, 'tls = "none"\nusername = "bulletin"')
        result = run("send", str(sample), "--list", "send-to", ok=False)
    assert_one_line_error(result, "SMTP server")
    assert "Traceback" not in result.output
    c = campaign(run)
    assert c["status"] == "sending" and c["pending"] == 14 and c["sent"] == 0


def test_invalid_certificate(run: Run, config_file: Path, sample: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    monkeypatch.setenv("MAILER_SECRET", SECRET)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    with smtp_server(Behaviour(starttls=server_ctx)) as srv:
        configure(run, config_file, srv.port, 'tls = "starttls"')
        result = run("send", str(sample), "--list", "send-to", ok=False)
    assert_one_line_error(result)
    assert "certificate" in result.stderr.lower()
    assert srv.messages == []
    c = campaign(run)
    assert c["status"] == "sending" and c["pending"] == 14


class _DiskFull:
    """Every new connection may not grow the database file: SQLite itself then answers
    "database or disk is full", exactly as on a full disk."""

    def __init__(self, pages: int) -> None:
        self.pages = pages

    @hookimpl
    def prepare_connection(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA max_page_count = {self.pages}")


def test_disk_full_during_a_send(run: Run, config_file: Path, sample: Path, tmp_path: Path,
                                 db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_SECRET", SECRET)
    bulk = tmp_path / "bulk.csv"
    bulk.write_text("email,name,unit,group\n" + "".join(
        f"m{i:04d}@bulk.example.org,,批量单位{i % 9},\n" for i in range(400)), encoding="utf-8")
    with smtp_server(Behaviour(pipelining=True)) as srv:
        configure(run, config_file, srv.port)
        run("recipients", "import", str(bulk), "--list", "send-to")
        run("send", str(sample), "--list", "send-to", "--limit", "1")  # the ledger exists
        conn = sqlite3.connect(db_path)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.close()
        full = _DiskFull(pages)
        pm.register(full)
        try:
            result = run("send", "--resume", "1", ok=False)
        finally:
            pm.unregister(full)
        assert_one_line_error(result, "database or disk is full")
        got_before = len(srv.messages)
        assert got_before < 415  # it stopped
        run("send", "--resume", "1")  # room again: it finishes
    c = campaign(run)
    assert c["status"] == "sent" and c["sent"] == 414
    received = [m.rcpt_tos[0] for m in srv.messages]
    assert len(set(received)) == 414  # nobody missed
    assert len(received) - 414 <= 4  # duplicates: at most what was in flight
