"""Scheduling commands: schedule (list, cancel), pause, resume, approve, run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click

from .. import campaigns
from ..errors import AlreadySo, InvalidInput
from ..models import CampaignStatus
from ..schedule import run_daemon
from ..stamps import stamp
from .base import State, cli, pass_state
from .params import LocalDateTime
from .sending import campaign_note, resume_campaign, short_issue, warn_all
from .tables import Col, emit, make_output, output_options

STATUS_ORDER = ("pending", "sending", "paused", "sent", "failed", "missed", "cancelled")


class ScheduleGroup(click.Group):
    """`mailer schedule ISSUE --at …` adds; `mailer schedule list|cancel` manage."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["add", *args]
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        # "add" is how the parser routes `mailer schedule ISSUE`; staff never type it,
        # so usage lines and errors must not show it.
        return ("" if name == "add" else name), cmd, rest


class _UnnamedContext(click.Context):
    @property
    def command_path(self) -> str:
        return super().command_path.rstrip()


class _AddCommand(click.Command):
    context_class = _UnnamedContext


@cli.group(cls=ScheduleGroup)
def schedule() -> None:
    """Schedule an issue, list schedules, cancel one

    \b
        mailer schedule ISSUE --at "YYYY-MM-DD HH:MM" [--list LIST]...
        mailer schedule list
        mailer schedule cancel ID

    Times are in the configured time zone (schedule.timezone). The daemon
    (`mailer run`) sends each campaign at its time.

    Example:

    \b
        mailer schedule issues/2015-09.txt --at "2015-11-24 09:00"
    """


@schedule.command("add", hidden=True, cls=_AddCommand)
@click.argument("issue", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--at", "at", required=True, type=LocalDateTime(),
              help='When to send, in the configured time zone: "2015-11-24 09:00".')
@click.option("--list", "lists", multiple=True, metavar="LIST",
              help="report-to / send-to (repeatable; default: every list).")
@click.option("--again", is_flag=True, help="Schedule an issue a list already had.")
@pass_state
def schedule_add(state: State, issue: Path, at: dt.datetime, lists: tuple[str, ...],
                 again: bool) -> None:
    """Schedule an issue to be sent at a time

    Example:

    \b
        mailer schedule issues/2015-09.txt --at "2015-11-24 09:00" --list send-to
    """
    cfg = state.config
    with state.store() as store:
        prepared = campaigns.prepare(cfg, store, issue, lists)
        warn_all(prepared.warnings)
        when = campaigns.local_time(at, cfg.schedule.timezone)
        cid = campaigns.schedule(cfg, store, prepared, when, now=dt.datetime.now(dt.UTC),
                                 again=again)
    click.echo(f"campaign {cid}: {prepared.outbox.subject} → {', '.join(prepared.lists)} at "
               f"{state.local_time(stamp(when))} ({cfg.schedule.timezone})")
    if cfg.schedule.require_approval:
        click.echo(f"it waits for approval: `mailer approve {cid}`")


@schedule.command("list")
@output_options
@pass_state
def schedule_list(state: State, as_json: bool, as_csv: bool, wide: bool,
                  out_path: Path | None) -> None:
    """List campaigns: pending, sending, paused, sent, missed, cancelled, with counts

    A pending campaign counts as pending everyone it would be sent to now.

    Example:

    \b
        mailer schedule list
    """
    out = make_output(as_json, as_csv, wide, out_path)
    with state.store() as store:
        found = store.campaigns()
        audience = {c.id: sum(store.audience(c.lists).values()) for c in found
                    if c.status is CampaignStatus.PENDING and not c.counts}
    found.sort(key=lambda c: (STATUS_ORDER.index(c.status.value), c.scheduled_at or "", c.id))
    rows: list[list[Any]] = []
    for c in found:
        counts = {k: c.counts.get(k, 0) for k in ("sent", "deferred", "failed", "pending")}
        if c.id in audience:
            counts["pending"] = audience[c.id]
        rows.append([c.id, short_issue(c.issue_label), ",".join(c.lists), c.status.value,
                     state.local_time(c.scheduled_at), c.approved_by or "", *counts.values(),
                     campaign_note(state, c)])
    cols = [Col("campaign", right=True, label="#"), Col("issue"), Col("lists", 4),
            Col("status"), Col("at"),
            Col("approved_by", 6), Col("sent", 2, right=True), Col("deferred", 3, right=True),
            Col("failed", 2, right=True), Col("pending", right=True), Col("note", 5, wrap=True)]
    records = [{"campaign": c.id, "issue": c.issue_label, "lists": ",".join(c.lists),
                **dict(zip([col.name for col in cols[3:]], r[3:], strict=True))}
               for c, r in zip(found, rows, strict=True)]
    emit(out, cols, rows, title=f"{len(rows)} campaign{'s' if len(rows) != 1 else ''}",
         records=records)


