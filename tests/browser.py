"""Debian's headless chromium for the rendering tests, driven over the DevTools
protocol (CDP) through a pipe: one browser process serves every look a test module
takes, where a chromium run per look cost about a second of CPU each.

With ``--remote-debugging-pipe`` chromium reads commands from its fd 3 and writes
replies and events to its fd 4, each message JSON ended by a NUL byte. Each look is
a new tab: its viewport set to exactly the width asked for (CDP emulates narrower
than the 500 px headless chromium makes a window at the least, so no iframe is
needed), light or dark asked through the prefers-color-scheme media feature, the
file loaded, a probe expression evaluated in the page, a full-length screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (/usr/bin/chromium); `make system-deps`",
)

TIMEOUT = 90.0  # seconds for one command's reply; a cold start on a small VM takes a few
CLOSE_TIMEOUT = 10.0  # seconds for chromium to exit once asked, before it is killed
MAX_MESSAGES = 10_000  # messages read while waiting for one reply or event
MAX_READS = 100_000  # reads (or writes) of the pipe for one message
PROBE_HEIGHT = 2000  # px: the viewport height the pages are measured in

# What every look measures; a test adds its own fields (``probe(...)``).
PROBE_FIELDS = {
    "scrollWidth": "document.documentElement.scrollWidth",
    "scrollHeight": "document.documentElement.scrollHeight",
    "innerWidth": "window.innerWidth",
    "text": "document.body.innerText",
}


def probe(**extra: str) -> str:
    """A JavaScript expression that measures the page: PROBE_FIELDS and ``extra``,
    each a name and the expression giving its value."""
    fields = {**PROBE_FIELDS, **extra}
    return "({" + ", ".join(f"{name}: {js}" for name, js in fields.items()) + "})"


def _high_fd(fd: int) -> int:
    """``fd`` moved to 10 or above, close-on-exec: clear of 3 and 4 (the pipe's
    numbers in chromium), so that the shell's redirection of one end to 3 or 4 can
    never overwrite the other end."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class CDPError(AssertionError):
    """Chromium answered a command with an error, or did not answer in time."""


