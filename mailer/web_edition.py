"""The web edition (``GET /w/<token>``) and the private archive (``GET
/w/<token>/archive``, ``?q=`` to search): the pages ``mailer.web`` routes here.

Every answer to a token that opens nothing (unknown, forged, signed with a retired
key, revoked by staff, naming an issue that address may not read) is the web app's
one 404 page, counted by its failed-check limiter. Nothing here writes: a GET only
reads. Searches are bounded (``archive.MAX_QUERY_CHARS``) and limited per client.
"""

from __future__ import annotations

import itertools
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from . import archive
from .store import ArchivedIssue, Reader, Store
from .tokens import EditionClaims, edition_url, make_edition_token, read_edition_token

if TYPE_CHECKING:
    from .web import _App

SEARCHES_PER_MINUTE = 20
MAX_HITS = 50


class SearchLimiter(Protocol):
    def failed(self, host: str | None) -> bool: ...


@dataclass(frozen=True)
class _Opened:
    reader: Reader
    label: str
    body: str
    has_pdf: bool


@dataclass(frozen=True)
class _Hit:
    url: str
    label: str
    title_html: Markup
    snippet_html: Markup


@dataclass(frozen=True)
class _Item:
    url: str
    label: str
    date: str


class EditionPages:
    """The handlers; they use the app's store runner, templates, keys and limiter."""

    def __init__(self, app: _App, *, search_limiter: SearchLimiter) -> None:
        self.app = app
        # Searches are not failed checks: a reader may search often, but not flood.
        self.search_limiter = search_limiter

    # --- helpers ------------------------------------------------------------------

    def _claims(self, request: Request) -> EditionClaims | None:
        return read_edition_token(self.app.keys, request.path_params["token"],
                                  now=self.app.clock.now())

    def _url(self, reader: Reader, claims: EditionClaims, issue_id: int) -> str:
        token = make_edition_token(self.app.keys[0], claims.uid, claims.list_slug, issue_id,
                                   int(self.app.clock.now().timestamp()))
        return edition_url(self.app.config.web.base_url, token)

    @staticmethod
    def _reader(store: Store, claims: EditionClaims) -> Reader | None:
        reader = store.reader(claims.uid, claims.list_slug)
        if reader is None or archive.revoked(reader, claims.issued):
            return None
        return reader

    @classmethod
    def _open(cls, store: Store, claims: EditionClaims) -> _Opened | None:
        reader = cls._reader(store, claims)
        if reader is None:
            return None
        sent = store.was_sent(reader.recipient_id, claims.issue_id, claims.list_slug)
        in_archive = not sent and archive.has_archive(reader) and any(
            i.issue_id == claims.issue_id
            for i in store.archive_issues(archive.archive_scope(reader))
        )
        if not archive.may_read(reader, sent=sent, in_archive=in_archive):
            return None
        page = store.edition_page(claims.issue_id, claims.list_slug)
        if page is None:
            return None
        return _Opened(reader, page[0], page[1], store.has_pdf(claims.issue_id))

    @classmethod
    def _open_pdf(cls, store: Store, claims: EditionClaims) -> tuple[str, bytes] | None:
        opened = cls._open(store, claims)
        stored = store.issue_pdf(claims.issue_id) if opened is not None else None
        if opened is None or stored is None:
            return None
        return opened.label, stored[1]

    def _page(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return self.app._page(template, status, **context)

    # --- handlers -----------------------------------------------------------------

    async def edition(self, request: Request) -> Response:
        claims = self._claims(request)
        opened = None
        if claims is not None:
            opened = await self.app._store(lambda s: self._open(s, claims))
        if claims is None or opened is None:
            return self.app._not_found(request)
        base = f"{self.app.config.web.base_url}/w/{request.path_params['token']}"
        return self._page(
            "edition_page.html", label=opened.label,
            body=Markup(opened.body),  # rendered by us from the Issue, autoescaped then
            archive_url=f"{base}/archive" if archive.has_archive(opened.reader) else None,
            pdf_url=f"{base}/pdf" if opened.has_pdf else None,
        )

    async def pdf(self, request: Request) -> Response:
        """The PDF edition, to the same readers as the web edition (the same 404)."""
        claims = self._claims(request)
        found = None
        if claims is not None:
            found = await self.app._store(lambda s: self._open_pdf(s, claims))
        if claims is None or found is None:
            return self.app._not_found(request)
        label, data = found
        # An ASCII name for old clients, the issue's own name (RFC 6266) for the rest.
        name = urllib.parse.quote(f"{label.replace(' ', '')}.pdf", safe="")
        return Response(data, media_type="application/pdf", headers={
            "Content-Disposition": f"inline; filename=\"bulletin-{claims.issue_id}.pdf\"; "
                                   f"filename*=UTF-8''{name}"})

    async def archive(self, request: Request) -> Response:
        claims = self._claims(request)
        reader = None
        if claims is not None:
            reader = await self.app._store(lambda s: self._reader(s, claims))
        if claims is None or reader is None:
            return self.app._not_found(request)
        token = request.path_params["token"]
        base = f"{self.app.config.web.base_url}/w/{token}"
        if not archive.has_archive(reader):
            return self._page(
                "message.html", 403, heading="无法查看往期简报",
                text="往期简报仅向名单中的接收单位开放。您收到过的各期简报，仍可通过邮件中的链接查看。",
            )
        raw = request.query_params.get("q", "")
        query = archive.parse_query(raw)
        searched = bool(query.terms)
        if searched:
            host = request.client.host if request.client else None
            if self.search_limiter.failed(host):
                return HTMLResponse(self.app._render("too_many.html"), status_code=429,
                                    headers={"Retry-After": "60"})
        scope = archive.archive_scope(reader)

        def work(store: Store) -> tuple[list[ArchivedIssue], list[Any]]:
            issues = store.archive_issues(scope)
            hits = store.search_articles([i.issue_id for i in issues], query.terms,
                                         limit=MAX_HITS + 1) if searched else []
            return issues, hits

        issues, found = await self.app._store(work)
        urls: dict[int, str] = {}

        def url(issue_id: int) -> str:
            if issue_id not in urls:
                urls[issue_id] = self._url(reader, claims, issue_id)
            return urls[issue_id]

        labels = {i.issue_id: i.label for i in issues}
        hits = [
            _Hit(url=f"{url(h.issue_id)}#a{h.article}", label=labels[h.issue_id],
                 title_html=archive.highlight(h.title, query.terms),
                 snippet_html=archive.snippet(h.body, query.terms))
            for h in found[:MAX_HITS]
        ]
        years = [
            (year, [_Item(url(i.issue_id), i.label, _date(i.date)) for i in group])
            for year, group in itertools.groupby(issues, key=lambda i: i.year)
        ]
        return self._page(
            "archive.html", 400 if query.problem else 200,
            back_url=base, archive_url=f"{base}/archive", query=raw[:archive.MAX_QUERY_CHARS],
            max_query=archive.MAX_QUERY_CHARS, problem=query.problem, searched=searched,
            hits=hits, more=len(found) > MAX_HITS, years=years,
        )


def _date(iso: str | None) -> str:
    if not iso:
        return ""
    y, m, d = iso[:10].split("-")
    return f"{int(y)} 年 {int(m)} 月 {int(d)} 日"


__all__ = ["EditionPages"]
