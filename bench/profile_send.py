"""Where the per-message CPU of the bulk path goes: each part timed on its own.

Never part of ``make test``. Everything stays on 127.0.0.1. Two kinds of figure:

* **parts**: each step of the per-message path run alone for a bounded number of
  calls, CPU microseconds per call (``time.process_time``): the token HMACs, the
  Message-ID (plain and VERP-signed, with its envelope sender), the join of the
  prepared chunks, the envelope's wire checks, building the commands, the write to
  a transport, parsing the replies, the reply journal's append, and the ledger's
  claim and group commit per message (on a real SQLite copy, as the run does them);
  ``links`` is both tokens as the run makes them (``Outbox.links``), the two
  ``token_`` figures each as text, as a test send or the web pages make one;
  ``message_id`` is the run's (``MessageIds``), ``message_id_alone`` one call of
  ``make_message_id``;
* **run**: one whole campaign against Postfix's ``smtp-sink``, on asyncio and on
  uvloop, with the CPU of the event-loop thread and of the database thread apart
  (``/proc/self/task``), per message; ``--cprofile FILE`` keeps a profile of it.

Usage: ``python bench/profile_send.py [--recipients N] [--size big|small|both]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import send_throughput as st  # the bench's own set-up, shared


def per_call_us(fn: Callable[[], object], calls: int, rounds: int = 5) -> float:
    """CPU microseconds per call of ``fn``: the best of ``rounds`` rounds of ``calls``
    calls (after a warm-up); the best, because a shared machine only ever adds."""
    for _ in range(min(calls, 100)):
        fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - t0) / calls * 1e6)
    return best


class _NullTransport(asyncio.Transport):
    """Takes writes and keeps nothing: the cost of handing bytes to a transport,
    without a socket (the socket's own cost is in the run figures)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: Any) -> None:
        self.written += len(data)

    def writelines(self, list_of_data: Any) -> None:
        for d in list_of_data:
            self.written += len(d)

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def parts(config: Any, db: Path, size: str, calls: int) -> dict[str, float]:
    """CPU µs per message of each step, alone."""
    from mailer import transport as tp
    from mailer.bounces.verp import VerpSigner
    from mailer.message import MessageIds, make_message_id
    from mailer.models import DeliveryStatus
    from mailer.store import DeliveryResult, Store

    out: dict[str, float] = {}
    with Store.open(db) as store:
        outbox = st.outbox_of(size, config, store)
        cid = store.create_campaign(outbox.record(store), [st.SLUG], source_path=None,
                                    sha256=outbox.sha256, again=True)
        uid, slug = "AbCdEfGhIjKlMnOp", st.SLUG
        out["token_unsubscribe"] = per_call_us(lambda: outbox.unsubscribe_url(uid, slug), calls)
        out["token_web_edition"] = per_call_us(lambda: outbox.web_edition_url(uid, slug), calls)
        # Both links as a campaign's messages carry them: signed in one call, as bytes.
        out["links"] = per_call_us(lambda: outbox.links(uid, slug), calls)
        ids = MessageIds(cid, "example.org")  # as the run makes them: once per campaign
        out["message_id"] = per_call_us(lambda: ids(12345), calls)
        out["message_id_alone"] = per_call_us(
            lambda: make_message_id(cid, 12345, "example.org"), calls)
        verp = VerpSigner("bounces@example.org", config.signing_keys())

        def signed() -> tuple[str, str]:
            mac = verp.mac(cid, 12345)
            return (make_message_id(cid, 12345, "example.org", mac=mac),
                    verp.address(cid, 12345, mac))

        out["message_id_and_verp_sender"] = per_call_us(signed, calls)
        message = outbox.message(slug, True)
        url, web = outbox.unsubscribe_url(uid, slug), outbox.web_edition_url(uid, slug)
        mid = make_message_id(cid, 12345, "example.org")

        def join() -> bytes:
            return message.personalise(to_name="联络员12345",
                                       to_address="r0012345@member.example.org",
                                       message_id=mid, unsubscribe_url=url, web_edition_url=web)

        out["join"] = per_call_us(join, calls)
        data = join()
        env = tp.Envelope(st.SENDER, "r0012345@member.example.org", data)
        out["envelope_checks"] = per_call_us(lambda: tp._wired(env), calls)
        loop = asyncio.new_event_loop()
        try:
            null = _NullTransport()
            wire = loop.run_until_complete(_make_wire(null))
            out["transport_write"] = per_call_us(lambda: _write(wire, data), calls)
            replies = (b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
                       b"250 2.0.0 Ok: queued as 3F1A2B\r\n")

            def parse() -> None:
                wire.data_received(replies)
                wire._replies.clear()

            out["reply_parsing"] = per_call_us(parse, calls)
        finally:
            loop.close()
        n = min(calls, 5_000)
        # As the run does them: claims of half the job queue at 16 connections, the
        # journal appended about once per six replies (one write per turn of the
        # loop), group commits of up to BATCH_MAX replies that nothing waits for.
        from mailer.send import BATCH_MAX
        from mailer.store.journal import Journal

        now = dt.datetime.now(dt.UTC)
        store.take_over(cid, "profile")
        t0 = time.process_time()
        jobs = []
        while len(jobs) < n:
            got = store.claim(cid, "profile", 128, now)
            if not got:  # fewer recipients than calls: time what there is
                break
            jobs += got
        out["db_claim"] = (time.process_time() - t0) / len(jobs) * 1e6
        results = [DeliveryResult(j.delivery_id, DeliveryStatus.SENT, 250,
                                  "2.0.0 Ok: queued as 3F1A2B", mid) for j in jobs]
        journal = Journal(db.with_name(db.name + ".profile.journal"))
        t0 = time.process_time()
        for i in range(0, len(results), 6):
            journal.append(time.time(), results[i:i + 6])
        out["journal_append"] = (time.process_time() - t0) / len(results) * 1e6
        journal.close(remove=True)
        t0 = time.process_time()
        for i in range(0, len(results), BATCH_MAX):
            store.record_results(results[i:i + BATCH_MAX])
        out["db_record"] = (time.process_time() - t0) / len(results) * 1e6
    return {k: round(v, 2) for k, v in out.items()}


async def _make_wire(t: asyncio.Transport) -> Any:
    from mailer.transport import _Wire

    return _Wire(t)


def _write(wire: Any, data: bytes) -> None:
    wire.write(b"MAIL FROM:<a@example.org> BODY=8BITMIME SIZE=100000\r\n"
               b"RCPT TO:<b@example.org>\r\nDATA\r\n")
    wire.write(data)
    wire.write(b".\r\n")


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipients", type=int, default=10_000)
    p.add_argument("--calls", type=int, default=20_000, help="calls per part")
    p.add_argument("--size", choices=["big", "small", "both"], default="both")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--cprofile", help="keep a cProfile (of the event loop thread's CPU "
                   "time, on uvloop) of another run in FILE.big and FILE.small")
    p.add_argument("--parts-only", action="store_true", help="no runs, only the parts")
    args = p.parse_args(argv)
    os.environ.setdefault("MAILER_SECRET", st.SECRET)
    report: dict[str, Any] = {"loadavg": [round(x, 2) for x in os.getloadavg()]}
    st.ensure_postfix_tools()
    with tempfile.TemporaryDirectory(prefix="mailer-profile-") as tmp:
        work = Path(tmp)
        config_path = st.write_config(work)
        config = st.load_config(config_path)
        sizes = ["big", "small"] if args.size == "both" else [args.size]
        with st.smtp_sink() as (port, sink_pid):
            for size in sizes:
                template = st.build_database(work, config, args.recipients, size)
                db = st.copy_db(template, work / "parts.db")
                report[f"parts_us_{size}"] = parts(config, db, size, args.calls)
                st.log(size, "parts (CPU µs per message):", report[f"parts_us_{size}"])
                if args.parts_only:
                    continue
                for loop in ("asyncio", "uvloop"):
                    db = st.copy_db(template, work / "run.db")
                    r = st.measured(sink_pid, st.run_worker, "ours", "--config",
                                    str(config_path), "--db", str(db), "--port", str(port),
                                    "--connections", str(args.connections), "--loop", loop,
                                    "--size", size)
                    if r["ledger"] != {"sent": args.recipients}:
                        raise RuntimeError(f"ledger after the run: {r['ledger']}")
                    m = r["messages"]
                    fig = {"msgs_per_s": round(m / r["wall_s"], 1),
                           "cpu_us_per_msg": round(r["cpu_s"] / m * 1e6, 1),
                           "loop_thread_us_per_msg": round(r["main_thread_cpu_s"] / m * 1e6, 1),
                           "db_thread_us_per_msg": round(r["db_thread_cpu_s"] / m * 1e6, 1),
                           "sink_us_per_msg": round(r["sink_cpu_s"] / m * 1e6, 1),
                           "message_bytes": r["message_bytes"],
                           "loadavg": [round(x, 2) for x in os.getloadavg()]}
                    report[f"run_{size}_{loop}"] = fig
                    st.log(size, loop, fig)
                if args.cprofile:  # a run of its own: the profiler's cost is not measured
                    db = st.copy_db(template, work / "run.db")
                    st.run_worker("ours", "--config", str(config_path), "--db", str(db),
                                  "--port", str(port), "--connections", str(args.connections),
                                  "--size", size, "--loop", "uvloop",
                                  "--profile", f"{args.cprofile}.{size}")
                with contextlib.suppress(FileNotFoundError):
                    template.unlink()
    print(json.dumps(report, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1:])
