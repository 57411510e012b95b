"""Publish CRLs: scope, numbers and times per CA; one transaction per publication.

Scopes. An issuing CA with ``crl.shards`` = N > 1 publishes N partition CRLs, each with a critical
issuingDistributionPoint naming exactly the URL its certificates carry in their CRL distribution
point (pki.urls), plus one delta CRL per partition (same IDP, as RFC 5280 §5.2.4 requires of a
delta and its base); beside them, the complete CRL (no IDP, every entry of every partition) and
its delta stay at the unpartitioned URLs. With N = 1 it publishes one classic CRL without IDP
and its delta. Root CAs publish a classic full CRL only (the ARL their issuing CAs' certificates
point to).

Transaction. The CRL numbers are reserved (``UPDATE ca SET crl_number = crl_number + n``), the
revoked rows are streamed, every CRL of the publication is linted, then signed in the HSM, then
stored with its audit record, all in one transaction: a lint finding or an HSM error stores
nothing and consumes no number. A full CRL streams its rows in a read transaction first, and
again inside the write transaction only if a status change of the CA committed in between.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from sqlalchemy import func
from sqlalchemy.orm import Session

from pki import audit, urls
from pki.clock import Clock, utc_seconds
from pki.config import Config
from pki.crl import builder, source
from pki.crl.builder import CrlFields, EntryBuffer, Signer
from pki.crl.scope import ROOT_ROLE as ROOT_ROLE  # re-exported: CLI, tests
from pki.crl.scope import CaView as CaView
from pki.crl.scope import scopes as scopes
from pki.errors import InvalidInput, NotFound
from pki.store.db import Store
from pki.store.models import Crl

# Delta CRLs list every change at or after (base thisUpdate - margin): a revocation stamped just
# before the base was generated may have committed just after its snapshot. Listing a change
# twice is harmless; missing one is not.
DELTA_SAFETY_MARGIN = dt.timedelta(minutes=10)

log = logging.getLogger(__name__)


class AuthorityView(Protocol):
    """What the publisher needs of pki.ca.authority.Authority."""

    @property
    def config(self) -> Config: ...

    @property
    def store(self) -> Store: ...

    @property
    def clock(self) -> Clock: ...

    def cas(self) -> Sequence[CaView]: ...

    def ca(self, slug: str) -> CaView: ...

    def signer(self, slug: str) -> Signer: ...


@dataclass(frozen=True)
class PublishedCrl:
    ca_slug: str
    kind: str                       # full | delta
    shard: int | None
    number: int
    base_number: int | None
    this_update: dt.datetime
    next_update: dt.datetime
    entries: int
    path: str                       # where pki.crl.http serves it
    der: bytes = field(repr=False)

    def summary(self) -> dict[str, Any]:
        return {"ca": self.ca_slug, "kind": self.kind, "shard": self.shard,
                "number": self.number, "base_number": self.base_number,
                "this_update": self.this_update.isoformat(),
                "next_update": self.next_update.isoformat(), "entries": self.entries,
                "size": len(self.der), "path": self.path,
                "sha256": hashlib.sha256(self.der).hexdigest()}


@dataclass
class _Plan:
    shard: int | None
    fields: CrlFields
    entries: EntryBuffer = field(default_factory=EntryBuffer)


def publish_full(auth: AuthorityView, slug: str) -> list[PublishedCrl]:
    """Full CRL(s) of one CA: one per partition.

    The entries are read and encoded in a read transaction first: at 10^6 entries that takes
    tens of seconds, and on SQLite a write transaction would hold the whole store's write lock
    meanwhile (every revocation and OCSP record waiting). The write transaction then reserves
    the numbers, lints, signs and stores; if a status change of the CA committed since the read,
    the entries are read again inside it (the old way), so a CRL never misses a change older
    than its number."""
    ca = auth.ca(slug)
    config = auth.config
    parts = scopes(config, ca)
    with_deltas = ca.role != ROOT_ROLE
    this_update = utc_seconds(auth.clock.now())
    next_update = this_update + dt.timedelta(hours=config.crl.validity_hours)

    def plans_for(first: int) -> dict[int | None, _Plan]:
        return {shard: _Plan(shard, CrlFields(
            issuer=ca.certificate, this_update=this_update, next_update=next_update,
            number=first + i,
            idp_uri=None if shard is None else urls.crl_url(config.base_url, slug, shard),
            only_user_certs=shard is not None,
            freshest_uri=(urls.crl_url(config.base_url, slug, shard, delta=True)
                          if with_deltas else None)))
            for i, shard in enumerate(parts)}

    with auth.store.read() as session:
        mark = source.last_event_id(session, ca.id)
        plans = plans_for(0)
        refused = _collect_full(session, ca, parts, plans)
    with auth.store.session() as session:
        first = source.allocate_numbers(session, ca.id, len(parts))
        if source.last_event_id(session, ca.id) != mark:     # changed meanwhile: read again
            plans = plans_for(first)
            refused = _collect_full(session, ca, parts, plans)
        for i, plan in enumerate(plans.values()):
            plan.fields = dataclasses.replace(plan.fields, number=first + i)
        for serial in refused:
            _refuse(session, auth, slug, serial, "full")
        return _sign_and_store(session, auth, ca, "full", list(plans.values()))


def _collect_full(session: Session, ca: CaView, parts: list[int | None],
                  plans: dict[int | None, _Plan]) -> list[str]:
    """Every entry of each scope into ``plans``; returns the serials kept from the floor."""
    complete = plans[None] if len(parts) > 1 else None   # beside the partitions
    floor: dict[str, source.Listed] = {}
    for shard in parts:
        undone = source.undone_revocations(session, ca.id, shard)
        plans[shard].entries.extend(e.row() for e in undone.values())
        if complete is not None and shard is not None:
            complete.entries.extend(e.row() for s, e in undone.items() if s not in floor)
        floor.update(undone)
    for batch in source.revoked_batches(session, ca.id, sharded=parts != [None]):
        for shard, rows in batch.items():
            if floor:      # a held row the floor already lists as revoked
                rows = [r for r in rows if r[0] not in floor]
            _plan_for(plans, shard, ca.slug).entries.extend(rows)
            if complete is not None:
                complete.entries.extend(rows)
    return list(floor)


def publish_delta(auth: AuthorityView, slug: str) -> list[PublishedCrl]:
    """Delta CRL(s) of one CA against the newest full CRL of each partition."""
    return publish_delta_tracked(auth, slug)[0]


def publish_delta_tracked(auth: AuthorityView, slug: str
                          ) -> tuple[list[PublishedCrl], set[int]]:
    """``publish_delta``, and the ids of the status events the deltas cover (for CrlService)."""
    ca = auth.ca(slug)
    if ca.role == ROOT_ROLE:
        raise InvalidInput(f"{slug} is a root CA: it publishes full CRLs only")
    config = auth.config
    parts = scopes(config, ca)
    this_update = utc_seconds(auth.clock.now())
    next_update = this_update + dt.timedelta(hours=config.crl.delta_validity_hours)

    def collect(session: Session, first: int, refused: list[tuple[str, str]]
                ) -> tuple[dict[int | None, _Plan], set[int]]:
        bases = {shard: source.latest(session, ca.id, "full", shard) for shard in parts}
        missing = [s for s, b in bases.items() if b is None]
        if missing:
            raise NotFound(f"no full CRL of {slug} to base a delta on "
                           f"(partition {missing[0]}); publish the full CRL first")
        since = min(b.this_update for b in bases.values() if b is not None) - DELTA_SAFETY_MARGIN
        changed, event_ids = source.changed_since(session, ca.id, since,
                                                  sharded=parts != [None])
        plans: dict[int | None, _Plan] = {}
        for i, shard in enumerate(parts):
            base = bases[shard]
            assert base is not None
            plans[shard] = _Plan(shard, CrlFields(
                issuer=ca.certificate, this_update=this_update, next_update=next_update,
                number=first + i, delta_base=base.number,
                idp_uri=None if shard is None else urls.crl_url(config.base_url, slug, shard),
                only_user_certs=shard is not None))
        for shard, rows in changed.items():
            _plan_for(plans, shard, slug).entries.extend(
                _delta_floor(session, ca, shard, rows, refused))
            if len(parts) > 1:     # the complete CRL's delta: every partition's changes
                plans[None].entries.extend(_delta_floor(session, ca, None, rows, refused))
        return plans, event_ids

    # Read and encode first (no write lock on SQLite: an incident's delta lists 600,000
    # holds), then number, sign and store; read again inside if anything changed meanwhile.
    refused: list[tuple[str, str]] = []
    with auth.store.read() as session:
        mark = (source.last_event_id(session, ca.id), source.latest_numbers(session).get(ca.id))
        plans, event_ids = collect(session, 0, refused)
    with auth.store.session() as session:
        first = source.allocate_numbers(session, ca.id, len(parts))
        now = (source.last_event_id(session, ca.id),
               source.latest_numbers(session).get(ca.id))
        if now != mark:
            refused = []
            plans, event_ids = collect(session, first, refused)
        for i, plan in enumerate(plans.values()):
            plan.fields = dataclasses.replace(plan.fields, number=first + i)
        for serial, claimed in refused:
            _refuse(session, auth, slug, serial, "delta", claimed)
        published = _sign_and_store(session, auth, ca, "delta", list(plans.values()))
    return published, event_ids


# Candidates of a delta (its rows that do not say revoked) looked up by byte search in the
# published CRLs; more are indexed. A search costs ~9 ms over a 10^6-entry base (49 MB), the
# index ~1.5 s: break-even near 170 candidates, kept lower for slower memory.
_SEARCH_UP_TO = 64


def _delta_floor(session: Session, ca: CaView, shard: int | None, rows: list[builder.Row],
                 refused: list[tuple[str, str]]) -> list[builder.Row]:
    """A delta's changed rows, checked against what was last published: removeFromCRL only for a
    certificate last listed on hold (RFC 5280 §5.3.1); a permanent revocation is listed again
    as it was, whatever the row now says (a store written around the lifecycle)."""
    published: list[bytes] | None = None
    codes: dict[str, int] | None = None
    out: list[builder.Row] = []
    candidates = sum(1 for row in rows if row[4] != "revoked")
    for row in rows:
        serial, status = row[0], row[4]
        if status == "revoked":
            out.append(row)
            continue
        if published is None:
            published = source.published_bases(session, ca.id, shard)
            if candidates > _SEARCH_UP_TO:     # an incident's burst: index once, not search
                codes = source.previous_codes(published)
        if codes is not None and (serial not in codes or codes[serial] in (
                source.HOLD_CODE, source.REMOVE_CODE)):
            previous = None if serial not in codes else source.Listed(serial, 0, b"",
                                                                      codes[serial])
        else:
            previous = source.previous_entry(published, serial)
        if previous is not None and previous.permanent:
            refused.append((serial, status))       # audited by the caller's write
            out.append(previous.row())
        elif status == "hold" or previous is not None:
            out.append(row)
        # else released before any CRL listed the hold: nothing to remove
    return out


def _refuse(session: Session, auth: AuthorityView, slug: str, serial: str, kind: str,
            claimed: str = "not revoked") -> None:
    log.critical("certificate %s of %s was published as revoked but the store now says %s: "
                 "the %s CRL keeps the revocation", serial, slug, claimed, kind)
    audit.append(session, "crl.status_refused", serial,
                 {"ca": slug, "crl": kind, "claimed": claimed}, clock=auth.clock)


def _plan_for(plans: dict[int | None, _Plan], shard: int | None, slug: str) -> _Plan:
    plan = plans.get(shard)
    if plan is None:
        raise ValueError(f"certificate of {slug} in CRL partition {shard}, outside the "
                         f"configured {len(plans)} partition(s); crl.shards changed?")
    return plan


def _sign_and_store(session: Session, auth: AuthorityView, ca: CaView, kind: str,
                    plans: list[_Plan]) -> list[PublishedCrl]:
    signer = auth.signer(ca.slug)
    for plan in plans:      # every CRL of the publication is clean before the HSM signs one
        builder.lint_before_sign(plan.fields, plan.entries, signer,
                                 f"{kind} CRL {plan.fields.number} of {ca.slug}")
    out: list[PublishedCrl] = []
    for plan in plans:
        f = plan.fields
        count = plan.entries.count
        der = builder.sign(f, plan.entries, signer)
        _store(session, Crl(ca_id=ca.id, number=f.number, kind=kind, shard=plan.shard,
                            base_number=f.delta_base, this_update=f.this_update,
                            next_update=f.next_update, entries=count), der)
        published = PublishedCrl(
            ca_slug=ca.slug, kind=kind, shard=plan.shard, number=f.number,
            base_number=f.delta_base, this_update=f.this_update, next_update=f.next_update,
            entries=count, path=urls.crl_path(ca.slug, plan.shard, delta=kind == "delta"),
            der=der)
        details = published.summary()
        details.pop("path")
        audit.append(session, "crl.publish", ca.slug, details, clock=auth.clock)
        out.append(published)
    session.flush()
    return out


_BLOB_CHUNK = 1 << 20


def _store(session: Session, row: Crl, der: bytes) -> None:
    """Persist ``row`` with ``der``. On SQLite the bytes go in through incremental blob I/O into
    a zeroblob: binding a 50 MB value makes SQLite copy it once for the binding and once more to
    build the record, which would triple the memory a big publication needs."""
    conn = session.connection()
    if conn.dialect.name != "sqlite" or len(der) < _BLOB_CHUNK:
        row.der = der
        session.add(row)
        return
    row.der = func.zeroblob(len(der))
    session.add(row)
    session.flush()
    dbapi = cast(sqlite3.Connection, conn.connection.dbapi_connection)
    view = memoryview(der)
    with dbapi.blobopen("crl", "der", row.id) as blob:
        for start in range(0, len(der), _BLOB_CHUNK):
            blob.write(view[start:start + _BLOB_CHUNK])


def publish(auth: AuthorityView, *, delta: bool = False) -> list[PublishedCrl]:
    """What ``cps-admin crl publish [--delta]`` does: every issuing CA's full CRLs, or deltas.

    Roots are left out: their keys are in the offline root token, and their CRLs are signed only
    in a ceremony (``pki.ca.root.publish_root_crls``, ``cps-admin root crl``)."""
    out: list[PublishedCrl] = []
    for ca in auth.cas():
        if ca.role == ROOT_ROLE:
            continue
        out += publish_delta(auth, ca.slug) if delta else publish_full(auth, ca.slug)
    return out
