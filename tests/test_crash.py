"""kill -9 in the middle of a campaign, then `mailer send --resume` until it is sent.

`mailer send` runs in a process of its own (tests/processes.py) against an aiosmtpd
server in this process; the test kills it with SIGKILL once a random number of messages has arrived
(and once more during the first resume), then resumes until the campaign is sent.
DESIGN.md promises: nothing missed, duplicates per kill bounded by the connections,
and a duplicate carries the Message-ID of its first copy.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from mailer.models import DeliveryStatus
from mailer.store.journal import journal_path, read_journal

from .conftest import REPO, Run, ledger
from .processes import Command, start_mailer
from .smtp_server import Behaviour, Received, Server, smtp_server
from .test_send import many
from .test_send_cli import SECRET, import_lists, write_config

CONCURRENCY = 4
BULK = 579  # + 7 report-to + 14 send-to = 600 recipients
TOTAL = BULK + 21
STEP_TIMEOUT = 120.0  # seconds for one subprocess


@pytest.fixture
def issue_file(tmp_path: Path) -> Path:
    """A short real issue (masthead, one article, the end block): what is promised
    here does not depend on the size of a message, and the server in this process
    reads every line of each of the 600 and more it receives per test."""
    path = tmp_path / "issues" / "short-issue.txt"
    path.parent.mkdir()
    shutil.copyfile(REPO / "tests" / "data" / "short-issue.txt", path)
    return path


def mailer(config_file: Path, *args: str, log: Path) -> Command:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MAILER_SECRET": SECRET}
    return start_mailer("--config", str(config_file), *args, env=env, log=log)


def exec_mailer(config_file: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    """``python -m mailer`` as this process's own child, for the test that needs it
    unreaped after a kill (the fork server's children are reaped by the server)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MAILER_SECRET": SECRET}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mailer", "--config", str(config_file), *args],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )


def stop(proc: Command | subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)  # reaped: a zombie's pid would still look alive


def wait_for_messages(srv: Server, proc: Command | subprocess.Popen[bytes],
                      count: int) -> bool:
    """Until the server holds ``count`` messages; False if the sender ended first."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while len(srv.messages) < count:
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(srv.messages)} of {count} messages arrived")
        time.sleep(0.001)
    return True


def message_id(m: Received) -> str:
    # The headers alone: parsing each 600-odd whole message (mostly its body) was
    # a good part of this test's time.
    head = re.split(rb"\r?\n\r?\n", m.data, maxsplit=1)[0]
    headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head)
    return str(headers["Message-ID"])


def in_doubt(srv: Server, db: Path) -> set[str]:
    """After a kill: what the server has that the ledger does not call sent (these go
    out again). The ledger is its rows and the killed sender's reply journal, whose
    replies the next sender records before it sends anything. Also checks that
    nothing is marked sent that did not arrive."""
    received = {to for m in srv.messages for to in m.rcpt_tos}
    rows = ledger(db)
    sent = {a for a, r in rows.items() if r["status"] == "sent"}
    by_id = {r["id"]: a for a, r in rows.items()}
    for _, results in read_journal(journal_path(db, 1)):
        sent |= {by_id[r.delivery_id] for r in results if r.status is DeliveryStatus.SENT}
    assert sent <= received, f"marked sent, never received: {sorted(sent - received)[:5]}"
    return received - sent


def campaign_status(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("SELECT status FROM campaigns WHERE id = 1").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_kill_9_mid_campaign_then_resume(
    run: Run, initialised: Path, config_file: Path, issue_file: Path, tmp_path: Path,
    seed: int,
) -> None:
    rnd = random.Random(seed)
    import_lists(run)
    bulk = tmp_path / "bulk.csv"
    bulk.write_text(many(BULK), encoding="utf-8")
    run("recipients", "import", str(bulk), "--list", "send-to")
    log = tmp_path / "mailer.log"
    kills: list[dict[str, Any]] = []
    procs: list[Command] = []
    with smtp_server(Behaviour(pipelining=True)) as srv:
        write_config(config_file, srv.port, smtp_extra=f"concurrency = {CONCURRENCY}")
        try:
            # Kill the first send, then the first resume, each at a random point.
            for step, args in enumerate([("send", str(issue_file)), ("send", "--resume", "1")]):
                low = len(srv.messages) + 10
                target = rnd.randint(low, low + (TOTAL - low) // 2)
                proc = mailer(config_file, *args, log=log)
                procs.append(proc)
                assert wait_for_messages(srv, proc, target), \
                    f"step {step} ended before {target} messages:\n{log.read_text()}"
                os.kill(proc.pid, signal.SIGKILL)
                stop(proc)
                assert proc.returncode == -signal.SIGKILL
                srv.settle()
                doubt = in_doubt(srv, initialised)
                kills.append({"at": len(srv.messages), "target": target, "doubt": doubt})
                assert campaign_status(initialised) == "sending"
            # Resume until sent (bounded).
            for _ in range(3):
                if campaign_status(initialised) == "sent":
                    break
                proc = mailer(config_file, "send", "--resume", "1", log=log)
                procs.append(proc)
                proc.wait(STEP_TIMEOUT)
                assert proc.returncode == 0, log.read_text()
        finally:
            for p in procs:
                stop(p)
        srv.settle()
    output = log.read_text()
    assert "being sent by another" not in output, output
    assert "Traceback" not in output, output
    assert campaign_status(initialised) == "sent"

    rows = ledger(initialised)
    assert len(rows) == TOTAL and {r["status"] for r in rows.values()} == {"sent"}
    counts = Counter(to for m in srv.messages for to in m.rcpt_tos)
    missed = set(rows) - set(counts)
    assert not missed, f"missed: {sorted(missed)[:5]}"
    assert set(counts) == set(rows)
    duplicates = {a for a, n in counts.items() if n > 1}
    # Each duplicate was in doubt at a kill; each kill left at most one per connection.
    for k in kills:
        assert len(k["doubt"]) <= CONCURRENCY, (k["at"], sorted(k["doubt"]))
    assert duplicates == set().union(*(k["doubt"] for k in kills))
    assert sum(counts.values()) - TOTAL == sum(len(k["doubt"]) for k in kills)
    ids: dict[str, set[str]] = defaultdict(set)
    for m in srv.messages:
        ids[m.rcpt_tos[0]].add(message_id(m))
    for addr, seen in ids.items():
        assert seen == {rows[addr]["message_id"]}, (addr, seen)
    summary = {"seed": seed, "kills": [(k["at"], len(k["doubt"])) for k in kills],
               "messages": len(srv.messages), "missed": len(missed)}
    print(json.dumps(summary))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_stops_cleanly_then_resume_sends_each_once(
    run: Run, initialised: Path, config_file: Path, issue_file: Path, tmp_path: Path,
    sig: signal.Signals,
) -> None:
    import_lists(run)
    bulk = tmp_path / "bulk.csv"
    bulk.write_text(many(BULK), encoding="utf-8")
    run("recipients", "import", str(bulk), "--list", "send-to")
    log = tmp_path / "mailer.log"
    procs: list[Command] = []
    with smtp_server(Behaviour(pipelining=True)) as srv:
        write_config(config_file, srv.port, smtp_extra=f"concurrency = {CONCURRENCY}")
        try:
            proc = mailer(config_file, "send", str(issue_file), log=log)
            procs.append(proc)
            assert wait_for_messages(srv, proc, 50), log.read_text()
            proc.send_signal(sig)
            proc.wait(STEP_TIMEOUT)
            # 130 after Ctrl-C, 128+15 after SIGTERM: a script sees the run unfinished.
            assert proc.returncode == 128 + sig, log.read_text()
            srv.settle()
            stopped = len(srv.messages)
            assert stopped < TOTAL
            assert in_doubt(srv, initialised) == set()  # in flight finished and recorded
            assert {r["status"] for r in ledger(initialised).values()} == {"sent", "pending"}
            assert campaign_status(initialised) == "sending"
            proc = mailer(config_file, "send", "--resume", "1", log=log)
            procs.append(proc)
            proc.wait(STEP_TIMEOUT)
            assert proc.returncode == 0, log.read_text()
        finally:
            for p in procs:
                stop(p)
        srv.settle()
    output = log.read_text()
    assert "still due; continue with: mailer send --resume 1" in output, output
    assert "Traceback" not in output, output
    counts = Counter(to for m in srv.messages for to in m.rcpt_tos)
    assert len(counts) == TOTAL and set(counts.values()) == {1}
    assert campaign_status(initialised) == "sent"


def test_a_second_sender_is_refused_while_the_first_is_alive(
    run: Run, initialised: Path, config_file: Path, issue_file: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILER_SECRET", SECRET)
    import_lists(run)
    log = tmp_path / "mailer.log"
    procs: list[Command] = []
    with smtp_server(Behaviour(pipelining=True)) as srv:
        # Slow enough (21 messages at 5/s) that the first sender is still at it.
        write_config(config_file, srv.port, smtp_extra="concurrency = 2\nrate_limit = 5")
        try:
            proc = mailer(config_file, "send", str(issue_file), log=log)
            procs.append(proc)
            assert wait_for_messages(srv, proc, 2), log.read_text()
            refused = run("send", "--resume", "1", ok=False)
            assert refused.exit_code == 1 and "being sent by another" in refused.stderr
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            proc.wait(STEP_TIMEOUT)
            assert proc.returncode == 128 + signal.SIGTERM, log.read_text()
            assert in_doubt(srv, initialised) == set()
            write_config(config_file, srv.port)
            run("send", "--resume", "1")
        finally:
            for p in procs:
                stop(p)
        srv.settle()
    counts = Counter(to for m in srv.messages for to in m.rcpt_tos)
    assert len(counts) == 21 and set(counts.values()) == {1}
    assert campaign_status(initialised) == "sent"


def test_resume_right_after_kill_9_is_accepted_at_once(
    run: Run, initialised: Path, config_file: Path, issue_file: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The killed sender is not even reaped yet (a zombie, its pid still taken): the
    kernel has released its lock, so the resume goes ahead at once."""
    monkeypatch.setenv("MAILER_SECRET", SECRET)
    import_lists(run)
    log = tmp_path / "mailer.log"
    with smtp_server(Behaviour(pipelining=True)) as srv:
        write_config(config_file, srv.port, smtp_extra="concurrency = 2\nrate_limit = 5")
        proc = exec_mailer(config_file, "send", str(issue_file), log=log)
        try:
            assert wait_for_messages(srv, proc, 2), log.read_text()
            os.kill(proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while Path(f"/proc/{proc.pid}/stat").read_text().split()[2] != "Z":
                assert time.monotonic() < deadline, "the killed sender did not die"
                time.sleep(0.01)
            write_config(config_file, srv.port)
            resumed = run("send", "--resume", "1", ok=False)
            assert resumed.exit_code == 0, resumed.output
        finally:
            stop(proc)
        srv.settle()
    counts = Counter(to for m in srv.messages for to in m.rcpt_tos)
    assert set(counts) == set(ledger(initialised)) and len(counts) == 21
    assert sum(counts.values()) - 21 <= 2  # in flight at the kill: one per connection
    assert campaign_status(initialised) == "sent"


def test_two_resumes_at_once_exactly_one_sends(
    run: Run, initialised: Path, config_file: Path, issue_file: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILER_SECRET", SECRET)
    import_lists(run)
    log = tmp_path / "mailer.log"
    procs: list[Command] = []
    with smtp_server(Behaviour(pipelining=True)) as srv:
        write_config(config_file, srv.port, smtp_extra="concurrency = 2\nrate_limit = 10")
        try:
            first = mailer(config_file, "send", str(issue_file), log=log)
            procs.append(first)
            assert wait_for_messages(srv, first, 2), log.read_text()
            os.kill(first.pid, signal.SIGKILL)
            stop(first)
            srv.settle()
            logs = [tmp_path / f"resume{i}.log" for i in range(2)]
            pair = [mailer(config_file, "send", "--resume", "1", log=lg) for lg in logs]
            procs += pair
            codes = sorted(p.wait(STEP_TIMEOUT) for p in pair)
        finally:
            for p in procs:
                stop(p)
        srv.settle()
    outputs = [lg.read_text() for lg in logs]
    assert codes == [0, 1], outputs
    refused = next(o for o in outputs if "Error:" in o)
    assert "being sent by another mailer process" in refused or "is sent" in refused, refused
    assert all("Traceback" not in o for o in outputs), outputs
    counts = Counter(to for m in srv.messages for to in m.rcpt_tos)
    assert len(counts) == 21 and sum(counts.values()) - 21 <= 2
    assert campaign_status(initialised) == "sent"
