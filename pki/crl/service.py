"""The CRL side of the signer role: keeps the cache current and republishes on schedule.

``tick`` is meant to be called about once a second from a worker thread (it talks to the store
and the HSM; never call it on the event loop). When nothing is due it costs a few indexed queries
per CA. It publishes:

Issuing CAs only: a root CA's CRL is signed in the offline ceremony (``cps-admin root crl``) and
only served from the store here.

* a full CRL when a partition has none, or its nextUpdate is within ``republish_before_hours``
  (then a fresh delta on top of it, so the freshestCRL URL always matches the newest base);
* a full CRL (and its delta) once a burst of at least ``FULL_AFTER_CHANGES`` status changes
  since the newest full CRL has settled (none for ``delta_after_change_seconds``): after an
  incident suspends hundreds of thousands of certificates, relying parties fetch one new base
  instead of an ever larger delta; while such a burst is still coming in, no delta either
  (each would be larger than the last, every few seconds, for nothing OCSP does not already
  say);
* a delta ``delta_after_change_seconds`` after the first revocation, hold or release it does not
  cover yet (a burst of changes lands in one delta), when a partition has no delta on the newest
  base, or when the delta's nextUpdate is near (within ``republish_before_hours``, at most half
  the delta validity).

CRLs published by another process (``cps-admin crl publish``) are picked up from the store.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from pki.crl import publisher, source
from pki.crl.cache import PublicationCache
from pki.crl.publisher import ROOT_ROLE, AuthorityView, CaView, PublishedCrl
from pki.crl.reader import CrlReader
from pki.errors import PkiError
from pki.store.models import StatusEvent

log = logging.getLogger(__name__)

# Status changes since the newest full CRL from which a settled burst earns a new full CRL.
FULL_AFTER_CHANGES = 10_000


@dataclass(frozen=True)
class TickError:
    ca_slug: str
    error: PkiError


class CrlService(CrlReader):
    """The signer role's CRL side: serves from the cache (CrlReader) and publishes what is due
    for the issuing CAs."""

    def __init__(self, auth: AuthorityView, cache: PublicationCache | None = None) -> None:
        super().__init__(auth, cache)
        self.auth = auth
        self._covered: dict[int, set[int]] = {}   # CA id -> status events in its newest delta
        self.last_errors: list[TickError] = []

    def _remember(self, published: list[PublishedCrl], ca: CaView) -> None:
        for p in published:
            self.cache.put_crl(p.path, p.der, p.this_update, p.next_update,
                               delta=p.kind == "delta")
            self._known[ca.id] = max(self._known.get(ca.id, 0), p.number)

    # --- publication -------------------------------------------------------------------------
    def publish_full(self, ca: CaView) -> list[PublishedCrl]:
        out = publisher.publish_full(self.auth, ca.slug)
        self._remember(out, ca)
        if ca.role != ROOT_ROLE:
            out += self.publish_delta(ca)
        return out

    def publish_delta(self, ca: CaView) -> list[PublishedCrl]:
        out, covered = publisher.publish_delta_tracked(self.auth, ca.slug)
        self._covered[ca.id] = covered
        self._remember(out, ca)
        return out

    def tick(self, now: dt.datetime | None = None) -> list[PublishedCrl]:
        """Publish whatever is due at ``now`` (default: the authority's clock)."""
        now = now or self.auth.clock.now()
        self.last_errors = []
        self._refresh()
        out: list[PublishedCrl] = []
        for ca in self.auth.cas():
            if ca.role == ROOT_ROLE:
                continue        # the root key is offline: its CRL is a ceremony (root crl)
            try:
                if self._full_due(ca, now):
                    out += self.publish_full(ca)
                elif self._delta_due(ca, now):
                    out += self.publish_delta(ca)
            except PkiError as exc:
                log.error("CRL publication for %s failed: %s", ca.slug, exc.message)
                self.last_errors.append(TickError(ca.slug, exc))
        return out

    def _full_due(self, ca: CaView, now: dt.datetime) -> bool:
        margin = dt.timedelta(hours=self.auth.config.crl.republish_before_hours)
        oldest: dt.datetime | None = None
        with self.auth.store.read() as session:
            for shard in publisher.scopes(self.auth.config, ca):
                full = source.latest(session, ca.id, "full", shard)
                if full is None or full.next_update - now <= margin:
                    return True
                oldest = full.this_update if oldest is None else min(oldest, full.this_update)
            return oldest is not None and self._burst_settled(session, ca, oldest, now)

    def _burst_settled(self, session: Any, ca: CaView, since: dt.datetime,
                       now: dt.datetime) -> bool:
        """FULL_AFTER_CHANGES or more changes after ``since``, the last one long enough ago."""
        count, newest = session.execute(
            select(func.count(), func.max(StatusEvent.at))
            .where(StatusEvent.ca_id == ca.id, StatusEvent.at > since,
                   StatusEvent.event.in_(source.CHANGE_EVENTS))).one()
        if count < FULL_AFTER_CHANGES or newest is None:
            return False
        if newest.tzinfo is None:               # SQLite hands func.max back as text/naive
            newest = newest.replace(tzinfo=dt.UTC)
        quiet = dt.timedelta(seconds=self.auth.config.crl.delta_after_change_seconds)
        return bool(now - newest >= quiet)

    def _delta_due(self, ca: CaView, now: dt.datetime) -> bool:
        cfg = self.auth.config.crl
        margin = min(dt.timedelta(hours=cfg.republish_before_hours),
                     dt.timedelta(hours=cfg.delta_validity_hours) / 2)
        with self.auth.store.read() as session:
            oldest_delta: dt.datetime | None = None
            for shard in publisher.scopes(self.auth.config, ca):
                full = source.latest(session, ca.id, "full", shard)
                delta = source.latest(session, ca.id, "delta", shard)
                if full is None or delta is None or delta.base_number != full.number \
                        or delta.next_update - now <= margin:
                    return True
                if oldest_delta is None or delta.this_update < oldest_delta:
                    oldest_delta = delta.this_update
            assert oldest_delta is not None
            changes = source.recent_changes(session, ca.id,
                                            oldest_delta - publisher.DELTA_SAFETY_MARGIN)
        covered = self._covered.get(ca.id, set())
        pending = [c.at for c in changes if c.event_id not in covered]
        delay = dt.timedelta(seconds=cfg.delta_after_change_seconds)
        if len(pending) >= FULL_AFTER_CHANGES and now - max(pending) < delay:
            # A burst still coming in (an incident): no delta of a size that keeps growing
            # every few seconds; the full CRL and its delta follow once it settles, and OCSP
            # answers carry each change meanwhile.
            return False
        return bool(pending) and now - min(pending) >= delay
