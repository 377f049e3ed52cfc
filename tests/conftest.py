"""Shared fixtures: a real config file and a real SQLite database in tmp_path."""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
from click.testing import CliRunner, Result

from mailer.cli import cli

from .smtp_server import make_certificate

REPO = Path(__file__).resolve().parent.parent
# The real issue staff have (the design folder's samples/bulletin-2015-09.txt), copied.
SAMPLE_ISSUE = REPO / "tests" / "data" / "bulletin-2015-09.txt"

# Not config.example.toml's sender and base URL: `send` and `schedule` refuse those
# (a copied example config must never mail anyone).
SENDER = "jianbao@assoc.example.net"
BASE_URL = "https://jianbao.assoc.example.net"
CONFIG = f"""\
[database]
path = "data/mailer.db"

[sender]
address = "{SENDER}"
name = "杭州市新经济与新社会组织党务工作者协会"
reply_to = "secretariat@example.org"

[smtp]
host = "127.0.0.1"
port = 2525
tls = "none"

[web]
base_url = "{BASE_URL}"

[lists.send-to]
title = "简报发送名单"
footer_label = "发"
collective_label = "协会会员"
# WeasyPrint takes seconds per issue: only the tests of the PDF in the mail turn it on.
pdf = "none"

[lists.report-to]
pdf = "none"
"""


# The slowest modules, slowest first. `make test` runs the suite on several processes
# (pytest-xdist): starting these first keeps one of them from being the last thing
# left running at the end while the other processes sit idle.
SLOW_FIRST = ("test_package.py", "test_crash.py", "test_word_pdf.py", "test_edition_browser.py",
              "test_campaign_start.py")
# Tests that mostly wait on real time (a daemon's pass, a scheduled minute, a server
# that answers a byte at a time) with little CPU, by module or test name: dealt out
# evenly across the run, so that each process waits while the others use the two
# cores, instead of all of them waiting together at the end.
WAITING = ("test_daemon.py", "test_transport.py::test_segmented_replies")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    def waits(item: pytest.Item) -> bool:
        name = f"{item.path.name}::{item.name}"
        return any(name == w or name.startswith(w + ("::" if w.endswith(".py") else ""))
                   for w in WAITING)

    waiting = iter([i for i in items if waits(i)])
    rest = sorted((i for i in items if not waits(i)), key=rank)  # stable
    every = max(1, len(rest) // (len(items) - len(rest) + 1))
    out: list[pytest.Item] = []
    for n, item in enumerate(rest, 1):
        out.append(item)
        if n % every == 0 and (w := next(waiting, None)) is not None:
            out.append(w)
    items[:] = out + list(waiting)


@pytest.fixture(autouse=True)
def _no_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts as a piped run: the CLI fits its tables to $COLUMNS, which a
    terminal may export and pytest-xdist's worker processes have set to 80. A test
    of widths sets it itself."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG, encoding="utf-8")
    path.chmod(0o600)
    return path


Run = Callable[..., Result]


@pytest.fixture
def run(config_file: Path) -> Run:
    """Invoke the CLI against the test config; ``ok=True`` asserts exit code 0."""
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True, input: str | None = None) -> Result:
        result = runner.invoke(cli, ["--config", str(config_file), *args], input=input)
        if ok:
            assert result.exit_code == 0, result.output
            assert result.exception is None or isinstance(result.exception, SystemExit)
        return result

    return invoke


@pytest.fixture
def db_path(config_file: Path) -> Path:
    return config_file.parent / "data" / "mailer.db"


_INITIALISED: dict[str, bytes] = {}


@pytest.fixture
def initialised(run: Run, db_path: Path, config_file: Path) -> Path:
    """The database as `mailer init` makes it for this config. `init` runs for real
    once per test process and config; later tests start from a copy of the file it
    made, written as the store writes it (mode 0600). The tests of `init` itself
    call it themselves."""
    key = config_file.read_text(encoding="utf-8")
    made = _INITIALISED.get(key)
    if made is None:
        run("init")
        _INITIALISED[key] = database_bytes(db_path)
    else:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(db_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(made)
    return db_path


def database_bytes(db: Path) -> bytes:
    """The whole database as one file (a WAL's pages included), by SQLite's backup."""
    target = db.with_name(db.name + ".copy")
    source, copied = sqlite3.connect(db), sqlite3.connect(target)
    try:
        source.backup(copied)
    finally:
        source.close()
        copied.close()
    data = target.read_bytes()
    target.unlink()
    return data


def made_once(tmp_path_factory: pytest.TempPathFactory, name: str,
              make: Callable[[Path], None]) -> Path:
    """The folder ``name``, made by ``make`` once per test run. Under pytest-xdist each
    process has its own session: the first to get here makes it, under a lock in the
    run's own temporary folder, and the others wait for it and use what it made."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each process's own
    folder = shared / name
    with (shared / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        done = shared / f"{name}.done"
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a make that failed part-way
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


def snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to prove a refused command changed nothing."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"'), key=repr) for t in tables}
    finally:
        conn.close()


def ledger(db: Path) -> dict[str, dict[str, Any]]:
    """The campaign ledger's rows by address, straight from the file."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return {r["email"]: dict(r) for r in conn.execute("SELECT * FROM deliveries")}
    finally:
        conn.close()


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """A refused command: exit 1, one line on stderr starting with Error:, no traceback."""
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def refuse_with(code: int) -> Callable[..., NoReturn]:
    """A stand-in for an OS call that fails with ``errno`` ``code`` (as root, file
    modes alone cannot make a folder refuse)."""

    def fail(*args: object, **kwargs: object) -> NoReturn:
        raise OSError(code, os.strerror(code))

    return fail


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed (certificate, key) for 127.0.0.1, for TLS servers."""
    made = make_certificate(tmp_path_factory.mktemp("tls"))
    if made is None:
        pytest.skip("openssl is not installed")
    return made
