"""What every `cps-admin` command shares: the home, the store URL, output mode, the Authority.

The Authority (HSM session + store) is opened on first use and closed when the command ends, so
commands that need neither (``init``, ``--help``) never touch the token.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pki.config import Config
from pki.store.db import Store

if TYPE_CHECKING:   # imported when first used: `serve --role status` never loads the CA
    from pki.ca.authority import Authority


@dataclass
class AdminContext:
    home: Path
    db_url: str | None
    json_output: bool = False
    _authority: Authority | None = field(default=None, repr=False)
    _store: Store | None = field(default=None, repr=False)

    def config(self) -> Config:
        return Config.load(self.home)

    def authority(self) -> Authority:
        """The home's Authority, opened lazily (the HSM session only when a key is needed)."""
        if self._authority is None:
            from pki.ca.authority import Authority

            self._authority = Authority.open(self.home, self.db_url)
        return self._authority

    def store(self) -> Store:
        """The store alone, for commands that never sign (directory, audit, listings)."""
        if self._authority is not None:
            return self._authority.store
        if self._store is None:
            self._store = Store(self.config().effective_db_url(self.db_url))
        return self._store

    def close(self) -> None:
        if self._authority is not None:
            self._authority.close()
            self._authority = None
        if self._store is not None:
            self._store.dispose()
            self._store = None


pass_admin = click.make_pass_decorator(AdminContext)


def json_flag(func: Any) -> Any:
    """``--json`` on a listing/show command (also accepted before the command name)."""
    def _set(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.find_object(AdminContext).json_output = True  # type: ignore[union-attr]
        return value

    return click.option("--json", "json_output", is_flag=True, expose_value=False,
                        callback=_set, help="Machine-readable JSON on stdout.")(func)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def emit_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """A plain aligned table (text mode)."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def emit_record(data: Mapping[str, Any]) -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        click.echo(f"{key.ljust(width)}  {_cell(value)}")


def emit_json_stream(items: Iterable[Mapping[str, Any]]) -> None:
    """A JSON array written item by item (listings of millions of certificates)."""
    out = sys.stdout
    first = True
    out.write("[")
    for item in items:
        out.write("\n  " if first else ",\n  ")
        out.write(json.dumps(item, ensure_ascii=False, default=str))
        first = False
    out.write("\n]\n" if not first else "]\n")
    out.flush()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)
