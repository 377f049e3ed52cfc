"""The staff command line: parses arguments, calls the library, prints results.

Any ``MailerError`` becomes one line on stderr and exit code 1: staff never see a
traceback for a mistake they can fix. Commands live in modules by concern.
"""

from __future__ import annotations

from .base import cli  # each command's module is imported when it runs (base.COMMANDS)

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="mailer")
