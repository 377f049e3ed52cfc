"""The floor: what a minimal Python sender reaches on this machine, beside smtp-source.

Never part of ``make test``; everything stays on 127.0.0.1. For each message size of
``send_throughput.py`` (the same set-up, the same bytes), interleaved on one
``smtp-sink``: ``smtp-source`` at N sessions, then in fresh processes a sender with
nothing but a pipelined SMTP state machine in ``asyncio.Protocol`` callbacks on uvloop
(MAIL, RCPT and DATA in one write, the body and its end in another), over N
connections, in two kinds:

* **fixed**: the same prepared bytes for every message;
* **personalised**: each message personalised as ours does (``personalise_pieces``
  with the recipient's To, Message-ID and the two signed links);

no ledger, no retries, no checks. The gap between ``personalised`` and ours
(``send_throughput.py``) is the engine's own cost; ours' database thread is the
ledger's. Prints client CPU per message (user + system) and the rate against
smtp-source, then one JSON line.

Usage: ``python bench/floor.py [--recipients N] [--connections N] [--repeat N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import send_throughput as st  # the bench's own set-up, shared


class _Sender(asyncio.Protocol):
    """One connection: EHLO, then MAIL/RCPT/DATA, body and end, until ``jobs`` is out."""

    def __init__(self, jobs: Any, make: Any, closed: asyncio.Future[None]) -> None:
        self.jobs, self.make, self.closed = jobs, make, closed
        self.buf = b""
        self.state = "greeting"
        self.need = 0
        self.body: list[bytes] = []
        self.sent = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def _next(self) -> None:
        i = next(self.jobs, None)
        if i is None:
            self.transport.write(b"QUIT\r\n")
            self.state = "quit"
            return
        self.body = self.make(i)
        self.transport.write(b"MAIL FROM:<%s> BODY=8BITMIME\r\nRCPT TO:<r%d@member.example.org>"
                             b"\r\nDATA\r\n" % (st.SENDER.encode(), i))
        self.state, self.need = "envelope", 3

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\n")
            if line[3:4] == b"-":
                continue
            if line[:1] not in (b"2", b"3"):
                raise RuntimeError(f"refused: {line!r}")
            if self.state == "greeting":
                self.transport.write(b"EHLO floor.test\r\n")
                self.state = "ehlo"
            elif self.state == "ehlo":
                self._next()
            elif self.state == "envelope":
                self.need -= 1
                if not self.need:
                    self.transport.writelines([*self.body, b".\r\n"])
                    self.state = "end"
            elif self.state == "end":
                self.sent += 1
                self._next()
            else:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _outbox(args: argparse.Namespace) -> Any:
    """The bench's outbox for ``args.size``, recorded (its web links need the issue)."""
    from mailer.store import Store

    with Store.open(Path(args.db)) as store:
        outbox = st.outbox_of(args.size, st.load_config(Path(args.config)), store)
        outbox.record(store)
    return outbox


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: ``args.recipients`` messages over ``args.connections``."""
    import uvloop

    from mailer.message import make_message_id

    outbox = _outbox(args)
    message = outbox.message(st.SLUG, True)
    slug, domain = st.SLUG, outbox.msgid_domain

    def personalised(i: int) -> list[bytes]:
        uid = f"u{i:07d}"
        return message.personalise_pieces(
            to_name=f"联络员{i}", to_address=f"r{i}@member.example.org",
            message_id=make_message_id(1, i, domain),
            unsubscribe_url=outbox.unsubscribe_url(uid, slug),
            web_edition_url=outbox.web_edition_url(uid, slug))

    fixed = [b"".join(personalised(0))]
    make = personalised if args.kind == "personalised" else (lambda i: fixed)
    senders: list[_Sender] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        jobs = iter(range(args.recipients))
        waits = []
        for _ in range(args.connections):
            closed: asyncio.Future[None] = loop.create_future()
            _, sender = await loop.create_connection(
                lambda closed=closed: _Sender(jobs, make, closed), "127.0.0.1", args.port)
            senders.append(sender)
            waits.append(closed)
        await asyncio.wait_for(asyncio.gather(*waits), st.STEP_TIMEOUT)

    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    uvloop.run(main())
    wall, c1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    sent = sum(s.sent for s in senders)
    if sent != args.recipients:
        raise RuntimeError(f"sent {sent} of {args.recipients}")
    return {"messages": sent, "wall_s": wall,
            "cpu_s": (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)}


def run_worker(*argv: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(st.REPO))
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", *argv],
                         capture_output=True, text=True, env=env, timeout=st.STEP_TIMEOUT + 60,
                         check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main(args: argparse.Namespace) -> dict[str, Any]:
    st.ensure_postfix_tools()
    os.environ.setdefault("MAILER_SECRET", st.SECRET)
    report: dict[str, Any] = {"recipients": args.recipients, "connections": args.connections,
                              "repeat": args.repeat}
    with tempfile.TemporaryDirectory(prefix="mailer-floor-") as tmp:
        work = Path(tmp)
        config_path = st.write_config(work)
        config = st.load_config(config_path)
        with st.smtp_sink() as (port, sink_pid):
            for size in ("big", "small"):
                template = st.build_database(work, config, args.recipients, size)
                db = st.copy_db(template, work / "floor.db")
                run_worker("--size", size, "--config", str(config_path), "--db", str(db),
                           "--dump", str(work / f"message-{size}.bin"))
                message_file = st.message_file_for(
                    work, size, (work / f"message-{size}.bin").read_bytes())
                rows: dict[str, list[dict[str, float]]] = {}
                for _ in range(args.repeat):
                    r = st.measured(sink_pid, st.run_smtp_source, port, args.connections,
                                    args.recipients, message_file)
                    rows.setdefault("smtp-source", []).append(r)
                    for kind in ("fixed", "personalised"):
                        db = st.copy_db(template, work / "floor.db")
                        r = st.measured(sink_pid, run_worker, "--size", size, "--kind", kind,
                                        "--config", str(config_path), "--db", str(db),
                                        "--port", str(port), "--connections",
                                        str(args.connections), "--recipients",
                                        str(args.recipients))
                        rows.setdefault(kind, []).append(r)
                base = statistics.median(r["messages"] / r["wall_s"] for r in rows["smtp-source"])
                for who, runs in rows.items():
                    rate = statistics.median(r["messages"] / r["wall_s"] for r in runs)
                    fig = {"msgs_per_s": round(rate),
                           "cpu_us_per_msg": round(statistics.median(
                               r["cpu_s"] / r["messages"] * 1e6 for r in runs), 1),
                           "sink_cpu_us_per_msg": round(statistics.median(
                               r["sink_cpu_s"] / r["messages"] * 1e6 for r in runs), 1),
                           "vs_smtp_source": round(rate / base, 2)}
                    report[f"{size}_{who}"] = fig
                    st.log(f"{size} {who:13s} {fig['msgs_per_s']:6d} msgs/s  "
                           f"{fig['cpu_us_per_msg']:6.1f} µs CPU/msg  sink "
                           f"{fig['sink_cpu_us_per_msg']:6.1f}  vs smtp-source "
                           f"{fig['vs_smtp_source']:.2f}")
    return report


def _dump(args: argparse.Namespace) -> None:
    """The fixed message's bytes, for smtp-source (``--dump FILE``)."""
    outbox = _outbox(args)
    message = outbox.message(st.SLUG, True)
    uid = "u0000000"
    Path(args.dump).write_bytes(message.personalise(
        to_name="联络员0", to_address="r0@member.example.org",
        message_id="<c1.r0.0000000000@example.org>",
        unsubscribe_url=outbox.unsubscribe_url(uid, st.SLUG),
        web_edition_url=outbox.web_edition_url(uid, st.SLUG)))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipients", type=int, default=10_000)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", choices=["big", "small"], help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=["fixed", "personalised"], help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dump", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker and a.dump:
        _dump(a)
        print("{}")
    elif a.worker:
        print(json.dumps(worker(a)))
    else:
        print(json.dumps(main(a), ensure_ascii=False))
