"""The claims the provider gives about a professional (ID token, userinfo): Pro Santé
Connect's (``cps_login.claims_psc.psc_claims``: exercise situations from the directory), with
``acr``/``amr``/``auth_time`` from the authenticator the card proof established."""

from __future__ import annotations

from typing import Any

from cps_login.claims_psc import AuthContext, psc_claims
from cps_login.oidc.subject import Subject
from pki.store.db import Store


def claims_for(store: Store, subject: Subject) -> dict[str, Any]:
    auth = AuthContext.for_key_location(subject.key_storage, subject.auth_time)
    with store.read() as session:
        claims = psc_claims(session, subject.rpps, organisation=subject.organisation,
                            auth=auth)
    claims["sub"] = subject.sub
    return claims
