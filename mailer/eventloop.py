"""The event loop the sending processes run on: uvloop when it is installed.

uvloop (libuv) spends less CPU per event than asyncio's own selector loop, and its
``writelines`` hands the prepared chunks of a message to one vectored write
instead of joining them. It is a dependency, but a platform without it (or a test
that wants asyncio's own loop) still runs on asyncio, the same code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TypeVar

T = TypeVar("T")

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
    uvloop = None  # type: ignore[assignment]

__all__ = ["NAME", "loop_factory", "run"]

#: "uvloop" or "asyncio": the loop ``run`` uses.
NAME = "uvloop" if uvloop is not None else "asyncio"


def loop_factory(name: str = NAME) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory of event loops of ``name`` ("uvloop" or "asyncio")."""
    if name == "uvloop":
        if uvloop is None:
            raise RuntimeError("uvloop is not installed")
        return uvloop.new_event_loop
    if name != "asyncio":
        raise ValueError(f"unknown event loop {name!r}: uvloop or asyncio")
    return asyncio.new_event_loop


def run(coro: Coroutine[object, None, T], *, loop: str = NAME) -> T:
    """``asyncio.run(coro)`` on uvloop when installed (``loop`` chooses)."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(coro)
