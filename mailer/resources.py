"""Where the package's own files come from: the templates, found by import.

The templates are kept in the repository's top-level ``templates/`` folder.
``pyproject.toml`` maps that folder to the package ``mailer.templates``
(``package-dir``), so a wheel installs it as ``mailer/templates/`` beside the code,
and an editable install (``pip install -e .``) finds it where it is in the checkout.
Either way it is located through the import system, never by a path relative to a
source file, and :mod:`mailer.render` and :mod:`mailer.web` both ask here.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

TEMPLATES_PACKAGE = "mailer.templates"


@cache
def templates_dir() -> Path:
    """The folder holding ``bulletin.html``, ``bulletin.css``, ``bulletin.txt`` and ``web/``.

    A real directory, as Jinja2's ``FileSystemLoader`` needs: the package must be
    installed unzipped, as pip does.
    """
    root = files(TEMPLATES_PACKAGE)
    if not isinstance(root, Path) or not root.is_dir():
        raise RuntimeError(f"{TEMPLATES_PACKAGE} is not a folder on disk ({root!r}); "
                           "install mailer unzipped (pip does)")
    return root
