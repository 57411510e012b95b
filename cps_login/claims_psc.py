"""The claims of a professional as Pro Santé Connect gives them (ID token, userinfo, access token).

``psc_claims(session, rpps, organisation=..., auth=...)`` reads the directory (the
professional, their exercise situations) and says how they authenticated:

* ``SubjectNameID`` / ``preferred_username``: the national identifier ``8`` + RPPS;
* ``SubjectRefPro``: ``codeCivilite`` and ``exercices``, one per profession, each with its
  ``activities`` (one per exercise situation: ``raisonSocialeSite``, ``numeroFinessSite`` /
  ``numeroSiretSite`` / ``numeroSirenSite``, ``identifiantStructure``, ``codeRole``...), in the
  field names of the PSC user-info document;
* ``SubjectOrganization`` / ``SubjectOrganizationID``: the structure the login acts for,
  picked by ``organisation`` (its national structure id or its bare FINESS/SIRET/SIREN
  number), or the only one when the professional has a single structure;
* ``acr`` / ``amr`` / ``Palier_Authentification`` / ``auth_time`` from the authenticator
  really used: only a key on a card, used after its PIN, carries the card level; a software key
  never does, whatever a caller puts in the context (docs/hardening.md, "Assurance").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cps_login.tokens import ASSURANCE_BY_KEY_STORAGE, Assurance
from pki import ids
from pki.errors import InvalidInput, NotFound
from pki.situations import ExerciseSituation, pick, situations_for
from pki.store.models import Professional

KEY_LOCATIONS = tuple(ASSURANCE_BY_KEY_STORAGE)        # card | hsm | software


class UnknownOrganisation(InvalidInput, ValueError):
    """The organisation asked for is not one of the professional's structures."""

    code = "unknown_organisation"


@dataclass(frozen=True)
class AuthContext:
    """How the holder authenticated, from the broker's proof check.

    Build it with :meth:`for_key_location` (the certificate's product category says where the
    key lives); ``acr``/``amr`` then follow from it, and a context that claims more than its
    key location allows is refused (ValueError) rather than passed on to a token.
    """

    key_location: str                  # card | hsm | software
    auth_time: int                     # unix seconds of the card proof
    acr: str
    amr: tuple[str, ...]
    palier: str

    def __post_init__(self) -> None:
        if self.key_location not in ASSURANCE_BY_KEY_STORAGE:
            raise ValueError(f"key location {self.key_location!r}: expected one of "
                             f"{', '.join(KEY_LOCATIONS)}")
        allowed = ASSURANCE_BY_KEY_STORAGE[self.key_location]
        if (self.acr, tuple(self.amr), self.palier) != (allowed.acr, allowed.amr,
                                                        allowed.palier):
            raise ValueError(f"a {self.key_location} key authenticates at acr {allowed.acr} "
                             f"amr {list(allowed.amr)}, not acr {self.acr} amr {list(self.amr)}")

    @classmethod
    def for_key_location(cls, key_location: str, auth_time: int) -> AuthContext:
        assurance: Assurance | None = ASSURANCE_BY_KEY_STORAGE.get(key_location)
        if assurance is None:
            raise ValueError(f"key location {key_location!r}: expected one of "
                             f"{', '.join(KEY_LOCATIONS)}")
        return cls(key_location, int(auth_time), assurance.acr, assurance.amr,
                   assurance.palier)

    @classmethod
    def from_token_claims(cls, claims: Mapping[str, Any]) -> AuthContext:
        """The context a broker access token records (``cps_key_location`` and
        ``auth_time``, written by the broker at the card login)."""
        return cls.for_key_location(str(claims.get("cps_key_location", "software")),
                                    int(claims["auth_time"]))


def _activity(s: ExerciseSituation) -> dict[str, Any]:
    number = s.structure_number
    return {
        "identifiantStructure": s.structure_id,
        "ancienIdentifiantDeLaStructure": s.structure_id,
        "numeroFinessSite": number if s.structure_id_type == "FINESS" else "",
        "numeroSiretSite": number if s.structure_id_type == "SIRET" else "",
        "numeroSirenSite": number if s.structure_id_type == "SIREN" else "",
        "raisonSocialeSite": s.structure_name,
        "codeRole": s.role_code or "",
        "centreRegulationUrgences": s.emergency_centre,
        "idSituation": s.situation_id,
    }


def subject_ref_pro(pro: Professional, situations: Sequence[ExerciseSituation]
                    ) -> dict[str, Any]:
    """``SubjectRefPro``: one ``exercice`` per profession, its situations as ``activities``;
    a professional without any situation has one exercice (their profession) and no activity."""
    codes = list(dict.fromkeys([s.profession_code for s in situations]
                               or [str(pro.profession_code)]))
    exercices = []
    for code in codes:
        try:
            label = ids.profession(code).label
        except InvalidInput:
            label = ""
        exercices.append({
            "codeProfession": code, "libelleProfession": label,
            "codeCategorieProfessionnelle": "C",          # civil (not military)
            "codeCiviliteDExercice": pro.exercise_civility or "",
            "nomDExercice": pro.surname, "prenomDExercice": pro.given_name,
            "activities": [_activity(s) for s in situations if s.profession_code == code],
        })
    return {"codeCivilite": pro.civility or "", "exercices": exercices}


def psc_claims(session: Session, rpps: str, *, organisation: str | None,
               auth: AuthContext) -> dict[str, Any]:
    """The PSC claims of ``rpps`` acting for ``organisation``; UnknownOrganisation for a
    structure that is not one of theirs, NotFound for a professional not in the directory."""
    rpps = ids.validate_rpps(rpps[1:] if len(rpps) == 12 and rpps[0] == "8" else rpps)
    pro = session.execute(select(Professional).where(Professional.rpps == rpps)
                          ).scalar_one_or_none()
    if pro is None:
        raise NotFound(f"no professional with RPPS {rpps}")
    situations = situations_for(session, rpps)
    try:
        chosen = pick(situations, organisation)
    except ValueError as exc:
        raise UnknownOrganisation(str(exc)) from None
    national_id = ids.national_id(rpps)
    claims: dict[str, Any] = {
        "sub": national_id,
        "SubjectNameID": national_id,
        "preferred_username": national_id,
        "given_name": pro.given_name,
        "family_name": pro.surname,
        "SubjectRole": sorted({s.profession_code for s in situations}
                              | {str(pro.profession_code)}),
        "SubjectRefPro": subject_ref_pro(pro, situations),
        "acr": auth.acr,
        "amr": list(auth.amr),
        "Palier_Authentification": auth.palier,
        "auth_time": auth.auth_time,
    }
    if chosen is not None:
        claims["SubjectOrganizationID"] = chosen.structure_id
        claims["SubjectOrganization"] = chosen.structure_name
    return claims
