"""exercise_situation: a professional's practices (profession, role, structure, emergency centre).

Revision ID: 0011
Revises: 0007
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exercise_situation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("professional_id", sa.Integer(), nullable=False),
        sa.Column("structure_id", sa.Integer(), nullable=False),
        sa.Column("profession_code", sa.Integer(), nullable=False),
        sa.Column("role_code", sa.String(length=16), nullable=True),
        sa.Column("emergency_centre", sa.Boolean(), nullable=False,
                  server_default=sa.false()),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["professional_id"], ["professional.id"]),
        sa.ForeignKeyConstraint(["structure_id"], ["structure.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("professional_id", "structure_id", "profession_code",
                            name="uq_situation_pro_structure_profession"),
    )
    op.create_index("ix_exercise_situation_professional_id", "exercise_situation",
                    ["professional_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_exercise_situation_professional_id", table_name="exercise_situation")
    op.drop_table("exercise_situation")
