"""Deletion requests: the baseline table (the layout of the SQLite store before migrations).

Revision ID: requests_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "requests_0001"
down_revision = None
branch_labels = ("requests",)
depends_on = None

STATUSES = ("pending", "running", "done", "failed", "rejected")


def upgrade() -> None:
    op.create_table(
        "requests",
        # Insertion order: "oldest first".
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("classes", sa.Text, nullable=False),  # JSON list of ints
        sa.Column("class_names", sa.Text, nullable=False),  # JSON list of str, same order
        sa.Column("requested", sa.Text, nullable=False),  # JSON list of the raw strings asked for
        sa.Column("requester", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("batch_id", sa.Text),
        sa.Column("model_version", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.Text, nullable=False),  # ISO 8601, UTC
        sa.Column("updated_at", sa.Text, nullable=False),
        sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name="requests_status_known"),
        sa.CheckConstraint("attempts >= 0", name="requests_attempts_nonnegative"),
        sqlite_autoincrement=True,
    )
    op.create_index("requests_status", "requests", ["status"])
    op.create_index("requests_batch", "requests", ["batch_id"])


def downgrade() -> None:
    op.drop_table("requests")
