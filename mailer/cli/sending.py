"""Sending commands: send (and resume), test-send, log, serve."""

from __future__ import annotations

import asyncio
import csv
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from .. import campaigns
from ..compose import Outbox
from ..errors import AlreadySent
from ..models import Campaign, CampaignStatus, Delivery, DeliveryStatus
from ..send import Progress as SendProgress
from ..store import Store
from .base import State, cli, console, pass_state, print_json

COUNT_COLUMNS = ("sent", "deferred", "failed", "pending", "unsubscribed")


def _warn(text: str) -> None:
    click.secho(f"warning: {text}", fg="yellow", err=True)


def warn_all(warnings: Sequence[str]) -> None:
    for w in warnings:
        _warn(w)


@contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Ctrl-C or SIGTERM: stop claiming, let in-flight messages finish."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def deliver(state: State, outbox: Outbox, campaign_id: int, *, limit: int | None,
            wait: bool) -> None:
    """Run a campaign in the foreground with a progress bar, then print its summary."""
    bar = Progress(
        TextColumn("[bold]campaign {task.fields[cid]}"), BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("sent {task.fields[sent]} · deferred {task.fields[deferred]} · "
                   "failed {task.fields[failed]} · {task.fields[rate]:.0f}/s"),
        TimeRemainingColumn(), console=console(), transient=False,
        disable=not sys.stderr.isatty(),
    )
    task: TaskID | None = None

    def show(p: SendProgress) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task("send", total=p.total, cid=campaign_id, sent=0, deferred=0,
                                failed=0, rate=0.0)
        bar.update(task, completed=p.done, sent=p.sent, deferred=p.deferred, failed=p.failed,
                   rate=p.rate)

    async def go() -> SendProgress:
        run = campaigns.sender(state.config, outbox, campaign_id, limit=limit,
                               wait_for_retries=wait, on_progress=show)
        with _stop_on_signals(run.stop):
            result = await run.run()
        if run.stop.is_set():
            _warn(f"stopped; continue with `mailer send --resume {campaign_id}`")
        return result

    with bar:
        asyncio.run(go())
    with state.store() as store:
        c = store.campaign(campaign_id)
    _summary(c)


def _summary(c: Campaign) -> None:
    n = c.counts
    click.echo(
        f"campaign {c.id} ({c.issue_label} → {', '.join(c.lists)}): {c.status.value}; "
        + ", ".join(f"{n.get(k, 0)} {k}" for k in COUNT_COLUMNS)
    )
    waiting = n.get("deferred", 0) + n.get("pending", 0)
    if waiting and c.status is CampaignStatus.SENDING:
        click.echo(f"{waiting} not yet delivered: `mailer send --resume {c.id} --wait` or the "
                   "daemon (`mailer run`) retries them")


@cli.command()
@click.argument("issue_or_campaign", required=False, metavar="ISSUE")
@click.option("--list", "lists", multiple=True, metavar="LIST",
              help="report-to / send-to (repeatable; default: every list).")
@click.option("--dry-run", is_flag=True, help="Show what would be sent; send and save nothing.")
@click.option("--limit", type=click.IntRange(min=1), help="Send at most N messages now.")
@click.option("--again", is_flag=True, help="Send an issue again to a list that had it.")
@click.option("--resume", is_flag=True, help="Continue a campaign (ISSUE is then its number).")
@click.option("--wait", is_flag=True, help="Stay until deferred messages are retried.")
@pass_state
def send(state: State, issue_or_campaign: str | None, lists: tuple[str, ...], dry_run: bool,
         limit: int | None, again: bool, resume: bool, wait: bool) -> None:
    """Send an issue to its lists now, or resume an interrupted campaign

    Every recipient gets one delivery row before anything is sent; the delivery
    log (`mailer log`) records each server reply. An address on both lists gets
    one copy, as report-to. Sending an issue to a list a second time needs --again.

    Example:

    \b
        mailer send issues/2015-09.txt --list report-to --list send-to
        mailer send --resume 3
    """
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
            _warn(f"would be refused: {e}")
    click.echo("dry run: nothing was sent or saved")


def _resume(state: State, which: str | None, *, limit: int | None, wait: bool) -> None:
    if which is not None and not which.isdigit():
        raise click.UsageError(f"--resume takes a campaign number, not {which!r}")
    with state.store() as store:
        c = campaigns.resumable(store, int(which) if which is not None else None)
        outbox = campaigns.reopen(state.config, store, c)
    warn_all(outbox.warnings)
    click.echo(f"resuming campaign {c.id}: {c.issue_label} → {', '.join(c.lists)}")
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


