"""`make demo`: the product on embedded defaults, in a fresh ``demo/`` folder.

It runs the same commands staff type, as separate processes, so what it shows is
what they get. It grows with the product: for now it creates the database and
imports the sample lists from ``recipients/``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"

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
port = 8026
tls = "none"

[web]
base_url = "http://127.0.0.1:8025"

[contact]
line = "协会秘书处  电话 0571-00000000  邮箱 secretariat@example.org"

[lists.send-to]
title = "简报发送名单"
footer_label = "发"
collective_label = "协会会员"
"""


def mailer(*args: str) -> None:
    cmd = [sys.executable, "-m", "mailer", "--config", str(DEMO / "config.toml"), *args]
    print("$ mailer " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, timeout=120)


def main() -> None:
    if DEMO.exists():
        shutil.rmtree(DEMO)
    DEMO.mkdir()
    config = DEMO / "config.toml"
    config.write_text(CONFIG, encoding="utf-8")
    config.chmod(0o600)
    mailer("init")
    for slug in ("report-to", "send-to"):
        mailer("recipients", "import", str(REPO / "recipients" / f"{slug}.csv"), "--list", slug)
    mailer("units", "list")
    mailer("recipients", "list", "--list", "report-to")
    mailer("recipients", "list", "--list", "send-to")
    print(f"\ndemo database: {DEMO / 'mailer.db'}")


if __name__ == "__main__":
    main()
