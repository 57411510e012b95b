"""The patient space's own content: uploads, health data, secure messages, shared summaries,
documents hidden from one professional, and what an access reached (``access_event.subject``).

Message subjects, bodies and attachments are stored sealed (AES-256-GCM) by the services; the
migration only makes room for the bytes.

Revision ID: 0030
Revises: 0007
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0007"
branch_labels = None
depends_on = None


def _when(name: str, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("access_event") as batch:
        batch.add_column(sa.Column("subject", sa.String(length=32), nullable=True))
        batch.alter_column("action", existing_type=sa.String(length=16),
                           type_=sa.String(length=32), existing_nullable=False)
    op.create_table(
        "document_hidden_from",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("patient_id", sa.Integer(), sa.ForeignKey("patient.id"), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("document_id", sa.Integer(), nullable=False),
        sa.Column("professional_id", sa.Integer(), sa.ForeignKey("professional.id"),
                  nullable=False),
        _when("created_at"),
        sa.UniqueConstraint("kind", "document_id", "professional_id",
                            name="uq_document_hidden_from"),
    )
    op.create_index("ix_document_hidden_from_patient_id", "document_hidden_from", ["patient_id"])
    op.create_table(
        "patient_upload",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("patient_id", sa.Integer(), sa.ForeignKey("patient.id"), nullable=False),
        sa.Column("title", sa.String(length=256), nullable=False),
        sa.Column("media_type", sa.String(length=64), nullable=False),
        sa.Column("filename", sa.String(length=128), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("written_by", sa.String(length=32), nullable=False),
        _when("created_at"),
        sa.Column("hidden_by_patient", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_patient_upload_patient_id", "patient_upload", ["patient_id"])
    op.create_table(
        "health_entry",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("patient_id", sa.Integer(), sa.ForeignKey("patient.id"), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("value2", sa.Float(), nullable=True),
        sa.Column("unit", sa.String(length=16), nullable=True),
        sa.Column("on_date", sa.Date(), nullable=False),
        sa.Column("note", sa.String(length=512), nullable=True),
        sa.Column("written_by", sa.String(length=32), nullable=False),
        _when("created_at"),
    )
    op.create_index("ix_health_entry_patient_id", "health_entry", ["patient_id"])
    op.create_table(
        "conversation",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("patient_id", sa.Integer(), sa.ForeignKey("patient.id"), nullable=False),
        sa.Column("professional_id", sa.Integer(), sa.ForeignKey("professional.id"),
                  nullable=False),
        sa.Column("subject", sa.LargeBinary(), nullable=False),
        _when("created_at"),
    )
    op.create_index("ix_conversation_patient_id", "conversation", ["patient_id"])
    op.create_table(
        "message",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("conversation_id", sa.Integer(), sa.ForeignKey("conversation.id"),
                  nullable=False),
        sa.Column("author_kind", sa.String(length=16), nullable=False),
        sa.Column("author_id", sa.String(length=32), nullable=False),
        sa.Column("author_name", sa.String(length=256), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("attachment_name", sa.String(length=128), nullable=True),
        sa.Column("attachment_type", sa.String(length=64), nullable=True),
        sa.Column("attachment_size", sa.Integer(), nullable=True),
        sa.Column("attachment", sa.LargeBinary(), nullable=True),
        _when("created_at"),
    )
    op.create_index("ix_message_conversation_id", "message", ["conversation_id"])
    op.create_table(
        "profile_share",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("patient_id", sa.Integer(), sa.ForeignKey("patient.id"), nullable=False),
        sa.Column("professional_id", sa.Integer(), sa.ForeignKey("professional.id"),
                  nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=False),
        _when("created_at"),
        _when("expires_at"),
        _when("revoked_at", nullable=True),
    )
    op.create_index("ix_profile_share_patient_id", "profile_share", ["patient_id"])


def downgrade() -> None:
    for table in ("profile_share", "message", "conversation", "health_entry", "patient_upload",
                  "document_hidden_from"):
        op.drop_table(table)
    with op.batch_alter_table("access_event") as batch:
        batch.drop_column("subject")
        batch.alter_column("action", existing_type=sa.String(length=32),
                           type_=sa.String(length=16), existing_nullable=False)
