"""Bounces that came back by mail: the messages read, the scores, what they changed.

One message is applied in one transaction: its row in ``bounce_messages`` (UNIQUE
key, so the same message read twice counts once), the delivery's ``bounce_*``
columns, the score, the subscription's status and the audit events (actor
``bounce``). A crash before the commit leaves nothing; after it, the mailbox
step is simply redone on the next pass.

The score is Mailman's: a soft bounce adds 1 at most once a (local) day; after
``stale_days`` without a counted bounce, or after staff resubscribed the address,
it starts again from 0; at ``threshold`` the address is stopped. A hard bounce
stops it at once. Report-to bodies are never stopped here: their bounces and
complaints are flagged to staff.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from ..models import Role, Status
from ..stamps import parse_stamp, stamp
from .base import StoreBase

ACTOR = "bounce"
_STOPPED_BY = ("bounce", "complaint", "smtp")


@dataclass(frozen=True)
class BounceInput:
    """One message read from the mailbox, as the intake understood it."""

    key: str  # SHA-256 of its bytes
    folder: str
    subject: str
    sender: str
    kind: str  # mailer.bounces.classify.Kind value
    status: str | None
    text: str
    # The delivery a verified VERP address names; None: kept aside (``aside``).
    campaign_id: int | None = None
    recipient_id: int | None = None
    aside: str | None = None  # why nothing may change (forged, foreign, ...)


@dataclass(frozen=True)
class Scoring:
    threshold: float
    stale_days: float
    day: str  # today, in the configured time zone (YYYY-MM-DD)


@dataclass(frozen=True)
class BounceRow:
    """One line of `mailer bounces`."""

    unit: str
    email: str
    list_slug: str
    state: str  # bounced, unsubscribed (complaint), scoring, flagged
    at: str
    detail: str


class BouncesMixin(StoreBase):
    """The bounce mailbox's effects."""

    def apply_bounce(self, b: BounceInput, scoring: Scoring) -> tuple[str, bool]:
        """Record one message and apply it; returns its outcome, and False when it had
        been recorded before (nothing is applied twice). Outcomes: ``applied`` (the
        ledger or a subscription changed), ``flagged`` (for staff), ``ignored`` (not
        a failure), ``aside`` (changes nothing) or ``unreadable``."""
        with self.write():
            seen = self.db.execute("SELECT outcome FROM bounce_messages WHERE key = ?",
                                   [b.key]).fetchone()
            if seen is not None:
                return str(seen[0]), False
            outcome, reason = self._effect(b, scoring)
            self.db.execute(
                "INSERT INTO bounce_messages (key, at, folder, subject, sender, kind, outcome, "
                "reason, campaign_id, recipient_id, status, text) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [b.key, self._now(), b.folder, b.subject[:300], b.sender[:300], b.kind,
                 outcome, reason, b.campaign_id, b.recipient_id, b.status, b.text[:500]],
            )
            return outcome, True

    def _effect(self, b: BounceInput, scoring: Scoring) -> tuple[str, str | None]:
        if b.kind == "unreadable":
            return "unreadable", b.text
        if b.kind == "probe":
            return "ignored", b.text
        if b.aside is not None or b.campaign_id is None:
            return "aside", b.aside or "names no delivery"
        r = self.db.execute(
            "SELECT d.id, d.recipient_id, d.list_id, d.email, u.name, l.slug, l.role, "
            "s.status, s.changed_at, d.bounce_at, d.sent_at FROM deliveries d "
            "JOIN recipients r ON r.id = d.recipient_id JOIN units u ON u.id = r.unit_id "
            "JOIN lists l ON l.id = d.list_id "
            "JOIN subscriptions s ON s.recipient_id = d.recipient_id AND s.list_id = d.list_id "
            "WHERE d.campaign_id = ? AND d.recipient_id = ?",
            [b.campaign_id, b.recipient_id],
        ).fetchone()
        if r is None:
            return "aside", "no such delivery"
        did, rid, lid, email, unit, slug, role, sub_status, changed_at, bounce_at, _ = r
        if b.kind not in ("hard", "soft", "policy", "complaint"):
            return "ignored", b.kind
        if bounce_at is None:
            self.db.execute(
                "UPDATE deliveries SET bounce_at = ?, bounce_kind = ?, bounce_text = ? "
                "WHERE id = ?", [self._now(), b.kind, b.text[:500], did])
        elif b.kind != "complaint":
            return "ignored", "this delivery's bounce was already counted"
        where: dict[str, Any] = {"unit": unit, "list_slug": slug, "actor": ACTOR}
        detail: dict[str, Any] = {"campaign": b.campaign_id, "bounce": b.kind,
                                  "status": b.status, "reply": b.text[:300]}
        if b.kind == "policy":
            # A refusal of our mail (spam filter, SPF/DMARC): fix the sending, not the member.
            self._event("bounce.policy", email, **where, **detail,
                        note="refused by the receiving server's policy: a sending problem")
            return "flagged", "policy"
        if Role(role) is Role.REPORT_TO:
            # An official recipient is fixed by a person, never stopped by a machine.
            self._event("bounce.flagged", email, **where, **detail,
                        note="report-to body: check and fix the address by hand")
            return "flagged", "report-to"
        if sub_status != Status.ACTIVE.value:
            return "applied", f"subscription already {sub_status}"
        if b.kind == "complaint":
            self._stop(rid, lid, email, Status.UNSUBSCRIBED, "complaint",
                       f"complaint: {b.text}", where)
            return "applied", "unsubscribed"
        if b.kind == "hard":
            self._stop(rid, lid, email, Status.BOUNCED, "bounce",
                       f"hard bounce: {b.text}", where)
            return "applied", "bounced"
        score = self._score(rid, lid, changed_at, scoring)
        if score is None:
            return "applied", "soft bounce already counted today"
        self._event("bounce.scored", email, **where, **detail, score=score,
                    threshold=scoring.threshold)
        if score >= scoring.threshold:
            self._stop(rid, lid, email, Status.BOUNCED, "bounce",
                       f"soft bounces: score {score:g} reached {scoring.threshold:g}; "
                       f"last: {b.text}", where)
            return "applied", "bounced"
        return "applied", f"score {score:g}"

    def _stop(self, rid: int, lid: int, email: str, new: Status, source: str, reason: str,
              where: dict[str, Any]) -> None:
        self.db.execute(
            "UPDATE subscriptions SET status = ?, changed_at = ?, source = ? "
            "WHERE recipient_id = ? AND list_id = ?", [new.value, self._now(), source, rid, lid])
        self._event("subscription.status", email, **where, before={"status": "active"},
                    after={"status": new.value}, source=source, reason=reason[:300])

    def _score(self, rid: int, lid: int, sub_changed_at: str, scoring: Scoring
               ) -> float | None:
        """Add one soft bounce to the score; None when one was counted today already."""
        row = self.db.execute(
            "SELECT score, last_day, last_at, updated_at FROM bounce_scores "
            "WHERE recipient_id = ? AND list_id = ?", [rid, lid]).fetchone()
        now = self._now()
        score = 0.0
        if row is not None:
            old, last_day, last_at, updated_at = row
            fresh = self.clock() - parse_stamp(last_at) < dt.timedelta(days=scoring.stale_days)
            if updated_at >= sub_changed_at and fresh:
                if last_day == scoring.day:
                    return None
                score = float(old)
        score += 1.0
        self.db.execute(
            "INSERT INTO bounce_scores (recipient_id, list_id, score, last_day, last_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (recipient_id, list_id) DO UPDATE "
            "SET score = excluded.score, last_day = excluded.last_day, "
            "last_at = excluded.last_at, updated_at = excluded.updated_at",
            [rid, lid, score, scoring.day, now, now])
        return score

    # --- reading --------------------------------------------------------------

    def bounce_rows(self, *, since: str | None = None, unit: str | None = None,
                    stale_days: float = 7.0) -> list[BounceRow]:
        """Addresses stopped by bounces or complaints, addresses with a live score,
        and bounces flagged to staff; by unit."""
        unit_id = self.get_unit(unit).id if unit is not None else None
        since = since or ""
        out: list[BounceRow] = []
        for r in self.db.execute(
            "SELECT u.name, r.email, l.slug, s.status, s.changed_at, s.source, "
            "(SELECT json_extract(e.detail, '$.reason') FROM events e WHERE e.subject = r.email "
            " AND e.list = l.slug AND e.kind = 'subscription.status' ORDER BY e.id DESC LIMIT 1) "
            "FROM subscriptions s JOIN recipients r ON r.id = s.recipient_id "
            "JOIN units u ON u.id = r.unit_id JOIN lists l ON l.id = s.list_id "
            f"WHERE s.source IN ({','.join('?' * len(_STOPPED_BY))}) "
            "AND s.status IN ('bounced', 'unsubscribed') AND s.changed_at >= ? "
            "AND (? IS NULL OR u.id = ?) ORDER BY u.id, r.email",
            [*_STOPPED_BY, since, unit_id, unit_id],
        ):
            state = "complaint" if r[5] == "complaint" else r[3]
            out.append(BounceRow(r[0], r[1], r[2], state, r[4], r[6] or ""))
        fresh = self.clock() - dt.timedelta(days=stale_days)
        for r in self.db.execute(
            "SELECT u.name, r.email, l.slug, b.score, b.last_at FROM bounce_scores b "
            "JOIN recipients r ON r.id = b.recipient_id JOIN units u ON u.id = r.unit_id "
            "JOIN lists l ON l.id = b.list_id JOIN subscriptions s "
            "ON s.recipient_id = b.recipient_id AND s.list_id = b.list_id "
            "WHERE s.status = 'active' AND b.updated_at >= s.changed_at AND b.last_at >= ? "
            "AND b.last_at >= ? AND (? IS NULL OR u.id = ?) ORDER BY u.id, r.email",
            [stamp(fresh), since, unit_id, unit_id],
        ):
            out.append(BounceRow(r[0], r[1], r[2], "scoring", r[4], f"score {r[3]:g}"))
        for r in self.db.execute(
            "SELECT unit, subject, list, kind, at, detail FROM events "
            "WHERE kind IN ('bounce.flagged', 'bounce.policy') AND at >= ? "
            "AND (? IS NULL OR unit = ?) ORDER BY id",
            [since, unit, unit],
        ):
            d = json.loads(r[5] or "{}")
            what = "policy" if r[3] == "bounce.policy" else "flagged"
            out.append(BounceRow(r[0] or "", r[1], r[2] or "", what, r[4],
                                 f"{d.get('note', '')}: {d.get('reply', '')}"))
        return out

    def units_cut_off(self, *, unit: str | None = None) -> list[tuple[str, list[str]]]:
        """Units that no longer receive the bulletin at all because of bounces or
        complaints: no active subscription left, at least one stopped by them; with
        how each address was stopped."""
        rows = self.db.execute(
            "SELECT u.name, r.email, s.status, s.source FROM units u "
            "JOIN recipients r ON r.unit_id = u.id JOIN subscriptions s ON s.recipient_id = r.id "
            "WHERE (? IS NULL OR u.name = ?) AND NOT EXISTS (SELECT 1 FROM recipients r2 "
            "JOIN subscriptions s2 ON s2.recipient_id = r2.id WHERE r2.unit_id = u.id "
            "AND s2.status = 'active') ORDER BY u.id, r.email",
            [unit, unit],
        ).fetchall()
        by_unit: dict[str, list[str]] = {}
        hit: set[str] = set()
        for name, email, status, source in rows:
            by_unit.setdefault(name, []).append(f"{email} {status} ({source})")
            if source in _STOPPED_BY:
                hit.add(name)
        return [(name, lines) for name, lines in by_unit.items() if name in hit]

    def bounce_messages(self, *, since: str | None = None,
                        outcomes: tuple[str, ...] = ("aside", "unreadable")
                        ) -> list[list[object]]:
        """Messages read: at, outcome, kind, reason, subject, sender (oldest first)."""
        marks = ",".join("?" * len(outcomes))
        return [list(r) for r in self.db.execute(
            "SELECT at, outcome, kind, reason, subject, sender FROM bounce_messages "
            f"WHERE outcome IN ({marks}) AND at >= ? ORDER BY id", [*outcomes, since or ""])]
