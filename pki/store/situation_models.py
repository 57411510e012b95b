"""Exercise situations of professionals (migration 0011_exercise_situations).

A situation is what the RPPS directory calls an *activité*: a professional practising one
profession, in one role, for one structure (FINESS / SIRET / SIREN site). The broker's
``SubjectRefPro`` lists them and a login for one of them gives ``SubjectOrganizationID``; a
situation at an emergency call centre (SAMU / SAS) is what grants the emergency access mode.
No rules here: ``pki.situations`` reads and writes, ``cps_login.access`` decides.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from pki.store.models import Base, UtcDateTime


class ExerciseSituationRow(Base):
    __tablename__ = "exercise_situation"
    __table_args__ = (UniqueConstraint("professional_id", "structure_id", "profession_code",
                                       name="uq_situation_pro_structure_profession"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    professional_id: Mapped[int] = mapped_column(ForeignKey("professional.id"), index=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id"))
    profession_code: Mapped[int] = mapped_column(Integer)
    role_code: Mapped[str | None] = mapped_column(String(16))
    emergency_centre: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(16))          # import | manual
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
