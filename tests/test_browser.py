"""The rendered sample issue in a real browser: Debian's headless chromium.

Headless chromium will not make a window narrower than 500 px (smaller --window-size
values are silently raised, and a screenshot is then a crop of a 500 px layout), so
the email is laid out inside an iframe of exactly the phone's width. A copy of the
HTML gets a small script that writes what the page measured into ``<pre id="probe">``
of the outer page, which ``--dump-dom`` prints. The real output never holds a script.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path

import pytest

from mailer.models import Role
from mailer.render import Audience, Rendered, render_issue

from .sample_issue import sample_issue

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (/usr/bin/chromium); `make system-deps`",
)

TIMEOUT = 90  # seconds for one chromium run; a cold start on a small VM takes a few

PROBE_SCRIPT = """<script>
(function () {
  var p = parent.document.getElementById("probe");
  p.textContent = JSON.stringify({
    scrollWidth: document.documentElement.scrollWidth,
    scrollHeight: document.documentElement.scrollHeight,
    innerWidth: window.innerWidth,
    text: document.body.innerText
  });
})();
</script>"""


def _chromium(profile: Path, *args: str) -> str:
    """Run headless chromium once with a fresh profile and nothing that phones home."""
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
        f"--user-data-dir={profile}",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


def _frame_page(email_html: str, width: int, height: int, *, probe: bool) -> str:
    """An outer page holding the email in an iframe exactly ``width`` px wide."""
    inner = email_html.replace("</body>", PROBE_SCRIPT + "</body>") if probe else email_html
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head>"
        "<body style='margin:0'>"
        f"<iframe id='mail' srcdoc=\"{html.escape(inner, quote=True)}\" "
        f"style='display:block;border:0;width:{width}px;height:{height}px'></iframe>"
        "<pre id='probe'></pre></body></html>"
    )


def measure(email_html: str, width: int, workdir: Path) -> dict[str, object]:
    """Lay the email out at ``width`` px; return what the page measured."""
    page = workdir / f"probe-{width}.html"
    page.write_text(_frame_page(email_html, width, 2000, probe=True), encoding="utf-8")
    dom = _chromium(
        workdir / f"profile-probe-{width}",
        f"--window-size={max(width, 500)},2100",
        "--dump-dom",
        page.as_uri(),
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found and found.group(1), "the probe script did not run:\n" + dom[-2000:]
    data: dict[str, object] = json.loads(html.unescape(found.group(1)))
    return data


def screenshot(email_html: str, width: int, height: int, out: Path, workdir: Path) -> None:
    """Save a full-length picture of the email at ``width`` px for a person to look at."""
    page = workdir / f"shot-{width}.html"
    page.write_text(_frame_page(email_html, width, height, probe=False), encoding="utf-8")
    _chromium(
        workdir / f"profile-shot-{width}",
        f"--window-size={width},{height}",
        f"--screenshot={out}",
        page.as_uri(),
    )
    assert out.exists() and out.stat().st_size > 10_000, f"no usable screenshot at {out}"


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    audience = Audience(
        role=Role.SEND_TO,
        list_title="简报发送名单",
        footer_label="发",
        allow_unsubscribe=True,
        contact="协会秘书处 0571-00000000 secretariat@example.org",
    )
    return render_issue(sample_issue(), audience)


@pytest.mark.parametrize("width", [375, 640])
def test_fits_the_screen_and_shows_the_bulletin(
    rendered: Rendered, width: int, tmp_path: Path
) -> None:
    seen = measure(rendered.html, width, tmp_path)

    assert seen["innerWidth"] == width, "the email was not laid out at the width asked for"
    scroll_width = seen["scrollWidth"]
    assert isinstance(scroll_width, int)
    assert scroll_width <= width, f"horizontal scrolling at {width}px: {scroll_width}px wide"

    text = seen["text"]
    assert isinstance(text, str)
    issue = sample_issue()
    assert issue.masthead.title in text
    assert issue.masthead.organisation in text
    for article in issue.articles:
        assert article.title in text
    for line in issue.end.lines:
        assert f"{line.label}：" in text
        for name in line.names:
            assert name in text
    assert "退订此简报" in text

    height = seen["scrollHeight"]
    assert isinstance(height, int)
    shot = tmp_path / f"bulletin-{width}.png"
    screenshot(rendered.html, width, height, shot, tmp_path)
