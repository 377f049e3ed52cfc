"""Writing staff's files: whole or not at all, and a refusal they can act on.

Every file the CLI writes (a converted issue, a rendered preview, an exported
recipients list) goes through :func:`write_atomic`. A path that cannot be written
raises ``InvalidInput``, which the CLI prints as one line naming the path and what
to do, never a traceback.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .errors import InvalidInput


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: beside it first, then renamed over it, so there is
    never half a file where a good one was (or where none was).

    Raises ``InvalidInput`` if the folder is missing or not writable, if ``path`` is a
    folder, or if the write itself fails (a full disk); nothing is left behind then.
    """
    if path.is_dir():
        raise InvalidInput(f"cannot write {path}: it is a folder; give a file name")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.resolve().parent, prefix=f".{path.name}.")
    except OSError as e:
        raise _refusal(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _refusal(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_folder(path: Path) -> None:
    """Create the folder ``path`` (and its parents) unless it exists; ``InvalidInput``
    if that cannot be done."""
    if path.exists() and not path.is_dir():
        raise InvalidInput(f"cannot write into {path}: it is a file, not a folder; "
                           "choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _refusal(path, e) from None


def _refusal(path: Path, e: OSError) -> InvalidInput:
    """One line for a failed write: the path, what went wrong and what to do."""
    folder = path.parent
    if e.errno == errno.ENOENT:
        what = f"the folder {folder} does not exist; create it or choose another path"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = f"{e.strerror.lower() if e.strerror else 'not allowed'} in {folder}; "
        what += "choose a folder you can write to"
    elif e.errno == errno.EISDIR:
        what = "it is a folder; give a file name"
    elif e.errno == errno.ENOTDIR:
        what = f"part of {folder} is a file, not a folder; choose another path"
    elif e.errno == errno.ENOSPC:
        what = f"the disk is full ({folder}); free some space and try again"
    else:
        what = f"{e.strerror or e} ({folder}); choose another path"
    return InvalidInput(f"cannot write {path}: {what}")
