"""Issue commands: check, convert, render."""

from __future__ import annotations

from pathlib import Path

import click

from .. import campaigns, endblock
from .. import config as config_mod
from ..errors import InvalidInput, IssueError, NotInitialised
from ..files import make_folder, write_atomic
from ..issue import check_punctuation, fix_issue, parse_file, pictures_left_out, to_markdown
from ..models import Issue
from .base import State, cli, pass_state


@cli.group()
def issue() -> None:
    """Check an issue file, or convert it to Markdown

    Example:

    \b
        mailer issue check issues/2015-09.txt
    """


@issue.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_state
def issue_check(state: State, file: Path) -> None:
    """Show how an issue file parses, and every problem with its line number

    Exits 1 when there is an error (a contents entry with no article, no date,
    no articles…); warnings alone exit 0. With a config and its database, also
    says where the end block (版记) and the recipient lists disagree.

    Example:

    \b
        mailer issue check issues/2015-09.txt
    """
    result = parse_file(file)
    i, m = result.issue, result.issue.masthead
    click.echo(f"{file.name}: {i.subject_label}")
    click.echo(f"  notice:        {m.notice}")
    click.echo(f"  organisation:  {m.organisation}")
    click.echo(f"  title:         {m.title}")
    click.echo(f"  issue:         {m.year} 年第 {m.number} 期"
               + (f" 总第 {m.total_number} 期" if m.total_number is not None else ""))
    click.echo(f"  publisher:     {m.publisher}")
    click.echo(f"  date:          {m.date.isoformat() if m.date else '(none)'}")
    if i.send_at:
        click.echo(f"  send at:       {i.send_at.isoformat(sep=' ')}")
    click.echo(f"  contents:      {len(i.contents)} entries")
    click.echo(f"  articles:      {len(i.articles)}")
    for n, a in enumerate(i.articles, 1):
        click.echo(f"    {n}. {a.title}  ({a.section_count} sections, "
                   f"{len(a.blocks)} blocks)")
    for line in i.end.lines:
        click.echo(f"  {line.written}")
    for p in result.problems:
        click.secho(f"{file.name}: {p}", fg="red" if p.severity == "error" else "yellow",
                    err=True)
    for w in _coverage(state, i):
        click.secho(f"{file.name}: warning: {w}", fg="yellow", err=True)
    _punctuation(file)
    if not result.ok:
        raise click.exceptions.Exit(1)
    click.echo("ok" + (f" ({len(result.warnings)} warnings)" if result.warnings else ""))


def _punctuation(file: Path) -> None:
    """Report half-width marks between Chinese characters; never changes the file."""
    found = check_punctuation(file)
    for f in found:
        click.secho(f"{file.name}: {f}", fg="yellow", err=True)
    if found:
        n = sum(sum(f.counts.values()) for f in found)
        click.secho(f"{file.name}: {n} half-width mark{'s' if n != 1 else ''} on "
                    f"{len(found)} line{'s' if len(found) != 1 else ''}; `mailer issue convert "
                    f"{file} --fix-punctuation` writes them full-width", fg="yellow", err=True)


def _coverage(state: State, issue: Issue) -> list[str]:
    """Where the end block and the lists disagree, when there is a config and a
    database to ask; a check without them checks the file alone."""
    if not config_mod.find_config_path(state.config_path).exists():
        return []
    try:
        with state.store() as store:
            _, warnings = endblock.printed(store, state.config, issue)
    except NotInitialised:
        return []
    return warnings


@issue.command("convert")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="Where to write (default: the same name with .md).")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@click.option("--fix-punctuation", "fix", is_flag=True,
              help="Write half-width , : ; ? ! and straight quotes between Chinese "
                   "characters full-width (GB/T 15834).")
def issue_convert(file: Path, output: Path | None, force: bool, fix: bool) -> None:
    """Write the Markdown form of a plain-text issue, ready to edit

    The Markdown file parses back to the same issue. The text is kept as
    written unless --fix-punctuation is given.

    Example:

    \b
        mailer issue convert issues/2015-09.txt -o issues/2015-09.md --fix-punctuation
    """
    result = parse_file(file)
    if not result.ok:
        raise IssueError(f"{file.name} has errors; see `mailer issue check {file}`")
    target = output or file.with_suffix(".md")
    if target.resolve() == file.resolve():
        raise InvalidInput(f"{target} is the input file; choose another --output")
    if target.exists() and not target.is_dir() and not force:  # write_atomic refuses a folder
        raise InvalidInput(f"{target} exists; add --force to replace it")
    issue, fixed = fix_issue(result.issue) if fix else (result.issue, 0)
    write_atomic(target, to_markdown(issue).encode("utf-8"))
    for w in pictures_left_out(issue):
        click.secho(f"warning: {w}", fg="yellow", err=True)
    click.echo(f"wrote {target}" + (f" ({fixed} punctuation mark{'s' if fixed != 1 else ''} "
                                    "made full-width)" if fix else ""))


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--list", "list_slug", default="send-to", show_default=True, metavar="LIST",
              help="Which list's version to render.")
@click.option("--out", "out_dir", required=True,
              type=click.Path(path_type=Path),
              help="Folder for issue.html, issue.txt and issue.eml.")
@click.option("--pdf", is_flag=True, help="Also write issue.pdf, the printed edition (A4).")
@click.option("--for", "for_email", metavar="EMAIL",
              help="Print this recipient's own web and PDF edition links.")
@pass_state
def render(state: State, file: Path, list_slug: str, out_dir: Path, pdf: bool,
           for_email: str | None) -> None:
    """Render an issue as its recipients on a list will see it

    Writes issue.html (inline-styled), issue.txt (the text part) and issue.eml
    (the complete message, to open in a mail client). With --for, prints that
    recipient's own links to the web edition and the PDF edition.

    Example:

    \b
        mailer render issues/2015-09.txt --list send-to --out preview/
        mailer render issues/2015-09.txt --out preview/ --for dangban@wanhua.example.org
    """
    with state.store() as store:
        shown = campaigns.preview(state.config, store, file, list_slug)
    for w in shown.warnings:
        click.secho(f"warning: {w}", fg="yellow", err=True)
    make_folder(out_dir)
    write_atomic(out_dir / "issue.html", shown.html.encode("utf-8"))
    write_atomic(out_dir / "issue.txt", shown.text.encode("utf-8"))
    write_atomic(out_dir / "issue.eml", shown.eml)
    size = len(shown.html.encode("utf-8"))
    click.echo(f"{shown.subject} ({list_slug}): {out_dir / 'issue.html'} "
               f"({size / 1024:.1f} KB), issue.txt, issue.eml")
    if pdf:
        with state.store() as store:
            data = campaigns.print_edition(state.config, store, file, list_slug)
        write_atomic(out_dir / "issue.pdf", data)
        click.echo(f"PDF edition: {out_dir / 'issue.pdf'} ({len(data) / 1024:.0f} KB)")
    if for_email is None:
        click.echo("Web and PDF edition links are personal: add --for EMAIL to print "
                   "one recipient's.")
        return
    with state.store() as store:
        links = campaigns.edition_links(state.config, store, file, list_slug, for_email)
    click.echo(f"web edition link: {links.web}")
    click.echo(f"PDF edition link: {links.pdf}")
