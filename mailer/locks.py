"""Kernel locks beside the database: one daemon per database, one sender per campaign.

``flock`` is released by the kernel the moment its holder dies (``kill -9``, a
zombie not yet reaped, an OOM kill), so a crashed sender can be replaced at once
and never by two: there is no lease that could lapse while the holder lives, and
no guessing from a pid or a host name whether the holder is still there. The
file holds a description of the holder only so that a refusal can name it.

On a server database (PostgreSQL, several machines) these locks would become row
claims with ``SELECT … FOR UPDATE SKIP LOCKED``; see the README.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import StoreError

__all__ = ["Held", "exclusive", "holder_description", "lock_path"]


class Held(Exception):
    """The lock is held by someone else; ``holder`` is what they wrote in the file."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def lock_path(database: Path, name: str) -> Path:
    """``<database>.<name>.lock``, beside the database."""
    return database.with_name(f"{database.name}.{name}.lock")


def holder_description() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


@contextlib.contextmanager
def exclusive(path: Path, *, refuse: Callable[[str], Exception] | None = None
              ) -> Iterator[None]:
    """Hold ``path`` exclusively for the ``with`` block, without waiting: if another
    process holds it, raise ``refuse(holder)`` (default ``Held``)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StoreError(f"cannot open the lock file {path}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise (refuse or Held)(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_description().encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
