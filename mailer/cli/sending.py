"""Sending commands: send (and resume), test-send, log, serve."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from .. import campaigns, eventloop
from ..compose import Outbox
from ..errors import AlreadySent, InvalidInput, RelayUnavailable
from ..models import Campaign, CampaignStatus, Delivery, DeliveryStatus
from ..send import Progress as SendProgress
from ..store import Store
from .base import EXIT_INTERRUPTED, EXIT_TEMPFAIL, State, cli, pass_state, plural, warn
from .doctor import confirm_audience, preflight
from .tables import Col, Output, console, emit, make_output, output_options

COUNT_COLUMNS = ("sent", "deferred", "failed", "pending", "unsubscribed")
DUE = ("pending", "deferred", "sending")


def warn_all(warnings: Sequence[str]) -> None:
    for w in warnings:
        warn(w)


@dataclass
class _Signals:
    stop: asyncio.Event
    received: int | None = None  # the signal that stopped the run, if any


@contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[_Signals]:
    """Ctrl-C or SIGTERM: stop claiming, let in-flight messages finish."""
    loop = asyncio.get_running_loop()
    caught = _Signals(stop)

    def on(sig: int) -> None:
        caught.received = sig
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on, sig)
    try:
        yield caught
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


SHOW_EVERY_S = 0.1


def deliver(state: State, outbox: Outbox, campaign_id: int, *, limit: int | None,
            wait: bool) -> None:
    """Run a campaign in the foreground with a progress bar, print its summary, and
    exit as a script can trust: 0 done, 75 deliveries still due, 130 interrupted."""
    bar = Progress(
        TextColumn("[bold]campaign {task.fields[cid]}"), BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("sent {task.fields[sent]} · deferred {task.fields[deferred]} · "
                   "failed {task.fields[failed]} · {task.fields[rate]:.0f}/s"),
        TimeRemainingColumn(), console=console(), transient=False,
        disable=not sys.stderr.isatty(),
    )
    task: TaskID | None = None
    shown = 0.0

    def show(p: SendProgress, *, last: bool = False) -> None:
        # Called for every reply: the bar is redrawn at most every SHOW_EVERY_S (an
        # update costs more than sending a small message), and once at the end.
        nonlocal task, shown
        now = time.monotonic()
        if task is not None and not last and now - shown < SHOW_EVERY_S:
            return
        shown = now
        if task is None:
            task = bar.add_task("send", total=p.total, cid=campaign_id, sent=0, deferred=0,
                                failed=0, rate=0.0)
        bar.update(task, completed=p.done, sent=p.sent, deferred=p.deferred, failed=p.failed,
                   rate=p.rate)

    down: RelayUnavailable | None = None
    caught: int | None = None

    async def go() -> SendProgress:
        nonlocal down, caught
        run = campaigns.sender(state.config, outbox, campaign_id, limit=limit,
                               wait_for_retries=wait, on_progress=show)
        with _stop_on_signals(run.stop) as signals:
            try:
                return await run.run()
            except RelayUnavailable as e:
                down = e
                return run.progress
            finally:
                caught = signals.received

    with bar:
        progress = eventloop.run(go())  # uvloop when installed, as the daemon
        show(progress, last=True)
    with state.store() as store:
        c = store.campaign(campaign_id)
        next_try = store.next_attempt_at(campaign_id)
    _summary(c)
    due = sum(c.counts.get(k, 0) for k in DUE)
    if caught is not None:
        name = "Ctrl-C" if caught == signal.SIGINT else "SIGTERM"
        click.echo(f"interrupted ({name}) with {plural(due, 'delivery', 'deliveries')} "
                   f"still due; continue with: mailer send --resume {campaign_id}", err=True)
        sys.exit(EXIT_INTERRUPTED if caught == signal.SIGINT else 128 + caught)
    if not due or c.status is CampaignStatus.SENT:
        return
    if c.status is CampaignStatus.PAUSED:
        why = "paused by staff"
        retry = f"`mailer resume {campaign_id}` continues it"
    elif down is not None:
        why = f"the SMTP server {down.host}:{down.port} cannot be reached ({down.reason})"
        retry = (f"nothing retries on its own without the daemon; `mailer send --resume "
                 f"{campaign_id} --wait` tries again")
    elif limit is not None and progress.done + progress.deferred >= limit:
        click.echo(f"--limit {limit} reached; {plural(due, 'delivery', 'deliveries')} "
                   f"left for `mailer send --resume {campaign_id}`")
        return
    elif c.resume_at:
        why = "the sending quota is used up"
        retry = f"next try {state.local_time(c.resume_at)}"
    else:
        deferred = c.counts.get("deferred", 0)
        why = f"the server deferred {plural(deferred, 'message')} (4xx or dropped)"
        when = state.local_time(next_try) if next_try else "now"
        retry = (f"next retry {when} ({state.config.timezone}) by `mailer send --resume "
                 f"{campaign_id} --wait` or the daemon")
    click.echo(f"campaign {campaign_id} stopped with {plural(due, 'delivery', 'deliveries')} "
               f"still due: {why}; {retry}", err=True)
    sys.exit(EXIT_TEMPFAIL)


def _summary(c: Campaign) -> None:
    n = c.counts
    click.echo(
        f"campaign {c.id} ({c.issue_label} → {', '.join(c.lists)}): {c.status.value}; "
        + ", ".join(f"{n.get(k, 0)} {k}" for k in COUNT_COLUMNS)
    )


@cli.command()
@click.argument("issue_or_campaign", required=False, metavar="ISSUE")
@click.option("--list", "lists", multiple=True, metavar="LIST",
              help="report-to / send-to (repeatable; default: every list).")
@click.option("--dry-run", is_flag=True, help="Show what would be sent; send and save nothing.")
@click.option("--limit", type=click.IntRange(min=1), help="Send at most N messages now.")
@click.option("--again", is_flag=True, help="Send an issue again to a list that had it.")
@click.option("--resume", is_flag=True, help="Continue a campaign (ISSUE is then its number).")
@click.option("--wait", is_flag=True, help="Stay until deferred messages are retried.")
@click.option("--yes", is_flag=True, help="Do not ask before mailing many people.")
@pass_state
def send(state: State, issue_or_campaign: str | None, lists: tuple[str, ...], dry_run: bool,
         limit: int | None, again: bool, resume: bool, wait: bool, yes: bool) -> None:
    """Send an issue to its lists now, or resume an interrupted campaign

    Every recipient gets one delivery row before anything is sent; the delivery
    log (`mailer log`) records each server reply. An address on both lists gets
    one copy, as report-to. Sending an issue to a list a second time needs --again.
    It first makes the quick checks of `mailer doctor` (no example value left in
    the config, the secret, the database); at a terminal it asks before mailing
    more than sending.confirm_above people (--yes: do not ask).

    Example:

    \b
        mailer send issues/2015-09.txt --list report-to --list send-to
        mailer send --resume 3
    """
    preflight(state, refuse=not dry_run)
    if resume:
        # These shape a new campaign; silently ignored, --dry-run would really send.
        for given, flag in ((dry_run, "--dry-run"), (again, "--again"), (lists, "--list")):
            if given:
                raise click.UsageError(f"{flag} cannot be used with --resume")
        _resume(state, issue_or_campaign, limit=limit, wait=wait)
        return
    if issue_or_campaign is None:
        raise click.UsageError("give the issue file to send (or --resume CAMPAIGN)")
    path = Path(issue_or_campaign)
    with state.store() as store:
        prepared = campaigns.prepare(state.config, store, path, lists)
        warn_all(prepared.warnings)
        if dry_run:
            _dry_run(store, prepared)
            return
        confirm_audience(state, prepared, yes=yes)
        campaign_id = campaigns.start(state.config, store, prepared, again=again)
    outbox = prepared.outbox
    click.echo(f"campaign {campaign_id}: {outbox.subject} → "
               + ", ".join(f"{slug} {prepared.audience[slug]}" for slug in prepared.lists))
    deliver(state, outbox, campaign_id, limit=limit, wait=wait)


def _dry_run(store: Store, prepared: campaigns.Prepared) -> None:
    outbox = prepared.outbox
    click.echo(f"subject: {outbox.subject}")
    for ml in outbox.lists:
        click.echo(f"  {ml.slug} ({ml.footer_label}): {prepared.audience[ml.slug]} recipients")
    for line in outbox.end.lines:
        click.echo(f"  {line.label}：{line.text}")
    m = outbox.issue.masthead
    issue_id = store.find_issue(m.year, m.number)
    if issue_id is not None:
        try:
            store.check_repeat(issue_id, [ml.slug for ml in outbox.lists])
        except AlreadySent as e:
            warn(f"would be refused: {e}")
    click.echo("dry run: nothing was sent or saved")


def _resume(state: State, which: str | None, *, limit: int | None, wait: bool) -> None:
    if which is not None and not which.isdigit():
        raise click.UsageError(f"--resume takes a campaign number, not {which!r}")
    resume_campaign(state, int(which) if which is not None else None, limit=limit, wait=wait)


def resume_campaign(state: State, campaign_id: int | None, *, limit: int | None = None,
                    wait: bool = False) -> None:
    """What `mailer resume N` and `mailer send --resume N` both do: take a paused,
    interrupted or failed-midway campaign up again and send it in the foreground."""
    with state.store() as store:
        c = (campaigns.resumable(store, None) if campaign_id is None
             else store.campaign(campaign_id))
        if c.status is CampaignStatus.SENT:
            click.echo(f"campaign {c.id} is already sent; nothing is left to resume "
                       f"(`mailer log {c.id}` shows each delivery)")
            return
        if c.status is CampaignStatus.PENDING:
            raise InvalidInput(f"campaign {c.id} has not started: it is scheduled for "
                               f"{state.local_time(c.scheduled_at)}; the daemon sends it then")
        if c.status in (CampaignStatus.CANCELLED, CampaignStatus.MISSED):
            raise InvalidInput(f"campaign {c.id} was {c.status.value}; nothing of it can be "
                               "resumed; send or schedule the issue again")
        if c.status is CampaignStatus.FAILED and c.started_at is None:
            raise InvalidInput(f"campaign {c.id} failed before it started ({c.reason}); "
                               "mend that and schedule or send the issue again")
        outbox = campaigns.reopen(state.config, store, c)
        if c.status is not CampaignStatus.SENDING:
            store.set_campaign_status(c.id, CampaignStatus.SENDING,
                                      allowed_from=[CampaignStatus.PAUSED, CampaignStatus.FAILED])
    warn_all(outbox.warnings)
    click.echo(f"resuming campaign {c.id}: {c.issue_label} → {', '.join(c.lists)}")
    # Another live sender (the daemon, a second resume) is refused: CampaignLocked.
    deliver(state, outbox, c.id, limit=limit, wait=wait)


@cli.command("test-send")
@click.argument("issue", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "to", required=True, help="The address that gets the test copy.")
@click.option("--list", "list_slug", default="send-to", show_default=True, metavar="LIST",
              help="Which list's version to send.")
@pass_state
def test_send(state: State, issue: Path, to: str, list_slug: str) -> None:
    """Send one copy marked 【测试】 to one address, logged apart from campaigns

    Example:

    \b
        mailer test-send issues/2015-09.txt --to secretariat@example.org
    """
    with state.store() as store:
        sent = campaigns.test_send(state.config, store, issue, to, list_slug)
    warn_all(sent.warnings)
    click.echo(f"test copy of {sent.subject} ({list_slug}) sent to {sent.address}: "
               f"{sent.reply.code} {sent.reply.text}")


_LABEL = re.compile(r"(\d{4})年第(\d+)期")


def _issue_matches(label: str, wanted: str) -> bool:
    """``9`` or ``2015-9`` (also 2015/9, 2015年第9期) against a campaign's issue label."""
    m = _LABEL.search(label)
    if m is None:
        return False
    w = re.fullmatch(r"\s*(?:(\d{4})\s*(?:[-/.]|年第?)\s*)?第?(\d+)期?\s*", wanted)
    if w is None:
        raise InvalidInput(f"--issue {wanted!r}: give the issue number (9), or the year and "
                           "number (2015-9)")
    year, number = w.groups()
    return int(m.group(2)) == int(number) and (year is None or m.group(1) == year)


