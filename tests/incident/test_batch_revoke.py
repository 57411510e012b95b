"""Many certificates at once through the lifecycle: checked first, batched, audited, re-runnable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from pki import audit
from pki.ca import lifecycle
from pki.ca.authority import Authority
from pki.cli.admin import main
from pki.errors import InvalidTransition, NotFound
from pki.store.models import AuditRecord, Certificate, StatusEvent

from .conftest import STRONG, WEAK, add_cards


def _status(auth: Authority, serials: list[str]) -> dict[str, tuple[str, str | None]]:
    with auth.store.read() as s:
        return {r.serial: (r.status, r.reason) for r in s.execute(
            select(Certificate).where(Certificate.serial.in_(serials))).scalars()}


def _count(auth: Authority, model: type, *where: Any) -> int:
    with auth.store.read() as s:
        return int(s.execute(select(func.count()).select_from(model).where(*where))
                   .scalar_one())


def _batch_records(auth: Authority) -> list[dict[str, object]]:
    with auth.store.read() as s:
        return [json.loads(r.details) for r in s.execute(
            select(AuditRecord).where(AuditRecord.action.like("cert.%.batch"))
            .order_by(AuditRecord.seq)).scalars()]


def _run(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def test_batches_audited_with_sha256_and_listeners_hear_each(auth: Authority) -> None:
    serials = [s for _, pair in add_cards(auth, WEAK, 6) for s in pair]
    heard: list[list[str]] = []
    lifecycle.add_listener(auth, heard.append)
    outcome = lifecycle.change_many(auth, serials, "hold", selection={"card_model": WEAK},
                                    batch_size=5)
    assert (outcome.changed, outcome.batches, outcome.already) == (12, 3, 0)
    assert [len(h) for h in heard] == [5, 5, 2] and [s for h in heard for s in h] == serials
    assert set(_status(auth, serials).values()) == {("hold", "certificateHold")}
    assert _count(auth, StatusEvent, StatusEvent.event == "hold") == 12
    records = _batch_records(auth)
    assert len(records) == 3
    assert records[0]["selection"] == {"card_model": WEAK}
    assert records[0]["serials_sha256"] == lifecycle.serials_sha256(serials[:5])
    assert records[2]["serials_sha256"] == lifecycle.serials_sha256(serials[10:])
    assert {r["selection_sha256"] for r in records} == {lifecycle.serials_sha256(serials)}
    assert audit.verify(auth.store).ok


def test_listeners_belong_to_their_authority(incident_home: Path, auth: Authority) -> None:
    serials = [s for _, pair in add_cards(auth, WEAK, 1) for s in pair]
    other = Authority.open(incident_home)
    try:
        heard_here: list[list[str]] = []
        heard_there: list[list[str]] = []
        lifecycle.add_listener(auth, heard_here.append)
        lifecycle.add_listener(other, heard_there.append)
        lifecycle.hold(other, serials[0])
        assert heard_there == [[serials[0]]] and heard_here == []
    finally:
        other.close()
    # A new Authority (which may reuse the closed one's id()) starts with no listener.
    fresh = Authority.open(incident_home)
    try:
        assert fresh.status_listeners == []
    finally:
        fresh.close()


def test_killed_half_way_and_rerun_adds_no_double_entry(auth: Authority) -> None:
    serials = [s for _, pair in add_cards(auth, WEAK, 10) for s in pair]
    calls = {"n": 0}

    def die_after_two_batches(_serials: list[str]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt       # the officer's Ctrl-C, or a kill, after batch 2

    lifecycle.add_listener(auth, die_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        lifecycle.change_many(auth, serials, "revoke", "keyCompromise",
                              selection={"from_file": "x"}, batch_size=4)
    assert _count(auth, StatusEvent) == 8            # two committed batches, nothing else
    auth.status_listeners.clear()
    outcome = lifecycle.change_many(auth, serials, "revoke", "keyCompromise",
                                    selection={"from_file": "x"}, batch_size=4)
    assert (outcome.changed, outcome.already, outcome.batches) == (12, 8, 3)
    assert _count(auth, StatusEvent) == 20
    assert len(_batch_records(auth)) == 5
    assert set(_status(auth, serials).values()) == {("revoked", "keyCompromise")}
    # A third run finds everything done: no event, no audit record.
    again = lifecycle.change_many(auth, serials, "revoke", "keyCompromise",
                                  selection={"from_file": "x"}, batch_size=4)
    assert (again.changed, again.already, again.batches) == (0, 20, 0)
    assert _count(auth, StatusEvent) == 20 and len(_batch_records(auth)) == 5
    assert audit.verify(auth.store).ok


def test_transition_rules_hold_in_batches(auth: Authority) -> None:
    serials = [s for _, pair in add_cards(auth, WEAK, 2) for s in pair]
    lifecycle.revoke(auth, serials[1], "keyCompromise")
    with pytest.raises(InvalidTransition, match="revocation is final"):
        lifecycle.change_many(auth, serials, "hold", selection={}, batch_size=10)
    with pytest.raises(NotFound):
        lifecycle.change_many(auth, ["0ABC"], "hold", selection={})
    assert _status(auth, [serials[0]])[serials[0]] == ("active", None)   # batch rolled back
    planned = lifecycle.plan(auth, [*serials, "0abc", serials[0]], "hold", "certificateHold")
    assert planned.to_change == [serials[0], serials[2], serials[3]]
    assert len(planned.problems) == 2 and "0ABC" in planned.problems[1]


def test_cli_from_file_checks_every_line_first(incident_home: Path, auth: Authority,
                                               tmp_path: Path) -> None:
    serials = [s for _, pair in add_cards(auth, WEAK, 3) for s in pair]
    lifecycle.revoke(auth, serials[4], "superseded")
    listing = tmp_path / "serials.txt"
    listing.write_text("# incident 42\n" + "\n".join(s.lower() for s in serials) + "\n\n")
    code, _out, err = _run(incident_home, "cert", "revoke", "--from-file", str(listing),
                           "--reason", "certificateHold")
    assert code == 1 and err.startswith("error: 1 of 6 serial(s)") and "nothing applied" in err
    assert _count(auth, StatusEvent, StatusEvent.event == "hold") == 0
    listing.write_text("\n".join([*serials[:4], "not-hex", serials[5]]) + "\n")
    code, _out, err = _run(incident_home, "cert", "revoke", "--from-file", str(listing),
                           "--reason", "certificateHold")
    assert code == 1 and "line 5" in err and "nothing applied" in err
    listing.write_text("\n".join([*serials[:4], serials[5]]) + "\n")
    code, out, _err = _run(incident_home, "cert", "revoke", "--from-file", str(listing),
                           "--reason", "certificateHold", "--dry-run")
    assert code == 0 and "would suspend 5" in out
    assert _count(auth, StatusEvent, StatusEvent.event == "hold") == 0
    code, out, _err = _run(incident_home, "cert", "revoke", "--from-file", str(listing),
                           "--reason", "certificateHold", "--batch-size", "2")
    assert code == 0 and "suspended 5 certificate(s)" in out and "3 batch(es)" in out
    code, out, _err = _run(incident_home, "cert", "revoke", "--from-file", str(listing),
                           "--reason", "certificateHold")
    assert code == 0 and "suspended 0" in out and "5 already done" in out
    records = _batch_records(auth)
    assert records[0]["selection"]["from_file"] == "serials.txt"            # type: ignore[index]
    assert records[0]["selection"]["sha256"] == lifecycle.serials_sha256(   # type: ignore[index]
        [*serials[:4], serials[5]])


def test_cli_selection_by_model_date_issuer(incident_home: Path, auth: Authority) -> None:
    import datetime as dt

    old = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    weak_old = add_cards(auth, WEAK, 3, not_before=old)
    weak_new = add_cards(auth, WEAK, 2)
    strong = add_cards(auth, STRONG, 2, not_before=old)
    org = add_cards(auth, WEAK, 1, not_before=old, role="ORGANISATIONS")
    args = ["cert", "revoke", "--reason", "certificateHold"]
    code, out, _ = _run(incident_home, "--json", *args, "--card-model", WEAK, "--dry-run")
    assert code == 0 and json.loads(out)["count"] == 12
    code, out, _ = _run(incident_home, *args, "--card-model", WEAK, "--issued-before",
                        "2025-06-01", "--issuer", "AC IGC-SANTE FORT PERSONNES", "--dry-run")
    assert code == 0 and "would suspend 6 " in out
    code, _, err = _run(incident_home, *args, "--issuer", "nope", "--dry-run")
    assert code == 1 and "no issuing CA" in err
    code, _, err = _run(incident_home, *args)
    assert code == 2 and "a selection" in err
    code, out, _ = _run(incident_home, *args, "--card-model", WEAK, "--issued-before",
                        "2025-06-01")
    assert code == 0 and "suspended 8 certificate(s)" in out
    held = {s for _, pair in weak_old + org for s in pair}
    statuses = _status(auth, [s for _, p in weak_old + weak_new + strong + org for s in p])
    assert {s for s, (st, _r) in statuses.items() if st == "hold"} == held
    # The same selection again finds nothing left to do; the OCSP responder is never selected.
    code, out, _ = _run(incident_home, *args, "--card-model", WEAK, "--issued-before",
                        "2025-06-01")
    assert code == 0 and "suspended 0" in out
    from pki.ca import responder

    responder.ensure(auth, auth.issuing_ca("PERSONNES"))
    code, out, _ = _run(incident_home, "--json", *args, "--issuer",
                        "ac-igc-sante-fort-personnes", "--dry-run")
    assert json.loads(out)["count"] == 8


def test_cli_release_lifts_the_holds_of_a_selection(incident_home: Path, auth: Authority,
                                                    tmp_path: Path) -> None:
    weak = [s for _, pair in add_cards(auth, WEAK, 3) for s in pair]
    strong = [s for _, pair in add_cards(auth, STRONG, 1) for s in pair]
    lifecycle.change_many(auth, weak + strong, "hold", selection={})
    lifecycle.revoke(auth, weak[0], "keyCompromise")          # revoked for good meanwhile
    code, out, _ = _run(incident_home, "cert", "release", "--card-model", WEAK, "--dry-run")
    assert code == 0 and "would release 5 certificate(s)" in out
    code, out, _ = _run(incident_home, "cert", "release", "--card-model", WEAK)
    assert code == 0 and "released 5 certificate(s) in 1 batch(es)" in out
    statuses = _status(auth, weak + strong)
    assert statuses[weak[0]] == ("revoked", "keyCompromise")
    assert {statuses[s] for s in weak[1:]} == {("active", None)}
    assert {statuses[s] for s in strong} == {("hold", "certificateHold")}
    assert _count(auth, StatusEvent, StatusEvent.event == "release") == 5
    listing = tmp_path / "s.txt"
    listing.write_text("\n".join([*strong, weak[0]]) + "\n")
    code, _out, err = _run(incident_home, "cert", "release", "--from-file", str(listing))
    assert code == 1 and "revocation is final" in err and "nothing applied" in err
    assert {_status(auth, strong)[s] for s in strong} == {("hold", "certificateHold")}
    code, out, _ = _run(incident_home, "cert", "release", strong[0])
    assert code == 0 and "hold released" in out
