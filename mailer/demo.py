"""`make demo`: the main job end to end, on embedded defaults, in a fresh ``demo/``.

It runs the commands staff type, as separate processes, against an SMTP server in
this process (aiosmtpd) that stores every message it receives as a .eml file in
``demo/outbox/``: import the sample lists, schedule the sample issue a few seconds
ahead, let the daemon send it, show the delivery log, render the HTML, press one
member's one-click unsubscribe button over HTTP, and show it in the history.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zoneinfo
from collections.abc import Callable
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"
SAMPLE = REPO / "tests" / "data" / "bulletin-2015-09.txt"
ZONE = "Asia/Shanghai"

CONFIG = """\
# Written by `make demo`; everything local.
[database]
path = "mailer.db"

[sender]
address = "bulletin@example.org"
name = "杭州市新经济与新社会组织党务工作者协会"
reply_to = "secretariat@example.org"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
concurrency = 4

[web]
base_url = "http://127.0.0.1:{web_port}"
port = {web_port}
secret_file = "secret.key"

[contact]
line = "协会秘书处  电话 0571-00000000  邮箱 secretariat@example.org"

[lists.send-to]
title = "简报发送名单"
footer_label = "发"
collective_label = "协会会员"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def mailer(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "mailer", "--config", str(DEMO / "config.toml"), *args]
    if not capture:
        print("$ mailer " + " ".join(args), flush=True)
    done = subprocess.run(cmd, check=True, timeout=120, text=True,
                          stdout=subprocess.PIPE if capture else None)
    return done.stdout or ""


class Received(Protocol):
    """What the demo reads of aiosmtpd's envelope."""

    rcpt_tos: list[str]
    original_content: bytes


class Outbox:
    """aiosmtpd handler: every accepted message becomes demo/outbox/NNN-<rcpt>.eml."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    async def handle_DATA(self, server: object, session: object, envelope: Received) -> str:
        self.count += 1
        name = f"{self.count:03d}-{envelope.rcpt_tos[0]}.eml"
        (self.folder / name).write_bytes(envelope.original_content)
        return "250 OK stored"


def wait_until(check: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"demo: gave up waiting for {what} after {seconds:.0f} s")


def main() -> None:
    from aiosmtpd.controller import Controller

    if DEMO.exists():
        shutil.rmtree(DEMO)
    (DEMO / "outbox").mkdir(parents=True)
    smtp_port, web_port = free_port(), free_port()
    config = DEMO / "config.toml"
    config.write_text(CONFIG.format(smtp_port=smtp_port, web_port=web_port), encoding="utf-8")
    config.chmod(0o600)
    key = DEMO / "secret.key"
    key.write_text(secrets.token_urlsafe(32) + "\n")
    key.chmod(0o600)
    issue = DEMO / SAMPLE.name
    shutil.copy(SAMPLE, issue)

    say("the recipient lists")
    mailer("init")
    for slug in ("report-to", "send-to"):
        mailer("recipients", "import", str(REPO / "recipients" / f"{slug}.csv"), "--list", slug)
    mailer("units", "list")

    say(f"an SMTP server on 127.0.0.1:{smtp_port}, keeping what it receives in demo/outbox/")
    handler = Outbox(DEMO / "outbox")
    smtp = Controller(handler, hostname="127.0.0.1", port=smtp_port, ready_timeout=10)
    smtp.start()
    daemon = None
    try:
        say("the daemon (`mailer run`), its log in demo/daemon.log")
        log = (DEMO / "daemon.log").open("w")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "mailer", "--config", str(config), "run"],
            stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        wait_until(lambda: "event=synced" in (DEMO / "daemon.log").read_text(), 30,
                   "the daemon to start")

        say("the sample issue, scheduled 5 seconds ahead")
        mailer("issue", "check", str(issue))
        when = datetime.now(zoneinfo.ZoneInfo(ZONE)) + timedelta(seconds=6)
        mailer("schedule", str(issue), "--at", when.strftime("%Y-%m-%d %H:%M:%S"))
        wait_until(lambda: json.loads(mailer("schedule", "list", "--json", capture=True))[0][
            "status"] == "sent", 60, "the campaign to be sent")
        print((DEMO / "daemon.log").read_text(encoding="utf-8"), end="")

        say("the delivery log")
        mailer("log")
        mailer("log", "1", "--unit", "万向集团")

        say("the rendered email")
        mailer("render", str(issue), "--list", "send-to", "--out", str(DEMO / "preview"))
        print(f"open {DEMO / 'preview' / 'issue.html'} in a browser, or any of "
              f"{handler.count} messages in {DEMO / 'outbox'} in a mail client")

        say("a member presses the unsubscribe button in their mail client (RFC 8058)")
        eml = next(p for p in sorted((DEMO / "outbox").iterdir())
                   if "List-Unsubscribe-Post" in p.read_text(errors="replace"))
        msg = message_from_bytes(eml.read_bytes(), policy=policy.default)
        url = str(msg["List-Unsubscribe"]).split(">")[0].lstrip("<")
        to = str(msg["To"])
        req = urllib.request.Request(url, data=b"List-Unsubscribe=One-Click", method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            print(f"POST {url[:60]}… → {resp.status}")
        address = to.split("<")[-1].rstrip(">")
        mailer("history", address)
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(30)
            print(f"\ndaemon stopped (exit {code})")
        smtp.stop()
    print(f"demo database: {DEMO / 'mailer.db'}")


if __name__ == "__main__":
    main()