@cli.command()
@click.argument("campaign_id", required=False, type=int, metavar="CAMPAIGN")
@click.option("--issue", "issue", metavar="N", help="Campaigns of this issue: 9, or 2015-9.")
@click.option("--unit", help="Only this unit (a unique beginning of its name will do).")
@click.option("--tests", is_flag=True, help="List test sends instead of campaigns.")
@output_options
@pass_state
def log(state: State, campaign_id: int | None, issue: str | None, unit: str | None,
        tests: bool, as_json: bool, as_csv: bool, wide: bool, out_path: Path | None) -> None:
    """The delivery log: campaigns with counts, or their recipients

    With --unit, it answers "did this unit get the issue?" first.

    Example:

    \b
        mailer log
        mailer log --issue 9 --unit 万向集团
        mailer log 3 --csv -o campaign-3.csv
    """
    out = make_output(as_json, as_csv, wide, out_path)
    with state.store() as store:
        if tests:
            sends = [[state.local_time(str(r[0])), *r[1:]] for r in store.test_sends()]
            emit(out, [Col("at"), Col("email"), Col("list", 2), Col("code", 3),
                       Col("response", 4, wrap=True), Col("message_id", 5)], sends,
                 title=plural(len(sends), "test send"))
            return
        chosen = [store.campaign(campaign_id)] if campaign_id is not None else store.campaigns()
        if issue is not None:
            chosen = [c for c in chosen if _issue_matches(c.issue_label, issue)]
            if not chosen:
                raise InvalidInput(f"no campaign of issue {issue}; `mailer log` lists them all")
        unit_name = store.resolve_unit(unit).name if unit is not None else None
        if campaign_id is None and issue is None and unit_name is None:
            _campaigns(state, store, chosen, out)
            return
        rows = [(c, d) for c in chosen for d in store.deliveries(c.id, unit=unit_name)]
    if unit_name is not None and out.fmt == "table":
        _answer(state, unit_name, chosen, rows)
    _deliveries(state, rows, out)


