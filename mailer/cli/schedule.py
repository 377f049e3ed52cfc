"""Scheduling commands: schedule (list, cancel), pause, resume, approve, run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from .. import campaigns
from ..errors import InvalidInput
from ..models import CampaignStatus
from ..schedule import run_daemon
from ..stamps import stamp
from .base import State, cli, console, pass_state, print_json
from .sending import warn_all

STATUS_ORDER = ("pending", "sending", "paused", "sent", "failed", "missed", "cancelled")


class ScheduleGroup(click.Group):
    """`mailer schedule ISSUE --at …` adds; `mailer schedule list|cancel` manage."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["add", *args]
        return super().parse_args(ctx, args)


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


@schedule.command("add", hidden=True)
@click.argument("issue", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--at", "at", required=True,
              type=click.DateTime(["%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"]),
              help="When to send, in the configured time zone.")
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
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@pass_state
def schedule_list(state: State, as_json: bool) -> None:
    """List campaigns: pending, sending, paused, sent, missed, cancelled, with counts

    Example:

    \b
        mailer schedule list
    """
    with state.store() as store:
        campaigns = store.campaigns()
    campaigns.sort(key=lambda c: (STATUS_ORDER.index(c.status.value), c.scheduled_at or "",
                                  c.id))
    rows: list[dict[str, Any]] = []
    for c in campaigns:
        rows.append({
            "campaign": c.id, "issue": c.issue_label, "lists": ",".join(c.lists),
            "status": c.status.value,
            "at": state.local_time(c.scheduled_at) if c.scheduled_at else "",
            "approved_by": c.approved_by or "",
            **{k: c.counts.get(k, 0) for k in ("sent", "deferred", "failed", "pending")},
            "note": c.reason or "",
        })
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} campaigns", title_justify="left")
    for col in ("campaign", "issue", "lists", "status", "at", "approved_by", "sent",
                "deferred", "failed", "pending", "note"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    console().print(table)


@schedule.command("cancel")
@click.argument("campaign_id", type=int, metavar="ID")
@pass_state
def schedule_cancel(state: State, campaign_id: int) -> None:
    """Cancel a scheduled campaign before its time

    Example:

    \b
        mailer schedule cancel 4
    """
    with state.store() as store:
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
    with state.store() as store:
        store.set_campaign_status(campaign_id, CampaignStatus.PAUSED,
                                  allowed_from=[CampaignStatus.SENDING])
    click.echo(f"campaign {campaign_id} paused; `mailer resume {campaign_id}` continues it")


@cli.command()
@click.argument("campaign_id", type=int, metavar="CAMPAIGN")
@pass_state
def resume(state: State, campaign_id: int) -> None:
    """Resume a paused campaign, or one that failed midway (the daemon picks it up)

    Example:

    \b
        mailer resume 3
    """
    with state.store() as store:
        c = store.campaign(campaign_id)
        if c.status is CampaignStatus.FAILED and c.started_at is None:
            raise InvalidInput(f"campaign {campaign_id} failed before it started ({c.reason}); "
                               "mend that and schedule or send the issue again")
        store.set_campaign_status(campaign_id, CampaignStatus.SENDING,
                                  allowed_from=[CampaignStatus.PAUSED, CampaignStatus.FAILED])
    click.echo(f"campaign {campaign_id} resumed; the daemon (`mailer run`) sends it, or run "
               f"`mailer send --resume {campaign_id}`")


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
