"""ocsp_record and ocsp_responder: the pre-signed OCSP records the signer role writes and the
status replicas serve (docs/roles.md).

Revision ID: 0006
Revises: 0005
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ocsp_record",
        sa.Column("ca_id", sa.Integer(), sa.ForeignKey("ca.id"), nullable=False),
        sa.Column("responder_serial", sa.String(length=42), nullable=False),
        sa.Column("serial", sa.LargeBinary(), nullable=False),
        sa.Column("record", sa.LargeBinary(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("ca_id", "responder_serial", "serial"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_ocsp_record_seq", "ocsp_record", ["seq"], unique=False)
    op.create_table(
        "ocsp_responder",
        sa.Column("ca_id", sa.Integer(), sa.ForeignKey("ca.id"), nullable=False),
        sa.Column("responder_serial", sa.String(length=42), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("algorithm", sa.LargeBinary(), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("ca_id"),
    )


def downgrade() -> None:
    op.drop_table("ocsp_responder")
    op.drop_index("ix_ocsp_record_seq", table_name="ocsp_record")
    op.drop_table("ocsp_record")