def _answer(state: State, unit: str, chosen: list[Campaign],
            rows: list[tuple[Campaign, Delivery]]) -> None:
    """"Did 万向集团 get issue 9?" in one line per campaign, before the details."""
    for c in chosen:
        mine = [d for cc, d in rows if cc.id == c.id]
        if not mine:
            click.echo(f"campaign {c.id} ({c.issue_label}): no: {unit} was not among its "
                       "recipients")
            continue
        sent = [d for d in mine if d.status is DeliveryStatus.SENT]
        failed = sum(1 for d in mine if d.status is DeliveryStatus.FAILED)
        # Accepted by the relay and later returned by mail (mailer.bounces): not got.
        bounced = sum(1 for d in sent if d.bounce_at and d.bounce_kind in ("hard", "soft"))
        got = len(sent) - bounced
        last = max((d.sent_at for d in sent if d.sent_at), default=None)
        yes = ("yes" if got == len(mine) else "partly" if got else
               "no" if sent else "not yet")
        when = f" on {state.local_time(last)}" if last else ""
        click.echo(f"campaign {c.id} ({c.issue_label}): {yes}: {len(sent)} of "
                   f"{plural(len(mine), 'address', 'addresses')} accepted{when}, "
                   f"{bounced} bounced later, {failed} refused")


