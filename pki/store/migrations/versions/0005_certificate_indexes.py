"""Index the certificate foreign keys that deletes and card look-ups walk.

With foreign keys enforced, deleting certificate rows checks ``renewed_from_id`` references;
without an index that is one table scan per deleted row. ``card_id`` is what card blocking and
listing look up.

Revision ID: 0005
Revises: 0004
"""
from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificate") as batch_op:
        batch_op.create_index("ix_certificate_renewed_from", ["renewed_from_id"], unique=False)
        batch_op.create_index("ix_certificate_card", ["card_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("certificate") as batch_op:
        batch_op.drop_index("ix_certificate_card")
        batch_op.drop_index("ix_certificate_renewed_from")
