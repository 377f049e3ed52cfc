"""The rendered sample issue in a real browser: Debian's headless chromium (one
process for the module, driven over the DevTools protocol: tests/browser.py).

The email is laid out at exactly the phone's width and measured by an expression
evaluated in the page; the HTML opened is the real output, no script added.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mailer.models import Role
from mailer.render import Audience, Rendered, render_issue

from .browser import Chromium, chromium, needs_chromium, probe  # noqa: F401 (fixture)
from .sample_issue import sample_issue

pytestmark = needs_chromium


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
    rendered: Rendered, width: int, tmp_path: Path, chromium: Chromium  # noqa: F811
) -> None:
    page = tmp_path / "bulletin.html"
    page.write_text(rendered.html, encoding="utf-8")
    shot = tmp_path / f"bulletin-{width}.png"
    seen = chromium.look(page, width, expression=probe(), shot=shot)

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
    # chromium.look saved the full-length picture and checked it is no blank.
