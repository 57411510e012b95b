"""National identifiers: RPPS, ADELI, FINESS, SIREN, SIRET, INS; the profession table (data)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

from pki.errors import InvalidIdentifier, UnknownProfession

# Prefix of the national professional identifier (the certificate CN) per register.
NATIONAL_ID_PREFIX = {"ADELI": "0", "FINESS": "3", "SIREN": "4", "SIRET": "5", "RPPS_PRACTICE": "6",
                      "RPPS": "8"}
# Prefix of the structure identifier (organisation certificate OU) per register.
STRUCTURE_ID_PREFIX = {"FINESS": "1", "SIREN": "2", "SIRET": "3", "RPPS_PRACTICE": "4"}
_STRUCTURE_LENGTHS = {"FINESS": 9, "SIREN": 9, "SIRET": 14, "RPPS_PRACTICE": 11}


def luhn_valid(digits: str) -> bool:
    """True when the last digit is the Luhn check digit of the others."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def luhn_complete(body: str) -> str:
    """Append the Luhn check digit to ``body``."""
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable: one digit always completes a Luhn number")


def _digits(value: str, length: int, field: str) -> str:
    value = value.strip()
    if len(value) != length or not value.isascii() or not value.isdigit():
        raise InvalidIdentifier(f"{field} must be {length} digits, got {value!r}")
    return value


def validate_rpps(value: str) -> str:
    """An 11-digit RPPS number with a valid Luhn check digit, returned stripped."""
    rpps = _digits(value, 11, "RPPS")
    if not luhn_valid(rpps):
        raise InvalidIdentifier(f"RPPS {rpps}: wrong check digit")
    return rpps


def validate_adeli(value: str) -> str:
    adeli = _digits(value, 9, "ADELI")
    if not luhn_valid(adeli):
        raise InvalidIdentifier(f"ADELI {adeli}: wrong check digit")
    return adeli


def national_id(rpps: str) -> str:
    """The national professional identifier carried in the certificate CN: ``8`` + RPPS."""
    return NATIONAL_ID_PREFIX["RPPS"] + validate_rpps(rpps)


def validate_structure(register: str, number: str) -> str:
    """Validate a FINESS/SIREN/SIRET/RPPS-practice number; return its structure id."""
    register = register.upper()
    if register not in _STRUCTURE_LENGTHS:
        raise InvalidIdentifier(f"unknown structure register {register!r}; "
                                f"expected one of {', '.join(_STRUCTURE_LENGTHS)}")
    number = _digits(number, _STRUCTURE_LENGTHS[register], register)
    if not luhn_valid(number):
        raise InvalidIdentifier(f"{register} {number}: wrong check digit")
    return STRUCTURE_ID_PREFIX[register] + number


# --- INS (patient national health identifier) -------------------------------------------

INS_OID = "1.2.250.1.213.1.4.8"


def _nir_number(nir: str) -> int:
    # Corsica: departements 2A/2B count as 19/18 (i.e. 20 minus 1 or 2 million), the official rule.
    upper = nir.upper()
    corsica = {"2A": "19", "2B": "18"}.get(upper[5:7])
    if corsica is not None:
        upper = upper[:5] + corsica + upper[7:]
    if not upper.isdigit():
        raise InvalidIdentifier(f"NIR {nir!r} has non-digit characters")
    return int(upper)


def ins_key(nir: str) -> str:
    """The two-digit key of a 13-character NIR: 97 − (NIR mod 97)."""
    if len(nir) != 13 or not nir.isascii() or not nir[:5].isdigit() or not nir[7:].isdigit():
        raise InvalidIdentifier(f"NIR must be 13 characters, got {nir!r}")
    return f"{97 - (_nir_number(nir) % 97):02d}"


def validate_ins(value: str) -> str:
    """A 15-character INS (13-character NIR + 2-digit key); the key must match."""
    ins = value.strip().replace(" ", "").upper()
    if len(ins) != 15:
        raise InvalidIdentifier(f"INS must be 15 characters (NIR + key), got {value!r}")
    nir, key = ins[:13], ins[13:]
    if not key.isdigit():
        raise InvalidIdentifier(f"INS key must be 2 digits, got {key!r}")
    if ins_key(nir) != key:
        raise InvalidIdentifier(f"INS {ins}: wrong key")
    return ins


# --- professions (data) ------------------------------------------------------------------

@dataclass(frozen=True)
class Profession:
    code: int
    label: str
    label_en: str


@functools.cache
def professions() -> dict[int, Profession]:
    raw = json.loads(resources.files("pki.data").joinpath("professions.json").read_text("utf-8"))
    return {int(code): Profession(int(code), v["label"], v["label_en"])
            for code, v in raw["professions"].items()}


def profession(code: int | str) -> Profession:
    try:
        key = int(code)
    except (TypeError, ValueError):
        raise UnknownProfession(f"profession code must be a number, got {code!r}") from None
    table = professions()
    if key not in table:
        raise UnknownProfession(f"unknown profession code {code}; known: "
                                f"{', '.join(str(c) for c in sorted(table))}")
    return table[key]
