"""The unsubscribe pages over real HTTP: uvicorn on a loopback port, httpx as the
client, a real SQLite file underneath."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import random
import socket
import sqlite3
import string
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from mailer import config as config_mod
from mailer.clock import ManualClock
from mailer.config import Config, SigningKey
from mailer.errors import ConfigError, MailerError
from mailer.models import Status
from mailer.store import Store
from mailer.tokens import make_token
from mailer.web import FailedCheckLimiter, bind_socket, build_server, mask_email, serve

from .conftest import REPO, Run, snapshot

SECRET = "test-secret-0123456789abcdef"
OLD_SECRET = "old-secret-0123456789abcdef"
ONE_CLICK = {"content-type": "application/x-www-form-urlencoded"}
ONE_CLICK_BODY = b"List-Unsubscribe=One-Click"
STARTUP_TIMEOUT_S = 10.0


@pytest.fixture(autouse=True)
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_SECRET", SECRET)
    monkeypatch.setenv("MAILER_PREVIOUS_SECRET", OLD_SECRET)


def set_web(config_file: Path, **keys: object) -> None:
    """Add keys to the test config's [web] table."""
    lines = []
    for key, value in keys.items():
        text = f'"{value}"' if isinstance(value, str) else str(value)
        lines.append(f"{key} = {text}\n")
    body = config_file.read_text(encoding="utf-8")
    config_file.write_text(body.replace("[web]\n", "[web]\n" + "".join(lines), 1), "utf-8")


@pytest.fixture
def populated(initialised: Path, run: Run) -> Path:
    run("recipients", "import", str(REPO / "recipients" / "send-to.csv"), "--list", "send-to")
    run("recipients", "import", str(REPO / "recipients" / "report-to.csv"), "--list", "report-to")
    return initialised


class Running:
    def __init__(self, config: Config, client: httpx.Client, clock: ManualClock) -> None:
        self.config = config
        self.client = client
        self.clock = clock

    def token(self, email: str, list_slug: str = "send-to", key: SigningKey | None = None) -> str:
        return make_token(key or self.config.signing_keys()[0], uid_of(self.config, email),
                          list_slug)

    def store(self) -> Store:
        return Store.open(self.config.database)


def uid_of(config: Config, email: str) -> str:
    conn = sqlite3.connect(config.database)
    try:
        row = conn.execute("SELECT uid FROM recipients WHERE email = ?", [email]).fetchone()
    finally:
        conn.close()
    assert row, email
    return str(row[0])


@pytest.fixture
def start(config_file: Path) -> Iterator[Callable[[], Running]]:
    """Start the app under uvicorn in a thread on a free loopback port; stopped (and
    joined, bounded) at teardown."""
    started: list[tuple[uvicorn.Server, threading.Thread, httpx.Client]] = []

    def go() -> Running:
        config = config_mod.load(config_file)
        # The app's clock, which the test moves: key expiry, stamps, the limiter.
        clock = ManualClock(dt.datetime.now(dt.UTC))
        server = build_server(config, host="127.0.0.1", port=0, clock=clock,
                              handle_signals=False)
        sock = bind_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0,
                              follow_redirects=False)
        started.append((server, thread, client))
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            assert thread.is_alive(), "the server thread died at start"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return Running(config, client, clock)

    yield go
    for server, thread, client in started:
        client.close()
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture
def web(populated: Path, start: Callable[[], Running]) -> Running:
    return start()


def status_of(w: Running, email: str, list_slug: str = "send-to") -> Status:
    with w.store() as store:
        sub = store.find_subscription(uid_of(w.config, email), list_slug)
    assert sub is not None
    return sub.status


def status_events(w: Running, email: str) -> list[tuple[str, object, object]]:
    with w.store() as store:
        return [(e.actor, e.detail.get("source"), e.detail["after"])
                for e in store.history(email) if e.kind == "subscription.status"]


def assert_page_headers(r: httpx.Response) -> None:
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "form-action 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp


