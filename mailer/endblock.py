"""The end block (版记) and the lists: what the bulletin prints, and where they disagree.

The issue's own lines are the bulletin's: they are printed as written. The lists
decide who receives. ``coverage`` says, in staff words, where the two part: a body
named on a line with no address on the list of that line's role, and a unit on a
list that no line of its role names (a list's collective label, such as 协会会员,
covers the whole list). Only an issue with no end block at all gets lines printed
from the lists (``from_lists``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .config import Config
from .models import EndBlock, EndLine, Issue, MailingList, Role
from .store import Store

NAME_SEPARATOR = "，"  # not 、, which unit names such as 各区、县（市）委组织部 contain

# Which list role a line's label speaks of when no list uses that label itself.
# 主送 (the main addressees) are the member units a bulletin is sent to.
LABEL_ROLES = {
    "报": Role.REPORT_TO, "报送": Role.REPORT_TO, "抄报": Role.REPORT_TO,
    "送": Role.COPY_TO, "抄送": Role.COPY_TO,
    "发": Role.SEND_TO, "主送": Role.SEND_TO,
}
_SHOWN = 5  # units named in one warning before "and N more"


@dataclass(frozen=True)
class _Roster:
    """One list as coverage sees it: its units with an active address, and the
    collective label that stands for all of them."""

    list: MailingList
    units: tuple[str, ...]
    collective: str | None


def _key(name: str) -> str:
    """Names compare as a reader compares them: width and spacing do not count."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", name))


def _rosters(store: Store, config: Config) -> list[_Roster]:
    labels = {lc.slug: lc.collective_label for lc in config.lists}
    return [
        _Roster(ml, tuple(store.active_units(ml.slug)), labels.get(ml.slug))
        for ml in sorted(store.lists(), key=lambda m: m.role.rank)
    ]


def line_role(line: EndLine, lists: list[MailingList]) -> Role | None:
    """The role of the lists a line speaks of: a list whose footer label the line
    uses, else the usual meaning of the label (报送 is 报)."""
    for ml in lists:
        if ml.footer_label == line.label:
            return ml.role
    return LABEL_ROLES.get(line.label)


def from_lists(store: Store, config: Config) -> EndBlock:
    """The end block printed from the lists, for an issue that has none: one line per
    list (report-to first), its collective label or its units."""
    lines: list[EndLine] = []
    for r in _rosters(store, config):
        names = (r.collective,) if r.collective else r.units
        if names:
            lines.append(EndLine(r.list.footer_label, NAME_SEPARATOR.join(names), names))
    return EndBlock(tuple(lines))


def printed(store: Store, config: Config, issue: Issue) -> tuple[EndBlock, list[str]]:
    """The end block the bulletin prints, and what staff should know about it."""
    if issue.end.lines:
        return issue.end, coverage(store, config, issue)
    built = from_lists(store, config)
    if not built.lines:
        return built, ["the issue has no end block (报：… / 发：…) and no list has a unit "
                       "yet; it goes out without one"]
    return built, ["the issue has no end block; its lines are printed from the lists: "
                   + "; ".join(ln.written for ln in built.lines)]


def coverage(store: Store, config: Config, issue: Issue) -> list[str]:
    """Where the issue's end block and the lists disagree, one line each."""
    rosters = _rosters(store, config)
    lists = [r.list for r in rosters]
    warnings: list[str] = []
    named_by_role: dict[Role, list[EndLine]] = {}
    for line in issue.end.named:
        role = line_role(line, lists)
        if role is None:
            continue
        named_by_role.setdefault(role, []).append(line)
        same = [r for r in rosters if r.list.role is role]
        if same and not any(r.units for r in same):
            n = len(line.names)
            named = line.names[0] if n == 1 else f"{n} bodies"
            warnings.append(
                f"the {line.label}： line names {named}, but "
                f"{' and '.join(r.list.slug for r in same)} has no addresses yet; they will "
                "not receive it"
            )
            continue
        for name in line.names:
            warning = _named(name, line, role, same, rosters)
            if warning:
                warnings.append(warning)
    for r in rosters:
        warning = _unnamed(r, named_by_role.get(r.list.role, []))
        if warning:
            warnings.append(warning)
    return warnings


def _named(name: str, line: EndLine, role: Role, same: list[_Roster],
           rosters: list[_Roster]) -> str | None:
    """A warning if ``name`` on ``line`` has no address on a list of ``role``."""
    key = _key(name)
    if any(r.collective and _key(r.collective) == key for r in same):
        return None
    if any(key in map(_key, r.units) for r in same):
        return None
    elsewhere = [r.list.slug for r in rosters if key in map(_key, r.units)]
    where = (f"no address on {' or '.join(r.list.slug for r in same)}" if same
             else f"there is no {role.value} list for the {line.label}： line")
    if elsewhere:
        return f"{name}: {where}; they receive it only as {' and '.join(elsewhere)}"
    return f"{name}: {where}; they will not receive it"


def _unnamed(r: _Roster, lines: list[EndLine]) -> str | None:
    """A warning if units on the list ``r`` are named on no line of its role."""
    keys = {_key(n) for ln in lines for n in ln.names}
    if r.collective and _key(r.collective) in keys:
        return None
    missing = [u for u in r.units if _key(u) not in keys]
    if not missing:
        return None
    label = lines[0].label if lines else r.list.footer_label
    which = (f"the {label}： line does not name" if lines
             else f"the end block has no {label}： line naming")
    shown = "、".join(missing[:_SHOWN])
    if len(missing) > _SHOWN:
        shown += f" and {len(missing) - _SHOWN} more"
    hint = (f"; write {r.collective} on it to cover the whole list" if r.collective else "")
    unit_word = "unit" if len(missing) == 1 else "units"
    return (f"{r.list.slug}: {which} {len(missing)} {unit_word} on the list ({shown}); "
            f"they receive it all the same{hint}")
