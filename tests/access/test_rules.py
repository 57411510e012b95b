"""Table-driven test of SPEC §8: every rule has at least one granted and one refused case.

A row is (id, request, record, expected granted, expected rule). The last test checks the
table itself: every refusing rule of cps_login.access.RULES appears refused in some row, and
for each rule there is a granting row that differs from its refused row only in the condition
the rule looks at (the "pair" column).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from cps_login.access import (
    RULES,
    AccessRequest,
    Actor,
    DocumentState,
    Matrix,
    RecordState,
    SpaceActions,
    decide,
    default_actions,
    default_matrix,
)

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
CHILD = "2950599123456" + "46"   # not key-checked here: decide() takes validated ids
PARENT = "1680275123456" + "11"
STRANGER_PATIENT = "2720175123456" + "33"
PHYSICIAN = Actor("professional", "810003456786", 10)
NURSE = Actor("professional", "810001234561", 60)
PHARMACIST = Actor("professional", "810009999991", 21)
SAMU_DOC = Actor("professional", "810005555550", 10, organisation_id="1750000019")
OTHER_DOC = Actor("professional", "810007777774", 10, organisation_id="1750000027")
UNLISTED = Actor("professional", "810008888883", 99)   # a profession the matrix lists not
ME = Actor("patient", CHILD)
MY_PARENT = Actor("patient", PARENT)
SOMEONE = Actor("patient", STRANGER_PATIENT)

REPORT = DocumentState(1, "report", PHYSICIAN.id)
MENTAL = DocumentState(2, "mental_health", PHYSICIAN.id)
HIDDEN = replace(REPORT, id=3, hidden_by_patient=True)
LATER = replace(REPORT, id=4, hidden_from_patient_until=NOW + dt.timedelta(days=30))
NOT_FOR_PARENTS = replace(REPORT, id=5, hidden_from_representatives=True)
ONLY_NOT_NURSE = replace(REPORT, id=6, category="lab", hidden_from=frozenset({NURSE.id}))
UPLOAD_NOT_NURSE = DocumentState(7, "patient_document", CHILD,
                                 hidden_from=frozenset({NURSE.id}))

BASE = RecordState(patient_id=CHILD, is_minor=True, care_team=frozenset({PHYSICIAN.id}),
                   consents={NURSE.id: NOW + dt.timedelta(days=1)},
                   representatives=frozenset({PARENT}),
                   emergency_centres=frozenset({"1750000019"}))


def req(actor: Actor, action: str = "read", doc: DocumentState | None = REPORT,
        mode: str = "normal", reason: str | None = None, at: dt.datetime = NOW) -> AccessRequest:
    return AccessRequest(actor, action, at, doc, mode, reason)  # type: ignore[arg-type]


# (case id, request, record, granted, rule, pair): ``pair`` names the rule a row exercises.
CASES = [
    # 1. block: absolute, in every mode
    ("block-refused", req(PHYSICIAN), replace(BASE, blocked=frozenset({PHYSICIAN.id})),
     False, "patient_blocked", "patient_blocked"),
    ("block-refused-even-break-glass", req(PHYSICIAN, mode="break_glass", reason="arrest"),
     replace(BASE, blocked=frozenset({PHYSICIAN.id})), False, "patient_blocked",
     "patient_blocked"),
    ("block-other-pro-granted", req(PHYSICIAN), replace(BASE, blocked=frozenset({NURSE.id})),
     True, "care_team", "patient_blocked"),
    # 2. documents hidden by the patient: author only
    ("hidden-non-author-refused", req(NURSE, doc=replace(HIDDEN, category="lab")), BASE,
     False, "hidden_by_patient", "hidden_by_patient"),
    ("hidden-author-granted", req(PHYSICIAN, doc=HIDDEN), BASE, True, "care_team",
     "hidden_by_patient"),
    ("hidden-even-in-emergency", req(SAMU_DOC, mode="emergency", reason="coma", doc=HIDDEN),
     BASE, False, "hidden_by_patient", "hidden_by_patient"),
    # 3. care relationship (normal mode)
    ("care-team-granted", req(PHYSICIAN), BASE, True, "care_team", "care_team"),
    ("no-relationship-refused", req(OTHER_DOC), BASE, False, "no_care_relationship",
     "no_care_relationship"),
    ("consent-granted", req(NURSE), BASE, True, "consent", "consent"),
    ("consent-expired-refused", req(NURSE, at=NOW + dt.timedelta(days=2)), BASE, False,
     "no_care_relationship", "consent"),
    ("consent-open-ended-granted", req(OTHER_DOC), replace(BASE, consents={OTHER_DOC.id: None}),
     True, "consent", "no_care_relationship"),
    # 4. profession x category matrix
    ("matrix-refused", req(PHARMACIST, doc=MENTAL), replace(BASE, care_team=frozenset(
        {PHARMACIST.id})), False, "profession_matrix", "profession_matrix"),
    ("matrix-granted", req(PHARMACIST, doc=replace(MENTAL, category="prescription")),
     replace(BASE, care_team=frozenset({PHARMACIST.id})), True, "care_team",
     "profession_matrix"),
    ("matrix-write-refused", req(NURSE, action="write", doc=replace(REPORT, category="lab")),
     BASE, False, "profession_matrix", "profession_matrix"),
    ("matrix-write-granted", req(NURSE, action="write", doc=replace(REPORT, author_id=NURSE.id)),
     BASE, True, "consent", "profession_matrix"),
    ("matrix-applies-in-break-glass", req(PHARMACIST, doc=MENTAL, mode="break_glass",
                                          reason="overdose"), BASE, False,
     "profession_matrix", "profession_matrix"),
    # 5. break-glass
    ("break-glass-granted", req(OTHER_DOC, mode="break_glass", reason="unconscious in ER"),
     BASE, True, "break_glass", "break_glass"),
    ("break-glass-no-reason-refused", req(OTHER_DOC, mode="break_glass", reason="  "), BASE,
     False, "reason_required", "reason_required"),
    ("break-glass-opposed-refused", req(OTHER_DOC, mode="break_glass", reason="unconscious"),
     replace(BASE, emergency_opposed=True), False, "emergency_opposed", "emergency_opposed"),
    # 6. emergency call centre (SAMU)
    ("samu-granted", req(SAMU_DOC, mode="emergency", reason="call 15: chest pain"), BASE,
     True, "emergency_centre", "emergency_centre"),
    ("samu-opposed-refused", req(SAMU_DOC, mode="emergency", reason="call 15"),
     replace(BASE, emergency_opposed=True), False, "emergency_opposed", "emergency_opposed"),
    ("samu-not-a-centre-refused", req(OTHER_DOC, mode="emergency", reason="call 15"), BASE,
     False, "not_emergency_centre", "not_emergency_centre"),
    ("samu-no-reason-refused", req(SAMU_DOC, mode="emergency"), BASE, False,
     "reason_required", "reason_required"),
    ("samu-centre-granted", req(SAMU_DOC, mode="emergency", reason="call 15"), BASE, True,
     "emergency_centre", "not_emergency_centre"),
    # 7. author-only visibility changes
    ("author-sets-visibility", req(PHYSICIAN, action="set_visibility"), BASE, True, "author",
     "author"),
    ("non-author-sets-visibility", req(NURSE, action="set_visibility"), BASE, False,
     "not_author", "not_author"),
    ("patient-sets-visibility", req(ME, action="set_visibility"), BASE, False, "not_author",
     "not_author"),
    # 8. patient on their own record
    ("patient-self-granted", req(ME), BASE, True, "patient_self", "patient_self"),
    ("patient-history-granted", req(ME, action="history", doc=None), BASE, True,
     "patient_self", "patient_self"),
    ("patient-other-record-refused", req(SOMEONE, action="history", doc=None), BASE, False,
     "not_representative", "patient_self"),
    ("patient-hidden-until-refused", req(ME, doc=LATER), BASE, False, "hidden_from_patient",
     "hidden_from_patient"),
    ("patient-hidden-until-passed", req(ME, doc=LATER, at=NOW + dt.timedelta(days=31)), BASE,
     True, "patient_self", "hidden_from_patient"),
    ("patient-sees-own-hidden-doc", req(ME, doc=HIDDEN), BASE, True, "patient_self",
     "patient_self"),
    ("patient-cannot-write", req(ME, action="write"), BASE, False, "patient_cannot_write",
     "patient_cannot_write"),
    ("patient-no-break-glass", req(ME, mode="break_glass", reason="x"), BASE, False,
     "professional_only", "professional_only"),
    # 9. minors and legal representatives
    ("parent-granted", req(MY_PARENT), BASE, True, "legal_representative",
     "legal_representative"),
    ("parent-controls-granted", req(MY_PARENT, action="control", doc=None), BASE, True,
     "legal_representative", "legal_representative"),
    ("non-parent-refused", req(SOMEONE, action="control", doc=None), BASE, False,
     "not_representative", "not_representative"),
    ("parent-of-adult-refused", req(MY_PARENT), replace(BASE, is_minor=False), False,
     "not_minor", "not_minor"),
    ("parent-hidden-doc-refused", req(MY_PARENT, doc=NOT_FOR_PARENTS), BASE, False,
     "hidden_from_representatives", "hidden_from_representatives"),
    ("child-sees-doc-hidden-from-parents", req(ME, doc=NOT_FOR_PARENTS), BASE, True,
     "patient_self", "hidden_from_representatives"),
    ("parent-hidden-until-refused", req(MY_PARENT, doc=LATER), BASE, False,
     "hidden_from_patient", "hidden_from_patient"),
    # 10. unknown actions / professional-only
    ("pro-history-refused", req(PHYSICIAN, action="history", doc=None), BASE, False,
     "unknown_action", "unknown_action"),
    ("bogus-action-refused", req(PHYSICIAN, action="delete"), BASE, False, "unknown_action",
     "unknown_action"),
    ("pro-list-granted", req(PHYSICIAN, action="list", doc=None), BASE, True, "care_team",
     "unknown_action"),
    ("pro-only-normal-granted", req(ME, action="list", doc=None), BASE, True, "patient_self",
     "professional_only"),
    ("patient-read-granted-vs-write", req(ME, action="read"), BASE, True, "patient_self",
     "patient_cannot_write"),
    # counterparts, so that every rule has a granted and a refused row of its own
    ("care-team-refused-when-not-member", req(OTHER_DOC), BASE, False,
     "no_care_relationship", "care_team"),
    ("break-glass-not-asked-refused", req(OTHER_DOC), BASE, False, "no_care_relationship",
     "break_glass"),
    ("reason-given-granted", req(OTHER_DOC, mode="break_glass", reason="cardiac arrest"), BASE,
     True, "break_glass", "reason_required"),
    ("not-opposed-granted", req(SAMU_DOC, mode="emergency", reason="call 15"),
     replace(BASE, emergency_opposed=False), True, "emergency_centre", "emergency_opposed"),
    ("samu-normal-mode-refused", req(SAMU_DOC), BASE, False, "no_care_relationship",
     "emergency_centre"),
    ("author-refused-for-non-author", req(PHARMACIST, action="set_visibility"), BASE, False,
     "not_author", "author"),
    ("not-author-counterpart-granted", req(PHYSICIAN, action="set_visibility", doc=MENTAL),
     BASE, True, "author", "not_author"),
    ("legal-rep-refused-stranger", req(SOMEONE), BASE, False, "not_representative",
     "legal_representative"),
    ("not-representative-counterpart", req(MY_PARENT, action="history", doc=None), BASE, True,
     "legal_representative", "not_representative"),
    ("not-minor-counterpart", req(MY_PARENT, action="history", doc=None), BASE, True,
     "legal_representative", "not_minor"),
    ("patient-cannot-write-pro-can", req(PHYSICIAN, action="write"), BASE, True, "care_team",
     "patient_cannot_write"),
    # 11. the patient space's actions (cps_login/data/access_actions.json)
    ("hidden-from-one-pro-refused", req(NURSE, doc=ONLY_NOT_NURSE), BASE, False,
     "hidden_from_professional", "hidden_from_professional"),
    ("hidden-from-one-pro-other-granted", req(PHYSICIAN, doc=replace(
        ONLY_NOT_NURSE, author_id=OTHER_DOC.id)), BASE, True, "care_team",
     "hidden_from_professional"),
    ("upload-hidden-from-one-pro", req(NURSE, "read_upload", doc=UPLOAD_NOT_NURSE), BASE,
     False, "hidden_from_professional", "hidden_from_professional"),
    ("care-team-opens-conversation", req(PHYSICIAN, "open_conversation", None), BASE, True,
     "care_team", "not_care_team"),
    ("consented-cannot-open-conversation", req(NURSE, "open_conversation", None), BASE, False,
     "not_care_team", "not_care_team"),
    ("blocked-cannot-open-conversation", req(PHYSICIAN, "open_conversation", None),
     replace(BASE, blocked=frozenset({PHYSICIAN.id})), False, "patient_blocked",
     "patient_blocked"),
    ("no-conversation-in-break-glass", req(OTHER_DOC, "open_conversation", None,
                                           mode="break_glass", reason="arrest"), BASE, False,
     "mode_not_allowed", "mode_not_allowed"),
    ("patient-cannot-open-conversation", req(ME, "open_conversation", None), BASE, False,
     "professional_only", "professional_only"),
    ("patient-replies", req(ME, "send_message", None), BASE, True, "patient_self",
     "patient_self"),
    ("parent-replies-for-minor", req(MY_PARENT, "send_message", None), BASE, True,
     "legal_representative", "legal_representative"),
    ("stranger-cannot-reply", req(SOMEONE, "send_message", None), BASE, False,
     "not_representative", "not_representative"),
    ("consented-reads-messages", req(NURSE, "read_messages", None), BASE, True, "consent",
     "consent"),
    ("stranger-pro-reads-no-messages", req(OTHER_DOC, "read_messages", None), BASE, False,
     "no_care_relationship", "no_care_relationship"),
    ("pro-reads-upload", req(PHARMACIST, "read_upload", None), replace(
        BASE, care_team=frozenset({PHARMACIST.id})), True, "care_team", "profession_matrix"),
    ("upload-break-glass-granted", req(OTHER_DOC, "read_upload", None, mode="break_glass",
                                       reason="unconscious"), BASE, True, "break_glass",
     "mode_not_allowed"),
    ("health-matrix-refused", req(UNLISTED, "read_health", None),
     replace(BASE, care_team=frozenset({UNLISTED.id})), False, "profession_matrix",
     "profession_matrix"),
    ("pro-cannot-contribute", req(PHYSICIAN, "contribute", None), BASE, False, "patient_only",
     "patient_only"),
    ("patient-contributes", req(ME, "contribute", None), BASE, True, "patient_self",
     "patient_only"),
    ("adult-child-parent-cannot-share", req(MY_PARENT, "share", None),
     replace(BASE, is_minor=False), False, "not_minor", "not_minor"),
    ("summary-shared-granted", req(OTHER_DOC, "read_summary", None),
     replace(BASE, shares={OTHER_DOC.id: NOW + dt.timedelta(days=1)}), True, "shared_summary",
     "shared_summary"),
    ("summary-expired-refused", req(OTHER_DOC, "read_summary", None, at=NOW + dt.timedelta(
        days=2)), replace(BASE, shares={OTHER_DOC.id: NOW + dt.timedelta(days=1)}), False,
     "not_shared", "shared_summary"),
    ("summary-not-shared-refused", req(PHYSICIAN, "read_summary", None), BASE, False,
     "not_shared", "not_shared"),
    ("summary-shared-with-care-team", req(PHYSICIAN, "read_summary", None),
     replace(BASE, shares={PHYSICIAN.id: NOW + dt.timedelta(hours=1)}), True,
     "shared_summary", "not_shared"),
    ("summary-shared-blocked-refused", req(OTHER_DOC, "read_summary", None),
     replace(BASE, shares={OTHER_DOC.id: NOW + dt.timedelta(days=1)},
             blocked=frozenset({OTHER_DOC.id})), False, "patient_blocked", "patient_blocked"),
    ("unknown-space-action-refused", req(ME, "erase_everything", None), BASE, False,
     "unknown_action", "unknown_action"),
]


@pytest.mark.parametrize(("case", "request_", "record", "granted", "rule", "pair"), CASES,
                         ids=[c[0] for c in CASES])
def test_rule(case: str, request_: AccessRequest, record: RecordState, granted: bool,
              rule: str, pair: str) -> None:
    decision = decide(request_, record)
    assert (decision.granted, decision.rule) == (granted, rule), case
    if granted and request_.actor.kind == "professional" and rule not in ("author",):
        assert decision.mode == request_.mode


def test_emergency_decisions_are_flagged() -> None:
    d = decide(req(OTHER_DOC, mode="break_glass", reason="unconscious"), BASE)
    assert d.granted and d.flagged and d.mode == "break_glass"
    assert not decide(req(PHYSICIAN), BASE).flagged


def test_every_rule_has_a_granted_and_a_refused_case() -> None:
    for rule in RULES:
        rows = [c for c in CASES if c[5] == rule]
        assert any(c[3] for c in rows), f"rule {rule}: no granted case"
        assert any(not c[3] for c in rows), f"rule {rule}: no refused case"
    decided = {c[4] for c in CASES}
    assert set(RULES) <= decided, f"rules never deciding: {set(RULES) - decided}"


def test_matrix_is_data_and_rejects_unknown_categories() -> None:
    m = default_matrix()
    assert m.allows(10, "mental_health", write=False)
    assert not m.allows(21, "mental_health", write=False)
    assert not m.allows(None, "report", write=False)
    assert not m.allows(10, "no_such_category", write=False)
    with pytest.raises(ValueError, match="unknown categories"):
        Matrix.from_json({"categories": {"a": ""}, "professions": {"10": {"read": ["b"]}}})


def test_decide_is_pure() -> None:
    request_, record = req(NURSE), BASE
    first = decide(request_, record)
    assert all(decide(request_, record) == first for _ in range(3))


def test_space_actions_are_data_and_checked() -> None:
    actions = default_actions()
    assert {"open_conversation", "send_message", "read_messages", "read_upload", "read_health",
            "contribute", "share", "read_summary"} <= actions.names
    with pytest.raises(ValueError, match="unknown rule"):
        SpaceActions.from_json({"actions": {"x": {"professional": {"refuse": "nope"},
                                                   "patient": {"allow": True}}}})
    with pytest.raises(ValueError, match="unknown relationships"):
        SpaceActions.from_json({"actions": {"x": {
            "professional": {"relationships": ["friend"]}, "patient": {"allow": True}}}})
    with pytest.raises(ValueError, match="unknown to the matrix"):
        SpaceActions.from_json({"actions": {"x": {
            "professional": {"relationships": ["care_team"], "category": "gossip"},
            "patient": {"allow": True}}}}, default_matrix())
    with pytest.raises(ValueError, match="built-in"):
        SpaceActions.from_json({"actions": {"read": {"professional": {"refuse": "patient_only"},
                                                      "patient": {"allow": True}}}})
    # the data decides: the same request under other data gives another answer
    consent_may_open = SpaceActions.from_json({"actions": {"open_conversation": {
        "professional": {"modes": ["normal"], "relationships": ["care_team", "consent"],
                         "category": "message", "write": True},
        "patient": {"refuse": "professional_only"}}}}, default_matrix())
    request_ = req(NURSE, "open_conversation", None)
    assert decide(request_, BASE).rule == "not_care_team"
    assert decide(request_, BASE, actions=consent_may_open).rule == "consent"
