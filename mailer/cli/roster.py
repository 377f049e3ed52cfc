"""Staff commands for the recipient lists: init, recipients, units, unsubscribes, history."""

from __future__ import annotations

import datetime as dt
import io
import sys
import zoneinfo
from dataclasses import asdict
from pathlib import Path

import click
from rich.table import Table

from .. import recipients_file
from ..errors import ImportRejected, InvalidInput
from ..files import write_atomic
from ..models import Event, Member, Status
from ..stamps import stamp as to_stamp
from ..store import Store
from ..validate import clean_text, normalise_email
from .base import State, cli, console, pass_state, print_json


@cli.command()
@pass_state
def init(state: State) -> None:
    """Create the database (mode 0600) and the lists named in the config

    Safe to run again: it brings the schema up to date and makes the lists'
    titles and labels match the config.

    Example:

    \b
        mailer --config config.toml init
    """
    cfg = state.config
    existed = cfg.database.exists()
    with Store.init(cfg.database, cfg.lists) as store:
        lists = store.lists()
    verb = "updated" if existed else "created"
    click.echo(f"{verb} {cfg.database}")
    for ml in lists:
        unsub = "members may unsubscribe" if ml.allow_unsubscribe else "changed by staff only"
        click.echo(f"  list {ml.slug} ({ml.footer_label}：{ml.title}; {unsub})")


# --- recipients ---------------------------------------------------------------


@cli.group()
def recipients() -> None:
    """Add, import, list, remove and export recipients

    Example:

    \b
        mailer recipients import members.csv --list send-to --dry-run
    """


list_option = click.option("--list", "list_slug", metavar="LIST", help="report-to or send-to.")


@recipients.command("add")
@click.argument("email")
@click.option("--list", "list_slug", required=True, metavar="LIST", help="report-to or send-to.")
@click.option("--unit", required=True, help="The unit (单位) the address belongs to.")
@click.option("--name", help="The contact's name (联系人).")
@click.option("--group", help="The unit's 片组, when creating the unit.")
@click.option("--create-unit", is_flag=True, help="Create the unit if it is not on file.")
@pass_state
def recipients_add(
    state: State,
    email: str,
    list_slug: str,
    unit: str,
    name: str | None,
    group: str | None,
    create_unit: bool,
) -> None:
    """Put one address on a list

    Example:

    \b
        mailer recipients add dangban@wanxiang.example.org --list send-to \\
            --unit 万向集团 --name 李明
    """
    address = normalise_email(email)
    unit_name = clean_text(unit, "unit name", required=True)
    assert unit_name is not None
    with state.store() as store:
        store.add_recipient(
            address,
            list_slug=list_slug,
            unit=unit_name,
            name=clean_text(name, "contact name"),
            group=clean_text(group, "group (片组)"),
            create_unit=create_unit,
        )
    click.echo(f"added {address.email} ({unit_name}) to {list_slug}")


@recipients.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--list", "list_slug", required=True, metavar="LIST", help="report-to or send-to.")
@click.option("--skip-invalid", is_flag=True, help="Import the good rows, report the bad ones.")
@click.option("--dry-run", is_flag=True, help="Check and report, save nothing.")
@click.option("--encoding", help="File encoding (default: detect UTF-8 or GBK/GB18030).")
@pass_state
def recipients_import(
    state: State,
    file: Path,
    list_slug: str,
    skip_invalid: bool,
    dry_run: bool,
    encoding: str | None,
) -> None:
    """Import a CSV of recipients: all rows or none

    Columns (English or the Chinese headers used in Excel): email (电子邮箱/邮箱),
    name (联系人/姓名), unit (单位名称/单位), group (片组/分组). UTF-8, with or
    without BOM, or GBK/GB18030 as Excel saves on Chinese Windows. Importing the
    same file again changes nothing; an unsubscribed address stays unsubscribed.

    Example:

    \b
        mailer recipients import recipients/send-to.csv --list send-to
    """
    with state.store() as store:
        store.get_list(list_slug)  # an unknown list is reported before the file
        result = recipients_file.read(file, encoding=encoding)
        for problem in result.problems:
            click.echo(problem, err=True)
        if result.problems and not skip_invalid:
            raise ImportRejected(file.name, result.problems)
        report = store.import_rows(result.rows, list_slug=list_slug, dry_run=dry_run)
    for note in report.notes:
        click.echo(f"{file.name} {note}")
    skipped = f", {len(result.problems)} bad rows skipped" if result.problems else ""
    tail = " (dry run: nothing was saved)" if dry_run else ""
    click.echo(
        f"{file.name}: {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged{skipped} on {list_slug}{tail}"
    )


