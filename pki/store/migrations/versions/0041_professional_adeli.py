"""The ADELI number of a professional (optional), validated (9 digits, Luhn key) on entry.

Professionals registered in ADELI (before or beside RPPS) carry that number too; directories
and login tokens may need it. Professionals entered before this revision have none (NULL).

Revision ID: 0041
Revises: 0007
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0041"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("professional") as batch_op:
        batch_op.add_column(sa.Column("adeli", sa.String(9), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("professional") as batch_op:
        batch_op.drop_column("adeli")
