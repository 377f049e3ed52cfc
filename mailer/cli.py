"""The staff command line: parses arguments, calls the library, prints results."""

from __future__ import annotations

import click


@click.group()
def cli() -> None:
    """Render and send the bulletin (简报); manage its recipient lists."""


def main() -> None:
    cli()
