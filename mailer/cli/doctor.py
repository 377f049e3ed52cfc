"""`mailer doctor`, and the checks `send`, `schedule` and `run` make before they start."""

from __future__ import annotations

import sys

import click

from .. import doctor as checks
from ..campaigns import Prepared
from .base import EXIT_REFUSED, State, cli, pass_state, plural, warn

_MARK = {checks.Level.OK: ("ok  ", "green"), checks.Level.WARN: ("warn", "yellow"),
         checks.Level.FAIL: ("FAIL", "red")}


@cli.command("doctor")
@click.option("--offline", is_flag=True,
              help="Only the local checks: no relay, no web address, no bounce mailbox.")
@click.option("--bounce-wait", type=click.FloatRange(min=0), default=120.0, show_default=True,
              metavar="SECONDS", help="How long to wait for the bounce mailbox probe.")
@pass_state
def doctor_command(state: State, offline: bool, bounce_wait: float) -> None:
    """Check that everything is ready for a real bulletin

    The config (no example value left in place), file modes, the signing
    secret, the database, the relay (connect, EHLO, STARTTLS, AUTH, the
    password variable), the public unsubscribe address and, with [bounces],
    whether the relay keeps the envelope sender (one probe message to the
    bounce mailbox itself; nothing else is sent). One line per finding, with
    the fix. Exit 0 when nothing failed (warnings do not fail), 1 otherwise.

    Example:

    \b
        mailer doctor
        mailer doctor --offline
    """
    found = checks.all_checks(state.config, offline=offline, bounce_wait=bounce_wait)
    for f in found:
        mark, colour = _MARK[f.level]
        click.echo(click.style(mark, fg=colour) + f"  {f.check}: {f.text}")
    failed = sum(1 for f in found if f.level is checks.Level.FAIL)
    warned = sum(1 for f in found if f.level is checks.Level.WARN)
    if failed:
        click.echo(f"{failed} failed, {plural(warned, 'warning')}: mend the "
                   "FAIL lines above before sending", err=True)
        sys.exit(EXIT_REFUSED)
    click.echo("ready to send" + (f" ({plural(warned, 'warning')})" if warned else ""))


def preflight(state: State, *, refuse: bool = True) -> None:
    """The quick checks before anything goes out or is written: a failure (an
    example value left in place, no secret, no password) is one ``Error:`` line.
    With ``refuse=False`` (a dry run) each failure is a warning: "would be refused"."""
    if not refuse:
        for f in checks.quick_checks(state.config):
            if f.level is checks.Level.FAIL:
                warn(f"would be refused: {f.text}")
            elif f.level is checks.Level.WARN:
                warn(f"{f.check}: {f.text}")
        return
    for f in checks.preflight(state.config):
        warn(f"{f.check}: {f.text}")


def confirm_audience(state: State, prepared: Prepared, *, yes: bool) -> None:
    """At a terminal, ask before mailing more than ``sending.confirm_above`` people.
    Without a terminal (cron, a script) there is no one to ask: it goes on."""
    people = sum(prepared.audience.values())
    if yes or people <= state.config.sending.confirm_above or not sys.stdin.isatty():
        return
    lists = ", ".join(f"{slug} {prepared.audience[slug]}" for slug in prepared.lists)
    question = (f"Send {prepared.outbox.subject} to {people:,} people ({lists}) from "
                f"{state.config.sender.address} now?")
    if not click.confirm(question, default=False):
        click.echo("not sent; nothing was saved (--yes skips this question)", err=True)
        sys.exit(EXIT_REFUSED)
