"""The root command, the state every command shares, and the exit codes.

Exit codes a script can trust (the README lists them): 0 when everything asked
for was done; 1 for a refused request or bad input (a ``MailerError`` becomes one
``Error:`` line, and click's usage errors exit 1 too, not click's 2); 75
(EX_TEMPFAIL) when a campaign stopped with deliveries still due; 130 after Ctrl-C.
"""

from __future__ import annotations

import importlib
import re
import sqlite3
import zoneinfo
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .. import config as config_mod
from ..config import Config
from ..errors import AlreadySo, ConfigError, MailerError
from ..stamps import parse_stamp
from ..store import Store

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_TEMPFAIL = 75  # sysexits.h EX_TEMPFAIL: try again later
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C

_STAMP = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\b")


COMMANDS = {
    "archive": "archive", "bounces": "bounces", "doctor": "doctor",
    "issue": "issues", "render": "issues",
    "init": "roster", "recipients": "roster", "units": "roster", "unsubscribes": "roster",
    "history": "roster",
    "send": "sending", "test-send": "sending", "log": "sending", "serve": "sending",
    "schedule": "schedule", "pause": "schedule", "resume": "schedule",
    "approve": "schedule", "run": "schedule",
}
"""Each command and the module of ``mailer.cli`` that defines it. A command's module
is imported when it runs: the whole stack (the PDF typesetter, Word and PDF readers,
the IMAP client, the web server) took a second of CPU before any command started."""


class MailerGroup(click.Group):
    """Turns library errors into one clear line instead of a traceback, in the
    configured time zone, and makes usage errors exit 1 as the README promises.
    Commands are loaded by name (``COMMANDS``), as click's docs show for lazy
    subcommands."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"{__package__}.{module}")  # registers its commands
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in sorted(set(COMMANDS.values())):
            importlib.import_module(f"{__package__}.{module}")
        return super().list_commands(ctx)

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: object) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            e.exit_code = EXIT_REFUSED  # type: ignore[misc]  # click's own default is 2
            raise

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            e.exit_code = EXIT_REFUSED  # type: ignore[misc]  # click's own default is 2
            raise
        except AlreadySo as e:
            # Nothing to do is not a failure: a script asking twice gets 0.
            click.echo(str(e))
            return None
        except MailerError as e:
            state = ctx.obj if isinstance(ctx.obj, State) else None
            text = state.local_times_in(str(e)) if state else str(e)
            raise click.ClickException(text) from None
        except sqlite3.DatabaseError as e:
            # Not expected from a database mailer made: say so in one line.
            raise click.ClickException(
                f"database error: {e}; is the database from this version of mailer? "
                "(`mailer init` brings its schema up to date)"
            ) from None


class State:
    """What every command may need, loaded only when it is needed."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = config_mod.load(self.config_path)
        return self._config

    def store(self) -> Store:
        return Store.open(self.config.database)

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.config.timezone)

    def local_time(self, stamp: str | None) -> str:
        """A stored UTC stamp shown in the configured time zone ("" for none)."""
        if not stamp:
            return ""
        try:
            t = parse_stamp(stamp)
        except ValueError:
            return stamp
        return t.astimezone(self.zone).strftime("%Y-%m-%d %H:%M")

    def local_times_in(self, text: str) -> str:
        """Every UTC stamp in ``text`` (an error from any layer) in the config's zone:
        staff read one time zone everywhere."""
        try:
            zone = self.zone
        except (ConfigError, OSError, zoneinfo.ZoneInfoNotFoundError):
            return text
        return _STAMP.sub(
            lambda m: parse_stamp(m.group(0)).astimezone(zone).strftime("%Y-%m-%d %H:%M"), text)


pass_state = click.make_pass_decorator(State)


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 delivery``, ``2 deliveries``: English counts that read right."""
    if n == 1:
        return f"{n} {word}"
    if many is None:
        many = word[:-1] + "ies" if word.endswith("y") and word[-2:-1] not in "aeiou" \
            else word + "s"
    return f"{n} {many}"


def warn(text: str) -> None:
    click.secho(f"warning: {text}", fg="yellow", err=True)


@click.group(cls=MailerGroup)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default: $MAILER_CONFIG, else ./config.toml).",
)
@click.version_option(package_name="mailer")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Render and send the bulletin (简报); manage its recipient lists.

    \b
    Exit codes: 0 done; 1 refused or bad input; 75 a campaign stopped with
    deliveries still due (try again later); 130 interrupted (Ctrl-C).

    Example:

    \b
        mailer --config /etc/mailer/config.toml recipients list --list send-to
    """
    ctx.obj = State(config_path)
