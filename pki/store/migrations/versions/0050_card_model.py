"""The card model recorded at personalisation, so an incident can select by chip.

``card.model``: the chip the certificates' keys live on, as the card presented it at
personalisation — the ATR (hex) of a PC/SC card, the PKCS#11 token's ``manufacturer / model``
for a token. Cards personalised before this revision have none (NULL). Indexed: an incident
selects every certificate of one model (``cps-admin cert revoke --card-model M``).

Revision ID: 0050
Revises: 0007
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0050"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("card") as batch_op:
        batch_op.add_column(sa.Column("model", sa.String(128), nullable=True))
        batch_op.create_index("ix_card_model", ["model"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("card") as batch_op:
        batch_op.drop_index("ix_card_model")
        batch_op.drop_column("model")
