"""The patient space's services on a real (SQLite) store: each rule of access_actions.json
through the service, each decision in the access history, and each bad input refused with a
clear message and nothing stored."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from cps_login.access import Actor
from cps_login.patient_checks import HealthInput, limits
from cps_login.patient_space import MessageBox, MessageUnreadable
from pki.errors import InvalidInput, NotAuthorised
from pki.store.models import AuditRecord
from pki.store.patient_models import (
    AccessEvent,
    Conversation,
    HealthEntry,
    Message,
    PatientUpload,
    ProfileShare,
)
from tests.patient_space.conftest import Space, pdf, pdf_with_script, png

TODAY = dt.date.today()


def me(ins: str) -> Actor:
    return Actor("patient", ins)


def count(space: Space, model: type) -> int:
    with space.store.read() as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def events(space: Space, actor_id: str) -> list[AccessEvent]:
    with space.store.read() as session:
        return list(session.execute(select(AccessEvent).where(AccessEvent.actor_id == actor_id)
                                    .order_by(AccessEvent.id)).scalars())


# --- messaging -------------------------------------------------------------------------------
def test_care_team_opens_patient_replies_professional_reads(space: Space) -> None:
    ins = space.enrol()
    conv = space.space.open_conversation(space.doctor, ins, "Résultats", "Vos résultats sont bons.")
    space.space.send(me(ins), ins, conv, "Merci docteur !")
    read = space.space.conversations(space.doctor.actor, ins)
    assert [m["body"] for m in read[0]["messages"]] == ["Vos résultats sont bons.",
                                                        "Merci docteur !"]
    assert read[0]["subject"] == "Résultats"
    reads = [e for e in events(space, space.doctor.national_id) if e.action == "read_messages"]
    assert [(e.granted, e.rule, e.subject) for e in reads] == [
        (True, "care_team", f"conversation:{conv}")]


def test_messages_are_sealed_at_rest(space: Space) -> None:
    ins = space.enrol()
    space.space.open_conversation(space.doctor, ins, "Sujet confidentiel", "Texte secret",
                                  ("scan.png", png()))
    with space.store.read() as session:
        msg = session.execute(select(Message)).scalar_one()
        conv = session.execute(select(Conversation)).scalar_one()
    assert b"Texte secret" not in msg.body and b"confidentiel" not in conv.subject
    assert msg.attachment is not None and b"PNG" not in msg.attachment
    other = type(space.space)(space.records, MessageBox(b"\0" * 32))
    with pytest.raises(MessageUnreadable):
        other.conversations(space.doctor.actor, ins)


def test_professional_outside_the_care_team_cannot_open(space: Space) -> None:
    ins = space.enrol()
    with pytest.raises(NotAuthorised) as refused:
        space.space.open_conversation(space.nurse, ins, "Bonjour", "Un message")
    assert refused.value.rule == "not_care_team"
    assert count(space, Conversation) == 0 and count(space, Message) == 0
    [event] = [e for e in events(space, space.nurse.national_id)]
    assert (event.action, event.granted, event.rule) == ("open_conversation", False,
                                                         "not_care_team")


def test_consent_reads_but_does_not_open(space: Space) -> None:
    ins = space.enrol()
    conv = space.space.open_conversation(space.doctor, ins, "S", "M")
    space.records.control(ins, ins, "consent", space.nurse.national_id)
    assert space.space.conversations(space.nurse.actor, ins)[0]["id"] == conv
    with pytest.raises(NotAuthorised, match="not_care_team"):
        space.space.send(space.nurse.actor, ins, conv, "Puis-je ?")
    assert count(space, Message) == 1


def test_patient_cannot_open_nor_reach_another_record(space: Space) -> None:
    ins, other = space.enrol(), space.enrol("Autre")
    conv = space.space.open_conversation(space.doctor, ins, "S", "M")
    with pytest.raises(NotAuthorised, match="not_representative"):
        space.space.send(me(other), ins, conv, "Je lis le dossier d'un autre")
    with pytest.raises(NotAuthorised, match="not_representative"):
        space.space.conversations(me(other), ins)
    assert count(space, Message) == 1


def test_message_to_a_record_the_professional_may_not_reach(space: Space) -> None:
    ins = space.enrol()
    space.records.control(ins, ins, "block", space.doctor.national_id)
    with pytest.raises(NotAuthorised, match="patient_blocked"):
        space.space.open_conversation(space.doctor, ins, "S", "M")
    assert count(space, Conversation) == 0


@pytest.mark.parametrize(("subject", "body", "attachment", "message"), [
    ("", "m", None, "subject is required"),
    ("s", "   ", None, "message is required"),
    ("s", "x" * 5001, None, "message is too long"),
    ("s", "m", ("virus.pdf", b"MZ\x90\x00 not a pdf"), "only PDF, PNG and JPEG"),
    ("s", "m", ("photo.pdf", png()), "named 'photo.pdf' but its content is image/png"),
    ("s", "m", ("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 1048576), "too large"),
])
def test_bad_messages_are_refused_and_nothing_stored(space: Space, subject: str, body: str,
                                                     attachment: tuple[str, bytes] | None,
                                                     message: str) -> None:
    ins = space.enrol()
    with pytest.raises(InvalidInput, match=message):
        space.space.open_conversation(space.doctor, ins, subject, body, attachment)
    assert count(space, Conversation) == 0 and count(space, Message) == 0


def test_attachment_download_is_in_the_history(space: Space) -> None:
    ins = space.enrol()
    sent = pdf()
    conv = space.space.open_conversation(space.doctor, ins, "Ordonnance", "Ci-joint",
                                         ("ordonnance.pdf", sent))
    message = space.space.conversations(me(ins), ins)[0]["messages"][0]
    assert message["attachment"]["media_type"] == "application/pdf"
    name, media_type, data = space.space.attachment(me(ins), ins, message["id"])
    assert (name, media_type, data) == ("ordonnance.pdf", "application/pdf", sent)
    assert any(e.action == "download" and e.subject == f"message:{message['id']}"
               for e in events(space, ins))
    assert conv


# --- the patient's documents ------------------------------------------------------------------
def test_patient_uploads_and_professional_reads(space: Space) -> None:
    ins = space.enrol()
    sent = pdf()
    up = space.space.upload(ins, ins, "Analyse de sang", "analyse.pdf", sent)
    listed = space.space.uploads(space.doctor.actor, ins)
    assert [(u["id"], u["written_by_patient"], u["media_type"]) for u in listed] == [
        (up, True, "application/pdf")]
    meta, data = space.space.read_upload(space.doctor.actor, ins, up, download=True)
    assert data == sent and meta["access_mode"] == "normal"
    assert [(e.action, e.rule, e.subject) for e in events(space, space.doctor.national_id)
            if e.subject and e.subject.startswith("upload")] == [
        ("list_uploads", "care_team", "uploads"), ("download", "care_team", f"upload:{up}")]
    with pytest.raises(NotAuthorised, match="no_care_relationship"):
        space.space.read_upload(space.nurse.actor, ins, up)


@pytest.mark.parametrize(("name", "data", "message"), [
    ("empty.pdf", b"", "empty"),
    ("huge.pdf", b"%PDF-1.7\n" + b"0" * (4 * 1024 * 1024), "too large"),
    ("script.sh", b"#!/bin/sh\nrm -rf /\n", "only PDF, PNG and JPEG"),
    ("image.jpg", png(), "named 'image.jpg' but its content is image/png"),
    ("fake.pdf", b"%PDF-1.4\ngarbage\n%%EOF\n", "the PDF cannot be read"),
    ("cut.pdf", pdf()[:-20], "truncated"),
    ("active.pdf", pdf_with_script(hidden=False), r"active content \(JS"),
    ("broken.png", png()[:30], "the image cannot be read"),
    ("hidden.pdf", pdf_with_script(hidden=True), r"active content \(JS"),
])
def test_bad_uploads_are_refused_and_nothing_stored(space: Space, name: str, data: bytes,
                                                    message: str) -> None:
    ins = space.enrol()
    with pytest.raises(InvalidInput, match=message):
        space.space.upload(ins, ins, "Titre", name, data)
    assert count(space, PatientUpload) == 0
    assert not [e for e in events(space, ins) if e.action == "contribute"]


def test_upload_limit_is_data() -> None:
    assert limits()["upload_max_bytes"] == 4 * 1024 * 1024


def test_hidden_from_one_professional_then_from_all(space: Space) -> None:
    ins = space.enrol()
    up = space.space.upload(ins, ins, "Photo", "photo.png", png())
    space.records.control(ins, ins, "consent", space.nurse.national_id)
    space.space.hide_from(ins, ins, "upload", up, space.nurse.national_id, True)
    assert space.space.uploads(space.nurse.actor, ins) == []
    with pytest.raises(NotAuthorised, match="hidden_from_professional"):
        space.space.read_upload(space.nurse.actor, ins, up)
    assert space.space.read_upload(space.doctor.actor, ins, up)[1] == png()
    space.space.set_upload_hidden(ins, ins, up, True)
    with pytest.raises(NotAuthorised, match="hidden_by_patient"):
        space.space.read_upload(space.doctor.actor, ins, up)
    # a professional's document hidden from one professional
    doc = space.records.write_document(space.doctor, ins, "lab", "Bilan", "…")
    space.space.hide_from(ins, ins, "document", doc, space.nurse.national_id, True)
    with pytest.raises(NotAuthorised, match="hidden_from_professional"):
        space.records.read_document(space.nurse, ins, doc)
    space.space.hide_from(ins, ins, "document", doc, space.nurse.national_id, False)
    assert space.records.read_document(space.nurse, ins, doc)["title"] == "Bilan"
    with space.store.read() as session:
        kinds = set(session.execute(select(AuditRecord.action)).scalars())
    assert {"patient.hide_from", "patient.show_to", "patient.hide_upload"} <= kinds


# --- health data -----------------------------------------------------------------------------
def test_health_entries_and_ranges(space: Space) -> None:
    ins = space.enrol()
    space.space.add_health(ins, ins, HealthInput("vaccination", "DTP", TODAY))
    space.space.add_health(ins, ins, HealthInput("allergy", "Pénicilline", TODAY))
    space.space.add_health(ins, ins, HealthInput("measure", "blood_pressure", TODAY, 125, 80))
    rows = space.space.health(space.doctor.actor, ins)
    assert {(r["kind"], r["name"]) for r in rows} == {("vaccination", "DTP"),
                                                       ("allergy", "Pénicilline"),
                                                       ("measure", "blood_pressure")}
    assert all(r["written_by_patient"] and r["written_by"] == ins for r in rows)
    assert [r["unit"] for r in rows if r["kind"] == "measure"] == ["mmHg"]


@pytest.mark.parametrize(("entry", "message"), [
    (HealthInput("measure", "weight", TODAY, 900), "outside the plausible range 0.3–400 kg"),
    (HealthInput("measure", "height", TODAY, 5), "outside the plausible range 20–260 cm"),
    (HealthInput("measure", "temperature", TODAY, None), "needs a value"),
    (HealthInput("measure", "blood_pressure", TODAY, 120, None), "two values"),
    (HealthInput("measure", "blood_pressure", TODAY, 80, 120), "below the systolic"),
    (HealthInput("measure", "iq", TODAY, 100), "unknown measure"),
    (HealthInput("vaccination", "  ", TODAY), "vaccine is required"),
    (HealthInput("vaccination", "BCG", TODAY + dt.timedelta(days=2)), "in the future"),
    (HealthInput("horoscope", "x", TODAY), "kind must be"),
])
def test_bad_health_entries_are_refused(space: Space, entry: HealthInput, message: str) -> None:
    ins = space.enrol()
    with pytest.raises(InvalidInput, match=message):
        space.space.add_health(ins, ins, entry)
    assert count(space, HealthEntry) == 0


def test_professionals_cannot_write_the_patients_content(space: Space) -> None:
    ins = space.enrol()
    # the service's patient entry points take an INS; a professional id is no patient's
    with pytest.raises(NotAuthorised, match="not_representative"):
        space.space.add_health(space.doctor.national_id, ins, HealthInput("allergy", "x", TODAY))
    assert count(space, HealthEntry) == 0


# --- shares ----------------------------------------------------------------------------------
def test_share_for_a_day_then_revoke(space: Space) -> None:
    ins = space.enrol()
    space.space.add_health(ins, ins, HealthInput("allergy", "Arachide", TODAY))
    with pytest.raises(NotAuthorised, match="not_shared"):
        space.space.summary(space.nurse, ins)
    shown = space.space.upload(ins, ins, "Carnet", "carnet.png", png())
    hidden = space.space.upload(ins, ins, "Privé", "prive.png", png())
    space.space.hide_from(ins, ins, "upload", hidden, space.nurse.national_id, True)
    share = space.space.share(ins, ins, space.nurse.national_id, 1)
    summary = space.space.summary(space.nurse, ins)
    assert [a["name"] for a in summary["allergies"]] == ["Arachide"]
    assert [d["id"] for d in summary["documents"]] == [shown]
    [listed] = space.space.shares(ins, ins)
    assert listed["active"] and listed["professional"] == space.nurse.national_id
    space.space.revoke_share(ins, ins, share)
    with pytest.raises(NotAuthorised, match="not_shared"):
        space.space.summary(space.nurse, ins)
    assert not space.space.shares(ins, ins)[0]["active"]
    uses = [(e.granted, e.rule) for e in events(space, space.nurse.national_id)
            if e.action == "read_summary"]
    assert uses == [(False, "not_shared"), (True, "shared_summary"), (False, "not_shared")]


@pytest.mark.parametrize(("days", "target", "message"), [
    (0, None, "1 to 365 days"), (400, None, "1 to 365 days"),
    (1, "123", "national id"), (1, "812345678901", "no professional"),
])
def test_bad_shares_are_refused(space: Space, days: int, target: str | None,
                                message: str) -> None:
    ins = space.enrol()
    with pytest.raises((InvalidInput, Exception), match=message):
        space.space.share(ins, ins, target or space.nurse.national_id, days)
    assert count(space, ProfileShare) == 0


def test_the_audit_chain_holds_after_every_kind_of_decision(space: Space) -> None:
    from pki import audit

    ins = space.enrol()
    conv = space.space.open_conversation(space.doctor, ins, "S", "M", ("a.png", png()))
    space.space.send(me(ins), ins, conv, "R")
    with pytest.raises(NotAuthorised):
        space.space.open_conversation(space.nurse, ins, "S", "M")
    space.space.upload(ins, ins, "T", "t.pdf", pdf())
    space.space.add_health(ins, ins, HealthInput("allergy", "Latex", TODAY))
    share = space.space.share(ins, ins, space.nurse.national_id, 7)
    space.space.summary(space.nurse, ins)
    space.space.revoke_share(ins, ins, share)
    report = audit.verify(space.store)
    assert report.ok and report.records >= 10, report


def test_a_record_holds_a_bounded_number_of_uploads(space: Space,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from cps_login import patient_checks

    ins = space.enrol()
    bounded = {**patient_checks.limits(), "uploads_max_per_record": 2}
    monkeypatch.setattr("cps_login.patient_space.limits", lambda: bounded)
    for n in range(2):
        space.space.upload(ins, ins, f"Doc {n}", "d.png", png())
    with pytest.raises(InvalidInput, match="already holds 2 of the patient's documents"):
        space.space.upload(ins, ins, "Doc 3", "d.png", png())
    assert count(space, PatientUpload) == 2
