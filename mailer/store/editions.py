"""The web edition and the private archive: stored pages, full-text search, revocation.

Who may read what is decided in ``mailer.archive``; this module only answers the
questions it asks. "Sent to a list" always means a delivery on that list recorded as
``sent``: an issue only scheduled, or only test-sent, is never in anyone's archive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import UnknownRecipient
from ..models import Role, Status
from .base import StoreBase

_SENT_ON_LIST = (
    "EXISTS (SELECT 1 FROM deliveries d JOIN campaigns c ON c.id = d.campaign_id "
    "WHERE c.issue_id = i.id AND d.status = 'sent' AND d.list_id = ?)"
)
_SENT_AT_ALL = (
    "EXISTS (SELECT 1 FROM deliveries d JOIN campaigns c ON c.id = d.campaign_id "
    "WHERE c.issue_id = i.id AND d.status = 'sent')"
)


@dataclass(frozen=True)
class Reader:
    """A recipient as a web-edition token names them, with their standing on the list."""

    recipient_id: int
    email: str
    unit: str
    list_slug: str
    role: Role
    status: Status | None  # None: never on this list
    revoked_before: int  # links made before this time (epoch seconds) are dead


@dataclass(frozen=True)
class ArchivedIssue:
    issue_id: int
    year: int
    number: int
    label: str
    date: str | None


@dataclass(frozen=True)
class ArticleHit:
    issue_id: int
    article: int  # 1-based, the anchor on the page
    title: str
    body: str


@dataclass(frozen=True)
class ArchiveRow:
    """One issue as `mailer archive list` shows it."""

    issue_id: int
    label: str
    date: str | None
    lists: tuple[str, ...]  # lists it was sent to
    readers: int  # addresses it was sent to


class EditionsMixin(StoreBase):
    """Stored web editions, the archive's search, and revoked links."""

    def record_edition(self, issue_id: int, pages: Mapping[str, str],
                       articles: Sequence[tuple[str, str]]) -> None:
        """Store (or replace) the issue's page for each list slug and its searchable
        article texts, in one transaction; what is already stored as given is not
        rewritten."""
        with self.write():
            for slug, html in pages.items():
                list_id = self.get_list(slug).id
                old = self.db.execute(
                    "SELECT html FROM issue_pages WHERE issue_id = ? AND list_id = ?",
                    [issue_id, list_id],
                ).fetchone()
                if old is not None and old[0] == html:
                    continue
                self.db.execute(
                    "INSERT INTO issue_pages (issue_id, list_id, html, created_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (issue_id, list_id) DO UPDATE SET "
                    "html = excluded.html, created_at = excluded.created_at",
                    [issue_id, list_id, html, self._now()],
                )
            stored = self.db.execute(
                "SELECT title, body FROM issue_text WHERE issue_id = ? ORDER BY article",
                [issue_id],
            ).fetchall()
            if [tuple(r) for r in stored] == [tuple(a) for a in articles]:
                return
            self.db.execute("DELETE FROM issue_text WHERE issue_id = ?", [issue_id])
            for n, (title, body) in enumerate(articles, 1):
                self.db.execute(
                    "INSERT INTO issue_text (issue_id, article, title, body) VALUES (?, ?, ?, ?)",
                    [issue_id, n, title, body],
                )

    def record_pdf(self, issue_id: int, print_sha256: str, pdf: bytes) -> None:
        """Store (or replace) the issue's PDF edition; the same one is not rewritten."""
        with self.write():
            self._put_pdf(issue_id, print_sha256, pdf)

    def _put_pdf(self, issue_id: int, print_sha256: str, pdf: bytes) -> None:
        # In the caller's transaction (record_pdf's own, or a new campaign's).
        old = self.db.execute("SELECT print_sha256 FROM issue_pdfs WHERE issue_id = ?",
                              [issue_id]).fetchone()
        if old is not None and old[0] == print_sha256:
            return
        self.db.execute(
            "INSERT INTO issue_pdfs (issue_id, print_sha256, pdf, created_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (issue_id) DO UPDATE SET "
            "print_sha256 = excluded.print_sha256, pdf = excluded.pdf, "
            "created_at = excluded.created_at",
            [issue_id, print_sha256, pdf, self._now()],
        )

    def issue_pdf(self, issue_id: int) -> tuple[str, bytes] | None:
        """(hash of the print HTML, PDF bytes) of the issue's stored PDF edition."""
        r = self.db.execute("SELECT print_sha256, pdf FROM issue_pdfs WHERE issue_id = ?",
                            [issue_id]).fetchone()
        return (r[0], bytes(r[1])) if r else None

    def has_pdf(self, issue_id: int) -> bool:
        return self.db.execute("SELECT 1 FROM issue_pdfs WHERE issue_id = ?",
                               [issue_id]).fetchone() is not None

    def reader(self, uid: str, list_slug: str) -> Reader | None:
        r = self.db.execute(
            "SELECT r.id, r.email, u.name, l.slug, l.role, s.status, "
            "COALESCE(v.revoked_before, 0) "
            "FROM recipients r JOIN units u ON u.id = r.unit_id "
            "JOIN lists l ON l.slug = ? "
            "LEFT JOIN subscriptions s ON s.recipient_id = r.id AND s.list_id = l.id "
            "LEFT JOIN link_revocations v ON v.recipient_id = r.id WHERE r.uid = ?",
            [list_slug, uid],
        ).fetchone()
        if r is None:
            return None
        return Reader(recipient_id=r[0], email=r[1], unit=r[2], list_slug=r[3],
                      role=Role(r[4]), status=Status(r[5]) if r[5] else None,
                      revoked_before=int(r[6]))

    def was_sent(self, recipient_id: int, issue_id: int, list_slug: str) -> bool:
        """Whether this issue reached this address as a member of this list."""
        # By (campaign, recipient) for each of the issue's few campaigns: the unique
        # index, never a scan of every campaign's rows.
        r = self.db.execute(
            "SELECT 1 FROM deliveries d JOIN lists l ON l.id = d.list_id "
            "WHERE d.campaign_id IN (SELECT id FROM campaigns WHERE issue_id = ?) "
            "AND d.recipient_id = ? AND l.slug = ? AND d.status = 'sent' LIMIT 1",
            [issue_id, recipient_id, list_slug],
        ).fetchone()
        return r is not None

    def archive_issues(self, list_slug: str | None) -> list[ArchivedIssue]:
        """Issues sent to ``list_slug`` (None: to any list) that have a stored page,
        newest first."""
        where, args = (_SENT_AT_ALL, []) if list_slug is None else (
            _SENT_ON_LIST, [self.get_list(list_slug).id])
        rows = self.db.execute(
            "SELECT i.id, i.year, i.number, i.label, i.date FROM issues i "
            f"WHERE {where} AND EXISTS (SELECT 1 FROM issue_pages p WHERE p.issue_id = i.id) "
            "ORDER BY i.year DESC, i.number DESC",
            args,
        ).fetchall()
        return [ArchivedIssue(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def edition_page(self, issue_id: int, list_slug: str) -> tuple[str, str] | None:
        """(label, body HTML) of the issue as ``list_slug`` got it, else as any list
        got it (report-to bodies read every issue); None when nothing is stored."""
        r = self.db.execute(
            "SELECT i.label, p.html FROM issue_pages p JOIN issues i ON i.id = p.issue_id "
            "JOIN lists l ON l.id = p.list_id WHERE p.issue_id = ? "
            "ORDER BY l.slug != ?, l.id LIMIT 1",
            [issue_id, list_slug],
        ).fetchone()
        return (r[0], r[1]) if r else None

    def search_articles(self, issue_ids: Sequence[int], terms: Sequence[str], *,
                        limit: int) -> list[ArticleHit]:
        """Articles of ``issue_ids`` holding every one of ``terms`` (in the title or the
        text), newest issue first. Terms of three characters or more go through the
        trigram index (MATCH); shorter ones, which a trigram cannot match, through
        LIKE on the same table."""
        if not issue_ids or not terms:
            return []
        long_terms = [t for t in terms if len(t) >= 3]
        short_terms = [t for t in terms if len(t) < 3]
        where = [f"issue_id IN ({', '.join('?' * len(issue_ids))})"]
        args: list[object] = list(issue_ids)
        if long_terms:
            where.append("issue_text MATCH ?")
            args.append(" AND ".join('"' + t.replace('"', '""') + '"' for t in long_terms))
        for t in short_terms:
            where.append("(title LIKE ? ESCAPE '\\' OR body LIKE ? ESCAPE '\\')")
            pattern = "%" + t.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            args += [pattern, pattern]
        rows = self.db.execute(
            "SELECT issue_id, article, title, body FROM issue_text "
            f"WHERE {' AND '.join(where)} ORDER BY issue_id DESC, article LIMIT ?",
            [*args, limit],
        ).fetchall()
        return [ArticleHit(int(r[0]), int(r[1]), r[2], r[3]) for r in rows]

    def revoke_links(self, email: str, before: int) -> None:
        """Every web link of ``email`` made before ``before`` (epoch seconds) stops
        working; links in mail sent later work again."""
        with self.write():
            r = self.db.execute("SELECT id FROM recipients WHERE email = ?", [email]).fetchone()
            if r is None:
                raise UnknownRecipient(email)
            self.db.execute(
                "INSERT INTO link_revocations (recipient_id, revoked_before, at, actor) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (recipient_id) DO UPDATE SET "
                "revoked_before = excluded.revoked_before, at = excluded.at, "
                "actor = excluded.actor",
                [r[0], before, self._now(), self.actor],
            )
            self._event("links.revoked", email)

    def archive_rows(self) -> list[ArchiveRow]:
        """Every issue in the archive (sent to some list, page stored), newest first."""
        rows = self.db.execute(
            "SELECT i.id, i.label, i.date, "
            "(SELECT GROUP_CONCAT(slug, ',') FROM (SELECT DISTINCT l.slug FROM deliveries d "
            " JOIN campaigns c ON c.id = d.campaign_id JOIN lists l ON l.id = d.list_id "
            " WHERE c.issue_id = i.id AND d.status = 'sent' ORDER BY l.slug)), "
            "(SELECT COUNT(DISTINCT d.recipient_id) FROM deliveries d "
            " JOIN campaigns c ON c.id = d.campaign_id "
            " WHERE c.issue_id = i.id AND d.status = 'sent') "
            f"FROM issues i WHERE {_SENT_AT_ALL} "
            "AND EXISTS (SELECT 1 FROM issue_pages p WHERE p.issue_id = i.id) "
            "ORDER BY i.year DESC, i.number DESC"
        ).fetchall()
        return [ArchiveRow(r[0], r[1], r[2], tuple((r[3] or "").split(",")), int(r[4]))
                for r in rows]

    def revoked_links(self) -> list[tuple[str, str, str]]:
        """(email, when, by whom) for every address whose links staff revoked."""
        rows = self.db.execute(
            "SELECT r.email, v.at, v.actor FROM link_revocations v "
            "JOIN recipients r ON r.id = v.recipient_id ORDER BY v.at DESC"
        ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]