class Chromium:
    """One headless chromium, a throwaway profile, nothing that phones home."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self._stderr_path = workdir / "chromium-stderr.txt"
        commands_read, self._commands = map(_high_fd, os.pipe())
        self._replies, replies_write = map(_high_fd, os.pipe())
        cmd = [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={workdir / 'profile'}",
            "about:blank",
        ]
        # subprocess keeps passed fds at their own numbers; chromium wants them at 3
        # and 4, so bash moves them there (bash, not sh: dash takes one-digit fds
        # only), then becomes chromium. preexec_fn could dup2 too, but is unsafe with
        # the threads some tests run (uvicorn).
        shell = (f"exec 3<&{commands_read} 4>&{replies_write} "
                 f"{commands_read}<&- {replies_write}>&- && exec \"$@\"")
        with self._stderr_path.open("wb") as stderr:
            self._proc = subprocess.Popen(
                ["/bin/bash", "-c", shell, "chromium", *cmd],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                pass_fds=(commands_read, replies_write),
            )
        # Only chromium holds these ends now: our read sees EOF when it exits.
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace")[-2000:]

    def _read_message(self, deadline: float) -> dict[str, Any]:
        """The next whole message chromium wrote, waiting until ``deadline`` at most."""
        for _ in range(MAX_READS):
            if b"\0" in self._buffer:
                message, _, self._buffer = self._buffer.partition(b"\0")
                found: dict[str, Any] = json.loads(message)
                return found
            ready, _, _ = select.select([self._replies], [], [],
                                        max(deadline - time.monotonic(), 0))
            if not ready:
                raise CDPError(f"chromium did not answer in {TIMEOUT:.0f} s:\n{self._stderr()}")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise CDPError(f"chromium closed the pipe ({self._proc.poll()}):\n"
                               + self._stderr())
            self._buffer += chunk
        raise CDPError(f"no whole message in {MAX_READS} reads")

    def _write(self, message: dict[str, Any]) -> None:
        """One message and its NUL, in as many writes as the pipe takes it in."""
        data = json.dumps(message).encode() + b"\0"
        deadline = time.monotonic() + TIMEOUT
        for _ in range(MAX_READS):
            _, ready, _ = select.select([], [self._commands], [],
                                        max(deadline - time.monotonic(), 0))
            if not ready:
                raise CDPError(f"chromium took no command in {TIMEOUT:.0f} s")
            data = data[os.write(self._commands, data):]
            if not data:
                return
        raise CDPError(f"a command not taken in {MAX_READS} writes")

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None) -> dict[str, Any]:
        """Send one command and return its result; events that come first are kept
        for ``wait_event``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method,
                                   "params": params or {}}
        if session:
            message["sessionId"] = session
        self._write(message)
        deadline = time.monotonic() + TIMEOUT
        for _ in range(MAX_MESSAGES):
            reply = self._read_message(deadline)
            if reply.get("id") != self._next_id:
                if "method" in reply:
                    self._events.append(reply)
                continue
            if "error" in reply:
                raise CDPError(f"{method}: {reply['error']}")
            result: dict[str, Any] = reply["result"]
            return result
        raise CDPError(f"{method}: no reply among {MAX_MESSAGES} messages")

    def wait_event(self, method: str, session: str, **params: object) -> dict[str, Any]:
        """The first event ``method`` of ``session`` whose params hold ``params``."""

        def matches(event: dict[str, Any]) -> bool:
            return (event["method"] == method and event.get("sessionId") == session
                    and all(event["params"].get(k) == v for k, v in params.items()))

        for i, event in enumerate(self._events):
            if matches(event):
                del self._events[: i + 1]
                return event
        self._events.clear()
        deadline = time.monotonic() + TIMEOUT
        for _ in range(MAX_MESSAGES):
            event = self._read_message(deadline)
            if "method" in event and matches(event):
                return event
        raise CDPError(f"no {method} {params} among {MAX_MESSAGES} messages")

    def look(self, page: Path, width: int, *, expression: str, dark: bool = False,
             shot: Path | None = None) -> dict[str, Any]:
        """Load ``page`` in a new tab ``width`` px wide (``dark`` or light), return
        what ``expression`` measured once it loaded and, with ``shot``, save a
        full-length PNG there."""
        self._events.clear()  # an earlier look's: not wanted, and not to pile up
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        try:
            self.send("Page.enable", session=session)
            self.send("Page.setLifecycleEventsEnabled", {"enabled": True}, session)
            # mobile: false, as the iframe of the old tests was: a phone's narrow
            # layout viewport of exactly ``width``, the page's viewport meta unused.
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": PROBE_HEIGHT, "deviceScaleFactor": 1,
                       "mobile": False}, session)
            # Asked for on every look: a tab could otherwise keep an earlier answer.
            self.send("Emulation.setEmulatedMedia", {"features": [
                {"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]},
                session)
            loaded = self.send("Page.navigate", {"url": page.as_uri()}, session)
            assert "errorText" not in loaded, f"{page}: {loaded['errorText']}"
            # The load of this very navigation (its loaderId), not about:blank's.
            self.wait_event("Page.lifecycleEvent", session, name="load",
                            loaderId=loaded["loaderId"])
            answer = self.send("Runtime.evaluate",
                               {"expression": expression, "returnByValue": True}, session)
            assert "exceptionDetails" not in answer, answer["exceptionDetails"]
            seen: dict[str, Any] = answer["result"]["value"]
            if shot is not None:
                self._screenshot(session, width, shot)
            return seen
        finally:
            self.send("Target.closeTarget", {"targetId": target})

    def _screenshot(self, session: str, width: int, out: Path) -> None:
        """The whole page, down to its end, ``width`` px wide."""
        height = self.send("Runtime.evaluate", {
            "expression": "document.documentElement.scrollHeight", "returnByValue": True,
        }, session)["result"]["value"]
        picture = self.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        }, session)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(picture["data"]))
        assert out.stat().st_size > 10_000, f"no usable screenshot at {out}"

    def close(self) -> None:
        """Ask chromium to quit; kill it if it has not in CLOSE_TIMEOUT."""
        try:
            if self._proc.poll() is None:
                self._next_id += 1
                self._write({"id": self._next_id, "method": "Browser.close"})
            self._proc.wait(timeout=CLOSE_TIMEOUT)
        except (OSError, CDPError, subprocess.TimeoutExpired):
            self._proc.kill()  # gone already, or stuck: it must not outlive the tests
            self._proc.wait(timeout=CLOSE_TIMEOUT)
        finally:
            os.close(self._commands)
            os.close(self._replies)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    """One browser for all of a test module's looks."""
    with Chromium(tmp_path_factory.mktemp("chromium")) as browser:
        yield browser
