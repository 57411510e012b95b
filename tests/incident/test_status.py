"""`cps-admin incident status`: suspended / renewed / remaining per issuer and card model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from pki.ca import lifecycle
from pki.ca.authority import Authority, IssueRequest
from pki.cli.admin import main
from pki.store.models import Certificate, Professional

from .conftest import STRONG, WEAK, add_cards


def _status(home: Path, *args: str) -> Any:
    result = CliRunner().invoke(main, ["--home", str(home), "--json", "incident", "status",
                                       *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _renew_card(auth: Authority, card_serials: list[str]) -> list[str]:
    """What `cps-admin card renew` leaves in the store: successors on the same card (a new key),
    the predecessors revoked as superseded."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    out = []
    with auth.store.read() as s:
        rows = s.execute(select(Certificate, Professional.rpps).join(
            Professional, Certificate.professional_id == Professional.id).where(
            Certificate.serial.in_(card_serials))).all()
    for cert, rpps in rows:
        issued = auth.issue(IssueRequest(profile=cert.profile, public_key=key, rpps=rpps,
                                         card_id=cert.card_id, renewed_from_id=cert.id,
                                         key_storage="card"))
        out.append(issued.serial)
        lifecycle.revoke(auth, cert.serial, "superseded")
    return out


def test_campaign_counts_per_issuer_and_model(incident_home: Path, auth: Authority) -> None:
    weak = add_cards(auth, WEAK, 4)
    strong = add_cards(auth, STRONG, 2)
    untouched = add_cards(auth, WEAK, 1)
    assert _status(incident_home)["groups"] == []
    serials = [s for _, pair in weak + strong for s in pair]
    lifecycle.change_many(auth, serials, "hold", selection={"card_model": WEAK})
    report = _status(incident_home)
    groups = {g["card_model"]: g for g in report["groups"]}
    assert groups[WEAK]["suspended"] == 8 and groups[WEAK]["remaining"] == 8
    assert groups[WEAK]["cards"] == {"suspended": 4, "renewed": 0, "remaining": 4}
    assert groups[STRONG]["suspended"] == 4
    # Holders come in: one card renewed, one card's hold lifted (false alarm), one revoked.
    _renew_card(auth, weak[0][1])
    lifecycle.change_many(auth, weak[1][1], "release", selection={})
    lifecycle.revoke(auth, weak[2][1][0], "keyCompromise")
    report = _status(incident_home, "--card-model", WEAK)
    (group,) = report["groups"]
    assert group["issuer"] == "ac-igc-sante-fort-personnes"
    assert (group["suspended"], group["renewed"], group["remaining"], group["released"],
            group["revoked"]) == (8, 2, 3, 2, 1)
    assert group["cards"] == {"suspended": 4, "renewed": 1, "remaining": 2}
    assert report["total"]["suspended"] == 8
    # Successors are not "suspended" themselves, and never-held certificates are not counted.
    assert untouched[0][1][0] not in json.dumps(report)
    text = CliRunner().invoke(main, ["--home", str(incident_home), "incident", "status"])
    assert text.exit_code == 0 and "total" in text.stdout and "remaining" in text.stdout
    future = _status(incident_home, "--since", "2999-01-01")
    assert future["groups"] == []


def test_bad_since_is_one_error_line(incident_home: Path) -> None:
    result = CliRunner().invoke(main, ["--home", str(incident_home), "incident", "status",
                                       "--since", "yesterday"])
    assert result.exit_code == 1 and result.stderr.startswith("error: --since")
