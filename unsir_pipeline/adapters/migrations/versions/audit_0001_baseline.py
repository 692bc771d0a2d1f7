"""The audit trail: the baseline table, append-only by trigger (the layout of the SQLite
trail before migrations).

Revision ID: audit_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "audit_0001"
down_revision = None
branch_labels = ("audit",)
depends_on = None

_APPEND_ONLY = "audit log is append-only: {} of audit records is refused"


def upgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        "audit",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.Text, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("request_ids", sa.Text, nullable=False),  # JSON list of str
        sa.Column("payload", sa.Text, nullable=False),  # canonical JSON object, hashed as stored
        sa.Column("idempotency_key", sa.Text, unique=True),
        sa.Column("prev_hash", sa.Text, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
    )
    if bind.dialect.name == "sqlite":
        for name, verb in (("audit_no_update", "UPDATE"), ("audit_no_delete", "DELETE")):
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {verb} ON audit BEGIN "
                f"SELECT RAISE(ABORT, '{_APPEND_ONLY.format(verb)}'); END"
            )
    else:
        op.execute(
            "CREATE FUNCTION unsir_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"RAISE EXCEPTION '{_APPEND_ONLY.format('%')}', TG_OP; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit FOR EACH ROW "
            "EXECUTE FUNCTION unsir_audit_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit FOR EACH ROW "
            "EXECUTE FUNCTION unsir_audit_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit FOR EACH STATEMENT "
            "EXECUTE FUNCTION unsir_audit_append_only()"
        )


def downgrade() -> None:
    op.drop_table("audit")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION unsir_audit_append_only()")
