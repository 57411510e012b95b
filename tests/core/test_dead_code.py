"""The names review found defined and never used (issue 17) stay gone — or, if one comes back,
something uses it. A word search over the source trees, definition lines excluded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TREES = ("pki", "cps_login", "cps_sign", "bench", "tests")
REVIEWED = ("validate_adeli", "AuditError", "count_professionals", "TokenSpec", "card_info",
            "CardInfo", "IssuingCa", "claims_time", "issuers_by_name", "_json_body")


def sources() -> dict[Path, str]:
    return {p: p.read_text("utf-8") for tree in TREES if (ROOT / tree).is_dir()
            for p in (ROOT / tree).rglob("*.py") if p != Path(__file__).resolve()}


@pytest.mark.parametrize("name", REVIEWED)
def test_defined_only_if_used(name: str) -> None:
    word = re.compile(rf"\b{re.escape(name)}\b")
    definition = re.compile(rf"^\s*(def|class)\s+{re.escape(name)}\b")
    defined = uses = 0
    for text in sources().values():
        for line in text.splitlines():
            if word.search(line):
                if definition.match(line):
                    defined += 1
                else:
                    uses += 1
    assert not defined or uses, f"{name} is defined but nothing uses it"
