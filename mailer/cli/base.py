"""The root command, the state every command shares, and output helpers.

Any ``MailerError`` becomes one line on stderr and exit code 1: staff never see a
traceback for a mistake they can fix.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import zoneinfo
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from .. import config as config_mod
from ..config import Config
from ..errors import MailerError
from ..stamps import parse_stamp
from ..store import Store

F = TypeVar("F", bound=Callable[..., Any])


class MailerGroup(click.Group):
    """Turns library errors into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MailerError as e:
            raise click.ClickException(str(e)) from None
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

    def local_time(self, stamp: str) -> str:
        """A stored UTC stamp shown in the configured time zone."""
        try:
            t = parse_stamp(stamp)
        except ValueError:
            return stamp
        return t.astimezone(zoneinfo.ZoneInfo(self.config.timezone)).strftime("%Y-%m-%d %H:%M")


pass_state = click.make_pass_decorator(State)


def console() -> Console:
    # Wide when piped so tables of Chinese unit names are not cut with "…".
    return Console(width=None if sys.stdout.isatty() else 160, highlight=False)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


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

    Example:

    \b
        mailer --config /etc/mailer/config.toml recipients list --list send-to
    """
    ctx.obj = State(config_path)
