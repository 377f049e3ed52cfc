"""`mailer archive`: what the private web archive holds, and revoking an address's links."""

from __future__ import annotations

import click
from rich.table import Table

from .. import archive as archive_lib
from ..store import utc_now
from .base import State, cli, console, pass_state


@cli.group()
def archive() -> None:
    """The private web archive of sent issues (web edition links)

    Example:

    \b
        mailer archive list
    """


@archive.command("list")
@pass_state
def archive_list(state: State) -> None:
    """List the issues readers can open on the web, and revoked addresses

    An issue is in the archive once it was sent to a list; members of that list
    (report-to bodies: of any list) read it while their subscription is active.

    Example:

    \b
        mailer archive list
    """
    with state.store() as store:
        rows = store.archive_rows()
        revoked = store.revoked_links()
    table = Table(title=f"{len(rows)} issues in the archive", title_justify="left")
    for column in ("id", "issue", "date", "sent to lists", "addresses"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r.issue_id), r.label, r.date or "", ", ".join(r.lists),
                      str(r.readers))
    console().print(table)
    if revoked:
        t = Table(title=f"{len(revoked)} addresses with revoked links", title_justify="left")
        for column in ("email", "revoked", "by"):
            t.add_column(column)
        for email, at, actor in revoked:
            t.add_row(email, state.local_time(at), actor)
        console().print(t)


@archive.command("revoke")
@click.argument("email")
@pass_state
def archive_revoke(state: State, email: str) -> None:
    """Make every web link of an address stop working

    The web-edition and archive links in all mail sent to EMAIL so far open nothing
    any more (the same "link invalid" page as a forged one). Mail sent later carries
    new links that work, as long as the address is on a list.

    Example:

    \b
        mailer archive revoke old@unit.example.org
    """
    with state.store() as store:
        done = archive_lib.revoke(store, email, now=utc_now())
    click.echo(f"revoked every web link of {done}")
