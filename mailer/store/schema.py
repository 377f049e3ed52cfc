"""The schema, as sqlite-utils migrations: append new ones, never edit applied ones."""

from __future__ import annotations

from sqlite_utils import Database, Migrations

from ..stamps import OLD_GLOB

MIGRATIONS = Migrations("mailer")


@MIGRATIONS()
def m001_recipients(db: Database) -> None:
    db.table("units").create(
        {"id": int, "name": str, "kind": str, "group_name": str, "created_at": str},
        pk="id",
        not_null={"name", "kind", "created_at"},
    )
    db.table("units").create_index(["name"], unique=True)
    db.table("recipients").create(
        {
            "id": int,
            # Random and unguessable: unsubscribe tokens carry this, never the id.
            "uid": str,
            "email": str,
            "email_ascii": str,
            "name": str,
            "unit_id": int,
            "created_at": str,
        },
        pk="id",
        not_null={"uid", "email", "unit_id", "created_at"},
        foreign_keys=[("unit_id", "units", "id")],
    )
    db.table("recipients").create_index(["email"], unique=True)
    db.table("recipients").create_index(["uid"], unique=True)
    db.table("recipients").create_index(["unit_id"])
    db.table("lists").create(
        {
            "id": int,
            "slug": str,
            "role": str,
            "title": str,
            "footer_label": str,
            "allow_unsubscribe": int,
            "collective_label": str,
        },
        pk="id",
        not_null={"slug", "role", "title", "footer_label", "allow_unsubscribe"},
    )
    db.table("lists").create_index(["slug"], unique=True)
    db.table("subscriptions").create(
        {
            "recipient_id": int,
            "list_id": int,
            "status": str,
            "changed_at": str,
            "source": str,
        },
        pk=("recipient_id", "list_id"),
        not_null={"status", "changed_at", "source"},
        foreign_keys=[("recipient_id", "recipients", "id"), ("list_id", "lists", "id")],
    )
    db.table("subscriptions").create_index(["list_id", "status"])
    db.table("events").create(
        {
            "id": int,
            "at": str,
            "actor": str,
            "kind": str,
            "subject": str,
            "unit": str,
            "list": str,
            "detail": str,
        },
        pk="id",
        not_null={"at", "actor", "kind", "subject"},
    )
    db.table("events").create_index(["subject"])
    db.table("events").create_index(["unit"])


