"""A real Postfix for the tests, from a throwaway config directory on loopback.

Never the system's service: its own main.cf and master.cf (no chroot, listening
only on 127.0.0.1) and its own queue in a fresh temporary folder, started with
``postfix -c DIR start-fg`` and stopped with ``postfix -c DIR stop``. It relays
all mail to ``[127.0.0.1]:relay_port`` (no DNS), so a refusal there makes it write
its own RFC 3464 bounce to the envelope sender, relayed the same way. Postfix's
master runs only as root (it drops to the ``postfix`` user Debian's package
creates), so as an ordinary user the tests that need it are skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
START_TIMEOUT = 30.0
HOSTNAME = "mta.test.example.net"
_SERVICES = """\
pickup    unix  n  -  n  60  1  pickup
cleanup   unix  n  -  n  -   0  cleanup
qmgr      unix  n  -  n  300 1  qmgr
rewrite   unix  -  -  n  -   -  trivial-rewrite
bounce    unix  -  -  n  -   0  bounce
defer     unix  -  -  n  -   0  bounce
trace     unix  -  -  n  -   0  bounce
verify    unix  -  -  n  -   1  verify
flush     unix  n  -  n  1000? 0 flush
proxymap  unix  -  -  n  -   -  proxymap
smtp      unix  -  -  n  -   -  smtp
relay     unix  -  -  n  -   -  smtp
showq     unix  n  -  n  -   -  showq
error     unix  -  -  n  -   -  error
retry     unix  -  -  n  -   -  error
discard   unix  -  -  n  -   -  discard
anvil     unix  -  -  n  -   1  anvil
scache    unix  -  -  n  -   1  scache
postlog   unix-dgram n - n - 1  postlogd
"""


@dataclass(frozen=True)
class Postfix:
    port: int
    root: Path

    def log(self) -> str:
        path = self.root / "postfix.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _main_cf(root: Path, relay_port: int) -> str:
    return f"""\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {HOSTNAME}
mydomain = test.example.net
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay_port}
smtp_dns_support_level = disabled
alias_maps =
alias_database =
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}
# A refusal is final at once (a 5xx is anyway); nothing waits in a queue.
maximal_queue_lifetime = 0
bounce_queue_lifetime = 0
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def postfix_server(relay_port: int) -> Iterator[Postfix]:
    if os.geteuid() != 0:
        pytest.skip("Postfix's master runs only as root")
    if not os.path.exists(POSTFIX):
        pytest.fail("postfix is not installed; `make test` installs it")
    root = Path(tempfile.mkdtemp(prefix="mailer-postfix-"))
    root.chmod(0o755)
    port = _free_port()
    conf = root / "conf"
    for sub in ("conf", "queue", "data"):
        (root / sub).mkdir()
    shutil.chown(root / "data", "postfix")
    (conf / "main.cf").write_text(_main_cf(root, relay_port))
    (conf / "master.cf").write_text(f"127.0.0.1:{port} inet n - n - - smtpd\n" + _SERVICES)
    out = open(root / "start.log", "wb")  # noqa: SIM115 - closed in the finally below
    # start-fg keeps postfix-script in the foreground; the master makes a session
    # of its own, so it is stopped through postfix itself (and by its pid file).
    proc = subprocess.Popen([POSTFIX, "-c", str(conf), "start-fg"], stdin=subprocess.DEVNULL,
                            stdout=out, stderr=out, start_new_session=True)
    server = Postfix(port, root)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        for _ in range(600):  # bounded in count and time
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"postfix did not answer on 127.0.0.1:{port}:\n"
                            + (root / "start.log").read_text(errors="replace") + server.log())
            time.sleep(0.05)
        yield server
    finally:
        master = None
        with contextlib.suppress(OSError, ValueError):
            master = int((root / "queue" / "pid" / "master.pid").read_text().split()[0])
        subprocess.run([POSTFIX, "-c", str(conf), "stop"], capture_output=True, timeout=60)
        for _ in range(200):  # bounded: the master ends its children, then itself
            if master is None or not _alive(master):
                break
            time.sleep(0.05)
        else:
            os.kill(master, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        out.close()
        shutil.rmtree(root, ignore_errors=True)
