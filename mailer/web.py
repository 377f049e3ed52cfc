"""The unsubscribe pages and the RFC 8058 one-click endpoint (Starlette).

``GET /u/<token>`` only shows a page: mail scanners follow links, so a GET never
changes anything. ``POST /u/<token>`` unsubscribes: with the body
``List-Unsubscribe=One-Click`` (what Gmail and Yahoo send, no cookies, no CSRF token
possible; the token itself is the proof), with ``confirm=page`` from the page's
button, or with ``scope=unit`` for every address of the recipient's unit on the list.
Report-to (报) lists are changed by staff only: their tokens get a page naming the
secretariat, and nothing changes.

Tokens that are unknown, forged, signed with a retired key, or name a subscription
that does not exist all get the same 404 page, and count as failed checks: a client
address with more than ``web.failed_checks_per_minute`` of them gets 429 until its
window clears. Valid tokens are never limited (mail providers post from shared
servers).

The store is used the only way sqlite allows across threads: every request opens
its own ``Store`` inside ``run_in_threadpool``, uses it, and closes it in that same
thread. Opening is cheap (one file open and a schema check), and nothing is shared
between requests but the in-memory rate limiter, which lives on the event loop.

Run it standalone with ``run_server(config)``, or inside an existing asyncio loop
(the daemon) with ``server = build_server(config, handle_signals=False)``,
``await serve(config, server=server)`` and ``server.should_exit = True`` to stop.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import email.parser
import email.policy
import errno
import hashlib
import ipaddress
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import jinja2
import uvicorn
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .clock import SYSTEM_CLOCK, Clock
from .config import Config, IPNetwork, SigningKey
from .errors import MailerError, StaffOnly, UnknownRecipient
from .logs import LOGGER, event, fields, redact_access_log, setup_logging
from .models import Status
from .resources import templates_dir
from .store import Store, Subscriber
from .tokens import read_token
from .web_edition import SEARCHES_PER_MINUTE, EditionPages

TEMPLATES = templates_dir() / "web"
ACTOR = "web"
# A one-click body is 26 bytes and the page's forms are smaller; anything much
# bigger is not one of ours.
MAX_BODY_BYTES = 8192
# Client addresses remembered by the failed-check limiter; the oldest is dropped
# beyond this, so memory stays bounded whatever arrives.
MAX_TRACKED_CLIENTS = 10_000

T = TypeVar("T")

# Whose token may stop every address of its unit: the page offers it after the
# holder's own unsubscribe.
_MAY_STOP_UNIT = (Status.ACTIVE, Status.UNSUBSCRIBED)


# --- pieces that need no HTTP ----------------------------------------------------


def mask_email(address: str) -> str:
    """``dangban@wanxiang.example.org`` -> ``da****@wanxiang.example.org``: enough for
    a recipient to recognise the address, not enough to harvest it. The number of
    stars is fixed so the length is not revealed either."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "****"
    keep = 2 if len(local) > 3 else 1
    return f"{local[:keep]}****@{domain}"


class FailedCheckLimiter:
    """A sliding one-minute window of failed token checks per client address.

    ``failed(client)`` records one failure and says whether the client is now over
    the limit (a failure over the limit is not recorded, so a client that keeps
    trying gets ``per_minute`` tries a minute, not none). IPv6 clients are counted
    per /64, which is what one subscriber line usually gets. Memory is bounded by
    ``max_clients`` windows of at most ``per_minute`` timestamps each.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        max_clients: int = MAX_TRACKED_CLIENTS,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.per_minute = per_minute
        self.max_clients = max_clients
        self.clock = clock
        self._windows: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    @staticmethod
    def client_key(host: str | None) -> str:
        if not host:
            return "?"
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return host
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
        return str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip)

    def failed(self, host: str | None) -> bool:
        key = self.client_key(host)
        now = self.clock.monotonic()
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self.max_clients:
                self._windows.popitem(last=False)
            window = self._windows[key] = collections.deque(maxlen=self.per_minute)
        else:
            self._windows.move_to_end(key)
        while window and now - window[0] >= 60.0:
            window.popleft()
        if len(window) >= self.per_minute:
            return True
        window.append(now)
        return False

    def __len__(self) -> int:
        return len(self._windows)


# --- pages ------------------------------------------------------------------------


class _SecurityHeaders:
    """Adds the same security headers to every response the app sends."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _security_headers(*sheets: str) -> dict[str, str]:
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()}'"
        for css in sheets
    )
    return {
        # Pages name a unit and an address: never keep them in a shared cache.
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "X-Robots-Tag": "noindex, nofollow",
        # No scripts, no images, no fonts: only our own stylesheets (one per kind of
        # page) and posting to ourselves.
        "Content-Security-Policy": (
            f"default-src 'none'; style-src {hashes}; form-action 'self'; "
            "base-uri 'none'; frame-ancestors 'none'"
        ),
    }


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@dataclass(frozen=True)
class _Found:
    """A subscription a token names, as the pages need it."""

    sub: Subscriber
    list_title: str


