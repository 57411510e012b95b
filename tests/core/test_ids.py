"""Identifiers: Luhn-checked registers, structure prefixes, INS keys, the profession table."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pki import ids
from pki.errors import InvalidIdentifier, UnknownProfession


def test_luhn_known_values() -> None:
    # FINESS 750712184 (AP-HP headquarters) and SIREN 732829320 carry valid Luhn digits.
    assert ids.luhn_valid("750712184")
    assert ids.luhn_valid("732829320")
    assert not ids.luhn_valid("750712185")


@given(st.text(alphabet="0123456789", min_size=10, max_size=10))
def test_luhn_complete_always_valid_and_unique(body: str) -> None:
    full = ids.luhn_complete(body)
    assert ids.luhn_valid(full)
    assert sum(ids.luhn_valid(body + d) for d in "0123456789") == 1


def test_rpps_validation() -> None:
    good = ids.luhn_complete("1000345678")
    assert ids.validate_rpps(f" {good} ") == good
    assert ids.national_id(good) == "8" + good
    wrong = good[:-1] + str((int(good[-1]) + 1) % 10)
    with pytest.raises(InvalidIdentifier, match="check digit"):
        ids.validate_rpps(wrong)
    for bad in ("", "123", "1000345678a", "١٠٠٠٣٤٥٦٧٨٦"):
        with pytest.raises(InvalidIdentifier):
            ids.validate_rpps(bad)


def test_structure_ids_carry_the_register_prefix() -> None:
    finess = ids.luhn_complete("75071218")
    assert ids.validate_structure("finess", finess) == "1" + finess
    siret = ids.luhn_complete("7328293200001")
    assert ids.validate_structure("SIRET", siret) == "3" + siret
    with pytest.raises(InvalidIdentifier, match="unknown structure register"):
        ids.validate_structure("NOPE", finess)
    with pytest.raises(InvalidIdentifier):
        ids.validate_structure("SIREN", "12345678")


def test_ins_key() -> None:
    # 97 - (NIR mod 97), computed independently here.
    nir = "1840275123456"
    key = 97 - int(nir) % 97
    assert ids.ins_key(nir) == f"{key:02d}"
    assert ids.validate_ins(nir + f"{key:02d}") == nir + f"{key:02d}"
    with pytest.raises(InvalidIdentifier, match="wrong key"):
        ids.validate_ins(nir + f"{(key % 97) + 1:02d}")


def test_ins_corsica() -> None:
    # 2A counts as 19 and 2B as 18 in the key computation.
    nir_2a = "184022A123456"
    assert ids.ins_key(nir_2a) == f"{97 - int('1840219123456') % 97:02d}"
    nir_2b = "184022B123456"
    assert ids.ins_key(nir_2b) == f"{97 - int('1840218123456') % 97:02d}"


@given(st.text(max_size=20))
def test_ins_parser_only_raises_invalid_identifier(text: str) -> None:
    with contextlib.suppress(InvalidIdentifier):
        ids.validate_ins(text)


def test_profession_table_is_data() -> None:
    table = ids.professions()
    assert {10, 21, 26, 28, 40, 50, 60, 70} <= set(table)
    assert ids.profession("10").label == "Médecin"
    with pytest.raises(UnknownProfession):
        ids.profession(99)
    with pytest.raises(UnknownProfession):
        ids.profession("x")
