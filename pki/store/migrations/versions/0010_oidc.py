"""oidc_client (relying services registered by the officer) and oidc_state (the provider's
shared short-lived state when no Redis is configured). See cps_login.oidc.models.

Revision ID: 0010
Revises: 0007
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oidc_client",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=True),
        sa.Column("redirect_uris", sa.Text(), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("ciba", sa.Boolean(), nullable=False),
        sa.Column("auth_method", sa.String(length=32), nullable=False),
        sa.Column("jwks", sa.Text(), nullable=True),
        sa.Column("tls_subject_dn", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id"),
    )
    op.create_table(
        "oidc_state",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_oidc_state_expires", "oidc_state", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_oidc_state_expires", table_name="oidc_state")
    op.drop_table("oidc_state")
    op.drop_table("oidc_client")