@dataclass(frozen=True)
class _Done:
    found: _Found | None  # None: the subscription vanished between check and change
    changed: bool = False
    stopped: tuple[str, ...] = ()
    refused: bool = False  # the list became staff-only meanwhile
    unit_refused: bool = False  # this address may not stop its whole unit


class _App:
    """The request handlers and what they share: config, keys, templates, limiter."""

    def __init__(self, config: Config, *, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        # Read once: rotating the secret means restarting the server (or daemon).
        self.keys: tuple[SigningKey, ...] = config.signing_keys()
        self.env = _environment()
        self.css = (TEMPLATES / "style.css").read_text(encoding="utf-8").strip()
        self.edition_css = (TEMPLATES / "edition.css").read_text(encoding="utf-8").strip()
        self.limiter = FailedCheckLimiter(config.web.failed_checks_per_minute, clock=clock)
        self.common = {
            "organisation": config.sender.name,
            "contact": config.contact,
            "css": Markup(self.css),  # our own file, and CSS must not be HTML-escaped
            "edition_css": Markup(self.edition_css),
        }
        self.not_found_body = self._render("not_found.html")
        self.headers = _security_headers(self.css, self.edition_css)
        self.editions = EditionPages(
            self, search_limiter=FailedCheckLimiter(SEARCHES_PER_MINUTE))

    # --- helpers ------------------------------------------------------------------

    def _render(self, template: str, **context: Any) -> str:
        return self.env.get_template(template).render(**self.common, **context)

    def _page(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(self._render(template, **context), status_code=status)

    def _who(self, found: _Found) -> dict[str, Any]:
        return {
            "unit": found.sub.unit,
            "masked": mask_email(found.sub.email),
            "list_title": found.list_title,
        }

    def _with_store(self, work: Callable[[Store], T]) -> T:
        # Runs in a worker thread: the connection is opened, used and closed there.
        with Store.open(self.config.database, clock=self.clock.now, actor=ACTOR) as store:
            return work(store)

    async def _store(self, work: Callable[[Store], T]) -> T:
        return await run_in_threadpool(self._with_store, work)

    def _not_found(self, request: Request) -> Response:
        host = request.client.host if request.client else None
        if self.limiter.failed(host):
            return HTMLResponse(
                self._render("too_many.html"), status_code=429, headers={"Retry-After": "60"}
            )
        return HTMLResponse(self.not_found_body, status_code=404)

    # --- the store work, run in a thread ------------------------------------------

    @staticmethod
    def _find(store: Store, uid: str, list_slug: str) -> _Found | None:
        sub = store.find_subscription(uid, list_slug)
        if sub is None:
            return None
        return _Found(sub, store.get_list(list_slug).title)

    @classmethod
    def _unsubscribe(cls, store: Store, uid: str, list_slug: str, source: str) -> _Done:
        try:
            if source == "unit":
                found = cls._find(store, uid, list_slug)
                if found is None:
                    return _Done(None)
                if not found.sub.allow_unsubscribe:
                    return _Done(found, refused=True)
                if found.sub.status not in _MAY_STOP_UNIT:
                    # An address staff removed (someone who left the unit) or one
                    # that bounces keeps its old links; they do not speak for the unit.
                    return _Done(found, unit_refused=True)
                # unsubscribe_unit takes staff's word for the list; the check above is ours.
                stopped = store.unsubscribe_unit(
                    found.sub.unit, list_slug, source=source, actor=ACTOR
                )
                return _Done(cls._find(store, uid, list_slug), bool(stopped), tuple(stopped))
            changed = store.unsubscribe(uid, list_slug, source=source, actor=ACTOR)
        except UnknownRecipient:
            return _Done(None)
        except StaffOnly:
            return _Done(cls._find(store, uid, list_slug), refused=True)
        return _Done(cls._find(store, uid, list_slug), changed)

    # --- handlers -----------------------------------------------------------------

    async def unsubscribe(self, request: Request) -> Response:
        claims = read_token(self.keys, request.path_params["token"], now=self.clock.now())
        found = None
        if claims is not None:
            found = await self._store(lambda s: self._find(s, claims.uid, claims.list_slug))
        if claims is None or found is None:
            return self._not_found(request)
        if not found.sub.allow_unsubscribe:
            # Nothing changes; a POST says so with 403, so a one-click client does
            # not report success.
            status = 200 if request.method in ("GET", "HEAD") else 403
            return self._page("staff_only.html", status, **self._who(found))
        if request.method in ("GET", "HEAD"):
            if found.sub.status is Status.ACTIVE:
                return self._page("confirm.html", **self._who(found))
            return self._done_page(
                found, changed=False, offer_unit=found.sub.status in _MAY_STOP_UNIT
            )

        form = await _read_form(request)
        if form is None:
            return self._page(
                "message.html", 413, heading="请求过大", text="请使用简报邮件中的退订链接。"
            )
        source = _source(form)
        if source is None:
            return self._page(
                "message.html", 400, heading="无法识别的请求",
                text="请重新打开简报邮件中的退订链接，再点击页面上的按钮。",
            )
        done = await self._store(
            lambda s: self._unsubscribe(s, claims.uid, claims.list_slug, source)
        )
        if done.found is None:
            return self._not_found(request)
        if done.refused:
            return self._page("staff_only.html", 403, **self._who(done.found))
        if done.unit_refused:
            return self._done_page(done.found, changed=False, offer_unit=False)
        if source == "unit":
            return self._page(
                "unit_done.html", **self._who(done.found),
                stopped=[mask_email(a) for a in done.stopped],
            )
        if done.changed:
            event(logging.INFO, "unsubscribed", email=mask_email(done.found.sub.email),
                  list=claims.list_slug, source=source)
        # One-click gets the short page and no further offer: no person is looking.
        return self._done_page(done.found, changed=done.changed, offer_unit=source == "page")

    def _done_page(self, found: _Found, *, changed: bool, offer_unit: bool) -> Response:
        others = found.sub.other_active_in_unit
        return self._page(
            "done.html", **self._who(found), changed=changed,
            offer_unit=offer_unit and others > 0, others=others,
        )

    async def healthz(self, request: Request) -> Response:
        try:
            await self._store(lambda s: s.lists())
        except MailerError:
            return PlainTextResponse("database unavailable", status_code=503)
        return PlainTextResponse("ok")

    # --- errors -------------------------------------------------------------------

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return HTMLResponse(self.not_found_body, status_code=404)
        if exc.status_code == 405:
            return self._page("message.html", 405, heading="不支持的请求",
                              text="请使用简报邮件中的退订链接。")
        return self._page("message.html", exc.status_code, heading="请求无效",
                          text="请使用简报邮件中的退订链接。")

    async def unavailable(self, request: Request, exc: Exception) -> Response:
        # Database busy or missing: 503 makes a one-click client retry later.
        event(logging.ERROR, "web.unavailable", error=str(exc))
        return self._page("message.html", 503, heading="暂时无法处理",
                          text="系统繁忙，请稍后再试。")

    async def server_error(self, request: Request, exc: Exception) -> Response:
        # Answered outside the middleware stack, so the headers are set here.
        LOGGER.error(fields("web.crashed", method=request.method), exc_info=exc)
        response = self._page("message.html", 500, heading="暂时无法处理",
                              text="系统出错，请稍后再试。")
        response.headers.update(self.headers)
        return response


def _source(form: dict[str, str]) -> str | None:
    """Which POST this is: the audit trail's ``source`` for it, or None."""
    if form.get("List-Unsubscribe") == "One-Click":
        return "one-click"
    if form.get("scope") == "unit":
        return "unit"
    if form.get("confirm") == "page":
        return "page"
    return None


async def _read_form(request: Request) -> dict[str, str] | None:
    """The POSTed fields (urlencoded or multipart/form-data, which RFC 8058 allows
    both), or None when the body is too big to be ours. Never raises on garbage."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    ctype = request.headers.get("content-type", "")
    if ctype.lower().startswith("multipart/form-data"):
        return _multipart_fields(ctype, bytes(body))
    try:
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True,
                          max_num_fields=20)
    except ValueError:
        return {}
    return dict(pairs)


def _multipart_fields(ctype: str, body: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        head = f"Content-Type: {ctype}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        if not msg.is_multipart():
            return {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                fields.setdefault(name, payload.decode("utf-8", "replace").strip())
    except Exception:  # the stdlib parser on hostile input: treat it as no fields
        return {}
    return fields


def create_app(config: Config, *, clock: Clock = SYSTEM_CLOCK) -> Starlette:
    """The unsubscribe web app. Reads the signing keys now, so a missing or short
    secret is a ConfigError at start, not a 500 on the first click."""
    app = _App(config, clock=clock)
    return Starlette(
        routes=[
            Route("/u/{token}", app.unsubscribe, methods=["GET", "POST"]),
            Route("/w/{token}", app.editions.edition, methods=["GET"]),
            Route("/w/{token}/archive", app.editions.archive, methods=["GET"]),
            Route("/w/{token}/pdf", app.editions.pdf, methods=["GET"]),
            Route("/healthz", app.healthz, methods=["GET"]),
        ],
        middleware=[Middleware(_SecurityHeaders, headers=app.headers)],
        exception_handlers={
            HTTPException: app.http_error,
            MailerError: app.unavailable,
            Exception: app.server_error,
        },
    )


# --- serving ------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn's server, optionally leaving the process's signal handlers alone."""

    def __init__(self, config: uvicorn.Config, *, handle_signals: bool) -> None:
        super().__init__(config)
        self.handle_signals = handle_signals

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if self.handle_signals:
            with super().capture_signals():
                yield
        else:
            yield


def forwarded_allow_ips(trusted: tuple[IPNetwork, ...]) -> list[str]:
    """``web.trusted_proxies`` as uvicorn's ``forwarded_allow_ips``: each network, and
    each IPv4 one also as IPv4-mapped IPv6 (how a dual-stack socket names an IPv4 peer)."""
    allow: list[str] = []
    for net in trusted:
        allow.append(str(net))
        if isinstance(net, ipaddress.IPv4Network):
            allow.append(f"::ffff:{net.network_address}/{96 + net.prefixlen}")
    return allow


def build_server(
    config: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
    handle_signals: bool = True,
) -> uvicorn.Server:
    """A uvicorn server for the app, not yet started: ``await serve(config,
    server=server)`` in a running loop (it binds first, so a taken port is a
    MailerError rather than uvicorn's ``sys.exit``), ``server.should_exit = True``
    to stop it. With
    ``handle_signals=False`` (for the daemon) uvicorn installs no SIGINT/SIGTERM
    handlers of its own. Logging is left as the caller set it (``logs.setup_logging``
    for ``mailer run`` and ``mailer serve``); uvicorn's access lines are rewritten
    to our format with tokens redacted before any handler sees them.

    The client address (for the failed-check limit and the access log) is the
    peer's, unless the peer is in ``web.trusted_proxies``: then uvicorn's
    ProxyHeadersMiddleware walks X-Forwarded-For from the right and takes the first
    address that is not a trusted proxy. With no trusted proxies (the default) the
    middleware is off, so X-Forwarded-For (and $FORWARDED_ALLOW_IPS) mean nothing.
    """
    redact_access_log()
    trusted = config.web.trusted_proxies
    uv_config = uvicorn.Config(
        create_app(config, clock=clock),
        host=host or config.web.host,
        port=port if port is not None else config.web.port,
        access_log=True,
        log_config=None,
        proxy_headers=bool(trusted),
        # Always given, so uvicorn never falls back to $FORWARDED_ALLOW_IPS or its
        # default of 127.0.0.1.
        forwarded_allow_ips=forwarded_allow_ips(trusted),
        server_header=False,
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=5,
    )
    return _Server(uv_config, handle_signals=handle_signals)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, or a MailerError saying how to fix the address (uvicorn
    itself would log and ``sys.exit``, which a daemon must not)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted connections only when
    # the listening socket's proto is IPPROTO_TCP, and without it every response
    # waits ~40 ms for a delayed ACK (headers and body go out as two writes).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        hint = (
            "another program (or another mailer) is listening there; stop it or use --port"
            if e.errno == errno.EADDRINUSE
            else "check web.host / --host"
        )
        raise MailerError(f"cannot listen on {host}:{port}: {e.strerror}; {hint}") from None
    return sock


async def serve(
    config: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    handle_signals: bool = False,
    server: uvicorn.Server | None = None,
) -> None:
    """Serve the app in the running loop until ``server.should_exit`` (pass your own
    ``server`` from ``build_server`` to be able to stop it), or a signal when
    ``handle_signals``. Binding errors are raised as MailerError before serving."""
    if server is None:
        server = build_server(config, host=host, port=port, handle_signals=handle_signals)
    cfg = server.config
    sock = bind_socket(cfg.host, cfg.port)
    event(logging.INFO, "web.listening", url=f"http://{cfg.host}:{sock.getsockname()[1]}",
          public=config.web.base_url)
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()


def run_server(config: Config, *, host: str | None = None, port: int | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM: what ``mailer serve`` runs. Logs to stderr in
    the one format (``logs.setup_logging``)."""
    setup_logging()

    async def main() -> None:
        # Our own handlers, as in the daemon: uvicorn's re-raise the signal after
        # shutting down, so a clean stop would end as "killed by SIGTERM".
        server = build_server(config, host=host, port=port, handle_signals=False)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, setattr, server, "should_exit", True)
        await serve(config, server=server)

    asyncio.run(main())


__all__ = [
    "FailedCheckLimiter",
    "bind_socket",
    "build_server",
    "create_app",
    "forwarded_allow_ips",
    "mask_email",
    "run_server",
    "serve",
]
