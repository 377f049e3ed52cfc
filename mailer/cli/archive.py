"""`mailer archive`: what the private web archive holds, and revoking an address's links."""

from __future__ import annotations

from pathlib import Path

import click

from .. import archive as archive_lib
from ..store import utc_now
from .base import State, cli, pass_state, plural
from .tables import Col, Output, emit, make_output, output_options


@cli.group()
def archive() -> None:
    """The private web archive of sent issues (web edition links)

    Example:

    \b
        mailer archive list
    """


@archive.command("list")
@output_options
@pass_state
def archive_list(state: State, as_json: bool, as_csv: bool, wide: bool,
                 out_path: Path | None) -> None:
    """List the issues readers can open on the web, and revoked addresses

    An issue is in the archive once it was sent to a list; members of that list
    (report-to bodies: of any list) read it while their subscription is active.

    Example:

    \b
        mailer archive list
    """
    out = make_output(as_json, as_csv, wide, out_path)
    with state.store() as store:
        rows = store.archive_rows()
        revoked = store.revoked_links()
    emit(out, [Col("id", right=True), Col("issue"), Col("date", 2), Col("lists", 1),
               Col("addresses", 3, right=True)],
         [[r.issue_id, r.label, r.date or "", ", ".join(r.lists), r.readers] for r in rows],
         title=f"{plural(len(rows), 'issue')} in the archive")
    if revoked and out.fmt == "table":
        emit(Output(wide=out.wide), [Col("email"), Col("revoked"), Col("by", 1)],
             [[email, state.local_time(at), actor] for email, at, actor in revoked],
             title=f"{plural(len(revoked), 'address', 'addresses')} with revoked links")


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
