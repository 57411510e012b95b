"""The subject a code, a refresh session or a CIBA approval carries between replicas."""

from __future__ import annotations

from cps_login.oidc.subject import Subject

_SUBJECT = Subject(sub="810000000001", given_name="Alice", family_name="Martin",
                   profession_code=10, acr="eidas3", amr=("hwk", "pin"), palier="card",
                   auth_time=1_700_000_000, organisation=None, key_storage="card",
                   sid="s1", cert="MIIB")


def test_round_trip() -> None:
    assert Subject.from_json(_SUBJECT.to_json()) == _SUBJECT


def test_a_newer_replicas_extra_field_is_left_out() -> None:
    data = {**_SUBJECT.to_json(), "added_later": {"x": 1}}
    assert Subject.from_json(data) == _SUBJECT


def test_an_older_replicas_subject_has_no_certificate_hence_no_refresh() -> None:
    data = _SUBJECT.to_json()
    del data["cert"]
    old = Subject.from_json(data)
    assert old.cert == "" and old.certificate == b"" and old.sub == _SUBJECT.sub
