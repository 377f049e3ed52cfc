"""`mailer` commands in processes of their own, started from a fork server.

A fresh `python -m mailer` spends about a second of CPU importing the stack before
it does anything, and the crash and daemon tests start dozens of them. These start
from multiprocessing's fork server, which imports mailer once and forks a process
for each command: each is still a process of its own, with its own pid, file
descriptors, kernel locks and signal handlers (SIGKILL kills it, SIGTERM reaches the
daemon's own handler), its own environment and its output in a log file; it only
skips the imports. `python -m mailer` itself is still started for real by the tests
of Ctrl-C, of a second daemon and of the installed package.

``Command`` answers what the tests ask of ``subprocess.Popen``: ``pid``, ``poll``,
``wait``, ``returncode``, ``send_signal`` and ``kill``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# What a command imports when it runs (mailer.cli.base.COMMANDS): the fork server
# imports it once, so each command starts with it loaded.
PRELOAD = ["mailer.cli.base", "mailer.cli.sending", "mailer.cli.schedule", "mailer.web"]

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(PRELOAD)


def _main(args: list[str], env: dict[str, str], cwd: str, log: str | None,
          terminal: str | None) -> None:
    """In the new process: the environment, folder and standard streams it would have
    had as ``python -m mailer …``, then the command line."""
    os.environ.clear()
    os.environ.update(env)
    time.tzset()
    os.chdir(cwd)
    if terminal is not None:
        fd = os.open(terminal, os.O_RDWR)
    else:
        assert log is not None
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for std in (0, 1, 2) if terminal is not None else (1, 2):
        os.dup2(fd, std)
    os.close(fd)
    if terminal is not None:
        # As Python sets them up on a terminal: line-buffered, reading the terminal.
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    from mailer.cli import main

    sys.argv = ["mailer", *args]
    main()


class Command:
    """One `mailer` command running in its own process."""

    def __init__(self, process: multiprocessing.process.BaseProcess, args: list[str]) -> None:
        self.process = process
        self.args = args

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """As ``Popen``'s: the exit code, or minus the signal that ended it."""
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        code = self.process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(["mailer", *self.args], timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.process.exitcode is None:
            # The fork server reaps its children: one that has just died can be gone
            # before its exit code reaches this process (seen after a SIGKILL).
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start_mailer(*args: str, env: dict[str, str], log: Path | None = None,
                 terminal: str | None = None) -> Command:
    """``mailer ARGS`` in a process of its own: stdout and stderr appended to ``log``,
    or stdin, stdout and stderr on the pseudo-terminal named ``terminal``."""
    assert (log is None) != (terminal is None), "a log or a terminal"
    process = _CONTEXT.Process(
        target=_main, args=(list(args), env, os.getcwd(), None if log is None else str(log),
                            terminal),
        daemon=True)  # never left behind when the tests end
    process.start()
    return Command(process, list(args))