@MIGRATIONS()
def m002_ledger(db: Database) -> None:
    db.table("issues").create(
        {
            "id": int,
            "year": int,
            "number": int,
            "total_number": int,
            "date": str,
            "label": str,  # 简报 2015年第9期（总第33期）
            "source_sha256": str,
            "created_at": str,
        },
        pk="id",
        not_null={"year", "number", "label", "source_sha256", "created_at"},
    )
    db.table("issues").create_index(["year", "number"], unique=True)
    db.table("campaigns").create(
        {
            "id": int,
            "issue_id": int,
            "lists": str,  # slugs joined by ","
            "status": str,
            "source_path": str,
            "source_sha256": str,
            "scheduled_at": str,
            "approved_by": str,
            "approved_at": str,
            "started_at": str,
            "finished_at": str,
            "created_at": str,
            "created_by": str,
            # Which process is sending it, and until when that claim holds: a second
            # sender (a CLI resume beside the daemon) must not send the same rows.
            "lease_owner": str,
            "lease_until": str,
            "resume_at": str,  # paused by a quota until then
        },
        pk="id",
        not_null={"issue_id", "lists", "status", "created_at", "created_by"},
        foreign_keys=[("issue_id", "issues", "id")],
    )
    db.table("campaigns").create_index(["status"])
    db.table("deliveries").create(
        {
            "id": int,
            "campaign_id": int,
            "recipient_id": int,
            "list_id": int,
            "email": str,
            "status": str,
            "attempts": int,
            "first_attempt_at": str,
            "next_attempt_at": str,
            "last_code": int,
            "last_response": str,
            "message_id": str,
            "sent_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"campaign_id", "recipient_id", "list_id", "email", "status", "attempts"},
        defaults={"attempts": 0},
        foreign_keys=[
            ("campaign_id", "campaigns", "id"),
            ("recipient_id", "recipients", "id"),
            ("list_id", "lists", "id"),
        ],
    )
    db.table("deliveries").create_index(["campaign_id", "recipient_id"], unique=True)
    db.table("deliveries").create_index(["campaign_id", "status", "next_attempt_at"])
    db.table("deliveries").create_index(["sent_at"])  # hourly/daily quotas
    db.table("deliveries").create_index(["recipient_id"])
    db.table("test_sends").create(
        {
            "id": int,
            "issue_id": int,
            "list_slug": str,
            "email": str,
            "at": str,
            "actor": str,
            "code": int,
            "response": str,
            "message_id": str,
        },
        pk="id",
        not_null={"issue_id", "email", "at", "actor"},
        foreign_keys=[("issue_id", "issues", "id")],
    )
    db.table("test_sends").create_index(["at"])


@MIGRATIONS()
def m003_campaign_reason(db: Database) -> None:
    # Why a campaign ended as it did (missed, failed to prepare), for `mailer log`.
    db.table("campaigns").add_column("status_reason", str)


@MIGRATIONS()
def m005_bounces(db: Database) -> None:
    # What came back by mail for a delivery accepted earlier (the ledger's truth):
    # when, what kind (hard, soft, policy, complaint) and the reply text.
    for column in ("bounce_at", "bounce_kind", "bounce_text"):
        db.table("deliveries").add_column(column, str)
    # Every message read from the bounce mailbox, once (key: its SHA-256), and what
    # was done with it; kept aside and unreadable ones are listed for staff.
    db.table("bounce_messages").create(
        {
            "id": int,
            "key": str,
            "at": str,
            "folder": str,
            "subject": str,
            "sender": str,
            "kind": str,
            "outcome": str,  # applied, flagged, ignored, aside, unreadable
            "reason": str,
            "campaign_id": int,
            "recipient_id": int,
            "status": str,
            "text": str,
        },
        pk="id",
        not_null={"key", "at", "kind", "outcome"},
    )
    db.table("bounce_messages").create_index(["key"], unique=True)
    db.table("bounce_messages").create_index(["at"])
    # The soft-bounce score of one subscription, as Mailman keeps it.
    db.table("bounce_scores").create(
        {
            "recipient_id": int,
            "list_id": int,
            "score": float,
            "last_day": str,  # the local day of the last counted bounce
            "last_at": str,
            "updated_at": str,
        },
        pk=("recipient_id", "list_id"),
        not_null={"score", "last_day", "last_at", "updated_at"},
        foreign_keys=[("recipient_id", "recipients", "id"), ("list_id", "lists", "id")],
    )


@MIGRATIONS()
def m006_millisecond_stamps(db: Database) -> None:
    # Every stored time gets the same millisecond width, so text comparison in SQL
    # stays right; only values of exactly the old stamp shape are touched.
    for table in db.tables:
        if table.name.startswith("_"):
            continue
        for column in table.columns:
            if column.type.upper() != "TEXT":
                continue
            db.execute(
                f'UPDATE "{table.name}" SET "{column.name}" = '
                f'substr("{column.name}", 1, 19) || \'.000Z\' '
                f'WHERE "{column.name}" GLOB ?',
                [OLD_GLOB],
            )


@MIGRATIONS()
def m007_editions(db: Database) -> None:
    # What the web edition and the archive show, stored when a campaign is created:
    # the bulletin's body as each list was sent it, and each article's text for search.
    db.table("issue_pages").create(
        {"issue_id": int, "list_id": int, "html": str, "created_at": str},
        pk=("issue_id", "list_id"),
        not_null={"html", "created_at"},
        foreign_keys=[("issue_id", "issues", "id"), ("list_id", "lists", "id")],
    )
    # The trigram tokenizer (SQLite >= 3.34) indexes every three-character substring:
    # Chinese needs no word segmentation, and LIKE on these columns uses the index.
    db.execute(
        "CREATE VIRTUAL TABLE issue_text USING fts5("
        "issue_id UNINDEXED, article UNINDEXED, title, body, tokenize = 'trigram')"
    )
    # Staff revoked every web link of an address made before this time (epoch seconds).
    db.table("link_revocations").create(
        {"recipient_id": int, "revoked_before": int, "at": str, "actor": str},
        pk="recipient_id",
        not_null={"revoked_before", "at", "actor"},
        foreign_keys=[("recipient_id", "recipients", "id")],
    )


@MIGRATIONS()
def m008_issue_pdfs(db: Database) -> None:
    # The PDF edition, typeset once per issue and kept for the web app's …/pdf page
    # and for a resumed campaign's attachment; ``print_sha256`` is the hash of the HTML
    # it was typeset from, so an unchanged issue is never typeset again.
    db.table("issue_pdfs").create(
        {"issue_id": int, "print_sha256": str, "pdf": bytes, "created_at": str},
        pk="issue_id",
        not_null={"print_sha256", "pdf", "created_at"},
        foreign_keys=[("issue_id", "issues", "id")],
    )


@MIGRATIONS()
def m009_delivery_indexes_for_bulk_insert(db: Database) -> None:
    # A campaign's rows are written a million in one transaction, and each index is
    # kept row by row: the two that no query needs for a pending row cost a third of
    # that insert's CPU. The quotas count rows by sent_at, which is NULL until the row
    # is sent: only sent rows enter the index now ("sent_at >= ?" implies NOT NULL, so
    # SQLite still uses it). Rows of one recipient are only ever asked for within a
    # campaign (a reader's issue, a bounce), which the (campaign_id, recipient_id)
    # index serves: the recipient_id index goes.
    db.execute("DROP INDEX IF EXISTS idx_deliveries_sent_at")
    db.execute("CREATE INDEX idx_deliveries_sent_at ON deliveries (sent_at) "
               "WHERE sent_at IS NOT NULL")
    db.execute("DROP INDEX IF EXISTS idx_deliveries_recipient_id")
