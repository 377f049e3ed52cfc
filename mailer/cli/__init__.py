"""The staff command line: parses arguments, calls the library, prints results.

Any ``MailerError`` becomes one line on stderr and exit code 1: staff never see a
traceback for a mistake they can fix. Commands live in modules by concern.
"""

from __future__ import annotations

from . import bounces as bounces
from . import issues as issues
from . import roster as roster  # registers the commands
from . import schedule as schedule
from . import sending as sending
from .base import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="mailer")
