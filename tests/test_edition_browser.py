"""The web edition and the archive, as served over HTTP, in Debian's headless
chromium at a phone's and a desktop's width, light and dark: nothing scrolls
sideways, the bulletin shows, dark mode really turns the page dark. Screenshots go
to build/screenshots/ for a person to look at.

The page is fetched from the app under uvicorn; the HTML it served is opened from a
file in one chromium for the module (tests/browser.py), its viewport exactly the
width, dark asked for through the prefers-color-scheme media feature. The app's
headers are tested in test_edition.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .browser import Chromium, chromium, needs_chromium, probe  # noqa: F401 (fixture)
from .conftest import REPO, Run
from .edition_setup import Sent, import_lists, issue_file, send_issue
from .test_edition import MEMBER, path
from .test_web import Running, secrets_env, start  # noqa: F401 (fixtures)

pytestmark = needs_chromium
SCREENSHOTS = REPO / "build" / "screenshots"

# What the page measured, plus whether it was asked for dark and what it painted.
DARK_PROBE = probe(dark="matchMedia('(prefers-color-scheme: dark)').matches",
                   background="getComputedStyle(document.body).backgroundColor")


def test_web_edition_and_archive_fit_every_screen_light_and_dark(
    initialised: Path, run: Run, config_file: Path, tmp_path: Path,
    start: Callable[[], Running], chromium: Chromium,  # noqa: F811
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
        page = tmp_path / f"{name}.html"
        page.write_text(r.text, encoding="utf-8")
        for width in (375, 1280):
            for dark in (False, True):
                label = f"{name}-{width}-{'dark' if dark else 'light'}"
                shot = SCREENSHOTS / f"{label}.png"
                shot.unlink(missing_ok=True)
                seen = chromium.look(page, width, expression=DARK_PROBE, dark=dark, shot=shot)
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
