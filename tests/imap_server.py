"""A real Dovecot IMAP server for the bounce tests, from a throwaway config.

Started by the test on a loopback port, never as a system service; its files live
in a fresh temporary folder removed afterwards. Without a certificate it speaks
plain IMAP only (no STARTTLS offered); with one it offers STARTTLS on its plain
port, implicit TLS on a second port, and refuses to log anyone in without TLS.
As an ordinary user everything runs as that user. As root (CI), Dovecot refuses
to run its login and mail processes as root: they run as the unprivileged users
Debian's package creates (dovenull, dovecot) and as nobody for the mail itself.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from imapclient import IMAPClient

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USER = "bounces"
PASSWORD = "imap-test-password"
START_TIMEOUT = 20.0


@dataclass(frozen=True)
class Dovecot:
    host: str
    port: int
    user: str
    password: str
    root: Path
    tls_port: int | None = None  # implicit TLS; None: a server without TLS
    ca_file: Path | None = None  # the certificate that verifies it

    def client(self) -> IMAPClient:
        if self.tls_port is None:
            c = IMAPClient(self.host, port=self.port, ssl=False, timeout=10)
        else:
            context = ssl.create_default_context(cafile=str(self.ca_file))
            c = IMAPClient(self.host, port=self.tls_port, ssl=True, ssl_context=context,
                           timeout=10)
        c.login(self.user, self.password)
        return c

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        with contextlib.closing(_Logout(self.client())) as c:
            c.client.append(folder, raw)

    def messages(self, folder: str = "INBOX") -> dict[int, tuple[bytes, tuple[bytes, ...]]]:
        """uid -> (bytes, flags) of every message in ``folder`` (none if it is missing)."""
        with contextlib.closing(_Logout(self.client())) as c:
            if not c.client.folder_exists(folder):
                return {}
            c.client.select_folder(folder, readonly=True)
            uids = c.client.search("ALL")
            if not uids:
                return {}
            data = c.client.fetch(uids, ["BODY.PEEK[]", "FLAGS"])
            return {u: (d[b"BODY[]"], tuple(d[b"FLAGS"])) for u, d in data.items()}


class _Logout:
    def __init__(self, client: IMAPClient) -> None:
        self.client = client

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.logout()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(root: Path, port: int, tls: tuple[Path, Path] | None,
            tls_port: int) -> tuple[str, pwd.struct_passwd]:
    me = pwd.getpwuid(os.getuid())
    if os.getuid() == 0:
        login, internal, mail = "dovenull", "dovecot", pwd.getpwnam("nobody")
    else:
        login = internal = me.pw_name
        mail = me
    return f"""\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
instance_name = mailer-test-{port}
protocols = imap
listen = 127.0.0.1
{_ssl(tls)}
auth_mechanisms = plain
default_login_user = {login}
default_internal_user = {internal}
first_valid_uid = 0
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={mail.pw_uid} gid={mail.pw_gid} home={root}/home/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port if tls else 0}
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
""", mail


def _ssl(tls: tuple[Path, Path] | None) -> str:
    if tls is None:
        return "ssl = no\ndisable_plaintext_auth = no"
    cert, key = tls
    # "required": no login at all before TLS, so a login that works proves TLS.
    return f"ssl = required\nssl_cert = <{cert}\nssl_key = <{key}"


@contextlib.contextmanager
def dovecot_server(tls: tuple[Path, Path] | None = None) -> Iterator[Dovecot]:
    """``tls``: (certificate, key) in PEM to offer TLS with."""
    if not os.path.exists(DOVECOT):
        pytest.fail("dovecot is not installed; `make test` installs dovecot-imapd")
    # Not under pytest's tmp_path: its folders are 0700, and as root the mail
    # processes run as nobody, who must reach the mail folder.
    root = Path(tempfile.mkdtemp(prefix="mailer-dovecot-"))
    root.chmod(0o755)
    port, tls_port = _free_port(), _free_port()
    text, mail = _config(root, port, tls, tls_port)
    (root / "dovecot.conf").write_text(text)
    (root / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    for sub in ("run", "state", "mail", "home"):
        (root / sub).mkdir()
    for sub in ("mail", "home"):
        os.chown(root / sub, mail.pw_uid, mail.pw_gid)
    # In the foreground (-F), in a session of its own: at the end the whole group
    # (the master and its login and mail processes) is ended by its id.
    log = open(root / "start.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen([DOVECOT, "-F", "-c", str(root / "dovecot.conf")],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True)
    server = Dovecot("127.0.0.1", port, USER, PASSWORD, root,
                     tls_port if tls else None, tls[0] if tls else None)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        for _ in range(400):  # bounded in count and time
            try:
                server.client().logout()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    text = (root / "start.log").read_text(errors="replace")
                    if (root / "dovecot.log").exists():
                        text += (root / "dovecot.log").read_text(errors="replace")
                    pytest.fail(f"dovecot did not answer on 127.0.0.1:{port}:\n{text}")
                time.sleep(0.05)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with dovecot_server() as server:
        yield server
