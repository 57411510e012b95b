"""The CA package never imports the card middleware or the web apps (ARCHITECTURE.md: the only
package holding a private-key handle depends on neither); personalisation joins them above."""

from __future__ import annotations

import ast
from pathlib import Path

import pki

PKI = Path(pki.__file__).parent
FORBIDDEN_FROM_CA = ("pki.cards", "pki.issuance", "pki.http", "pki.roles", "pki.cli",
                     "cps_login", "flask")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-local imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def offending(package: Path, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted(package.rglob("*.py")):
        for name in sorted(imported_modules(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{package.name}/{path.relative_to(package)}: {name}")
    return bad


def test_ca_imports_neither_cards_nor_web() -> None:
    assert offending(PKI / "ca", FORBIDDEN_FROM_CA) == []


def test_cards_do_not_import_the_ca() -> None:
    assert offending(PKI / "cards", ("pki.ca", "pki.issuance")) == []


def test_the_scan_sees_a_function_local_import(tmp_path: Path) -> None:
    pkg = tmp_path / "ca"
    pkg.mkdir()
    (pkg / "x.py").write_text("def f():\n    from pki.cards import card\n")
    assert offending(pkg, FORBIDDEN_FROM_CA) == ["ca/x.py: pki.cards", "ca/x.py: pki.cards.card"]