def assert_page(r: httpx.Response) -> None:
    """An HTML page with the headers, and a CSP that lets its one stylesheet in."""
    assert_page_headers(r)
    css = r.text.split("<style>", 1)[1].split("</style>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in r.headers["content-security-policy"]
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert '<html lang="zh-CN">' in r.text
    assert 'name="viewport"' in r.text
    assert "<script" not in r.text.lower()


# --- one-click (RFC 8058) ------------------------------------------------------------


def test_one_click_post_unsubscribes_with_200_not_a_redirect(web: Running) -> None:
    email = "dangban@wanhua.example.org"
    r = web.client.post(f"/u/{web.token(email)}", content=ONE_CLICK_BODY, headers=ONE_CLICK)
    assert r.status_code == 200 and not r.is_redirect and "location" not in r.headers
    assert_page(r)
    assert "已退订" in r.text
    assert "scope" not in r.text  # no further offer on the one-click answer
    assert status_of(web, email) is Status.UNSUBSCRIBED
    assert status_events(web, email) == [("web", "one-click", {"status": "unsubscribed"})]


def test_one_click_as_multipart_form_data(web: Running) -> None:
    """RFC 8058 lets the sender of the POST use multipart/form-data too."""
    email = "dangwei@geely.example.org"
    r = web.client.post(f"/u/{web.token(email)}", files={"List-Unsubscribe": (None, "One-Click")})
    assert r.request.headers["content-type"].startswith("multipart/form-data")
    assert r.status_code == 200
    assert status_of(web, email) is Status.UNSUBSCRIBED
    assert status_events(web, email) == [("web", "one-click", {"status": "unsubscribed"})]


def test_repeating_the_post_is_harmless(web: Running) -> None:
    email = "dangban@wanhua.example.org"
    url = f"/u/{web.token(email)}"
    for _ in range(3):
        r = web.client.post(url, content=ONE_CLICK_BODY, headers=ONE_CLICK)
        assert r.status_code == 200
    r = web.client.post(url, data={"confirm": "page"})
    assert r.status_code == 200 and "已不在发送名单中" in r.text
    assert status_of(web, email) is Status.UNSUBSCRIBED
    assert len(status_events(web, email)) == 1


def test_a_post_that_is_none_of_ours_changes_nothing(web: Running) -> None:
    url = f"/u/{web.token('dangban@wanhua.example.org')}"
    before = snapshot(web.config.database)
    for body in [b"", b"List-Unsubscribe=one-click", b"confirm=yes", b"x=" + b"A" * 9000]:
        r = web.client.post(url, content=body, headers=ONE_CLICK)
        assert r.status_code in (400, 413)
        assert_page(r)
    assert snapshot(web.config.database) == before


# --- the page ------------------------------------------------------------------------


def test_get_changes_nothing_and_shows_unit_and_masked_address(web: Running) -> None:
    email = "dangban@wanxiang.example.org"
    url = f"/u/{web.token(email)}"
    before = snapshot(web.config.database)
    for _ in range(3):  # a scanner, a preview, the person
        r = web.client.get(url)
        assert r.status_code == 200
        assert web.client.head(url).status_code == 200
    assert snapshot(web.config.database) == before
    assert_page(r)
    assert "万向集团" in r.text
    assert "da****@wanxiang.example.org" in r.text and email not in r.text
    assert "简报发送名单" in r.text
    assert '<form method="post">' in r.text
    assert '<input type="hidden" name="confirm" value="page">' in r.text


def test_page_confirm_then_whole_unit(web: Running) -> None:
    first, other = "dangwei@wahaha.example.org", "zuzhi@wahaha.example.org"
    url = f"/u/{web.token(first)}"
    r = web.client.post(url, data={"confirm": "page"})
    assert r.status_code == 200
    assert_page(r)
    assert "已退订" in r.text and "娃哈哈集团" in r.text
    assert "停止向本单位所有地址发送" in r.text
    assert '<input type="hidden" name="scope" value="unit">' in r.text
    assert status_of(web, first) is Status.UNSUBSCRIBED
    assert status_of(web, other) is Status.ACTIVE
    assert status_events(web, first) == [("web", "page", {"status": "unsubscribed"})]

    r = web.client.post(url, data={"scope": "unit"})
    assert r.status_code == 200
    assert_page(r)
    assert "已停止向本单位所有地址发送" in r.text
    assert "zu****@wahaha.example.org" in r.text and other not in r.text
    assert status_of(web, other) is Status.UNSUBSCRIBED
    assert status_events(web, other) == [("web", "unit", {"status": "unsubscribed"})]
    # Nothing beyond the unit changed.
    assert status_of(web, "dangban@wanhua.example.org") is Status.ACTIVE
    # Once nobody is left, the page no longer offers it.
    r = web.client.get(url)
    assert "停止向本单位所有地址发送" not in r.text


def test_whole_unit_offer_only_when_the_unit_has_other_addresses(web: Running) -> None:
    r = web.client.post(f"/u/{web.token('dangban@wanhua.example.org')}",
                        data={"confirm": "page"})
    assert r.status_code == 200 and "已退订" in r.text
    assert "停止向本单位所有地址发送" not in r.text and "scope" not in r.text


def test_whole_unit_straight_from_a_token(web: Running) -> None:
    """scope=unit stops every address of the unit, the token's own included."""
    r = web.client.post(f"/u/{web.token('dangwei@xizi.example.org')}", data={"scope": "unit"})
    assert r.status_code == 200
    for email in ("dangwei@xizi.example.org", "gonghui@xizi.example.org"):
        assert status_of(web, email) is Status.UNSUBSCRIBED
        assert status_events(web, email) == [("web", "unit", {"status": "unsubscribed"})]


def test_an_address_staff_removed_cannot_stop_its_unit(web: Running, run: Run) -> None:
    gone, stays = "dangwei@xizi.example.org", "gonghui@xizi.example.org"
    run("recipients", "remove", gone, "--list", "send-to", "--reason", "left the unit")
    url = f"/u/{web.token(gone)}"
    r = web.client.get(url)
    assert r.status_code == 200 and "停止向本单位所有地址发送" not in r.text
    before = snapshot(web.config.database)
    r = web.client.post(url, data={"scope": "unit"})
    assert r.status_code == 200 and "已不在发送名单中" in r.text
    assert snapshot(web.config.database) == before
    assert status_of(web, stays) is Status.ACTIVE
    assert status_of(web, gone) is Status.REMOVED_BY_STAFF


# --- report-to (报) ------------------------------------------------------------------


def test_report_to_is_refused_with_the_secretariat_contact(web: Running) -> None:
    email = "zzb@sheng.example.org"
    url = f"/u/{web.token(email, 'report-to')}"
    before = snapshot(web.config.database)
    r = web.client.get(url)
    assert r.status_code == 200
    assert_page(r)
    assert web.config.contact in r.text and "秘书处" in r.text
    assert "省委组织部" in r.text and "z****@sheng.example.org" in r.text
    assert "<form" not in r.text
    for data in ({"List-Unsubscribe": "One-Click"}, {"confirm": "page"}, {"scope": "unit"}):
        r = web.client.post(url, data=data)
        assert r.status_code == 403
        assert web.config.contact in r.text and "本页面未作任何更改" in r.text
    assert snapshot(web.config.database) == before
    assert status_of(web, email, "report-to") is Status.ACTIVE


# --- tokens that do not count ----------------------------------------------------------


@pytest.fixture
def lenient(config_file: Path) -> None:
    set_web(config_file, failed_checks_per_minute=100_000)


def test_unknown_forged_retired_and_missing_all_get_the_same_404(
    lenient: None, web: Running
) -> None:
    good = web.token("dangban@wanhua.example.org")
    head, mac = good.rsplit(".", 1)
    key = web.config.signing_keys()[0]
    retired = SigningKey("k0", OLD_SECRET.encode())  # no longer configured
    tokens = [
        "nonsense",
        f"{head}.{'A' * 22}",
        f"{head}.{mac[::-1]}",
        good.replace("v1.", "v2.", 1),
        make_token(retired, uid_of(web.config, "dangban@wanhua.example.org"), "send-to"),
        make_token(SigningKey("k1", b"an-attackers-own-secret"), "x" * 16, "send-to"),
        make_token(key, "NoSuchUid0000000", "send-to"),  # well signed, no such recipient
        make_token(key, uid_of(web.config, "zzb@sheng.example.org"), "send-to"),  # not on it
        make_token(key, uid_of(web.config, "dangban@wanhua.example.org"), "no-such-list"),
    ]
    before = snapshot(web.config.database)
    bodies = set()
    for token in tokens:
        for r in (web.client.get(f"/u/{token}"),
                  web.client.post(f"/u/{token}", content=ONE_CLICK_BODY, headers=ONE_CLICK)):
            assert r.status_code == 404, token
            assert_page(r)
            bodies.add(r.text)
    # Paths that never reach a token look the same too.
    for path in ("/u/", "/u/a/b", "/nothing"):
        r = web.client.get(path)
        assert r.status_code == 404
        bodies.add(r.text)
    assert len(bodies) == 1
    assert "链接无效" in bodies.pop()
    assert snapshot(web.config.database) == before


def test_hundreds_of_tampered_tokens_over_http_none_accepted(
    lenient: None, web: Running
) -> None:
    rng = random.Random(8058)
    good = web.token("dangban@wanhua.example.org")
    alphabet = string.ascii_letters + string.digits + "-_"
    before = snapshot(web.config.database)
    for i in range(300):
        pos = rng.randrange(3, len(good))
        c = rng.choice([ch for ch in alphabet if ch != good[pos]])
        forged = good[:pos] + c + good[pos + 1:]
        if i % 2:
            r = web.client.post(f"/u/{forged}", content=ONE_CLICK_BODY, headers=ONE_CLICK)
        else:
            r = web.client.get(f"/u/{forged}")
        assert r.status_code == 404, forged
    assert snapshot(web.config.database) == before
    assert web.client.get(f"/u/{good}").status_code == 200


# --- key rotation ----------------------------------------------------------------------


@pytest.fixture
def rotated(config_file: Path) -> None:
    # Valid until the end of 2026-06-30 in Asia/Shanghai = 2026-06-30T16:00Z.
    set_web(config_file, key_id="k1", previous_key_id="k0", previous_valid_until="2026-06-30")
    body = config_file.read_text("utf-8").replace('"2026-06-30"', "2026-06-30")
    config_file.write_text(body, "utf-8")


def test_previous_key_works_until_valid_until_then_404(rotated: None, web: Running) -> None:
    current, previous = web.config.signing_keys()
    assert (current.key_id, previous.key_id) == ("k1", "k0")
    email = "dangban@wanhua.example.org"
    old = web.token(email, key=previous)
    new = web.token(email, key=current)
    assert old.startswith("v1.k0.") and new.startswith("v1.k1.")

    web.clock.set(dt.datetime(2026, 6, 30, 15, 59, 59, tzinfo=dt.UTC))
    assert web.client.get(f"/u/{old}").status_code == 200
    assert web.client.get(f"/u/{new}").status_code == 200

    web.clock.set(dt.datetime(2026, 6, 30, 16, 0, 0, tzinfo=dt.UTC))
    r = web.client.post(f"/u/{old}", content=ONE_CLICK_BODY, headers=ONE_CLICK)
    assert r.status_code == 404
    assert status_of(web, email) is Status.ACTIVE
    r = web.client.post(f"/u/{new}", content=ONE_CLICK_BODY, headers=ONE_CLICK)
    assert r.status_code == 200
    assert status_of(web, email) is Status.UNSUBSCRIBED


def test_previous_key_unsubscribes_while_valid(rotated: None, web: Running) -> None:
    email = "dangban@wanhua.example.org"
    web.clock.set(dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    old = web.token(email, key=web.config.signing_keys()[1])
    r = web.client.post(f"/u/{old}", content=ONE_CLICK_BODY, headers=ONE_CLICK)
    assert r.status_code == 200
    assert status_of(web, email) is Status.UNSUBSCRIBED


# --- escaping --------------------------------------------------------------------------


def test_unit_name_is_escaped(initialised: Path, run: Run, start: Callable[[], Running]) -> None:
    evil = "<script>alert(1)</script>"
    run("recipients", "add", "evil@example.org", "--list", "send-to", "--unit", evil,
        "--create-unit")
    run("recipients", "add", "evil2@example.org", "--list", "send-to", "--unit", evil)
    web = start()
    url = f"/u/{web.token('evil@example.org')}"
    for r in (web.client.get(url), web.client.post(url, data={"confirm": "page"})):
        assert r.status_code == 200
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
        assert "<script" not in r.text.lower()


# --- rate limit --------------------------------------------------------------------------


@pytest.fixture
def strict(config_file: Path) -> None:
    set_web(config_file, failed_checks_per_minute=5)


def test_failed_checks_are_limited_per_client_valid_tokens_never(
    strict: None, web: Running
) -> None:
    bad = "v1.k1.YWJjOnNlbmQtdG8." + "A" * 22
    for _ in range(5):
        assert web.client.get(f"/u/{bad}").status_code == 404
    r = web.client.get(f"/u/{bad}")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "60"
    assert_page(r)
    assert "尝试次数过多" in r.text
    assert web.client.post(f"/u/{bad}", content=ONE_CLICK_BODY,
                           headers=ONE_CLICK).status_code == 429
    # A valid token from the same client still works, page and one-click.
    email = "dangban@wanhua.example.org"
    good = f"/u/{web.token(email)}"
    assert web.client.get(good).status_code == 200
    r = web.client.post(good, content=ONE_CLICK_BODY, headers=ONE_CLICK)
    assert r.status_code == 200
    assert status_of(web, email) is Status.UNSUBSCRIBED


def test_the_failed_check_window_runs_on_the_apps_clock(strict: None, web: Running) -> None:
    """A minute on the app's clock frees the client's tries one by one, as they age."""
    bad = "v1.k1.YWJjOnNlbmQtdG8." + "A" * 22
    codes = []
    for _ in range(5):
        codes.append(web.client.get(f"/u/{bad}").status_code)
        web.clock.advance(10)
    codes.append(web.client.get(f"/u/{bad}").status_code)  # 50 s after the first
    web.clock.advance(10)  # the first try is a minute old
    codes.append(web.client.get(f"/u/{bad}").status_code)
    codes.append(web.client.get(f"/u/{bad}").status_code)
    assert codes == [404] * 5 + [429, 404, 429]


BAD_TOKEN = "v1.k1.YWJjOnNlbmQtdG8." + "A" * 22


def bad_check(w: Running, forwarded: str | None = None) -> int:
    headers = {"x-forwarded-for": forwarded} if forwarded is not None else {}
    return w.client.get(f"/u/{BAD_TOKEN}", headers=headers).status_code


@pytest.fixture
def uvicorn_env_trusts_all(monkeypatch: pytest.MonkeyPatch) -> None:
    # uvicorn's own fallback when forwarded_allow_ips is not given; ours never is.
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")


def test_forwarded_for_is_ignored_without_trusted_proxies(
    strict: None, uvicorn_env_trusts_all: None, web: Running
) -> None:
    assert web.config.web.trusted_proxies == ()
    # A local client rotating X-Forwarded-For is still one client: 127.0.0.1.
    codes = [bad_check(web, f"198.51.100.{i}") for i in range(8)]
    assert codes == [404] * 5 + [429] * 3


@pytest.fixture
def behind_local_proxy(config_file: Path) -> None:
    set_web(config_file, failed_checks_per_minute=5, trusted_proxies=["127.0.0.1"])


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_window(
    behind_local_proxy: None, web: Running
) -> None:
    assert [bad_check(web, "203.0.113.7") for _ in range(6)] == [404] * 5 + [429]
    # Another client behind the same proxy is counted on its own.
    assert [bad_check(web, "203.0.113.8") for _ in range(6)] == [404] * 5 + [429]
    # Several X-Forwarded-For headers are one list; the right-most entry is the one
    # the proxy added.
    r = web.client.get(f"/u/{BAD_TOKEN}", headers=[("x-forwarded-for", "192.0.2.1"),
                                                   ("x-forwarded-for", "203.0.113.7")])
    assert r.status_code == 429
    # A request from the proxy itself (no header) is the proxy's own.
    assert bad_check(web) == 404


def test_a_forged_left_most_entry_does_not_help_behind_a_trusted_proxy(
    behind_local_proxy: None, web: Running
) -> None:
    # The attacker sends "X-Forwarded-For: <anything>", the proxy appends the
    # attacker's real address: only that one counts.
    codes = [bad_check(web, f"198.51.100.{i}, 203.0.113.66") for i in range(8)]
    assert codes == [404] * 5 + [429] * 3
    assert bad_check(web, "203.0.113.67") == 404


def test_a_chain_of_trusted_proxies_by_network(config_file: Path, populated: Path,
                                               start: Callable[[], Running]) -> None:
    set_web(config_file, failed_checks_per_minute=3,
            trusted_proxies=["127.0.0.0/8", "10.0.0.0/8"])
    web = start()
    # client, then a second proxy in 10/8, then the local one (the peer): the
    # nearest untrusted entry is the client, whatever it put on the left.
    codes = [bad_check(web, f"192.0.2.{i}, 203.0.113.9, 10.1.2.3") for i in range(5)]
    assert codes == [404] * 3 + [429] * 2
    assert bad_check(web, "203.0.113.10, 10.9.9.9") == 404
    # Every entry trusted: uvicorn takes the left-most, here a proxy's own request.
    assert [bad_check(web, "10.0.0.5, 10.1.2.3") for _ in range(4)] == [404] * 3 + [429]


def test_trusted_proxies_as_uvicorn_allow_list() -> None:
    import ipaddress

    from mailer.web import forwarded_allow_ips

    nets = (ipaddress.ip_network("127.0.0.1"), ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("::1"))
    assert forwarded_allow_ips(nets) == ["127.0.0.1/32", "::ffff:127.0.0.1/128", "10.0.0.0/8",
                                         "::ffff:10.0.0.0/104", "::1/128"]
    assert forwarded_allow_ips(()) == []


def test_limiter_window_slides_and_memory_is_bounded() -> None:
    clock = ManualClock()
    limiter = FailedCheckLimiter(3, max_clients=100, clock=clock)
    assert [limiter.failed("192.0.2.1") for _ in range(4)] == [False, False, False, True]
    assert limiter.failed("192.0.2.2") is False
    clock.advance(59.9)
    assert limiter.failed("192.0.2.1") is True
    clock.advance(0.1)
    assert limiter.failed("192.0.2.1") is False
    for i in range(1000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100


def test_limiter_counts_ipv6_per_64() -> None:
    limiter = FailedCheckLimiter(2)
    assert not limiter.failed("2001:db8:1:2::1")
    assert not limiter.failed("2001:db8:1:2::ffff")
    assert limiter.failed("2001:db8:1:2:aaaa::1")
    assert not limiter.failed("2001:db8:1:3::1")
    assert FailedCheckLimiter.client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert FailedCheckLimiter.client_key(None) == "?"


# --- health, masking, serving --------------------------------------------------------------


def test_healthz(web: Running) -> None:
    r = web.client.get("/healthz")
    assert r.status_code == 200 and r.text == "ok"


def test_healthz_without_a_database_is_503(config_file: Path,
                                           start: Callable[[], Running]) -> None:
    web = start()  # never initialised
    r = web.client.get("/healthz")
    assert r.status_code == 503
    r = web.client.get(f"/u/{make_token(web.config.signing_keys()[0], 'x' * 16, 'send-to')}")
    assert r.status_code == 503 and "请稍后再试" in r.text
    assert_page_headers(r)


def test_missing_secret_is_a_config_error_at_start(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILER_SECRET")
    with pytest.raises(ConfigError, match="no signing secret"):
        build_server(config_mod.load(config_file))


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("dangban@wanxiang.example.org", "da****@wanxiang.example.org"),
        ("abc@example.org", "a****@example.org"),
        ("a@example.org", "a****@example.org"),
        ("张三@例子.中国", "张****@例子.中国"),
        ("not-an-address", "****"),
    ],
)
def test_mask_email(address: str, masked: str) -> None:
    assert mask_email(address) == masked


def test_listening_socket_is_tcp_so_responses_are_not_delayed() -> None:
    """asyncio turns on TCP_NODELAY for accepted connections only when the listening
    socket's proto is TCP; without it each response waited ~40 ms for a delayed ACK."""
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_other_methods_get_a_page_with_the_headers(web: Running) -> None:
    url = f"/u/{web.token('dangban@wanhua.example.org')}"
    before = snapshot(web.config.database)
    for method in ("PUT", "DELETE", "PATCH"):
        r = web.client.request(method, url, content=ONE_CLICK_BODY, headers=ONE_CLICK)
        assert r.status_code == 405
        assert_page(r)
    assert snapshot(web.config.database) == before


def test_bind_error_is_one_clear_mailer_error() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(MailerError, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            bind_socket("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_serve_runs_in_an_existing_loop_and_stops(populated: Path, config_file: Path) -> None:
    config = config_mod.load(config_file)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = build_server(config, host="127.0.0.1", port=port, handle_signals=False)
    answers: list[int] = []

    async def main() -> None:
        task = asyncio.create_task(serve(config, server=server))
        async with httpx.AsyncClient(timeout=5.0) as client:
            for _ in range(200):
                if server.started:
                    break
                await asyncio.sleep(0.02)
            r = await client.get(f"http://127.0.0.1:{port}/healthz")
            answers.append(r.status_code)
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)

    asyncio.run(main())
    assert answers == [200]
