"""patient.totp_seed (the sealed TOTP seed) and patient_session_revoked (ended sessions).

Sealing needs the patient role's key (``secrets/totp.key``), which a migration is not given:
clear seeds left in ``patient.totp_secret`` are sealed into ``totp_seed`` and cleared by the
patient role when it starts (``PatientAuth.seal_clear_seeds``), before it answers anyone.

Revision ID: 0007
Revises: 0006
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("patient") as batch:
        batch.add_column(sa.Column("totp_seed", sa.LargeBinary(), nullable=True))
    op.create_table(
        "patient_session_revoked",
        sa.Column("sid", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sid"),
    )
    op.create_index("ix_patient_session_revoked_expires", "patient_session_revoked",
                    ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_patient_session_revoked_expires", table_name="patient_session_revoked")
    op.drop_table("patient_session_revoked")
    with op.batch_alter_table("patient") as batch:
        batch.drop_column("totp_seed")