def _status_choice() -> click.Choice[str]:
    return click.Choice([s.value for s in Status])


@recipients.command("list")
@list_option
@click.option("--unit", help="Only this unit.")
@click.option("--status", type=_status_choice(), help="Only this status.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@pass_state
def recipients_list(
    state: State, list_slug: str | None, unit: str | None, status: str | None, as_json: bool
) -> None:
    """List recipients with their unit, list and status

    Example:

    \b
        mailer recipients list --list send-to --status active
    """
    with state.store() as store:
        members = store.members(
            list_slug=list_slug, unit=unit, status=Status(status) if status else None
        )
    if as_json:
        print_json([{**asdict(m), "status": m.status.value} for m in members])
        return
    _members_table(state, members, title=f"{len(members)} recipients")


def _members_table(state: State, members: list[Member], *, title: str) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("List", "Unit", "Group", "Email", "Name", "Status", "Since"):
        table.add_column(col, overflow="fold")
    for m in members:
        table.add_row(
            m.list_slug, m.unit, m.group or "", m.email, m.name or "",
            m.status.value, state.local_time(m.changed_at),
        )
    console().print(table)


@recipients.command("remove")
@click.argument("email")
@list_option
@click.option("--reason", help="Why, for the audit trail.")
@pass_state
def recipients_remove(
    state: State, email: str, list_slug: str | None, reason: str | None
) -> None:
    """Stop sending to an address (on one list, or all); nothing is deleted

    The subscription's status becomes removed_by_staff, kept with the time and
    your user name in the history.

    Example:

    \b
        mailer recipients remove old@unit.example.org --list send-to --reason 已离职
    """
    with state.store() as store:
        changed = store.set_status(
            email, Status.REMOVED_BY_STAFF, list_slug=list_slug, source="staff",
            reason=clean_text(reason, "reason"), only_from=(Status.ACTIVE, Status.BOUNCED),
        )
    click.echo(f"removed {normalise_email(email).email} from {', '.join(changed)}")


@recipients.command("resubscribe")
@click.argument("email")
@click.option("--list", "list_slug", required=True, metavar="LIST", help="report-to or send-to.")
@click.option("--reason", required=True, help="Why mail should flow again (logged).")
@pass_state
def recipients_resubscribe(state: State, email: str, list_slug: str, reason: str) -> None:
    """Send to a removed, bounced or unsubscribed address again

    Example:

    \b
        mailer recipients resubscribe lm@unit.example.org --list send-to \\
            --reason "单位来函要求恢复接收"
    """
    why = clean_text(reason, "reason", required=True)
    with state.store() as store:
        store.set_status(email, Status.ACTIVE, list_slug=list_slug, source="staff", reason=why)
    click.echo(f"{normalise_email(email).email} is active on {list_slug} again")


@recipients.command("export")
@list_option
@click.option(
    "--status",
    type=click.Choice([*(s.value for s in Status), "all"]),
    default="active",
    show_default=True,
    help="Which subscriptions to export.",
)
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="Write to this file (UTF-8 with BOM, opens in Excel) instead of stdout.")
@pass_state
def recipients_export(
    state: State, list_slug: str | None, status: str, output: Path | None
) -> None:
    """Export recipients as a CSV that `recipients import` reads back

    Example:

    \b
        mailer recipients export --list send-to -o send-to.csv
    """
    with state.store() as store:
        members = store.members(
            list_slug=list_slug, status=None if status == "all" else Status(status)
        )
    if output is None:
        recipients_file.write(members, sys.stdout)  # type: ignore[arg-type]
        return
    buf = io.StringIO()
    n = recipients_file.write(members, buf)
    write_atomic(output, buf.getvalue().encode("utf-8-sig"))  # the BOM: Excel reads UTF-8
    click.echo(f"wrote {n} recipients to {output}", err=True)


# --- units --------------------------------------------------------------------


@cli.group()
def units() -> None:
    """Show the units (member units and superior bodies)

    Example:

    \b
        mailer units show 万向集团
    """


