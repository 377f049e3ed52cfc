"""The SQLite store: every table and every SQL statement of mailer lives in this package.

``Store`` is one handle on one database file; its methods are grouped by concern in
the modules beside this one (``roster``: units, recipients, subscriptions;
``ledger``: issues, campaigns, deliveries; ``bounces``: what came back by mail).
"""

from __future__ import annotations

from ..clock import utc_now
from .base import BUSY_TIMEOUT_S, Now, default_actor
from .bounces import BounceInput, BounceRow, BouncesMixin, Scoring
from .editions import ArchivedIssue, ArchiveRow, ArticleHit, EditionsMixin, Reader
from .ledger import DeliveryResult, Job, LedgerMixin
from .roster import ImportReport, ImportRow, RosterMixin, Subscriber, group_order
from .schema import MIGRATIONS


class Store(RosterMixin, LedgerMixin, BouncesMixin, EditionsMixin):
    """A handle on one mailer database. Use ``Store.open`` or ``Store.init``."""


__all__ = [
    "BUSY_TIMEOUT_S",
    "MIGRATIONS",
    "ArchiveRow",
    "ArchivedIssue",
    "ArticleHit",
    "BounceInput",
    "BounceRow",
    "DeliveryResult",
    "ImportReport",
    "ImportRow",
    "Job",
    "Now",
    "Reader",
    "Scoring",
    "Store",
    "Subscriber",
    "default_actor",
    "group_order",
    "utc_now",
]