@cli.command()
@click.argument("campaign_id", required=False, type=int, metavar="CAMPAIGN")
@click.option("--unit", help="Only this unit: did it get the issue?")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV instead of a table.")
@click.option("--tests", is_flag=True, help="List test sends instead of campaigns.")
@pass_state
def log(state: State, campaign_id: int | None, unit: str | None, as_json: bool, as_csv: bool,
        tests: bool) -> None:
    """The delivery log: campaigns with counts, or one campaign's recipients

    Example:

    \b
        mailer log
        mailer log 3 --unit 万向集团
    """
    with state.store() as store:
        if tests:
            _print_rows(state, ["at", "email", "list", "code", "response", "message_id"],
                        store.test_sends(), as_json=as_json, as_csv=as_csv,
                        title="test sends")
            return
        if campaign_id is None and unit is None:
            _campaigns(state, store.campaigns(), as_json=as_json, as_csv=as_csv)
            return
        ids = [campaign_id] if campaign_id is not None else [c.id for c in store.campaigns()]
        rows: list[tuple[Campaign, Delivery]] = []
        for cid in ids:
            c = store.campaign(cid)
            rows += [(c, d) for d in store.deliveries(cid, unit=unit)]
        if unit is not None:
            store.get_unit(unit)
    _deliveries(state, rows, as_json=as_json, as_csv=as_csv)


def _campaigns(state: State, campaigns: list[Campaign], *, as_json: bool, as_csv: bool) -> None:
    rows = []
    for c in campaigns:
        waiting = (f"quota: resumes {state.local_time(c.resume_at)}" if c.resume_at
                   else c.reason or "")
        rows.append([c.id, c.issue_label, ",".join(c.lists), c.status.value,
                     *(c.counts.get(k, 0) for k in COUNT_COLUMNS),
                     state.local_time(c.scheduled_at or c.started_at or c.created_at),
                     state.local_time(c.finished_at) if c.finished_at else "", waiting])
    header = ["campaign", "issue", "lists", "status", *COUNT_COLUMNS, "started", "finished",
              "note"]
    _print_rows(state, header, rows, as_json=as_json, as_csv=as_csv, title="campaigns")


def _deliveries(state: State, rows: list[tuple[Campaign, Delivery]], *, as_json: bool,
                as_csv: bool) -> None:
    header = ["campaign", "issue", "unit", "email", "list", "status", "attempts", "reply",
              "time", "message_id"]
    out = []
    for c, d in rows:
        reply = f"{d.last_code or ''} {d.last_response or ''}".strip()
        when = d.sent_at or d.updated_at
        if d.bounce_at:  # accepted, then came back by mail (mailer.bounces)
            reply = _returned(state, d)
        out.append([c.id, c.issue_label, d.unit, d.email, d.list_slug, d.status.value,
                    d.attempts, reply, state.local_time(when) if when else "",
                    d.message_id or ""])
    received = sum(1 for _, d in rows if d.status is DeliveryStatus.SENT)
    returned = sum(1 for _, d in rows if d.bounce_at and d.bounce_kind != "complaint")
    later = f", {returned} bounced later" if returned else ""
    _print_rows(state, header, out, as_json=as_json, as_csv=as_csv,
                title=f"{len(rows)} deliveries, {received} accepted by the relay{later}")


def _returned(state: State, d: Delivery) -> str:
    """"accepted 2015-11-24 09:00, bounced 2015-11-24 09:07: 550 5.1.1 user unknown"."""
    what = {"complaint": "complaint", "policy": "refused (policy)"}.get(
        d.bounce_kind or "", f"bounced ({d.bounce_kind})" if d.bounce_kind == "soft"
        else "bounced")
    accepted = f"accepted {state.local_time(d.sent_at)}, " if d.sent_at else ""
    return f"{accepted}{what} {state.local_time(d.bounce_at or '')}: {d.bounce_text or ''}"


def _print_rows(state: State, header: list[str], rows: Sequence[Sequence[object]], *,
                as_json: bool,
                as_csv: bool, title: str) -> None:
    if as_json:
        print_json([dict(zip(header, r, strict=True)) for r in rows])
    elif as_csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    else:
        table = Table(title=title, title_justify="left")
        for col in header:
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(*(str(v) for v in r))
        console().print(table)


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

