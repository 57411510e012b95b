"""A professional's civil title and title of exercise, as the RPPS extract gives them.

``professional.civility`` (the extract's "Code civilité": M, MME...) and
``professional.exercise_civility`` ("Code civilité d'exercice": DR, PR...): Pro Santé Connect
gives them as ``SubjectRefPro.codeCivilite`` and each exercice's ``codeCiviliteDExercice``.
Professionals entered before this revision have neither (NULL: the claims say "").

Revision ID: 0051
Revises: 0041
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0051"
down_revision = "0041"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("professional") as batch_op:
        batch_op.add_column(sa.Column("civility", sa.String(8), nullable=True))
        batch_op.add_column(sa.Column("exercise_civility", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("professional") as batch_op:
        batch_op.drop_column("exercise_civility")
        batch_op.drop_column("civility")
