"""Staff commands for the recipient lists: init, recipients, units, unsubscribes, history."""

from __future__ import annotations

import datetime as dt
import io
import sys
from dataclasses import asdict
from pathlib import Path

import click

from .. import recipients_file
from ..addresses import parse_typed, typo_problem
from ..errors import ImportRejected, InvalidInput, UnknownUnit
from ..files import write_atomic
from ..models import Event, Member, Status
from ..stamps import stamp as to_stamp
from ..store import Store
from ..store.roster import UnitChange
from ..validate import clean_text, normalise_email
from .base import State, cli, pass_state, plural
from .params import LocalDateTime
from .tables import Col, Output, emit, make_output, output_options


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


def say_units(changes: list[UnitChange], *, prefix: str = "") -> None:
    """Every unit created or moved to another 片组, one line each."""
    for ch in changes:
        if ch.created:
            group = f" in {ch.after}" if ch.after else ""
            click.echo(f"{prefix}new unit {ch.unit}{group}")
        else:
            click.echo(f"{prefix}unit {ch.unit}: 片组 {ch.before or '(none)'} → "
                       f"{ch.after or '(none)'}")


@recipients.command("add")
@click.argument("email")
@click.option("--list", "list_slug", required=True, metavar="LIST", help="report-to or send-to.")
@click.option("--unit", required=True, help="The unit (单位) the address belongs to.")
@click.option("--name", help="The contact's name (联系人); or write 张三 <zs@163.com>.")
@click.option("--group", help="The unit's 片组 (a unit on file moves to it).")
@click.option("--create-unit", "--create-units", "create_unit", is_flag=True,
              help="Create the unit even if its name looks like one on file.")
@click.option("--as-typed", is_flag=True, help="Keep an address that looks like a typo.")
@pass_state
def recipients_add(
    state: State,
    email: str,
    list_slug: str,
    unit: str,
    name: str | None,
    group: str | None,
    create_unit: bool,
    as_typed: bool,
) -> None:
    """Put one address on a list

    A new unit is created (and said so); a name that looks like a unit on file
    (a prefix, a slip of a character) is refused with the name meant, as an
    import does.

    Example:

    \b
        mailer recipients add dangban@wanxiang.example.org --list send-to \\
            --unit 万向集团 --name 李明
        mailer recipients add "李明 <lm@wanxiang.example.org>" --list send-to --unit 万向集团
    """
    typed = parse_typed(email)
    address = typed.address
    if not as_typed and (typo := typo_problem(address)):
        raise InvalidInput(typo)
    if name and typed.name and name != typed.name:
        raise InvalidInput(f"two names given: {typed.name!r} with the address and {name!r} "
                           "in --name; give one")
    unit_name = clean_text(unit, "unit name", required=True)
    assert unit_name is not None
    with state.store() as store:
        changes = store.add_recipient(
            address,
            list_slug=list_slug,
            unit=unit_name,
            name=clean_text(name or typed.name, "contact name"),
            group=clean_text(group, "group (片组)"),
            create_unit=create_unit,
        )
    say_units(changes)
    click.echo(f"added {address.email} ({unit_name}) to {list_slug}")


@recipients.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--list", "list_slug", metavar="LIST",
              help="report-to or send-to (default: each row's list column).")
@click.option("--skip-invalid", is_flag=True, help="Import the good rows, report the bad ones.")
@click.option("--dry-run", is_flag=True, help="Check and report, save nothing.")
@click.option("--create-units", is_flag=True,
              help="Create new units even if their names look like units on file.")
