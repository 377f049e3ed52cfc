"""Fault bench: a campaign attacked as a hostile tester would, on 127.0.0.1 only.

Run by ``make faults`` (never by ``make test``). Every case drives the real
``python -m mailer`` in subprocesses, as staff do, against aiosmtpd servers running
in this process that misbehave on purpose (``tests/smtp_server.py``, the servers the
tests use):

* ``kills``: 20 ``kill -9`` at random points of a 5,000-recipient campaign (by
  message count, or by time since start, start-up included), each followed by
  ``send --resume``; after each kill, what the relay has but the ledger does not
  call sent is "in doubt" (at most one per connection); at the end: nobody missed,
  the duplicates are exactly those in doubt, and a duplicate carries the
  Message-ID of its first copy.
* ``segmented``: replies cut at random byte offsets (10,000 messages), written a
  byte at a time, multi-line replies split mid-line, and the same over STARTTLS:
  each message arrives once, every row sent at its first attempt.
* ``storm``: sessions refused with 421 at EHLO and MAIL, RCPTs answered 451, 10%
  of the recipients refused with 550 (failed and bounced, as expected) and 5% of
  messages taken and then dropped unanswered (each an allowed duplicate), with
  ``send --wait``.
* ``silent``: a relay that accepts connections and never answers: the run stops at
  once (without ``--wait``) or pauses and backs off (with it) instead of walking
  the campaign at one timeout per recipient; time and attempts are measured.
* ``import``: 3,000-row staff imports while a send runs: no "database is locked".
* ``resumes``: after a ``kill -9`` (the killed sender not yet reaped), two resumes
  started together: exactly one sends.
* ``addresses``: IDN addresses (``info@例子.中国``, ``用户@例子.中国``) with and
  without SMTPUTF8, names that look like encoded words, names with CR/LF/NUL (refused
  on import, and forged into the database behind the CLI's back): each sent once
  or failed alone with its reason, the campaign never stopped.
* ``titles``: issue titles with line breaks and controls: ``issue check`` and
  ``send`` refuse them with one ``Error:`` line; nothing is sent.

The last line on stdout is one JSON object (``recipients``, ``missed``,
``duplicates``, ``max_duplicates_per_kill``, ``failed_as_expected``, ``crashes``,
``tracebacks``, per-case details); the exit status is 1 when a target is missed:
0 missed, duplicates within connections x kills plus the drops after DATA, at most
``connections`` duplicates per kill, 0 crashes, 0 tracebacks, and every case's own
checks. Progress goes to stderr.

Usage: ``python bench/faults.py [--seed N] [--quick] [--only CASE ...]``
"""

from __future__ import annotations

import argparse
import base64
import csv
import email.header
import email.parser
import email.policy
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    # The test servers live in tests/ (the tests are their main user); the bench runs
    # from the checkout with the test extras installed, like the tests. mailer/ never
    # imports them.
    sys.path.insert(0, str(REPO))

from mailer.models import DeliveryStatus  # noqa: E402
from mailer.store.journal import journal_path, read_journal  # noqa: E402
from mailer.validate import wire_address  # noqa: E402
from tests.conftest import CONFIG as TEST_CONFIG  # noqa: E402
from tests.smtp_server import Behaviour, Server, make_certificate, smtp_server  # noqa: E402

SAMPLE_ISSUE = REPO / "tests" / "data" / "bulletin-2015-09.txt"
MARKDOWN_ISSUE = REPO / "tests" / "data" / "handwritten.md"
SAMPLE_RECIPIENTS = 21  # recipients/report-to.csv (7) + recipients/send-to.csv (14)
SECRET = "bench-secret-0123456789abcdef"
CONNECTIONS = 4  # [smtp] concurrency for every case but the segmented ones
KILLS = 20
STEP_TIMEOUT = 180.0  # seconds: no single mailer process may take longer
CASE_TIMEOUT = 240.0  # seconds: no case's loop may run longer
EVIL = "Bcc: evil@attacker.example"
# The tests' config, pointed at a case's relay (see Workdir.configure).
CONFIG = TEST_CONFIG.replace('path = "data/mailer.db"', 'path = "mailer.db"')


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# --- what the bench counts -------------------------------------------------------------


@dataclass
class Tally:
    recipients: int = 0
    missed: int = 0
    duplicates: int = 0
    allowed_duplicates: int = 0  # what the cases allowed, each by its own count
    drops_after_data: int = 0
    # Per kill: the messages it left in doubt (kills), or the duplicates of the trial
    # (resumes, where the two resumes start at once and nothing can be counted between).
    kills: list[int] = field(default_factory=list)
    failed_as_expected: int = 0
    crashes: int = 0  # a mailer process ending other than the case expects
    tracebacks: int = 0
    messages: int = 0  # messages the relays took, in all
    processes: int = 0
    problems: list[str] = field(default_factory=list)
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # the lanes share it

    def problem(self, case: str, text: str) -> None:
        with self.lock:
            self.problems.append(f"{case}: {text}")
        log(f"  PROBLEM {case}: {text}")

    def add(self, kills: Iterable[int] = (), **counts: int) -> None:
        with self.lock:
            self.kills.extend(kills)
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


TALLY = Tally()