@units.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@pass_state
def units_list(state: State, as_json: bool) -> None:
    """List units with their 片组 and active addresses per list

    Example:

    \b
        mailer units list
    """
    with state.store() as store:
        rows = store.units()
        slugs = [ml.slug for ml in store.lists()]
    if as_json:
        print_json([{**asdict(u), "kind": u.kind.value, "active": c} for u, c in rows])
        return
    table = Table(title=f"{len(rows)} units", title_justify="left")
    for col in ("Unit", "Kind", "Group", *slugs):
        table.add_column(col, overflow="fold")
    for u, counts in rows:
        table.add_row(u.name, u.kind.value, u.group or "", *(str(counts.get(s, 0)) for s in slugs))
    console().print(table)


@units.command("show")
@click.argument("unit")
@pass_state
def units_show(state: State, unit: str) -> None:
    """Show one unit: its addresses on every list and their status

    Example:

    \b
        mailer units show 娃哈哈集团
    """
    with state.store() as store:
        u = store.get_unit(unit)
        members = store.members(unit=u.name)
    click.echo(f"{u.name}  ({u.kind.value}{', 片组 ' + u.group if u.group else ''})")
    _members_table(state, members, title=f"{len(members)} subscriptions")


@units.command("unsubscribe")
@click.argument("unit")
@click.option("--list", "list_slug", required=True, metavar="LIST", help="Usually send-to.")
@click.option("--reason", help="Why, for the audit trail (e.g. the unit's letter).")
@pass_state
def units_unsubscribe(state: State, unit: str, list_slug: str, reason: str | None) -> None:
    """Stop sending to every address of a unit on a list (staff opt-out)

    Example:

    \b
        mailer units unsubscribe 老板集团 --list send-to --reason "单位来函"
    """
    with state.store() as store:
        changed = store.unsubscribe_unit(
            unit, list_slug, source="staff", reason=clean_text(reason, "reason")
        )
    if not changed:
        raise InvalidInput(f"{unit} has no active address on {list_slug}; nothing changed")
    click.echo(f"unsubscribed {len(changed)} address(es) of {unit} from {list_slug}: "
               + ", ".join(changed))


@cli.command()
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%d %H:%M"]),
              help="Only from this local date/time on.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@pass_state
def unsubscribes(state: State, since: dt.datetime | None, as_json: bool) -> None:
    """Who unsubscribed, when, and how (one-click, page, unit, staff)

    Example:

    \b
        mailer unsubscribes --since 2015-11-01
    """
    stamp = None
    if since is not None:
        local = since.replace(tzinfo=zoneinfo.ZoneInfo(state.config.timezone))
        stamp = to_stamp(local)
    with state.store() as store:
        events = store.unsubscribes(stamp)
    if as_json:
        print_json([asdict(e) for e in events])
        return
    table = Table(title=f"{len(events)} unsubscribes", title_justify="left")
    for col in ("At", "Address", "Unit", "List", "Source", "By"):
        table.add_column(col, overflow="fold")
    for e in events:
        table.add_row(state.local_time(e.at), e.subject, e.unit or "", e.list or "",
                      str(e.detail.get("source", "")), e.actor)
    console().print(table)


# --- history ------------------------------------------------------------------


@cli.command()
@click.argument("subject", required=False)
@click.option("--limit", default=200, show_default=True, help="At most this many events.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@pass_state
def history(state: State, subject: str | None, limit: int, as_json: bool) -> None:
    """The audit trail: every change to lists, units and addresses

    SUBJECT is an email address or a unit name; without it, the latest events.

    Example:

    \b
        mailer history 万向集团
    """
    if limit < 1:
        raise InvalidInput("--limit must be at least 1")
    with state.store() as store:
        events = store.history(subject, limit=limit)
    if as_json:
        print_json([asdict(e) for e in events])
        return
    table = Table(title=f"{len(events)} events", title_justify="left")
    for col in ("At", "Actor", "What", "Subject", "Unit", "List", "Change"):
        table.add_column(col, overflow="fold")
    for e in events:
        table.add_row(state.local_time(e.at), e.actor, e.kind, e.subject,
                      e.unit if e.unit != e.subject else "", e.list or "", _describe(e))
    console().print(table)


def _describe(e: Event) -> str:
    d = dict(e.detail)
    before, after = d.pop("before", None), d.pop("after", None)
    parts = []
    if isinstance(before, dict) and isinstance(after, dict):
        parts += [f"{k}: {before.get(k)} → {after.get(k)}" for k in after]
    elif isinstance(after, dict):
        parts += [f"{k}: {v}" for k, v in after.items() if v is not None]
    parts += [f"{k}: {v}" for k, v in d.items() if v is not None]
    return "; ".join(parts)
