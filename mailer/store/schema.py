"""The schema, as sqlite-utils migrations: append new ones, never edit applied ones."""

from __future__ import annotations

from sqlite_utils import Database, Migrations

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