@click.option("--as-typed", is_flag=True, help="Keep addresses that look like typos.")
@click.option("--encoding", help="File encoding (default: detect UTF-8 or GBK/GB18030).")
@pass_state
def recipients_import(
    state: State,
    file: Path,
    list_slug: str | None,
    skip_invalid: bool,
    dry_run: bool,
    create_units: bool,
    as_typed: bool,
    encoding: str | None,
) -> None:
    """Import a CSV of recipients: all rows or none

    Columns (English or the Chinese headers used in Excel): email (电子邮箱/邮箱),
    name (联系人/姓名), unit (单位名称/单位), group (片组/分组), and, as `recipients
    export` writes them, list and status. UTF-8, with or without BOM, or
    GBK/GB18030 as Excel saves on Chinese Windows. Importing the same file again
    changes nothing; an unsubscribed address stays unsubscribed. Units created and
    units moved to another 片组 are listed, in a dry run too.

    Example:

    \b
        mailer recipients import recipients/send-to.csv --list send-to
        mailer recipients import everyone.csv          # the file's list column
    """
    with state.store() as store:
        if list_slug is not None:
            store.get_list(list_slug)  # an unknown list is reported before the file
        result = recipients_file.read(file, encoding=encoding, as_typed=as_typed)
        problems = list(result.problems)
        rows = result.rows
        if list_slug is not None:
            wrong = [r for r in rows if r.list_slug not in (None, list_slug)]
            problems += [f"{file.name} line {r.line}: the row is for {r.list_slug}, not "
                         f"{list_slug}; leave out --list to import each row to its own list"
                         for r in wrong]
            rows = [r for r in rows if r not in wrong]
        elif any(r.list_slug is None for r in rows):
            raise InvalidInput(f"{file.name} has no list column; say which list with --list "
                               "report-to or --list send-to")
        try:
            report = store.import_rows(rows, list_slug=list_slug, dry_run=True,
                                       create_units=create_units)
        except InvalidInput as e:
            problems += [f"{file.name} {p}" for p in str(e).splitlines()]
            bad = {int(p.split("line ", 1)[1].split(":", 1)[0])
                   for p in str(e).splitlines() if p.startswith("line ")}
            rows = [r for r in rows if r.line not in bad]
        problems.sort(key=_line_of)
        for problem in problems:
            click.echo(problem, err=True)
        if problems and not skip_invalid:
            raise ImportRejected(file.name, problems)
        report = store.import_rows(rows, list_slug=list_slug, dry_run=dry_run,
                                   create_units=create_units)
    say_units(report.units, prefix=f"{file.name}: ")
    for note in report.notes:
        click.echo(f"{file.name} {note}")
    skipped = f", {plural(len(problems), 'bad row')} skipped" if problems else ""
    tail = " (dry run: nothing was saved)" if dry_run else ""
    units = ""
    if report.units:
        units = (f", {plural(len(report.units_created), 'unit')} created, "
                 f"{len(report.units_changed)} changed")
    where = f" on {list_slug}" if list_slug else ""
    click.echo(
        f"{file.name}: {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged{units}{skipped}{where}{tail}"
    )


def _line_of(problem: str) -> int:
    try:
        return int(problem.split(" line ", 1)[1].split(":", 1)[0])
    except (IndexError, ValueError):
        return 0


def _status_choice() -> click.Choice[str]:
    return click.Choice([s.value for s in Status])


@recipients.command("list")
@list_option
@click.option("--unit", help="Only this unit (a unique beginning of its name will do).")
@click.option("--status", type=_status_choice(), help="Only this status.")
@output_options
@pass_state
def recipients_list(
    state: State, list_slug: str | None, unit: str | None, status: str | None, as_json: bool,
    as_csv: bool, wide: bool, out_path: Path | None,
) -> None:
    """List recipients with their unit, list and status

    Example:

    \b
        mailer recipients list --list send-to --status active
    """
    out = make_output(as_json, as_csv, wide, out_path)
    with state.store() as store:
        unit_name = store.resolve_unit(unit).name if unit is not None else None
        members = store.members(
            list_slug=list_slug, unit=unit_name, status=Status(status) if status else None
        )
    _members_table(state, members, out, title=plural(len(members), "recipient"))


MEMBER_COLUMNS = (Col("list", 3), Col("unit"), Col("group", 4), Col("email"), Col("name", 2),
                  Col("status"), Col("since", 5))


def _members_table(state: State, members: list[Member], out: Output, *, title: str,
                   unit_column: bool = True) -> None:
    rows = [[m.list_slug, m.unit, m.group or "", m.email, m.name or "", m.status.value,
             state.local_time(m.changed_at)] for m in members]
    records = [{**asdict(m), "status": m.status.value} for m in members]
    cols = list(MEMBER_COLUMNS)
    if not unit_column:
        # One unit's own page: its name and 片组 are in the heading already.
        rows = [[r[0], *r[3:]] for r in rows]
        cols = [cols[0], *cols[3:]]
    emit(out, cols, rows, title=title, records=records)


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
    """Show, rename, merge and regroup the units (member units and superior bodies)

    A unit may be named by the unique beginning of its name (万向 for 万向集团).

    Example:

    \b
        mailer units show 万向集团
        mailer units set-group 万向集团 第四片组
    """


@units.command("list")
@output_options
@pass_state
def units_list(state: State, as_json: bool, as_csv: bool, wide: bool,
               out_path: Path | None) -> None:
    """List units with their 片组 and active addresses per list

    Example:

    \b
        mailer units list
    """
    out = make_output(as_json, as_csv, wide, out_path)
    with state.store() as store:
        found = store.units()
        slugs = [ml.slug for ml in store.lists()]
    rows = [[u.name, u.kind.value, u.group or "", *(counts.get(s, 0) for s in slugs)]
            for u, counts in found]
    records = [{**asdict(u), "kind": u.kind.value, "active": c} for u, c in found]
    cols = [Col("unit"), Col("kind", 2), Col("group", 1),
            *(Col(s, right=True) for s in slugs)]
    emit(out, cols, rows, title=plural(len(rows), "unit"), records=records)


