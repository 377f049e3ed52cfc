"""The web edition and the private archive over real HTTP (uvicorn on loopback),
with links taken from emails really sent to a real SMTP server."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from mailer.tokens import make_edition_token, make_token

from .conftest import Run, database_bytes, snapshot
from .edition_setup import Sent, import_lists, issue_file, send_issue
from .test_web import Running, rotated, secrets_env, start  # noqa: F401 (fixtures)

MEMBER = "dangban@wanhua.example.org"  # send-to
OTHER_MEMBER = "dangwei@geely.example.org"  # send-to
BODY = "zzb@sheng.example.org"  # report-to
ONLY_REPORTED = "仅报送上级的专题材料"  # the title of an article only issue 11 has


@pytest.fixture(scope="session")
def _sent_before() -> dict[str, tuple[bytes, Sent]]:
    """What the three sends left, by config (this test process's): the database
    file and what the messages carried."""
    return {}


@pytest.fixture
def sent(initialised: Path, run: Run, config_file: Path, tmp_path: Path,
         _sent_before: dict[str, tuple[bytes, Sent]]) -> Sent:
    """Issue 9 to both lists, issue 10 to send-to, issue 11 to report-to only.

    Sent for real once per config; each later test with that config starts from a
    copy of the database those sends left (the same rows, uids, tokens and stored
    editions), and changes only its own copy."""
    key = re.sub(r"port = \d+", "", config_file.read_text("utf-8"))
    if key in _sent_before:
        data, s = _sent_before[key]
        for extra in ("-wal", "-shm"):  # `init`'s, if any: they belong to the old file
            initialised.with_name(initialised.name + extra).unlink(missing_ok=True)
        initialised.write_bytes(data)
        return copy.deepcopy(s)
    import_lists(run)
    s = Sent({}, {})
    send_issue(config_file, issue_file(tmp_path, 9), ("report-to", "send-to"), s)
    send_issue(config_file, issue_file(tmp_path, 10), ("send-to",), s)
    send_issue(config_file, issue_file(tmp_path, 11, extra_article=ONLY_REPORTED),
               ("report-to",), s)
    _sent_before[key] = (database_bytes(initialised), copy.deepcopy(s))
    return s


@pytest.fixture
def web(sent: Sent, start: Callable[[], Running]) -> Running:  # noqa: F811
    return start()


def path(url: str) -> str:
    return httpx.URL(url).raw_path.decode()


def assert_safe_page(r: httpx.Response) -> None:
    assert r.headers["cache-control"] == "no-store"
    assert "noindex" in r.headers["x-robots-tag"]
    assert '<meta name="robots" content="noindex, nofollow">' in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "script-src" not in csp
    css = r.text.split("<style>", 1)[1].split("</style>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp
    assert "<script" not in r.text.lower() and "style=" not in r.text


# --- the web edition ------------------------------------------------------------------


def test_each_email_links_its_own_web_edition(web: Running, sent: Sent) -> None:
    links = {sent.links[(a, 9)] for a in (MEMBER, OTHER_MEMBER, BODY)}
    assert len(links) == 3, "the 网页版 link must be personal"
    r = web.client.get(path(sent.links[(MEMBER, 9)]))
    assert r.status_code == 200
    assert_safe_page(r)
    for title in ("万向职院落实党建工作责任制", "协会动态之二", "2015 年第 9 期"):
        assert title in r.text
    assert "发：" in r.text and "协会会员" in r.text
    assert "往期简报" in r.text  # an active member reaches the archive


def test_report_to_page_is_the_report_to_edition(web: Running, sent: Sent) -> None:
    r = web.client.get(path(sent.links[(BODY, 11)]))
    assert r.status_code == 200
    assert ONLY_REPORTED in r.text
    assert "报：" in r.text


def test_old_link_after_a_key_rotation(rotated: None, sent: Sent,  # noqa: F811
                                       start: Callable[[], Running]) -> None:  # noqa: F811
    w = start()
    current, previous = w.config.signing_keys()
    uid = w.store().uid_of(MEMBER)
    assert uid
    old = make_edition_token(previous, uid, "send-to", sent.issue_ids[9], 1)
    w.clock.set(dt.datetime(2026, 6, 30, 15, 59, tzinfo=dt.UTC))
    assert w.client.get(f"/w/{old}").status_code == 200
    w.clock.set(dt.datetime(2026, 6, 30, 16, 0, tzinfo=dt.UTC))
    assert w.client.get(f"/w/{old}").status_code == 404
    new = make_edition_token(current, uid, "send-to", sent.issue_ids[9], 1)
    assert w.client.get(f"/w/{new}").status_code == 200


# --- access -------------------------------------------------------------------------


def test_refused_links_all_get_the_one_404(web: Running, sent: Sent) -> None:
    not_found = web.client.get("/u/nonsense").text
    good = path(sent.links[(MEMBER, 9)])
    token = good.rsplit("/", 1)[1]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    uid = web.store().uid_of(MEMBER)
    assert uid
    key = web.config.signing_keys()[0]
    refused = {
        "no token": "/w/",
        "garbage": "/w/abc",
        "forged": f"/w/{forged}",
        "forged archive": f"/w/{forged}/archive",
        # The unsubscribe token of the same person: signed for another purpose.
        "unsubscribe token": f"/w/{make_token(key, uid, 'send-to')}",
        # A member's own uid, signed properly, but for an issue never sent to send-to.
        "not sent to that list": "/w/" + make_edition_token(
            key, uid, "send-to", sent.issue_ids[11], 1),
        "no such issue": "/w/" + make_edition_token(key, uid, "send-to", 999, 1),
        "no such recipient": "/w/" + make_edition_token(
            key, "x" * 22, "send-to", sent.issue_ids[9], 1),
    }
    for why, url in refused.items():
        r = web.client.get(url)
        assert r.status_code == 404, why
        assert r.text == not_found, why
        assert r.headers["cache-control"] == "no-store", why


def test_another_recipients_link_names_them_not_you(web: Running, sent: Sent) -> None:
    """Links are personal: the member's link shows the member's list's edition, and
    editing the token to name another list breaks the signature."""
    token = path(sent.links[(MEMBER, 10)]).rsplit("/", 1)[1]
    version, kid, payload, mac = token.split(".")
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    _uid, slug, issue, issued = decoded.split(":")
    other_uid = web.store().uid_of(OTHER_MEMBER)
    assert other_uid and slug == "send-to"
    swapped = base64.urlsafe_b64encode(f"{other_uid}:{slug}:{issue}:{issued}".encode())
    tampered = f"{version}.{kid}.{swapped.decode().rstrip('=')}.{mac}"
    assert web.client.get(f"/w/{tampered}").status_code == 404


def test_removed_and_unsubscribed_keep_old_issues_lose_the_archive(
    web: Running, sent: Sent, run: Run
) -> None:
    run("recipients", "remove", MEMBER, "--list", "send-to")
    r = web.client.post(path(sent.links[(OTHER_MEMBER, 9)]).replace("/w/", "/u/"))
    assert r.status_code == 404  # a web link is not an unsubscribe link
    unsub = web.client.get(f"/u/{make_token(web.config.signing_keys()[0], web.store().uid_of(OTHER_MEMBER) or '', 'send-to')}")  # noqa: E501
    assert unsub.status_code == 200
    web.client.post(f"/u/{unsub.url.path.rsplit('/', 1)[1]}",
                    content=b"List-Unsubscribe=One-Click",
                    headers={"content-type": "application/x-www-form-urlencoded"})
    for who in (MEMBER, OTHER_MEMBER):
        link = path(sent.links[(who, 9)])
        r = web.client.get(link)
        assert r.status_code == 200, who
        assert "往期简报" not in r.text, who
        a = web.client.get(f"{link}/archive")
        assert a.status_code == 403, who
        assert "2015年第10期" not in a.text and "第10期" not in a.text, who


def test_staff_revoke_kills_every_link_of_the_address(web: Running, sent: Sent,
                                                       run: Run) -> None:
    others = web.client.get(path(sent.links[(OTHER_MEMBER, 9)]))
    done = run("archive", "revoke", MEMBER.upper())
    assert MEMBER in done.output
    for n in (9, 10):
        assert web.client.get(path(sent.links[(MEMBER, n)])).status_code == 404
        assert web.client.get(path(sent.links[(MEMBER, n)]) + "/archive").status_code == 404
    assert web.client.get(path(sent.links[(OTHER_MEMBER, 9)])).text == others.text
    listed = run("archive", "list").output
    assert MEMBER in listed and "1 address with revoked links" in listed
    refused = run("archive", "revoke", "nobody@example.org", ok=False)
    assert refused.exit_code == 1 and "Error: no recipient" in refused.output


def test_get_changes_nothing(web: Running, sent: Sent) -> None:
    before = snapshot(web.config.database)
    link = path(sent.links[(MEMBER, 9)])
    for url in (link, f"{link}/archive", f"{link}/archive?q=党建", "/w/forged"):
        web.client.get(url)
    assert snapshot(web.config.database) == before
    assert web.client.post(link).status_code == 405


# --- the archive ----------------------------------------------------------------------


def labels(text: str) -> list[str]:
    return re.findall(r"简报 2015年第(\d+)期", text)


def test_archive_lists_what_was_sent_to_that_list_newest_first(web: Running,
                                                                sent: Sent) -> None:
    member = web.client.get(path(sent.links[(MEMBER, 9)]) + "/archive")
    assert member.status_code == 200
    assert_safe_page(member)
    assert "2015 年" in member.text
    assert labels(member.text.split("往期简报", 2)[2]) == ["10", "9"]
    body = web.client.get(path(sent.links[(BODY, 9)]) + "/archive")
    assert labels(body.text.split("往期简报", 2)[2]) == ["11", "10", "9"]
    # Each archive link opens its issue for that reader.
    for href in re.findall(r'<li><a href="([^"]+)"', body.text):
        assert web.client.get(path(href)).status_code == 200


def test_member_opens_an_issue_sent_before_via_the_archive_only_while_active(
    web: Running, sent: Sent, run: Run
) -> None:
    page = web.client.get(path(sent.links[(MEMBER, 9)]) + "/archive")
    href = re.findall(r'<li><a href="([^"]+)"', page.text)[0]
    assert web.client.get(path(href)).status_code == 200


def search(web: Running, sent: Sent, who: str, q: str) -> httpx.Response:
    return web.client.get(path(sent.links[(who, 9)]) + "/archive", params={"q": q})


def test_search_in_chinese_highlights_the_passage(web: Running, sent: Sent) -> None:
    r = search(web, sent, MEMBER, "党建 案例")
    assert r.status_code == 200
    assert "<mark>党建</mark>" in r.text and "<mark>案例</mark>" in r.text
    assert "协会动态之二" in r.text
    hits = re.findall(r'<div class="hit">\s*<a href="([^"]+)"', r.text)
    assert hits and all("#a" in h for h in hits)
    assert web.client.get(path(hits[0].split("#")[0])).status_code == 200
    three = search(web, sent, MEMBER, "小创意发挥")
    assert "<mark>小创意发挥</mark>" in three.text
    none = search(web, sent, MEMBER, "不存在的词语组合")
    assert "没有找到" in none.text and 'class="hit"' not in none.text


def test_search_stays_in_the_readers_archive(web: Running, sent: Sent) -> None:
    assert 'class="hit"' not in search(web, sent, MEMBER, ONLY_REPORTED).text
    assert "<mark>" + ONLY_REPORTED + "</mark>" in search(web, sent, BODY, ONLY_REPORTED).text


def test_search_odd_input(web: Running, sent: Sent) -> None:
    empty = search(web, sent, MEMBER, "")
    assert empty.status_code == 200 and 'class="hit"' not in empty.text
    assert labels(empty.text.split("往期简报", 2)[2]) == ["10", "9"]
    # 10,000 characters (percent-encoded, they stay under uvicorn's 16 KB request line).
    long = search(web, sent, MEMBER, "党建" * 300 + "x" * 9_400)
    assert long.status_code == 400 and "搜索词太长" in long.text
    assert len(long.text) < 40_000  # the query is not echoed back in full
    for odd in ('"', "%", "_", "a\"b OR c", "NEAR(党建", "<script>"):
        r = search(web, sent, MEMBER, odd)
        assert r.status_code == 200, odd
        assert "<script>" not in r.text


def test_searches_are_rate_limited(web: Running, sent: Sent) -> None:
    codes = [search(web, sent, MEMBER, "党建").status_code for _ in range(21)]
    assert codes[:20] == [200] * 20 and codes[20] == 429
    # Browsing the archive without searching is not limited.
    assert search(web, sent, MEMBER, "").status_code == 200