def _already(state: State, campaign_id: int, wanted: CampaignStatus, what: str) -> None:
    """Asked for the state it is in: say so, change nothing, exit 0."""
    with state.store() as store:
        c = store.campaign(campaign_id)
    if c.status is wanted:
        raise AlreadySo(f"campaign {campaign_id} is already {what}; nothing changed")


@schedule.command("cancel")
@click.argument("campaign_id", type=int, metavar="ID")
@pass_state
def schedule_cancel(state: State, campaign_id: int) -> None:
    """Cancel a scheduled campaign before its time

    Example:

    \b
        mailer schedule cancel 4
    """
    _already(state, campaign_id, CampaignStatus.CANCELLED, "cancelled")
    with state.store() as store:
        c = store.campaign(campaign_id)
        if c.status in (CampaignStatus.SENDING, CampaignStatus.PAUSED):
            raise InvalidInput(f"campaign {campaign_id} has started ({c.status.value}); only "
                               f"a pending one is cancelled; `mailer pause {campaign_id}` "
                               "stops it")
        store.set_campaign_status(campaign_id, CampaignStatus.CANCELLED,
                                  allowed_from=[CampaignStatus.PENDING])
    click.echo(f"campaign {campaign_id} cancelled; nothing of it will be sent")


@cli.command()
@click.argument("campaign_id", type=int, metavar="CAMPAIGN")
@pass_state
def pause(state: State, campaign_id: int) -> None:
    """Pause a campaign that is sending; messages in flight finish

    Example:

    \b
        mailer pause 3
    """
    _already(state, campaign_id, CampaignStatus.PAUSED, "paused")
    with state.store() as store:
        store.set_campaign_status(campaign_id, CampaignStatus.PAUSED,
                                  allowed_from=[CampaignStatus.SENDING])
    click.echo(f"campaign {campaign_id} paused; `mailer resume {campaign_id}` continues it")


@cli.command()
@click.argument("campaign_id", type=int, metavar="CAMPAIGN")
@click.option("--limit", type=click.IntRange(min=1), help="Send at most N messages now.")
@click.option("--wait", is_flag=True, help="Stay until deferred messages are retried.")
@pass_state
def resume(state: State, campaign_id: int, limit: int | None, wait: bool) -> None:
    """Continue a campaign: paused, interrupted (Ctrl-C, a crash) or failed midway

    The same as `mailer send --resume CAMPAIGN`: it sends in the foreground what
    is still due (if the daemon is already sending it, it says so).

    Example:

    \b
        mailer resume 3
    """
    resume_campaign(state, campaign_id, limit=limit, wait=wait)


@cli.command()
@click.argument("campaign_id", type=int, metavar="ID")
@pass_state
def approve(state: State, campaign_id: int) -> None:
    """Approve a scheduled campaign (when schedule.require_approval is on)

    Who approved, and when, is kept with the campaign and in the history.

    Example:

    \b
        mailer approve 4
    """
    with state.store() as store:
        store.approve(campaign_id)
        c = store.campaign(campaign_id)
    click.echo(f"campaign {campaign_id} approved by {c.approved_by}")


@cli.command("run")
@pass_state
def run_command(state: State) -> None:
    """Run the daemon: send scheduled campaigns, serve unsubscribe pages

    One daemon per database. Logs go to stderr, one line per event. SIGTERM or
    Ctrl-C stops it cleanly; the next start resumes anything left.

    Example:

    \b
        mailer --config /etc/mailer/config.toml run
    """
    state.store().close()  # a missing or old database: one clear line before starting
    run_daemon(state.config)
