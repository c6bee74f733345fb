"""Imported send logs: per-row values computed once at import, for the Duplicates reports

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 11:20:00.000000

An imported log never changes after its import (a re-import replaces the whole label in one
transaction), so what the duplicate reports used to compute per row on every page load is stored once:

- `address`: the normalized address (the email, else the lead id);
- `is_send`: the row counts as a send (no status, or a delivered one);
- `key_repeats`: its (campaign, lead, step) has more than one row in the label;
- `address_shared`: its address is reached through more than one lead record in the label;
- `address_multi_campaign`: its address is reached by more than one campaign in the label.

The three flags mark, over the whole label and every status, a superset of the rows any duplicate
report can need, whatever its time range or campaign filter, and they are constant over each report's
partition (a key, an address), so a report reads only the flagged rows, through the small partial
indexes below, instead of grouping the whole log. sendguard's import fills the columns
(sender/sendlog_import.py: derive_columns); this revision fills them for rows imported before it, with
the SQL the reports used until now (the same values for rows sendguard imported: it stored emails and
statuses already normalized).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# sendlog_import.DELIVERED_STATUSES as of this revision (frozen here: a migration must not follow code).
_DELIVERED = ("sent", "delivered", "success", "succeeded", "ok", "accepted", "unknown", "opened", "clicked",
              "replied")  # fmt: skip
_IS_SEND = "coalesce(lower(trim(status)), '') IN ('', {})".format(", ".join(f"'{s}'" for s in _DELIVERED))

# Row-value IN over an uncorrelated GROUP BY: both planners build the (small) set once, PostgreSQL a
# hashed subplan, SQLite an ephemeral index; only the few flagged rows are written a second time.
_FILL = (
    # constants only: _IS_SEND is built from the frozen list above
    "UPDATE imported_send_log SET address = coalesce(lower(trim(email)), lead), "  # noqa: S608
    f"is_send = ({_IS_SEND}), key_repeats = FALSE, address_shared = FALSE, address_multi_campaign = FALSE",
    """UPDATE imported_send_log SET key_repeats = TRUE WHERE (label, campaign, lead, step) IN (
        SELECT label, campaign, lead, step FROM imported_send_log
        GROUP BY label, campaign, lead, step HAVING count(*) > 1)""",
    """UPDATE imported_send_log SET address_shared = TRUE WHERE (label, address) IN (
        SELECT label, address FROM imported_send_log GROUP BY label, address HAVING min(lead) <> max(lead))""",
    """UPDATE imported_send_log SET address_multi_campaign = TRUE WHERE (label, address) IN (
        SELECT label, address FROM imported_send_log
        GROUP BY label, address HAVING min(campaign) <> max(campaign))""",
)

FLAGS = ("is_send", "key_repeats", "address_shared", "address_multi_campaign")

# (name, columns, flag): the reports' predicate is the bare flag, character for character, which both
# planners need to use a partial index.
PARTIAL_INDEXES = (
    ("ix_imported_repeats", ["label", "campaign", "lead", "step", "sent_at"], "key_repeats"),
    ("ix_imported_shared", ["label", "address", "campaign", "step", "sent_at"], "address_shared"),
    ("ix_imported_multi_campaign", ["label", "address", "sent_at"], "address_multi_campaign"),
)


def upgrade() -> None:
    # Nullable first (SQLite adds a NOT NULL column only with a default, and a default would let an
    # insert that forgets the columns pass with wrong flags), filled, then NOT NULL without default.
    with op.batch_alter_table("imported_send_log") as batch_op:
        batch_op.add_column(sa.Column("address", sa.String(length=320), nullable=True))
        for flag in FLAGS:
            batch_op.add_column(sa.Column(flag, sa.Boolean(), nullable=True))
    for statement in _FILL:
        op.execute(statement)
    with op.batch_alter_table("imported_send_log") as batch_op:
        batch_op.alter_column("address", existing_type=sa.String(length=320), nullable=False)
        for flag in FLAGS:
            batch_op.alter_column(flag, existing_type=sa.Boolean(), nullable=False)
    for name, columns, flag in PARTIAL_INDEXES:
        op.create_index(
            name,
            "imported_send_log",
            columns,
            postgresql_where=sa.text(flag),
            sqlite_where=sa.text(flag),
        )
    # Fresh statistics for the new columns (the import does the same after every load).
    op.execute("ANALYZE imported_send_log")


def downgrade() -> None:
    for name, _, _ in PARTIAL_INDEXES:
        op.drop_index(name, table_name="imported_send_log")
    with op.batch_alter_table("imported_send_log") as batch_op:
        for flag in reversed(FLAGS):
            batch_op.drop_column(flag)
        batch_op.drop_column("address")
