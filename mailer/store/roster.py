"""Units, recipients and their subscriptions to lists: staff's side of the store."""

from __future__ import annotations

import difflib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import AlreadySo, InvalidInput, StaffOnly, UnknownRecipient, UnknownUnit
from ..models import (
    Event,
    ImportRow,
    MailingList,
    Member,
    Role,
    Status,
    Unit,
    UnitKind,
    may_unsubscribe,
)
from ..validate import Address, normalise_email
from .base import StoreBase

__all__ = ["ImportReport", "ImportRow", "RosterMixin", "Subscriber", "UnitChange",
           "group_order"]


@dataclass(frozen=True)
class UnitChange:
    """A unit created or whose 片组 changed by an import or an add."""

    unit: str
    before: str | None  # the old 片组 (None: none, or the unit is new)
    after: str | None
    created: bool = False


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    units: list[UnitChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # rows kept as they are, and why
    dry_run: bool = False

    @property
    def units_created(self) -> list[UnitChange]:
        return [u for u in self.units if u.created]

    @property
    def units_changed(self) -> list[UnitChange]:
        return [u for u in self.units if not u.created]


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

    def _unit_names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM units ORDER BY id")]

    def similar_units(self, name: str, *, close: bool = True,
                      among: Sequence[str] | None = None) -> tuple[str, ...]:
        """Units on file a name may be meant as: one holds the other (娃哈哈集团 and
        杭州娃哈哈集团有限公司), and with ``close`` those a character or two apart."""
        names = self._unit_names() if among is None else among
        held = [n for n in names if n != name and (n in name or name in n)]
        near = difflib.get_close_matches(name, names, n=3, cutoff=0.7) if close else []
        return tuple(dict.fromkeys([*held, *near]))[:3]

    def resolve_unit(self, name: str) -> Unit:
        """A unit named in full, or by the unique beginning of its name; otherwise
        ``UnknownUnit`` with the names meant most likely."""
        wanted = name.strip()
        u = self._unit_row(wanted)
        if u is not None:
            return u
        names = self._unit_names()
        starts = [n for n in names if n.startswith(wanted)] if wanted else []
        if len(starts) == 1:
            found = self._unit_row(starts[0])
            assert found is not None
            return found
        if len(starts) > 1:
            raise InvalidInput(f"{wanted!r} begins {len(starts)} unit names: "
                               f"{', '.join(starts[:6])}; give more of the name")
        raise UnknownUnit(wanted, self.similar_units(wanted))

    def _unit_for(self, name: str, group: str | None, ml: MailingList, *, create: bool,
                  changes: list[UnitChange], on_file: Sequence[str] | None = None) -> Unit:
        """The unit a row or an add names, created when it is new; a name that holds
        or is held by one ``on_file`` (before this import) is refused, since one unit
        under two names gets the bulletin twice (``create`` forces it). Names a
        character apart are not: 万向集团 and 万华集团 are two companies. A 片组 given
        for a unit on file becomes its 片组, and is reported."""
        u = self._unit_row(name)
        if u is None:
            like = self.similar_units(name, close=False, among=on_file)
            if like and not create:
                raise InvalidInput(
                    f"unknown unit {name!r}; did you mean {' or '.join(like)}? Use that "
                    "name, or --create-units to create it as a new unit")
            u = self._create_unit(name, _kind_for(ml.role), group)
            changes.append(UnitChange(name, None, group, created=True))
            return u
        if group and group != u.group:
            self._set_group(u, group)
            changes.append(UnitChange(u.name, u.group, group))
            u = Unit(id=u.id, name=u.name, kind=u.kind, group=group)
        return u

    def _set_group(self, u: Unit, group: str | None) -> None:
        self.db.execute("UPDATE units SET group_name = ? WHERE id = ?", [group, u.id])
        self._event("unit.changed", u.name, unit=u.name, before={"group": u.group},
                    after={"group": group})

    def set_unit_group(self, name: str, group: str | None) -> UnitChange:
        """Change a unit's 片组 (None: no 片组); audited."""
        with self.write():
            u = self.resolve_unit(name)
            if u.group == group:
                raise AlreadySo(f"{u.name} is already in {group or 'no 片组'}; nothing changed")
            self._set_group(u, group)
            return UnitChange(u.name, u.group, group)

    def rename_unit(self, old: str, new: str) -> str:
        """Give a unit a new name; its addresses and subscriptions stay. Returns the old
        full name. The history keeps both names (`mailer history NEW` shows the rename)."""
        with self.write():
            u = self.resolve_unit(old)
            if u.name == new:
                raise AlreadySo(f"the unit is already called {new}; nothing changed")
            if self._unit_row(new) is not None:
                raise InvalidInput(f"a unit {new!r} is already on file; to make the two one "
                                   f"use `mailer units merge {u.name} {new}`")
            self.db.execute("UPDATE units SET name = ? WHERE id = ?", [new, u.id])
            self._event("unit.renamed", new, unit=new, before={"name": u.name},
                        after={"name": new})
            return u.name

    def merge_units(self, source: str, into: str) -> tuple[str, str, list[str]]:
        """Move every address of ``source`` to ``into`` and remove the emptied unit (its
        history stays under its name). Returns (source, into, the addresses moved)."""
        with self.write():
            src, dst = self.resolve_unit(source), self.resolve_unit(into)
            if src.id == dst.id:
                raise InvalidInput(f"{src.name} and {dst.name} are the same unit")
            moved = [r[0] for r in self.db.execute(
                "SELECT email FROM recipients WHERE unit_id = ? ORDER BY email", [src.id])]
            self.db.execute("UPDATE recipients SET unit_id = ? WHERE unit_id = ?",
                            [dst.id, src.id])
            for email in moved:
                self._event("recipient.moved", email, unit=dst.name,
                            before={"unit": src.name}, after={"unit": dst.name})
            self.db.execute("DELETE FROM units WHERE id = ?", [src.id])
            self._event("unit.merged", src.name, unit=dst.name, before={"name": src.name},
                        after={"name": dst.name}, addresses=len(moved))
            return src.name, dst.name, moved

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
    ) -> list[UnitChange]:
        """Put one address on a list (staff's `recipients add`). Units are treated as
        an import treats them (new ones created, look-alikes refused, a 片组 given
        applied); refuses duplicates and moving an address between units. Returns
        the unit created or changed, if any."""
        changes: list[UnitChange] = []
        with self.write():
            ml = self.get_list(list_slug)
            u = self._unit_for(unit, group, ml, create=create_unit, changes=changes)
            self._put(ml, u, address, name, strict=True, report=None)
        return changes

    def import_rows(self, rows: Sequence[ImportRow], *, list_slug: str | None, dry_run: bool,
                    create_units: bool = False) -> ImportReport:
        """Apply validated rows in one transaction: all or nothing. Each row goes to
        ``list_slug``, or (None) to the list its own ``list`` column names. Importing
        the same rows again changes nothing; a stopped subscription is never revived
        by an import. Raises ``InvalidInput`` naming every row whose unit looks like
        one on file (``create_units`` creates them)."""
        report = ImportReport(dry_run=dry_run)
        try:
            with self.write():
                lists = {ml.slug: ml for ml in self.lists()}
                if list_slug is not None:
                    lists = {list_slug: self.get_list(list_slug)}
                refused = []
                on_file = self._unit_names()
                for row in rows:
                    slug = list_slug or row.list_slug
                    if slug is None:
                        raise InvalidInput(f"line {row.line}: no list: give --list, or a "
                                           "list column (as `recipients export` writes)")
                    if slug not in lists:
                        self.get_list(slug)  # UnknownList, naming the known ones
                    ml = lists[slug]
                    try:
                        u = self._unit_for(row.unit, row.group, ml, create=create_units,
                                           changes=report.units, on_file=on_file)
                    except InvalidInput as e:
                        refused.append(f"line {row.line}: {e}")
                        continue
                    self._put(ml, u, row.address, row.name, strict=False, report=report,
                              line=row.line, status=row.status)
                if refused:
                    raise InvalidInput("\n".join(refused))
                slugs = sorted({list_slug or r.list_slug or "" for r in rows})
                if report.added or report.updated or report.units:
                    self._event("recipients.imported", ",".join(slugs),
                                list_slug=",".join(slugs), added=report.added,
                                updated=report.updated, unchanged=report.unchanged,
                                units_created=len(report.units_created),
                                units_changed=len(report.units_changed))
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
        status: Status | None = None,
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
            # A stopped address read back from an export stays stopped.
            first = status or Status.ACTIVE
            self.db.execute(
                "INSERT INTO subscriptions (recipient_id, list_id, status, changed_at, source) "
                "VALUES (?, ?, ?, ?, ?)",
                [rid, ml.id, first.value, self._now(),
                 "import" if report is not None else "staff"],
            )
            self._event("subscription.added", email, unit=unit.name, list_slug=ml.slug,
                        after={"status": first.value})
            if report is not None:
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
        # IN, not a correlated EXISTS: the active subscriptions are read once, not once
        # per unit (quadratic: 75 s for 200,000 recipients in 20,000 units).
        rows = self.db.execute(
            "SELECT u.id, u.name, u.group_name, u.kind FROM units u WHERE u.id IN ("
            "SELECT r.unit_id FROM recipients r JOIN subscriptions s ON s.recipient_id = r.id "
            "JOIN lists l ON l.id = s.list_id WHERE l.slug = ? AND s.status = 'active')",
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
            u = self.resolve_unit(unit)
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
