"""The reply journal: a sender's replies, kept on disk before the ledger has them.

A message may be ended only once the reply to the connection's previous one is
safe from a ``kill -9`` (the duplicate bound, ``mailer.send``). Appending that reply
to a file beside the database makes it so the moment ``write`` returns, in the
sender's own thread; the ledger's SQLite rows follow in group commits of a few
hundred replies, a few times a second, that nothing waits for. After a crash the
journal holds the replies the ledger may lack; the next sender of the campaign
(``Store.take_over``, under the campaign's kernel lock) applies them before it
sends anything, then removes the file.

One line per append: ``[seconds since the epoch, [[delivery id, status, code, response,
message id, next attempt, bounce, attempts, first attempt], ...]]`` in JSON (a journal
from before the last two fields has rows of seven, read as well). Applying a line
twice gives the same rows, so a line applied and then found again (a crash between
the ledger's commit and the file's removal) does no harm; lines are applied in
order, so a later reply for the same delivery wins. A last line cut short (the disk
filled up) is not a reply anyone relied on: its append failed, so its message was
never ended.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import StoreError
from ..models import DeliveryStatus
from ..stamps import parse_stamp
from ..stamps import stamp as stamp_of
from .ledger import DeliveryResult, encode_rows

__all__ = ["Journal", "journal_files", "journal_path", "read_journal"]


def journal_path(database: Path, campaign_id: int) -> Path:
    """``<database>.campaign-<id>.journal``, beside the database: the journal's first
    segment; later ones add ``.1``, ``.2``… (``Journal.seal``)."""
    return database.with_name(f"{database.name}.campaign-{campaign_id}.journal")


def journal_files(path: Path) -> list[Path]:
    """The segments of the journal at ``path`` that exist, oldest first."""
    later = []
    for p in path.parent.glob(path.name + ".*"):
        suffix = p.name[len(path.name) + 1:]
        if suffix.isdigit():
            later.append((int(suffix), p))
    return ([path] if path.exists() or path.is_symlink() else []) + [p for _, p in sorted(later)]


class Journal:
    """The journal of one campaign, open for appending (one sender at a time: the
    caller holds the campaign's kernel lock). It is written in segments, so that what
    the ledger has recorded can go while a campaign of a million runs: once a
    segment is large, ``seal`` starts the next, and the sealed one is removed when the
    commit that covers it has ended (``remove``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._number = 0
        self._fd = self._open(path)
        self.size = 0  # bytes in the segment being written

    @staticmethod
    def _open(path: Path) -> int:
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StoreError(f"cannot open the reply journal {path}: {e.strerror}") from None

    def _segment(self, number: int) -> Path:
        return self.path if number == 0 else self.path.with_name(f"{self.path.name}.{number}")

    def append(self, at: float, results: Sequence[DeliveryResult]) -> str:
        """One line for ``results``, recorded at ``at`` (seconds since the epoch: a
        float costs less per append than a formatted stamp); raises ``OSError`` (the
        disk is full) when it could not be written whole. Returns the results' JSON
        (``encode_rows``), which the commit that records them takes as it is."""
        rows = encode_rows(results)
        line = f"[{at!r}, {rows}]\n".encode()  # a float's repr is JSON's
        view = memoryview(line)
        while view:  # a regular file takes it in one write, but nothing promises so
            view = view[os.write(self._fd, view):]
        self.size += len(line)
        return rows

    def seal(self) -> Path:
        """Go on in a new segment; the path of the one sealed."""
        sealed = self._segment(self._number)
        self._number += 1
        fd = self._open(self._segment(self._number))
        os.close(self._fd)
        self._fd, self.size = fd, 0
        return sealed

    @staticmethod
    def remove(segment: Path) -> None:
        """A sealed segment whose replies the ledger has all."""
        with contextlib.suppress(FileNotFoundError):
            segment.unlink()

    def close(self, *, remove: bool) -> None:
        """Close; with ``remove``, the ledger has every reply and the segments go."""
        os.close(self._fd)
        if remove:
            for segment in journal_files(self.path):
                self.remove(segment)


def read_journal(path: Path) -> Iterator[tuple[str, list[DeliveryResult]]]:
    """Each complete line of the journal at ``path`` (every segment): its stamp and
    its replies, in the order they were appended. Nothing when there is no journal."""
    for segment in journal_files(path):
        if segment.is_file():  # not a file of ours (a device): never read
            yield from _lines(segment.read_bytes())


def _lines(data: bytes) -> Iterator[tuple[str, list[DeliveryResult]]]:
    for raw in data.split(b"\n"):
        try:
            at, rows = json.loads(raw)
        except ValueError:
            continue  # the cut-short last line (or an empty one)
        yield stamp_of(dt.datetime.fromtimestamp(at, dt.UTC)), [
            DeliveryResult(delivery_id, DeliveryStatus(status), code, response, message_id,
                           parse_stamp(later) if later else None, bounce, *attempt)
            for delivery_id, status, code, response, message_id, later, bounce, *attempt
            in rows]
