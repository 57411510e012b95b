"""Runtime dependencies are the packages runtime code imports (a test- or bench-only package
goes to the dev extra), and pkilint is pinned to the version pki.ca.lintfast was checked
against (lintfast reaches into pkilint's internals; tests/ca/test_lint_fast.py compares them)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ("pki", "cps_login", "cps_sign")
# distribution -> module it is imported as
MODULE = {"python-pkcs11": "pkcs11", "pyscard": "smartcard", "pyhanko-certvalidator":
          "pyhanko_certvalidator", "argon2-cffi": "argon2", "pillow": "PIL", "pyjwt": "jwt",
          "psycopg": "psycopg"}
# loaded by name rather than imported: SQLAlchemy opens postgresql+psycopg:// URLs with it
LOADED_BY_URL = {"psycopg"}


def project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        data: dict[str, object] = tomllib.load(f)["project"]
    return data


def name_of(spec: str) -> str:
    return re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0].lower()


def runtime_imports() -> set[str]:
    found: set[str] = set()
    for tree in RUNTIME:
        for path in (ROOT / tree).rglob("*.py"):
            found.update(re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)",
                                    path.read_text("utf-8"), re.MULTILINE))
    return found


def test_every_runtime_dependency_is_imported_by_runtime_code() -> None:
    specs = project()["dependencies"]
    assert isinstance(specs, list)
    imported = runtime_imports()
    unused = [s for s in specs if name_of(s) not in LOADED_BY_URL
              and MODULE.get(name_of(s), name_of(s).replace("-", "_")) not in imported]
    assert unused == []
    names = [name_of(s) for s in specs]
    assert len(names) == len(set(names)), "a dependency listed twice"


def test_pkilint_pinned_to_the_checked_version() -> None:
    specs = project()["dependencies"]
    assert isinstance(specs, list)
    (pin,) = [s for s in specs if name_of(s) == "pkilint"]
    assert re.fullmatch(r"pkilint==\d+\.\d+\.\d+", pin.split("#")[0].strip())
    assert pin.split("==")[1].strip() == metadata.version("pkilint")
