"""The email of a Word issue with a picture, in Debian's headless chromium at a
phone's width and a wider one: the picture is displayed and scaled to the screen.

The message is the one the product builds (``mailer render`` writes it whole as
issue.eml). A mail reader shows its HTML with each ``cid:`` reference resolved to
the inline part of that Content-ID; a browser knows no cid:, so the copy opened
here has each one replaced by a data: URI of that very part's bytes. One chromium
serves the module (tests/browser.py). Screenshots go to build/screenshots/ with the
other browser screenshots.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
from email.message import EmailMessage
from pathlib import Path

import pytest

from .browser import Chromium, chromium, needs_chromium, probe  # noqa: F401 (fixture)
from .conftest import REPO, Run
from .word_issue import Style, png, write_word

pytestmark = needs_chromium
SCREENSHOTS = REPO / "build" / "screenshots"

# Wider than any phone: 1200 px of picture placed 16 cm wide (about 605 px) in Word.
PICTURE = png(1200, 600, (20, 110, 60))

# Measured once the page and its pictures have loaded (chromium.look waits for the
# load event, which waits for the pictures).
PICTURE_PROBE = probe(images="""Array.prototype.map.call(document.images, function (im) {
    var box = im.getBoundingClientRect();
    return {src: im.getAttribute("src").slice(0, 22), complete: im.complete,
            naturalWidth: im.naturalWidth, naturalHeight: im.naturalHeight,
            left: box.left, right: box.right, width: box.width, height: box.height};
  })""")


def html_as_a_mail_reader_shows_it(eml: bytes) -> tuple[str, dict[str, bytes]]:
    """The message's HTML with every cid: reference replaced by its inline part's
    bytes, and those parts by Content-ID."""
    msg = email.message_from_bytes(eml, policy=email.policy.default)
    assert isinstance(msg, EmailMessage) and not msg.defects
    html_part = msg.get_body(("html",))
    assert html_part is not None
    parts: dict[str, EmailMessage] = {}
    for part in msg.walk():
        if isinstance(part, EmailMessage) and part["Content-ID"]:
            parts[part["Content-ID"].strip().strip("<>")] = part
    body = html_part.get_content()
    referenced = set(re.findall(r'src="cid:([^"]+)"', body))
    assert referenced and referenced == set(parts), (referenced, set(parts))

    def data_uri(found: re.Match[str]) -> str:
        part = parts[found.group(1)]
        data = base64.b64encode(part.get_content()).decode("ascii")
        return f'src="data:{part.get_content_type()};base64,{data}"'

    shown = re.sub(r'src="cid:([^"]+)"', data_uri, body)
    return shown, {cid: p.get_content() for cid, p in parts.items()}


@pytest.fixture(scope="module")
def word_email(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("word-browser")
    return write_word(folder / "pictured.docx", Style(picture=True, picture_cm=16),
                      picture=PICTURE)


@pytest.mark.parametrize("width", [375, 640])
def test_the_word_picture_shows_and_fits_the_screen(
        word_email: Path, width: int, run: Run, initialised: Path, tmp_path: Path,
        chromium: Chromium) -> None:  # noqa: F811
    out = tmp_path / "preview"
    run("render", str(word_email), "--out", str(out))
    shown, parts = html_as_a_mail_reader_shows_it((out / "issue.eml").read_bytes())
    assert list(parts.values()) == [PICTURE]  # the very bytes of the Word file's picture

    page = tmp_path / "shown.html"
    page.write_text(shown, encoding="utf-8")
    shot = SCREENSHOTS / f"word-picture-{width}.png"
    shot.unlink(missing_ok=True)
    seen = chromium.look(page, width, expression=PICTURE_PROBE, shot=shot)

    assert seen["innerWidth"] == width
    assert seen["scrollWidth"] <= width, f"horizontal scrolling at {width}px: {seen}"
    [image] = seen["images"]
    assert image["src"].startswith("data:image/png;base64")
    assert image["complete"] and (image["naturalWidth"], image["naturalHeight"]) == (1200, 600)
    # Displayed, inside the screen, scaled down whole (not cropped or squashed).
    assert image["width"] > 0 and image["left"] >= 0 and image["right"] <= width, image
    assert image["width"] < 605 if width == 375 else image["width"] > 375
    assert abs(image["height"] - image["width"] / 2) <= 1, image
    # chromium.look saved the full-length picture and checked it is no blank.
