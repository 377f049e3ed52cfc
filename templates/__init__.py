"""The bulletin's templates, installed as the package ``mailer.templates``.

This file only makes the folder a package for ``importlib.resources`` (see
``mailer/resources.py`` and ``[tool.setuptools]`` in ``pyproject.toml``).
"""
