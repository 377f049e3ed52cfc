"""The web edition and the archive, as served over HTTP, in Debian's headless
chromium at a phone's and a desktop's width, light and dark: nothing scrolls
sideways, the bulletin shows, dark mode really turns the page dark. Screenshots go
to build/screenshots/ for a person to look at.

The page is fetched from the app under uvicorn and laid out inside an iframe of the
exact width (headless chromium will not make a window narrower than 500 px; see
test_browser.py). The app's own answer forbids framing (frame-ancestors 'none'), so
the copy framed is the HTML it served; its headers are tested in test_edition.py.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import REPO, Run
from .edition_setup import Sent, import_lists, issue_file, send_issue
from .test_browser import CHROMIUM, PROBE_SCRIPT, _chromium, _frame_page
from .test_edition import MEMBER, path
from .test_web import Running, secrets_env, start  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is missing")
SCREENSHOTS = REPO / "build" / "screenshots"

# What the page measured, plus whether it was asked for dark and what it painted.
DARK_PROBE = PROBE_SCRIPT.replace(
    "text: document.body.innerText",
    "text: document.body.innerText,"
    " dark: matchMedia('(prefers-color-scheme: dark)').matches,"
    " background: getComputedStyle(document.body).backgroundColor",
)


def look(page_html: str, width: int, dark: bool, workdir: Path, name: str) -> dict[str, object]:
    """Lay the page out at ``width``; measure it, then save a full-length screenshot."""
    flags = ["--force-dark-mode"] if dark else []
    probe = workdir / f"{name}-probe.html"
    inner = page_html.replace("</body>", DARK_PROBE + "</body>")
    probe.write_text(_frame_page(inner, width, 2000, probe=False), encoding="utf-8")
    dom = _chromium(workdir / f"profile-{name}-probe", *flags,
                    f"--window-size={max(width, 500)},2100", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found and found.group(1), "the probe did not run"
    seen: dict[str, object] = json.loads(html.unescape(found.group(1)))
    height = seen["scrollHeight"]
    assert isinstance(height, int)
    shot_page = workdir / f"{name}-shot.html"
    shot_page.write_text(_frame_page(page_html, width, height, probe=False), encoding="utf-8")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    out = SCREENSHOTS / f"{name}.png"
    out.unlink(missing_ok=True)
    _chromium(workdir / f"profile-{name}-shot", *flags, f"--window-size={width},{height}",
              f"--screenshot={out}", shot_page.as_uri())
    assert out.exists() and out.stat().st_size > 10_000, f"no usable screenshot at {out}"
    return seen


def test_web_edition_and_archive_fit_every_screen_light_and_dark(
    initialised: Path, run: Run, config_file: Path, tmp_path: Path,
    start: Callable[[], Running],  # noqa: F811
) -> None:
    import_lists(run)
    sent = Sent({}, {})
    send_issue(config_file, issue_file(tmp_path, 9), ("report-to", "send-to"), sent)
    send_issue(config_file, issue_file(tmp_path, 10), ("send-to",), sent)
    web = start()
    link = path(sent.links[(MEMBER, 9)])
    pages = {
        "edition": web.client.get(link),
        "archive": web.client.get(f"{link}/archive", params={"q": "党建 案例"}),
    }
    for name, r in pages.items():
        assert r.status_code == 200, name
    for name, r in pages.items():
        for width in (375, 1280):
            for dark in (False, True):
                label = f"{name}-{width}-{'dark' if dark else 'light'}"
                seen = look(r.text, width, dark, tmp_path, label)
                assert seen["innerWidth"] == width, label
                scroll = seen["scrollWidth"]
                assert isinstance(scroll, int) and scroll <= width, f"{label}: {scroll}px wide"
                assert seen["dark"] is dark, label
                # Light: the grey desk of the printed page; dark: near black.
                bg = seen["background"]
                assert bg == ("rgb(18, 18, 18)" if dark else "rgb(236, 236, 236)"), (label, bg)
                text = seen["text"]
                assert isinstance(text, str)
                if name == "edition":
                    for title in ("万向职院落实党建工作责任制", "协会动态之二", "发："):
                        assert title in text, (label, title)
                else:
                    assert "往期简报" in text and "2015年第10期" in text, label
                    assert "案例" in text, label