# --- a working folder: config, database, the mailer command ---------------------------


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    args: tuple[str, ...]
    log: Path
    started: float
    killed: bool = False

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


class Workdir:
    """One campaign's folder: config.toml, mailer.db (copied from a template) and a
    copy of the sample issue (a campaign remembers its file and refuses it changed)."""

    def __init__(self, root: Path, name: str, case: str, template: Path | None = None) -> None:
        self.path = root / name
        self.path.mkdir(parents=True)
        self.case = case
        self.config = self.path / "config.toml"
        self.db = self.path / "mailer.db"
        self.issue = self.path / "issues" / SAMPLE_ISSUE.name
        self.issue.parent.mkdir()
        shutil.copyfile(SAMPLE_ISSUE, self.issue)
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "MAILER_SECRET": SECRET}
        self.env.pop("MAILER_SMTP_PASSWORD", None)
        self._logs = 0
        if template is not None:
            copy_database(template, self.db)
        self.configure(2525)

    def configure(self, port: int, *, smtp: str = "", retry: str = "", tls: str = "none",
                  timeout: float = 10.0) -> None:
        text = CONFIG.replace("port = 2525", f"port = {port}").replace(
            'tls = "none"\n', f'tls = "{tls}"\ntimeout = {timeout}\n{smtp}\n')
        self.config.write_text(f"{text}\n[retry]\n{retry}\n", encoding="utf-8")
        self.config.chmod(0o600)

    def start(self, *args: str) -> Proc:
        self._logs += 1
        out = self.path / f"mailer-{self._logs:03d}.log"
        TALLY.add(processes=1)
        with out.open("wb") as f:
            popen = subprocess.Popen(
                [sys.executable, "-m", "mailer", "--config", str(self.config), *args],
                env=self.env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.path,
            )
        return Proc(popen, args, out, time.monotonic())

    def finish(self, proc: Proc, expect: Iterable[int] = (0,), *,
               timeout: float = STEP_TIMEOUT) -> str:
        """Wait for ``proc``; a traceback, or an exit status not in ``expect`` (and not
        our own kill), is counted. Returns its output."""
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(10)
            TALLY.problem(self.case, f"`mailer {' '.join(proc.args)}` ran over {timeout:.0f} s")
        out = proc.output()
        tracebacks = out.count("Traceback (most recent call last)")
        if tracebacks:
            TALLY.add(tracebacks=tracebacks)
            TALLY.problem(self.case,
                          f"traceback from `mailer {' '.join(proc.args)}`:\n{out[-2000:]}")
        rc = proc.popen.returncode
        if not (proc.killed and rc == -signal.SIGKILL) and rc not in set(expect):
            TALLY.add(crashes=1)
            last = out.strip().splitlines()[-1:] or ["(no output)"]
            TALLY.problem(self.case, f"`mailer {' '.join(proc.args)}` exited {rc}, expected "
                                     f"{sorted(set(expect))}: {last[0]}")
        return out

    def run(self, *args: str, expect: Iterable[int] = (0,)) -> tuple[int, str]:
        proc = self.start(*args)
        out = self.finish(proc, expect)
        return proc.popen.returncode, out

    def kill(self, proc: Proc, *, reap: bool = True) -> None:
        if proc.popen.poll() is None:
            proc.killed = True
            os.kill(proc.popen.pid, signal.SIGKILL)
        if reap:
            self.finish(proc, ())

    # -- reading the database straight from the file

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        conn = sqlite3.connect(self.db, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            return list(conn.execute(sql, list(params)))
        finally:
            conn.close()

    def ledger(self, campaign_id: int = 1) -> dict[str, sqlite3.Row]:
        rows = self.query(
            "SELECT d.id, d.email, d.status, d.attempts, d.last_code, d.last_response, "
            "d.message_id, s.status AS member FROM deliveries d "
            "JOIN subscriptions s ON s.recipient_id = d.recipient_id AND s.list_id = d.list_id "
            "WHERE d.campaign_id = ?", [campaign_id])
        return {r["email"]: r for r in rows}

    def campaign_status(self, campaign_id: int = 1) -> str | None:
        rows = self.query("SELECT status FROM campaigns WHERE id = ?", [campaign_id])
        return str(rows[0]["status"]) if rows else None


def copy_database(src: Path, dst: Path) -> None:
    """A consistent copy (WAL included) with SQLite's own backup."""
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


def bulk_csv(n: int, prefix: str = "m", domain: str = "bulk.example.org") -> str:
    return "email,name,unit,group\n" + "".join(
        f"{prefix}{i:05d}@{domain},联系人{i},批量单位{i % 10},第{i % 10 % 7 + 1}片组\n"
        for i in range(n))


class Templates:
    """Databases with the sample lists plus bulk send-to members, built once per size
    through the real CLI (init, recipients import), then copied per case."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[int, Path] = {}
        self.lock = threading.Lock()
        self.locks: dict[int, threading.Lock] = {}  # one build per size, whoever asks first

    def __call__(self, recipients: int) -> Path:
        with self.lock:
            lock = self.locks.setdefault(recipients, threading.Lock())
        with lock:
            return self._get(recipients)

    def _get(self, recipients: int) -> Path:
        if recipients not in self.built:
            started = time.monotonic()
            w = Workdir(self.root, f"template-{recipients}", "templates")
            w.run("init")
            for slug in ("report-to", "send-to"):
                w.run("recipients", "import", str(REPO / "recipients" / f"{slug}.csv"),
                      "--list", slug)
            bulk = recipients - SAMPLE_RECIPIENTS
            if bulk > 0:
                path = w.path / "bulk.csv"
                path.write_text(bulk_csv(bulk), encoding="utf-8")
                w.run("recipients", "import", str(path), "--list", "send-to")
            self.built[recipients] = w.db
            log(f"  template of {recipients} recipients: {time.monotonic() - started:.1f} s")
        return self.built[recipients]


# --- watching the relay ----------------------------------------------------------------


def wait_for(srv: Server, proc: Proc, count: int, *, seconds: float | None = None) -> bool:
    """Until the relay holds ``count`` messages (or ``seconds`` since the process
    started): True if the sender is still alive then, False if it ended first."""
    deadline = proc.started + (seconds if seconds is not None else STEP_TIMEOUT)
    hard = proc.started + STEP_TIMEOUT
    while len(srv.messages) < count and time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            return False
        if time.monotonic() > hard:
            break
        time.sleep(0.002)
    return proc.popen.poll() is None


def wire(address: str) -> str:
    """The form the relay sees in RCPT TO (an IDN domain in punycode)."""
    return wire_address(address).envelope


def received(srv: Server) -> Counter[str]:
    return Counter(to for m in srv.messages for to in m.rcpt_tos)


def in_doubt(case: str, w: Workdir, srv: Server) -> set[str]:
    """After a kill: what the relay has that the ledger does not call sent (it goes out
    again). The ledger is its rows and the killed sender's reply journal, which the
    next sender records before it sends. Anything the ledger calls sent that never
    arrived is a problem."""
    got = set(received(srv))
    sent = {wire(a) for a, r in w.ledger().items() if r["status"] == "sent"}
    by_id = {r["id"]: a for a, r in w.ledger().items()}
    for _, results in read_journal(journal_path(w.db, 1)):
        sent |= {wire(by_id[r.delivery_id]) for r in results
                 if r.status is DeliveryStatus.SENT}
    if sent - got:
        TALLY.problem(case, f"marked sent, never received: {sorted(sent - got)[:5]}")
    return got - sent


HEADERS = email.parser.BytesHeaderParser(policy=email.policy.default)


def account(case: str, w: Workdir, srv: Server, *, expect_failed: Callable[[str], bool] = (
        lambda a: False), allowed: int, first_attempt: bool = False,
            campaign_id: int = 1) -> dict[str, Any]:
    """Compare what the relay took with the ledger and add it to the tally:
    ``expect_failed(address)`` says who should have failed (with a reason)."""
    rows = w.ledger(campaign_id)
    by_wire = {wire(a): a for a in rows}
    counts = received(srv)
    strangers = set(counts) - set(by_wire)
    if strangers:
        TALLY.problem(case, f"the relay got messages for {sorted(strangers)[:5]}, not in the "
                            "ledger")
    missed, failed_ok, wrong = [], 0, []
    for address, r in rows.items():
        n = counts.get(wire(address), 0)
        if expect_failed(address):
            if r["status"] == "failed" and r["last_response"] and n == 0:
                failed_ok += 1
            else:
                wrong.append(f"{address} ({r['status']}, {n} copies)")
        elif r["status"] != "sent" or n == 0:
            missed.append(f"{address} ({r['status']}: {r['last_response']}, {n} copies)")
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    ids_wrong = 0
    for m in srv.messages:
        address = by_wire.get(m.rcpt_tos[0])
        if address is not None and str(HEADERS.parsebytes(m.data)["Message-ID"]) != \
                rows[address]["message_id"]:
            ids_wrong += 1
    retried = sum(1 for r in rows.values() if r["attempts"] != 1) if first_attempt else 0
    if missed:
        TALLY.problem(case, f"{len(missed)} missed: {missed[:5]}")
    if wrong:
        TALLY.problem(case, f"{len(wrong)} should have failed alone: {wrong[:5]}")
    if duplicates > allowed:
        TALLY.problem(case, f"{duplicates} duplicates, at most {allowed} allowed")
    if ids_wrong:
        TALLY.problem(case, f"{ids_wrong} messages whose Message-ID is not the ledger's")
    if retried:
        TALLY.problem(case, f"{retried} rows not sent at their first attempt")
    if w.campaign_status(campaign_id) != "sent":
        TALLY.problem(case, f"campaign {campaign_id} is {w.campaign_status(campaign_id)}")
    TALLY.add(recipients=len(rows), missed=len(missed) + len(wrong), duplicates=duplicates,
              allowed_duplicates=allowed, failed_as_expected=failed_ok,
              messages=len(srv.messages))
    return {"recipients": len(rows), "messages": len(srv.messages), "missed": len(missed),
            "duplicates": duplicates, "failed_as_expected": failed_ok}


# --- the cases -----------------------------------------------------------------------


@dataclass
class Context:
    root: Path
    templates: Templates
    rnd: random.Random
    quick: bool

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def case_kills(ctx: Context) -> dict[str, Any]:
    case = "kills"
    total = ctx.size(5000, 600)
    w = Workdir(ctx.root, case, case, ctx.templates(total))
    kills: list[dict[str, Any]] = []
    deadline = time.monotonic() + CASE_TIMEOUT
    with smtp_server(Behaviour(pipelining=True, headers_only=True)) as srv:
        w.configure(srv.port, smtp=f"concurrency = {CONNECTIONS}")
        step = 0
        while len(kills) < KILLS and time.monotonic() < deadline and step < 3 * KILLS:
            args = ("send", str(w.issue)) if step == 0 else ("send", "--resume", "1")
            have = len(srv.messages)
            remaining = total - len(received(srv))
            span = max(remaining // (KILLS - len(kills) + 1), 2)
            cap = have + ctx.rnd.randint(1, span * 3 // 2)
            # A quarter of the kills by time since start (start-up, take-over and the
            # first claims included); never the first: it has to create the campaign.
            by_time = step > 0 and ctx.rnd.random() < 0.25
            seconds = ctx.rnd.uniform(0.05, 2.5) if by_time else None
            step += 1
            proc = w.start(*args)
            if not wait_for(srv, proc, cap, seconds=seconds):
                w.finish(proc)  # ended by itself: it must have ended well
                if w.campaign_status() == "sent":
                    break
                continue
            w.kill(proc)
            srv.settle()
            doubt = in_doubt(case, w, srv)
            kills.append({"after_s": round(time.monotonic() - proc.started, 2),
                          "by": "time" if by_time else "count", "at": len(srv.messages),
                          "doubt": doubt})
            if w.campaign_status() != "sending":
                TALLY.problem(case, f"after kill {len(kills)} the campaign is "
                                    f"{w.campaign_status()}")
        for _ in range(3):  # then resume until sent
            if w.campaign_status() == "sent":
                break
            w.run("send", "--resume", "1")
        srv.settle()
        counts = received(srv)
        in_doubt_all = set().union(*(k["doubt"] for k in kills))
        result = account(case, w, srv, allowed=sum(len(k["doubt"]) for k in kills))
    duplicated = {a for a, n in counts.items() if n > 1}
    if not duplicated <= in_doubt_all:
        TALLY.problem(case, f"duplicates never in doubt at a kill: "
                            f"{sorted(duplicated - in_doubt_all)[:5]}")
    per_kill = [len(k["doubt"]) for k in kills]
    TALLY.add(kills=per_kill)
    if len(kills) < KILLS:
        TALLY.problem(case, f"only {len(kills)} of {KILLS} kills landed")
    if any(n > CONNECTIONS for n in per_kill):
        TALLY.problem(case, f"a kill left more than {CONNECTIONS} in doubt: {per_kill}")
    return {**result, "kills": len(kills), "by_time": sum(k["by"] == "time" for k in kills),
            "duplicates_per_kill": per_kill, "processes": step}


def case_segmented(ctx: Context) -> dict[str, Any]:
    case = "segmented"
    out: dict[str, Any] = {}
    cert = make_certificate(ctx.root)
    variants: list[tuple[str, int, dict[str, Any]]] = [
        ("random", ctx.size(10_000, 1000), {"split": "random", "multiline": True}),
        ("bytes", ctx.size(300, 100), {"split": "bytes", "multiline": True}),
        ("random_tls", ctx.size(2000, 300), {"split": "random", "multiline": True}),
    ]
    for name, size, kw in variants:
        started = time.monotonic()
        w = Workdir(ctx.root, f"{case}-{name}", case, ctx.templates(size))
        tls = name.endswith("_tls")
        if tls:
            if cert is None:
                TALLY.problem(case, "openssl is missing: no certificate for the TLS variant")
                continue
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ctx.load_cert_chain(*cert)
            kw = {**kw, "starttls": server_ctx}
            w.env["SSL_CERT_FILE"] = str(cert[0])  # the client trusts our certificate
        with smtp_server(Behaviour(pipelining=True, headers_only=True,
                                   seed=ctx.rnd.randrange(1 << 30), **kw)) as srv:
            w.configure(srv.port, smtp="concurrency = 8", tls="starttls" if tls else "none")
            w.run("send", str(w.issue))
            srv.settle()
            result = account(f"{case}/{name}", w, srv, allowed=0, first_attempt=True)
        seconds = time.monotonic() - started
        out[name] = {**result, "seconds": round(seconds, 1),
                     "msgs_per_s": round(result["messages"] / seconds, 1)}
    return out


def case_storm(ctx: Context) -> dict[str, Any]:
    case = "storm"
    total = ctx.size(2000, 400)
    w = Workdir(ctx.root, case, case, ctx.templates(total))
    members = [r["email"] for r in w.query(
        "SELECT r.email FROM recipients r JOIN subscriptions s ON s.recipient_id = r.id "
        "JOIN lists l ON l.id = s.list_id WHERE l.slug = 'send-to' AND r.email LIKE "
        "'%@bulk.example.org' ORDER BY r.email")]
    refused = set(ctx.rnd.sample(members, total // 10))
    behaviour = Behaviour(
        pipelining=True, headers_only=True, seed=ctx.rnd.randrange(1 << 30),
        ehlo_421_rate=0.15, mail_421_rate=0.03, temp_rate=0.15, temp_code=451,
        refuse=dict.fromkeys(refused, 550), drop_rate=0.05,
    )
    started = time.monotonic()
    with smtp_server(behaviour) as srv:
        w.configure(srv.port, smtp=f"concurrency = {CONNECTIONS}\nmessages_per_connection = 20",
                    retry="first_delay = 0.2\nmax_delay = 1.0")
        w.run("send", str(w.issue), "--wait")
        srv.settle()
        sessions = len(srv.sessions)
        dropped = len(srv.dropped)
        result = account(case, w, srv, expect_failed=lambda a: a in refused, allowed=dropped)
    rows = w.ledger()
    not_bounced = [a for a in refused if rows[a]["member"] != "bounced"
                   or rows[a]["last_code"] != 550]
    if not_bounced:
        TALLY.problem(case, f"refused with 550 but not failed and bounced: {not_bounced[:5]}")
    wrongly_bounced = [a for a, r in rows.items() if a not in refused and r["member"] != "active"]
    if wrongly_bounced:
        TALLY.problem(case, f"marked {rows[wrongly_bounced[0]]['member']} for temporary "
                            f"trouble: {wrongly_bounced[:5]}")
    TALLY.add(drops_after_data=dropped)
    attempts = Counter(r["attempts"] for r in rows.values())
    return {**result, "seconds": round(time.monotonic() - started, 1), "sessions": sessions,
            "refused_550": len(refused), "drops_after_data": dropped,
            "attempts": dict(sorted(attempts.items()))}


def case_silent(ctx: Context) -> dict[str, Any]:
    case = "silent"
    total = ctx.size(2000, 300)
    timeout = 1.0
    w = Workdir(ctx.root, case, case, ctx.templates(total))
    out: dict[str, Any] = {"recipients": total, "timeout_s": timeout,
                           "walking_estimate_s": round(total / CONNECTIONS * timeout)}
    with smtp_server(Behaviour(silent=True)) as srv:
        w.configure(srv.port, smtp=f"concurrency = {CONNECTIONS}", timeout=timeout,
                    retry="first_delay = 0.5\nmax_delay = 2.0")
        started = time.monotonic()
        # 75: deliveries still due (EX_TEMPFAIL), as `mailer send` says of a relay down.
        code, text = w.run("send", str(w.issue), expect=(75,))
        out["no_wait"] = {"seconds": round(time.monotonic() - started, 1),
                          "attempts": len(srv.connects), "exit": code}
        if "cannot be reached" not in text:
            TALLY.problem(case, f"no 'cannot reach' line: {text.strip()[-300:]}")
        before = len(srv.connects)
        window = 8.0
        proc = w.start("send", "--resume", "1", "--wait")
        # The window opens at its first attempt (start-up on a busy machine is slow).
        deadline = time.monotonic() + STEP_TIMEOUT
        while len(srv.connects) == before and proc.popen.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(window)
        proc.popen.send_signal(signal.SIGTERM)
        started = time.monotonic()
        w.finish(proc, expect=(128 + signal.SIGTERM,))  # stopped, the campaign unfinished
        out["wait"] = {"window_s": window, "attempts": len(srv.connects) - before,
                       "stopped_in_s": round(time.monotonic() - started, 1)}
    tried = [a for a, r in w.ledger().items() if (r["status"], r["attempts"]) != ("pending", 0)]
    if tried:
        TALLY.problem(case, f"{len(tried)} deliveries tried against a silent relay")
    if out["no_wait"]["attempts"] > 3 or out["wait"]["attempts"] > window / timeout:
        TALLY.problem(case, f"walked the campaign: {out}")
    with smtp_server(Behaviour(pipelining=True, headers_only=True)) as good:  # back up
        w.configure(good.port, smtp=f"concurrency = {CONNECTIONS}")
        w.run("send", "--resume", "1")
        good.settle()
        out.update(account(case, w, good, allowed=0, first_attempt=True))
    return out


def case_import(ctx: Context) -> dict[str, Any]:
    case = "import"
    total = ctx.size(2000, 300)
    rows_per_import = ctx.size(3000, 500)
    w = Workdir(ctx.root, case, case, ctx.templates(total))
    staff: list[dict[str, Any]] = []
    with smtp_server(Behaviour(pipelining=True, headers_only=True)) as srv:
        # Paced so that the send outlasts the staff work.
        w.configure(srv.port, smtp=f"concurrency = {CONNECTIONS}\nrate_limit = "
                                   f"{ctx.size(80, 20)}")
        sender = w.start("send", str(w.issue))
        if not wait_for(srv, sender, 20):
            TALLY.problem(case, "the send ended before the staff started")
        for i in range(2):
            path = w.path / f"staff{i}.csv"
            path.write_text(bulk_csv(rows_per_import, prefix=f"s{i}x", domain="new.example.org"),
                            encoding="utf-8")
            for args in (("recipients", "import", str(path), "--list", "send-to"),
                         ("recipients", "add", f"walkin{i}@new.example.org", "--list",
                          "send-to", "--unit", f"新单位{i}", "--create-unit")):
                t = time.monotonic()
                alive = sender.popen.poll() is None
                _, text = w.run(*args)
                staff.append({"command": args[0] + " " + args[1], "seconds":
                              round(time.monotonic() - t, 2), "during_send": alive and
                              sender.popen.poll() is None})
                if "locked" in text:
                    TALLY.problem(case, f"`{' '.join(args[:2])}`: {text.strip()[-300:]}")
        w.finish(sender)
        srv.settle()
        result = account(case, w, srv, allowed=0, first_attempt=True)
    imported = w.query("SELECT count(*) AS n FROM recipients WHERE email LIKE '%@new.example.org'")
    want = 2 * (rows_per_import + 1)
    if imported[0]["n"] != want:
        TALLY.problem(case, f"{imported[0]['n']} staff rows stored, {want} imported")
    during = sum(s["during_send"] for s in staff)
    if during < 2:
        TALLY.problem(case, f"only {during} staff commands overlapped the send")
    return {**result, "staff_commands": len(staff), "during_send": during,
            "slowest_staff_s": max(s["seconds"] for s in staff)}


def case_resumes(ctx: Context) -> dict[str, Any]:
    case = "resumes"
    trials = ctx.size(5, 2)
    total = 300
    outcomes: list[list[int]] = []
    duplicates: list[int] = []
    for trial in range(trials):
        w = Workdir(ctx.root, f"{case}-{trial}", case, ctx.templates(total))
        with smtp_server(Behaviour(pipelining=True, headers_only=True)) as srv:
            w.configure(srv.port, smtp=f"concurrency = {CONNECTIONS}\nrate_limit = 100")
            first = w.start("send", str(w.issue))
            if not wait_for(srv, first, ctx.rnd.randint(10, 60)):
                TALLY.problem(case, "the first send ended before the kill")
            w.kill(first, reap=False)  # not reaped: a zombie still holding its pid
            pair = [w.start("send", "--resume", "1") for _ in range(2)]
            w.finish(first, ())
            texts = [w.finish(p, (0, 1)) for p in pair]
            codes = sorted(p.popen.returncode for p in pair)
            outcomes.append(codes)
            if codes != [0, 1]:
                TALLY.problem(case, f"trial {trial}: the two resumes exited {codes}")
            else:
                refused = next(t for p, t in zip(pair, texts, strict=True)
                               if p.popen.returncode == 1)
                if not any(s in refused for s in ("being sent by another", "only a sending")):
                    TALLY.problem(case, f"trial {trial}: refused for another reason: "
                                        f"{refused.strip()[-300:]}")
            srv.settle()
            result = account(case, w, srv, allowed=CONNECTIONS)
            duplicates.append(result["duplicates"])
    TALLY.add(kills=duplicates)
    return {"trials": trials, "exit_codes": outcomes, "duplicates_per_kill": duplicates}


CONTROL_NAMES = [  # names a CSV can carry that no header may: the row is refused
    ("crlf@hostile.example.org", f"张三\r\n{EVIL}"),
    ("lf@hostile.example.org", f"李四\n{EVIL}"),
    ("ls@hostile.example.org", f"赵六\u2028{EVIL}"),
]
FORGED_NAMES = [  # written into the database behind the CLI's back
    f"张三\r\n{EVIL}", f"李四\n{EVIL}", "王五\x00尾", f"赵六\r{EVIL}", f"钱七\u2028{EVIL}",
    "孙八\x85\x1b[31m",
]
UTF8_LOCAL = frozenset({"用户@例子.中国", "联络@例子.中国"})


def _b64_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


def _csv(path: Path, rows: Iterable[tuple[str, str]], unit: str) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["email", "name", "unit", "group"])
    writer.writerows([a, n, unit, ""] for a, n in rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def case_addresses(ctx: Context) -> dict[str, Any]:
    case = "addresses"
    out: dict[str, Any] = {}
    prep = Workdir(ctx.root, f"{case}-prep", case, ctx.templates(ctx.size(300, 100)))

    def recipients() -> int:
        return int(prep.query("SELECT count(*) AS n FROM recipients")[0]["n"])

    before = recipients()
    controls = _csv(prep.path / "controls.csv",
                    [*CONTROL_NAMES, ("ok@hostile.example.org", "正常")], "恶意单位")
    _, text = prep.run("recipients", "import", str(controls), "--list", "send-to", expect=(1,))
    if "Error:" not in text or recipients() != before:
        TALLY.problem(case, f"names with line breaks were not refused: {text[-400:]}")
    prep.run("recipients", "import", str(controls), "--list", "send-to", "--skip-invalid")
    nul = _csv(prep.path / "nul.csv", [("nul@hostile.example.org", "王五\x00")], "恶意单位")
    _, text = prep.run("recipients", "import", str(nul), "--list", "send-to", expect=(1,))
    if "Error:" not in text:
        TALLY.problem(case, f"a CSV with NUL was not refused: {text[-400:]}")
    good = [
        ("info@例子.中国", "信息员"),
        ("用户@例子.中国", "用户"),
        ("words@hostile.example.org", _b64_word(EVIL)),
        ("crlfword@hostile.example.org", _b64_word(f"x\r\n{EVIL}\r\n")),
        ("qword@hostile.example.org", "=?utf-8?q?Bcc=3A_evil=40attacker.example?="),
        ("mixed@hostile.example.org", f"张三 {_b64_word('李四')} <evil@attacker.example>"),
    ]
    prep.run("recipients", "import", str(_csv(prep.path / "idn.csv", good, "例子单位")),
             "--list", "send-to")
    prep.run("recipients", "add", "联络@例子.中国", "--list", "send-to", "--unit", "例子单位",
             "--name", _b64_word(EVIL))
    if recipients() != before + 1 + len(good) + 1:
        TALLY.problem(case, f"{recipients() - before} recipients added, "
                            f"{1 + len(good) + 1} expected")
    # Names no import accepts, forged straight into the file.
    victims = [r["email"] for r in prep.query(
        "SELECT email FROM recipients WHERE email LIKE '%@bulk.example.org' "
        "ORDER BY email LIMIT ?", [len(FORGED_NAMES)])]
    conn = sqlite3.connect(prep.db)
    with conn:
        conn.executemany("UPDATE recipients SET name = ? WHERE email = ?",
                         zip(FORGED_NAMES, victims, strict=True))
    conn.close()
    for smtputf8 in (True, False):
        name = "smtputf8" if smtputf8 else "ascii_only"
        w = Workdir(ctx.root, f"{case}-{name}", case, prep.db)
        with smtp_server(Behaviour(pipelining=True, smtputf8=smtputf8)) as srv:
            w.configure(srv.port, smtp=f"concurrency = {CONNECTIONS}")
            w.run("send", str(w.issue))
            srv.settle()
            headers_checked = _check_headers(case, srv, w)
            fails = UTF8_LOCAL if not smtputf8 else frozenset()
            result = account(f"{case}/{name}", w, srv, allowed=0,
                             expect_failed=fails.__contains__)
        rows = w.ledger()
        for a in fails:
            r = rows[a]
            if "SMTPUTF8" not in (r["last_response"] or "") or r["member"] != "active":
                TALLY.problem(case, f"{a}: {r['status']} {r['last_response']!r}, "
                                    f"member {r['member']}")
        out[name] = {**result, "headers_checked": headers_checked}
    return out


def _check_headers(case: str, srv: Server, w: Workdir) -> int:
    """Every message parses, has no header it should not have, and its To is exactly
    the recipient, whatever the name."""
    names = {r["email"]: r["name"] for r in w.query("SELECT email, name FROM recipients")}
    checked = 0
    for m in srv.messages:
        to = m.rcpt_tos[0]
        try:
            msg = email.message_from_bytes(m.data, policy=email.policy.default)
            header = msg["To"]
            # RFC 6532 headers: the parser hands UTF-8 over as surrogate escapes.
            addresses = [a.addr_spec.encode("ascii", "surrogateescape").decode("utf-8")
                         for a in header.addresses]
            shown = [a.display_name for a in header.addresses]
        except Exception as e:  # the received message does not even parse
            TALLY.problem(case, f"the message to {to} does not parse: {e!r}")
            continue
        extra = {k.lower() for k in msg} & {"bcc", "cc", "resent-to", "resent-bcc"}
        if extra or len(addresses) != 1 or wire(addresses[0]) != to:
            TALLY.problem(case, f"message to {to}: To {addresses}, headers {sorted(extra)}")
        if any(c in "".join(shown) for c in "\r\n\x00\u2028\x85"):
            TALLY.problem(case, f"message to {to}: a control character in the shown name "
                                f"{shown!r}")
        stored = next((n for a, n in names.items() if wire(a) == to), None)
        if stored and "=?" in stored:
            # Decoded as RFC 2047 says (the space between two encoded words is not
            # text): Python's own address parser adds one (CPython gh-128110).
            raw = str(email.message_from_bytes(m.data, policy=email.policy.compat32)["To"])
            phrase = raw.rsplit("<", 1)[0]
            decoded = str(email.header.make_header(email.header.decode_header(phrase))).strip()
            if decoded != stored:
                TALLY.problem(case, f"message to {to}: the name {stored!r} is shown as "
                                    f"{decoded!r}")
        checked += 1
    return checked


def case_titles(ctx: Context) -> dict[str, Any]:
    case = "titles"
    w = Workdir(ctx.root, case, case, ctx.templates(SAMPLE_RECIPIENTS))
    sample = SAMPLE_ISSUE.read_text(encoding="utf-8")
    markdown = MARKDOWN_ISSUE.read_text(encoding="utf-8")
    variants: list[tuple[str, str, str]] = [
        (f"txt-{ord(c):04x}", ".txt", sample.replace("简 报", f"简 报{c}{EVIL}", 1))
        for c in ("\r", "\u2028", "\x00")
    ] + [
        ("txt-issue-line", ".txt", sample.replace("2015 年第 9 期", "2015\u2029年第 9 期", 1)),
    ] + [
        (f"md-{label}", ".md", markdown.replace('title = "简 报"', f'title = "简 报{c}{EVIL}"'))
        for label, c in (("crlf", "\\r\\n"), ("u2028", "\u2028"))
    ]
    refused = 0
    with smtp_server(Behaviour(pipelining=True)) as srv:
        w.configure(srv.port)
        procs = []
        for label, suffix, text in variants:
            path = w.path / "issues" / f"hostile-{label}{suffix}"
            path.write_bytes(text.encode("utf-8"))
            # All at once: each is refused before it could change anything.
            procs.append((label, w.start("issue", "check", str(path)), w.start("send", str(path))))
        for label, check, send in procs:
            w.finish(check, (1,))
            sent = w.finish(send, (1,))
            lines = [ln for ln in sent.splitlines() if ln.strip()]
            if not lines or not lines[-1].startswith("Error:"):
                TALLY.problem(case, f"{label}: `send` did not end with one Error: line: "
                                    f"{sent[-300:]}")
            else:
                refused += 1
        if srv.messages:
            TALLY.problem(case, f"{len(srv.messages)} messages sent for refused issues")
    campaigns = w.query("SELECT count(*) AS n FROM campaigns")[0]["n"]
    if campaigns:
        TALLY.problem(case, f"{campaigns} campaigns created for refused issues")
    return {"variants": len(variants), "refused": refused}


CASES: dict[str, Callable[[Context], dict[str, Any]]] = {
    "segmented": case_segmented,
    "kills": case_kills,
    "titles": case_titles,
    "addresses": case_addresses,
    "silent": case_silent,
    "resumes": case_resumes,
    "import": case_import,
    "storm": case_storm,
}
# Two lanes run side by side: the big campaigns, and the many short mailer commands
# (whose time goes mostly to starting Python and to waiting on purpose). Each case
# has its own folders and relays; only the tally and the templates are shared.
LANES = (("segmented", "kills"),
         ("titles", "addresses", "silent", "resumes", "import", "storm"))


def run_lane(names: Iterable[str], ctx: Context) -> None:
    for name in names:
        log(f"case {name} …")
        t = time.monotonic()
        try:
            details = CASES[name](ctx)
        except Exception as e:  # the bench itself failed: a missed target, not a crash
            TALLY.problem(name, f"the case could not run: {e!r}")
            details = {"error": repr(e)}
        with TALLY.lock:
            TALLY.cases[name] = {"seconds": round(time.monotonic() - t, 1), **details}
        log(f"case {name}: {time.monotonic() - t:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--only", nargs="+", choices=sorted(CASES), help="run these cases")
    parser.add_argument("--keep", action="store_true", help="keep the working folders")
    parser.add_argument("--serial", action="store_true", help="one case at a time")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="mailer-faults-"))
    log(f"fault bench: seed {seed}, working in {root}")
    templates = Templates(root / "templates")
    lanes = [[n for n in lane if not args.only or n in args.only] for lane in LANES]
    if args.serial:
        lanes = [[n for lane in lanes for n in lane]]
    try:
        threads = [threading.Thread(target=run_lane, name=f"lane{i}", daemon=True, args=(
            lane, Context(root, templates, random.Random(seed + i), args.quick)))
            for i, lane in enumerate(lanes) if lane]
        for t in threads:
            t.start()
        for t in threads:
            # Each case bounds its own steps; this bounds a lane that hangs anyway.
            t.join(timeout=max(1.0, 1800 - (time.monotonic() - started)))
            if t.is_alive():
                TALLY.problem(t.name, "did not finish within 30 minutes")
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.monotonic() - started
    kills = len(TALLY.kills)
    allowed = CONNECTIONS * kills + TALLY.drops_after_data
    targets = {
        "missed": TALLY.missed == 0,
        "duplicates": TALLY.duplicates <= allowed,
        "max_duplicates_per_kill": max(TALLY.kills, default=0) <= CONNECTIONS,
        "crashes": TALLY.crashes == 0,
        "tracebacks": TALLY.tracebacks == 0,
        "cases": not TALLY.problems,
    }
    report = {
        "recipients": TALLY.recipients,
        "missed": TALLY.missed,
        "duplicates": TALLY.duplicates,
        "duplicates_allowed": allowed,
        "duplicates_allowed_by_cases": TALLY.allowed_duplicates,
        "drops_after_data": TALLY.drops_after_data,
        "kills": kills,
        "connections": CONNECTIONS,
        "max_duplicates_per_kill": max(TALLY.kills, default=0),
        "failed_as_expected": TALLY.failed_as_expected,
        "crashes": TALLY.crashes,
        "tracebacks": TALLY.tracebacks,
        "messages": TALLY.messages,
        "mailer_processes": TALLY.processes,
        "problems": TALLY.problems[:20],
        "targets_met": all(targets.values()),
        "targets": targets,
        "seconds": round(seconds, 1),
        "under_8_minutes": seconds < 480,
        "seed": seed,
        "quick": args.quick,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cases": TALLY.cases,
    }
    log(f"\n{'met' if report['targets_met'] else 'MISSED'}: {TALLY.recipients} recipients, "
        f"{TALLY.missed} missed, {TALLY.duplicates} duplicates (allowed {allowed}), "
        f"{kills} kills, {TALLY.crashes} crashes, {TALLY.tracebacks} tracebacks, "
        f"{seconds:.0f} s")
    print(json.dumps(report, ensure_ascii=False))
    return 0 if report["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
