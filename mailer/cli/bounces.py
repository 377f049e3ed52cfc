"""`mailer bounces`: what came back by mail, and `mailer bounces fetch` to read it."""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from dataclasses import asdict

import click

from ..bounces.intake import fetch_pass
from ..stamps import stamp as to_stamp
from .base import State, cli, pass_state, plural
from .tables import Col, console, print_table

_SINCE = click.DateTime(["%Y-%m-%d", "%Y-%m-%d %H:%M"])


def _since(state: State, since: dt.datetime | None) -> str | None:
    if since is None:
        return None
    return to_stamp(since.replace(tzinfo=zoneinfo.ZoneInfo(state.config.timezone)))


@cli.group(invoke_without_command=True)
@click.option("--since", type=_SINCE, help="Only from this local date/time on.")
@click.option("--unit", help="Only this unit.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of tables.")
@click.pass_context
def bounces(ctx: click.Context, since: dt.datetime | None, unit: str | None,
            as_json: bool) -> None:
    """Addresses stopped by bounces or complaints, scoring addresses, and units cut off

    Example:

    \b
        mailer bounces --since 2015-11-01
        mailer bounces --unit 万向集团
        mailer bounces fetch
    """
    if ctx.invoked_subcommand is not None:
        return
    state = ctx.find_object(State)
    assert state is not None
    stale = state.config.bounces.score_stale_days if state.config.bounces else 7.0
    with state.store() as store:
        rows = store.bounce_rows(since=_since(state, since), unit=unit, stale_days=stale)
        cut_off = store.units_cut_off(unit=unit)
        kept = store.bounce_messages(since=_since(state, since))
    if as_json:
        data = {"addresses": [asdict(r) for r in rows],
                "units_cut_off": [{"unit": u, "addresses": a} for u, a in cut_off],
                "kept": [dict(zip(("at", "outcome", "kind", "reason", "subject", "sender"),
                                  k, strict=True)) for k in kept]}
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    cols = [Col("unit"), Col("email"), Col("list", 3), Col("state"), Col("at", 2),
            Col("detail", 1, wrap=True)]
    print_table(cols, [[r.unit, r.email, r.list_slug, r.state, state.local_time(r.at), r.detail]
                       for r in rows],
                title=f"{plural(len(rows), 'address', 'addresses')} with bounces", wide=False)
    out = console()
    for name, addresses in cut_off:
        n = len(addresses)
        what = "its address" if n == 1 else ("both addresses" if n == 2 else f"all {n} addresses")
        out.print(f"{name}: no longer receives the bulletin ({what} stopped: "
                  + "; ".join(addresses) + ")")
    if kept:
        out.print(f"{plural(len(kept), 'message')} kept aside or not understood "
                  "(nothing changed for them):")
        for at, outcome, kind, reason, subject, sender in kept:
            out.print(f"  {state.local_time(str(at))} {outcome} [{kind}] {subject} "
                      f"from {sender}: {reason}")


@bounces.command("fetch")
@click.option("--limit", default=1000, show_default=True,
              help="Read at most this many new messages.")
@pass_state
def bounces_fetch(state: State, limit: int) -> None:
    """Read the bounce mailbox once and apply what came back

    Example:

    \b
        MAILER_IMAP_PASSWORD=… mailer bounces fetch
    """
    report = fetch_pass(state.config, limit=limit)
    parts = ", ".join(f"{n} {k}" for k, n in sorted(report.counts.items())) or "nothing new"
    click.echo(f"read {report.read} message(s): {parts}")
    if report.unreadable_waiting:
        click.echo(f"{report.unreadable_waiting} message(s) not understood wait in the "
                   f"mailbox for staff (flagged $MailerUnreadable)")