@units.command("show")
@click.argument("unit")
@output_options
@pass_state
def units_show(state: State, unit: str, as_json: bool, as_csv: bool, wide: bool,
               out_path: Path | None) -> None:
    """Show one unit: its addresses on every list and their status

    Example:

    \b
        mailer units show 娃哈哈集团
    """
    out = make_output(as_json, as_csv, wide, out_path)
    with state.store() as store:
        u = store.resolve_unit(unit)
        members = store.members(unit=u.name)
    if out.fmt == "table":
        click.echo(f"{u.name}  ({u.kind.value}{', 片组 ' + u.group if u.group else ''})")
    _members_table(state, members, out, title=plural(len(members), "subscription"),
                   unit_column=False)


@units.command("rename")
@click.argument("unit")
@click.argument("new_name")
@pass_state
def units_rename(state: State, unit: str, new_name: str) -> None:
    """Give a unit its new name; addresses, lists and history stay with it

    Example:

    \b
        mailer units rename 娃哈哈集团 杭州娃哈哈集团有限公司
    """
    new = clean_text(new_name, "unit name", required=True)
    assert new is not None
    with state.store() as store:
        old = store.rename_unit(unit, new)
    click.echo(f"unit {old} is now called {new}")


@units.command("merge")
@click.argument("unit")
@click.argument("into")
@pass_state
def units_merge(state: State, unit: str, into: str) -> None:
    """Move every address of UNIT to INTO and remove UNIT (two names for one unit)

    Example:

    \b
        mailer units merge 杭州娃哈哈集团有限公司 娃哈哈集团
    """
    with state.store() as store:
        src, dst, moved = store.merge_units(unit, into)
    click.echo(f"merged {src} into {dst}: {plural(len(moved), 'address', 'addresses')} moved"
               + (f" ({', '.join(moved)})" if moved else ""))


@units.command("set-group")
@click.argument("unit")
@click.argument("group", required=False)
@click.option("--none", "no_group", is_flag=True, help="Take the unit out of any 片组.")
@pass_state
def units_set_group(state: State, unit: str, group: str | None, no_group: bool) -> None:
    """Move a unit to another 片组

    Example:

    \b
        mailer units set-group 万向集团 第四片组
    """
    if (group is None) == (not no_group):
        raise click.UsageError("give the 片组 (e.g. 第四片组), or --none")
    value = None if no_group else clean_text(group, "group (片组)", required=True)
    with state.store() as store:
        change = store.set_unit_group(unit, value)
    say_units([change])


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
    click.echo(f"unsubscribed {plural(len(changed), 'address', 'addresses')} of {unit} from "
               f"{list_slug}: "
               + ", ".join(changed))


@cli.command()
@click.option("--since", type=LocalDateTime(date_only=True),
              help="Only from this date on (config time zone), e.g. 2015-11-01.")
@output_options
@pass_state
def unsubscribes(state: State, since: dt.datetime | None, as_json: bool, as_csv: bool,
                 wide: bool, out_path: Path | None) -> None:
    """Who unsubscribed, when, and how (one-click, page, unit, staff)

    Example:

    \b
        mailer unsubscribes --since 2015-11-01
    """
    out = make_output(as_json, as_csv, wide, out_path)
    stamp = to_stamp(since.replace(tzinfo=state.zone)) if since is not None else None
    with state.store() as store:
        events = store.unsubscribes(stamp)
    rows = [[state.local_time(e.at), e.subject, e.unit or "", e.list or "",
             str(e.detail.get("source", "")), e.actor] for e in events]
    cols = [Col("at"), Col("email"), Col("unit"), Col("list", 2), Col("source", 3),
            Col("by", 4)]
    emit(out, cols, rows, title=plural(len(rows), "unsubscribe"),
         records=[asdict(e) for e in events])


# --- history ------------------------------------------------------------------


@cli.command()
@click.argument("subject", required=False)
@click.option("--limit", default=200, show_default=True, help="At most this many events.")
@output_options
@pass_state
def history(state: State, subject: str | None, limit: int, as_json: bool, as_csv: bool,
            wide: bool, out_path: Path | None) -> None:
    """The audit trail: every change to lists, units and addresses

    SUBJECT is an email address or a unit name; without it, the latest events.

    Example:

    \b
        mailer history 万向集团
    """
    if limit < 1:
        raise InvalidInput("--limit must be at least 1")
    out = make_output(as_json, as_csv, wide, out_path)
    with state.store() as store:
        if subject is not None and "@" not in subject:
            try:
                subject = store.resolve_unit(subject).name
            except UnknownUnit as e:
                meant = f"; did you mean {' or '.join(e.suggestions)}?" if e.suggestions else ""
                raise InvalidInput(f"{subject!r} is neither a unit on file nor an email "
                                   f"address{meant}") from None
        events = store.history(subject, limit=limit)
    rows = [[state.local_time(e.at), e.actor, e.kind, e.subject,
             e.unit if e.unit != e.subject else "", e.list or "", _describe(e)]
            for e in events]
    cols = [Col("at"), Col("by", 4), Col("what"), Col("subject"), Col("unit", 3),
            Col("list", 2), Col("change", 1, wrap=True)]
    emit(out, cols, rows, title=plural(len(rows), "event"), records=[asdict(e) for e in events])


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