def short_issue(label: str) -> str:
    """``2015年第9期`` for ``简报 2015年第9期（总第33期）``: the part staff look for."""
    m = _LABEL.search(label)
    return m.group(0) if m else label


def campaign_time(state: State, c: Campaign) -> str:
    """When it started, or ``due …`` for one that never did (a cancelled campaign has
    no start, whatever its schedule said)."""
    if c.started_at:
        return state.local_time(c.started_at)
    if c.scheduled_at:
        return f"due {state.local_time(c.scheduled_at)}"
    return ""


def campaign_note(state: State, c: Campaign) -> str:
    if c.resume_at:
        return f"quota: resumes {state.local_time(c.resume_at)}"
    return state.local_times_in(c.reason or "")


def _campaigns(state: State, store: Store, chosen: list[Campaign], out: Output) -> None:
    rows = []
    for c in chosen:
        counts = dict(c.counts)
        if c.status is CampaignStatus.PENDING and not counts:
            # No ledger rows before it starts: its audience is what would be sent.
            counts["pending"] = sum(store.audience(c.lists).values())
        rows.append([c.id, short_issue(c.issue_label), ",".join(c.lists), c.status.value,
                     *(counts.get(k, 0) for k in COUNT_COLUMNS), campaign_time(state, c),
                     state.local_time(c.finished_at), campaign_note(state, c)])
    cols = [Col("campaign", right=True, label="#"), Col("issue"), Col("lists", 4), Col("status"),
            Col("sent", right=True), Col("deferred", 3, right=True),
            Col("failed", right=True), Col("pending", 2, right=True),
            Col("unsubscribed", 6, right=True), Col("started"), Col("finished", 7),
            Col("note", 5, wrap=True)]
    records = [dict(zip([c.name for c in cols], r, strict=True)) | {
        "issue": c.issue_label}
        for c, r in zip(chosen, rows, strict=True)]
    emit(out, cols, rows, title=plural(len(rows), "campaign"), records=records)


