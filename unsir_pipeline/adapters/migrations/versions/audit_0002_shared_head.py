"""The head anchor of a trail in a shared database.

Revision ID: audit_0002
Revises: audit_0001

A trail in PostgreSQL is extended from several machines, so its head anchor lives beside it in
the database (one row, updated in the appending transaction); a file would be seen by one
machine only. An embedded (SQLite) trail keeps its anchor in the file ``<log>.head``, and this
table stays empty there.
"""

import sqlalchemy as sa
from alembic import op

revision = "audit_0002"
down_revision = "audit_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
        sa.Column("mac", sa.Text),
        sa.CheckConstraint("id = 1", name="audit_head_single_row"),
    )


def downgrade() -> None:
    op.drop_table("audit_head")
