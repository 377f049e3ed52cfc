"""Units, recipients and their subscriptions to lists: staff's side of the store."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput, StaffOnly, UnknownRecipient
from ..models import Event, MailingList, Member, Role, Status, Unit, UnitKind, may_unsubscribe
from ..validate import Address, normalise_email
from .base import StoreBase


@dataclass
class ImportRow:
    """One validated row of a recipients file."""

    line: int
    address: Address
    name: str | None
    unit: str
    group: str | None


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    notes: list[str] = field(default_factory=list)  # rows kept as they are, and why
    dry_run: bool = False


@dataclass(frozen=True)
class Subscriber:
    """One address on one list, as an unsubscribe token names it."""

    recipient_id: int
    uid: str
    email: str
    name: str | None
    unit_id: int
    unit: str
    list_slug: str
    role: Role
    allow_unsubscribe: bool
    status: Status
    other_active_in_unit: int  # other active addresses of the same unit on this list


class RosterMixin(StoreBase):
    """Who receives the bulletin, and why mail to them flows or stops."""

    # --- units ----------------------------------------------------------------

    def units(self) -> list[tuple[Unit, dict[str, int]]]:
        """Every unit with its count of active addresses per list slug."""
        rows = self.db.execute(
            "SELECT u.id, u.name, u.kind, u.group_name, l.slug, COUNT(s.recipient_id) "
            "FROM units u "
            "LEFT JOIN recipients r ON r.unit_id = u.id "
            "LEFT JOIN subscriptions s ON s.recipient_id = r.id AND s.status = 'active' "
            "LEFT JOIN lists l ON l.id = s.list_id "
            "GROUP BY u.id, l.slug"
        ).fetchall()
        out: dict[int, tuple[Unit, dict[str, int]]] = {}
        for uid, name, kind, group, slug, n in rows:
            _, counts = out.setdefault(
                uid, (Unit(id=uid, name=name, kind=UnitKind(kind), group=group), {})
            )
            if slug is not None:
                counts[slug] = n
        # Within a 片组, units stay in the order staff entered them: for superior
        # bodies that is the protocol order of the 报 line (省 before 市).
        return sorted(out.values(), key=lambda uc: (uc[0].kind, group_order(uc[0].group), uc[0].id))

    def _create_unit(self, name: str, kind: UnitKind, group: str | None) -> Unit:
        cur = self.db.execute(
            "INSERT INTO units (name, kind, group_name, created_at) VALUES (?, ?, ?, ?)",
            [name, kind.value, group, self._now()],
        )
        self._event("unit.created", name, unit=name, after={"kind": kind.value, "group": group})
        assert cur.lastrowid is not None
        return Unit(id=cur.lastrowid, name=name, kind=kind, group=group)

    # --- recipients -----------------------------------------------------------

    def add_recipient(
        self,
        address: Address,
        *,
        list_slug: str,
        unit: str,
        name: str | None = None,
        group: str | None = None,
        create_unit: bool = False,
    ) -> None:
        """Put one address on a list (staff's `recipients add`). Refuses duplicates,
        unknown units (unless ``create_unit``) and moving an address between units."""
        with self.write():
            ml = self.get_list(list_slug)
            u = self._unit_row(unit)
            if u is None:
                if not create_unit:
                    raise InvalidInput(
                        f"unknown unit {unit!r}; check the name in `mailer units list`, "
                        "or add --create-unit to create it"
                    )
                u = self._create_unit(unit, _kind_for(ml.role), group)
            self._put(ml, u, address, name, strict=True, report=None)

    def import_rows(self, rows: list[ImportRow], *, list_slug: str, dry_run: bool) -> ImportReport:
        """Apply validated rows in one transaction: all or nothing. Importing the same
        rows again changes nothing; a stopped subscription is never revived by an import."""
        report = ImportReport(dry_run=dry_run)
        try:
            with self.write():
                ml = self.get_list(list_slug)
                for row in rows:
                    u = self._unit_row(row.unit)
                    if u is None:
                        u = self._create_unit(row.unit, _kind_for(ml.role), row.group)
                    elif row.group and row.group != u.group:
                        self.db.execute(
                            "UPDATE units SET group_name = ? WHERE id = ?", [row.group, u.id]
                        )
                        self._event("unit.changed", u.name, unit=u.name,
                                    before={"group": u.group}, after={"group": row.group})
                        u = Unit(id=u.id, name=u.name, kind=u.kind, group=row.group)
                    self._put(ml, u, row.address, row.name, strict=False, report=report,
                              line=row.line)
                if report.added or report.updated:
                    self._event("recipients.imported", list_slug, list_slug=list_slug,
                                added=report.added, updated=report.updated,
                                unchanged=report.unchanged)
                if dry_run:
                    raise _DryRun
        except _DryRun:
            pass
        return report

    def _put(
        self,
        ml: MailingList,
        unit: Unit,
        address: Address,
        name: str | None,
        *,
        strict: bool,
        report: ImportReport | None,
        line: int = 0,
    ) -> None:
        """The one place an address joins a list; strict for `add`, lenient for imports."""
        email = address.email
        where = f"line {line}: " if line else ""
        r = self.db.execute(
            "SELECT r.id, r.name, r.unit_id, u.name FROM recipients r "
            "JOIN units u ON u.id = r.unit_id WHERE r.email = ?",
            [email],
        ).fetchone()
        changed = False
        if r is None:
            cur = self.db.execute(
                "INSERT INTO recipients (uid, email, email_ascii, name, unit_id, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [secrets.token_urlsafe(12), email, address.ascii, name, unit.id, self._now()],
            )
            rid = cur.lastrowid
            self._event("recipient.created", email, unit=unit.name, after={"name": name})
        else:
            rid, old_name, old_unit_id, old_unit = r
            if old_unit_id != unit.id:
                if strict:
                    raise InvalidInput(
                        f"{email} belongs to unit {old_unit!r}, not {unit.name!r}; "
                        f"use --unit {old_unit!r}"
                    )
                self.db.execute("UPDATE recipients SET unit_id = ? WHERE id = ?", [unit.id, rid])
                self._event("recipient.moved", email, unit=unit.name,
                            before={"unit": old_unit}, after={"unit": unit.name})
                assert report is not None
                report.notes.append(f"{where}{email} moved from {old_unit} to {unit.name}")
                changed = True
            if name and name != old_name:
                self.db.execute("UPDATE recipients SET name = ? WHERE id = ?", [name, rid])
                self._event("recipient.renamed", email, unit=unit.name,
                            before={"name": old_name}, after={"name": name})
                changed = True
        s = self.db.execute(
            "SELECT status, changed_at, source FROM subscriptions "
            "WHERE recipient_id = ? AND list_id = ?",
            [rid, ml.id],
        ).fetchone()
        if s is None:
            self.db.execute(
                "INSERT INTO subscriptions (recipient_id, list_id, status, changed_at, source) "
                "VALUES (?, ?, 'active', ?, ?)",
                [rid, ml.id, self._now(), "import" if report else "staff"],
            )
            self._event("subscription.added", email, unit=unit.name, list_slug=ml.slug,
                        after={"status": Status.ACTIVE.value})
            if report:
                report.added += 1
            return
        status = Status(s[0])
        if strict:
            if status is Status.ACTIVE:
                raise InvalidInput(f"{email} is already on the {ml.slug} list")
            raise InvalidInput(
                f"{email} is on the {ml.slug} list with status {status.value} since {s[1]} "
                f"({s[2]}); to send to it again use `mailer recipients resubscribe {email} "
                f"--list {ml.slug} --reason TEXT`"
            )
        assert report is not None
        if status is not Status.ACTIVE:
            report.notes.append(
                f"{where}{email} kept {status.value} on {ml.slug} (since {s[1]}, {s[2]})"
            )
        if changed:
            report.updated += 1
        else:
            report.unchanged += 1

    def members(
        self,
        *,
        list_slug: str | None = None,
        unit: str | None = None,
        status: Status | None = None,
    ) -> list[Member]:
        where: list[str] = []
        params: list[Any] = []
        if list_slug is not None:
            self.get_list(list_slug)
            where.append("l.slug = ?")
            params.append(list_slug)
        if unit is not None:
            self.get_unit(unit)
            where.append("u.name = ?")
            params.append(unit.strip())
        if status is not None:
            where.append("s.status = ?")
            params.append(status.value)
        sql = (
            "SELECT r.id, r.email, r.name, u.name, u.group_name, l.slug, s.status, "
            "s.changed_at, s.source FROM subscriptions s "
            "JOIN recipients r ON r.id = s.recipient_id "
            "JOIN units u ON u.id = r.unit_id JOIN lists l ON l.id = s.list_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY l.id, u.id, r.email"
        )
        found = [
            Member(recipient_id=r[0], email=r[1], name=r[2], unit=r[3], group=r[4],
                   list_slug=r[5], status=Status(r[6]), changed_at=r[7], source=r[8])
            for r in self.db.execute(sql, params).fetchall()
        ]
        # Stable sort keeps the SQL order (list, unit as entered, address) within a 片组.
        rank = {slug: i for i, slug in enumerate(dict.fromkeys(m.list_slug for m in found))}
        return sorted(found, key=lambda m: (rank[m.list_slug], group_order(m.group)))

    def set_status(
        self,
        email: str,
        new: Status,
        *,
        list_slug: str | None,
        source: str,
        reason: str | None = None,
        only_from: tuple[Status, ...] | None = None,
        actor: str | None = None,
    ) -> list[str]:
        """Change an address's status on one list (or all its lists); returns the slugs
        changed. ``only_from`` limits which current statuses may change."""
        address = normalise_email(email)
        with self.write():
            r = self.db.execute(
                "SELECT r.id, u.name FROM recipients r JOIN units u ON u.id = r.unit_id "
                "WHERE r.email = ?",
                [address.email],
            ).fetchone()
            if r is None:
                raise UnknownRecipient(address.email)
            rid, unit = r
            if list_slug is not None:
                self.get_list(list_slug)
            subs = self.db.execute(
                "SELECT l.slug, s.status FROM subscriptions s "
                "JOIN lists l ON l.id = s.list_id WHERE s.recipient_id = ?"
                + (" AND l.slug = ?" if list_slug else ""),
                [rid, list_slug] if list_slug else [rid],
            ).fetchall()
            if not subs:
                raise InvalidInput(
                    f"{address.email} is not on the {list_slug or 'any'} list"
                )
            changed = []
            for slug, status in subs:
                if status == new.value or (only_from and Status(status) not in only_from):
                    continue
                self._change_status(rid, address.email, unit, slug, Status(status), new,
                                    source=source, actor=actor, reason=reason)
                changed.append(slug)
            if not changed:
                states = ", ".join(f"{slug}: {st}" for slug, st in subs)
                raise InvalidInput(f"nothing to change for {address.email} ({states})")
            return changed

    def active_units(self, list_slug: str) -> list[str]:
        """The units with an active address on a list: the names an end block prints."""
        rows = self.db.execute(
            "SELECT u.id, u.name, u.group_name, u.kind FROM units u WHERE EXISTS ("
            "SELECT 1 FROM recipients r JOIN subscriptions s ON s.recipient_id = r.id "
            "JOIN lists l ON l.id = s.list_id "
            "WHERE r.unit_id = u.id AND l.slug = ? AND s.status = 'active')",
            [list_slug],
        ).fetchall()
        # Superior bodies first (as `units list` shows them), then by 片组, then as entered.
        ordered = sorted(rows, key=lambda r: (r[3] != UnitKind.AUTHORITY.value,
                                              group_order(r[2]), r[0]))
        return [r[1] for r in ordered]

    def uid_of(self, email: str) -> str | None:
        r = self.db.execute("SELECT uid FROM recipients WHERE email = ?", [email]).fetchone()
        return r[0] if r else None

    # --- unsubscribing --------------------------------------------------------

    def find_subscription(self, uid: str, list_slug: str) -> Subscriber | None:
        """The subscription an unsubscribe token names, or None if there is none."""
        r = self.db.execute(
            "SELECT r.id, r.uid, r.email, r.name, u.id, u.name, l.slug, l.role, "
            "l.allow_unsubscribe, s.status, "
            "(SELECT COUNT(*) FROM recipients r2 JOIN subscriptions s2 "
            " ON s2.recipient_id = r2.id AND s2.list_id = l.id "
            " WHERE r2.unit_id = u.id AND r2.id != r.id AND s2.status = 'active') "
            "FROM recipients r JOIN units u ON u.id = r.unit_id "
            "JOIN subscriptions s ON s.recipient_id = r.id "
            "JOIN lists l ON l.id = s.list_id WHERE r.uid = ? AND l.slug = ?",
            [uid, list_slug],
        ).fetchone()
        if r is None:
            return None
        return Subscriber(
            recipient_id=r[0], uid=r[1], email=r[2], name=r[3], unit_id=r[4], unit=r[5],
            list_slug=r[6], role=Role(r[7]),
            # Report-to bodies never unsubscribe themselves, whatever the config says.
            allow_unsubscribe=may_unsubscribe(Role(r[7]), bool(r[8])), status=Status(r[9]),
            other_active_in_unit=r[10],
        )

    def unsubscribe(self, uid: str, list_slug: str, *, source: str, actor: str) -> bool:
        """A member's own unsubscribe (one-click or page). Idempotent: returns whether
        anything changed. Lists that do not allow it are refused."""
        with self.write():
            sub = self.find_subscription(uid, list_slug)
            if sub is None:
                raise UnknownRecipient(uid)
            if not sub.allow_unsubscribe:
                raise StaffOnly(list_slug)
            if sub.status is not Status.ACTIVE:
                return False
            self._change_status(sub.recipient_id, sub.email, sub.unit, list_slug,
                                sub.status, Status.UNSUBSCRIBED, source=source, actor=actor)
            return True

    def unsubscribe_unit(
        self, unit: str, list_slug: str, *, source: str, actor: str | None = None,
        reason: str | None = None,
    ) -> list[str]:
        """Stop every active address of a unit on a list; returns the addresses changed."""
        with self.write():
            ml = self.get_list(list_slug)
            u = self.get_unit(unit)
            rows = self.db.execute(
                "SELECT r.id, r.email FROM recipients r JOIN subscriptions s "
                "ON s.recipient_id = r.id AND s.list_id = ? "
                "WHERE r.unit_id = ? AND s.status = 'active' ORDER BY r.email",
                [ml.id, u.id],
            ).fetchall()
            for rid, email in rows:
                self._change_status(rid, email, u.name, list_slug, Status.ACTIVE,
                                    Status.UNSUBSCRIBED, source=source, actor=actor,
                                    reason=reason)
            return [email for _, email in rows]

    def _change_status(
        self, rid: int, email: str, unit: str, list_slug: str, old: Status, new: Status, *,
        source: str, actor: str | None, reason: str | None = None,
    ) -> None:
        self.db.execute(
            "UPDATE subscriptions SET status = ?, changed_at = ?, source = ? "
            "WHERE recipient_id = ? AND list_id = (SELECT id FROM lists WHERE slug = ?)",
            [new.value, self._now(), source, rid, list_slug],
        )
        self._event("subscription.status", email, unit=unit, list_slug=list_slug, actor=actor,
                    before={"status": old.value}, after={"status": new.value}, source=source,
                    reason=reason)

    def unsubscribes(self, since: str | None = None) -> list[Event]:
        """Every change to status unsubscribed, oldest first (``since``: a UTC stamp)."""
        rows = self.db.execute(
            "SELECT * FROM events WHERE kind = 'subscription.status' "
            "AND json_extract(detail, '$.after.status') = 'unsubscribed' AND at >= ? "
            "ORDER BY id",
            [since or ""],
        ).fetchall()
        return [_event_from_row(r) for r in rows]

    # --- audit trail ----------------------------------------------------------

    def history(self, subject: str | None = None, *, limit: int = 500) -> list[Event]:
        """Events about an address or a unit (and its addresses), newest last."""
        params: list[Any]
        if subject is None:
            sql, params = "SELECT * FROM events ORDER BY id DESC LIMIT ?", [limit]
        elif self._unit_row(subject.strip()) is not None:
            sql = "SELECT * FROM events WHERE unit = ? ORDER BY id DESC LIMIT ?"
            params = [subject.strip(), limit]
        else:
            try:
                email = normalise_email(subject).email
            except InvalidInput:
                raise InvalidInput(
                    f"{subject!r} is neither a unit on file nor an email address"
                ) from None
            sql = "SELECT * FROM events WHERE subject = ? ORDER BY id DESC LIMIT ?"
            params = [email, limit]
            if not self.db.execute("SELECT 1 FROM recipients WHERE email = ?", [email]).fetchone():
                raise UnknownRecipient(email)
        rows = self.db.execute(sql, params).fetchall()
        return [_event_from_row(r) for r in reversed(rows)]


_CN_DIGITS = {ch: i for i, ch in enumerate("〇一二三四五六七八九")} | {"两": 2}


def _number_in(text: str) -> int | None:
    """The first number written in ``text``, in Arabic or Chinese numerals (第十二片组: 12)."""
    digits = "".join(ch for ch in text if ch.isdigit() and ch.isascii())
    if digits:
        return int(digits)
    total, current, seen = 0, 0, False
    for ch in text:
        if ch in _CN_DIGITS:
            current, seen = _CN_DIGITS[ch], True
        elif ch == "十":
            total += (current or 1) * 10
            current, seen = 0, True
        elif seen:
            break
    return total + current if seen else None


def group_order(group: str | None) -> tuple[int, int, str]:
    """片组 in their numbered order (第二 before 第十), units without one last."""
    if group is None:
        return (1, 0, "")
    n = _number_in(group)
    return (0, n if n is not None else 10**6, group)


def _event_from_row(r: Any) -> Event:
    return Event(id=r[0], at=r[1], actor=r[2], kind=r[3], subject=r[4], unit=r[5], list=r[6],
                 detail=json.loads(r[7] or "{}"))


class _DryRun(Exception):
    """Raised inside the import transaction to roll a dry run back."""


def _kind_for(role: Role) -> UnitKind:
    return UnitKind.AUTHORITY if role is Role.REPORT_TO else UnitKind.MEMBER