def _deliveries(state: State, rows: list[tuple[Campaign, Delivery]], out: Output) -> None:
    table = []
    for c, d in rows:
        reply = f"{d.last_code or ''} {d.last_response or ''}".strip()
        if d.bounce_at:  # accepted, then came back by mail (mailer.bounces)
            reply = _returned(state, d)
        table.append([c.id, d.unit, d.email, d.list_slug, d.status.value, d.attempts,
                      state.local_time(d.sent_at or d.updated_at), reply,
                      short_issue(c.issue_label), d.message_id or ""])
    cols = [Col("campaign", 3, right=True, label="#"), Col("unit"), Col("email"), Col("list", 4),
            Col("status"), Col("attempts", 5, right=True), Col("time", 2),
            Col("reply", 6, wrap=True),
            Col("issue", 7), Col("message_id", 8)]
    received = sum(1 for _, d in rows if d.status is DeliveryStatus.SENT)
    returned = sum(1 for _, d in rows if d.bounce_at and d.bounce_kind != "complaint")
    later = f", {returned} bounced later" if returned else ""
    # Scripts get the fields in the order they always had.
    order = ("campaign", "issue", "unit", "email", "list", "status", "attempts", "reply",
             "time", "message_id")
    records = []
    for (c, _), r in zip(rows, table, strict=True):
        rec = dict(zip([col.name for col in cols], r, strict=True)) | {"issue": c.issue_label}
        records.append({k: rec[k] for k in order})
    emit(out, cols, table, records=records,
         title=f"{plural(len(rows), 'delivery', 'deliveries')}, {received} accepted by the "
               f"relay{later}")


def _returned(state: State, d: Delivery) -> str:
    """"accepted 2015-11-24 09:00, bounced 2015-11-24 09:07: 550 5.1.1 user unknown"."""
    what = {"complaint": "complaint", "policy": "refused (policy)"}.get(
        d.bounce_kind or "", f"bounced ({d.bounce_kind})" if d.bounce_kind == "soft"
        else "bounced")
    accepted = f"accepted {state.local_time(d.sent_at)}, " if d.sent_at else ""
    return f"{accepted}{what} {state.local_time(d.bounce_at or '')}: {d.bounce_text or ''}"


@cli.command()
@click.option("--host", help="Listen address (default: web.host).")
@click.option("--port", type=int, help="Port (default: web.port).")
@pass_state
def serve(state: State, host: str | None, port: int | None) -> None:
    """Serve the unsubscribe pages and the RFC 8058 one-click endpoint

    Example:

    \b
        mailer serve --host 127.0.0.1 --port 8025
    """
    from ..web import run_server

    run_server(state.config, host=host, port=port)

