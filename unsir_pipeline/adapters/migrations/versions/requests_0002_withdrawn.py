"""Deletion requests: status ``withdrawn`` (a request taken back before it ran).

Revision ID: requests_0002
Revises: requests_0001

The status check names every status, so it is replaced. SQLite cannot alter a constraint, and a
file written before migrations holds it unnamed, inline: there the table is rebuilt, rows, ``seq``
and indexes kept. PostgreSQL replaces the named constraint in place.
"""

import sqlalchemy as sa
from alembic import op

revision = "requests_0002"
down_revision = "requests_0001"
branch_labels = None
depends_on = None
# Every column the request store reads is as at requests_0001, which cannot hold a withdrawn
# request: a read-only copy at requests_0001 is read as it is (state_store's module docstring).
READ_COMPATIBLE = True

BEFORE = ("pending", "running", "done", "failed", "rejected")
AFTER = (*BEFORE, "withdrawn")
_COLUMNS = (
    "seq, id, classes, class_names, requested, requester, reason, status, attempts, batch_id, "
    "model_version, error, created_at, updated_at"
)


def _status_check(statuses: tuple[str, ...]) -> str:
    return f"status IN ({', '.join(repr(s) for s in statuses)})"


def _rebuild_sqlite(statuses: tuple[str, ...]) -> None:
    op.create_table(
        "requests_rebuilt",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("classes", sa.Text, nullable=False),
        sa.Column("class_names", sa.Text, nullable=False),
        sa.Column("requested", sa.Text, nullable=False),
        sa.Column("requester", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("batch_id", sa.Text),
        sa.Column("model_version", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False),
        sa.CheckConstraint(_status_check(statuses), name="requests_status_known"),
        sa.CheckConstraint("attempts >= 0", name="requests_attempts_nonnegative"),
        sqlite_autoincrement=True,
    )
    op.execute(f"INSERT INTO requests_rebuilt ({_COLUMNS}) SELECT {_COLUMNS} FROM requests")
    op.drop_table("requests")
    op.rename_table("requests_rebuilt", "requests")
    op.create_index("requests_status", "requests", ["status"])
    op.create_index("requests_batch", "requests", ["batch_id"])


def _replace_check(statuses: tuple[str, ...]) -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(statuses)
        return
    op.drop_constraint("requests_status_known", "requests", type_="check")
    op.create_check_constraint("requests_status_known", "requests", _status_check(statuses))


def upgrade() -> None:
    _replace_check(AFTER)


def downgrade() -> None:
    _replace_check(BEFORE)  # refused while a request is withdrawn
