"""`bench-populate`: a synthetic population issued through the real batched issuance path.

N certificates for ceil(N/2) synthetic professionals (an authentication and a signature
certificate each), optionally a fraction of them revoked through the lifecycle's batched path
(``lifecycle.change_many``: row update + ``status_event`` + one audit record per batch).

Subject keys come from a small pool of pre-generated RSA-2048 public keys: on a real card the key
is generated on the card, and generating 100k RSA keys here would take hours of CPU that says
nothing about the CA. Everything the CA does per certificate (directory lookup, profile build,
pkilint of a throw-away signature, HSM signature, storage with audit) is done for real.

Parallel mode runs K processes (multiprocessing "spawn": a fork would share the parent's PKCS#11
session, which PKCS#11 forbids); each opens its own HSM session and store connection. Timing
starts when every worker is warmed up (token logged in, lint validators built), so the figure is
the steady-state rate, not interpreter start-up.
"""

from __future__ import annotations

import multiprocessing
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from pki import directory, ids
from pki.ca import lifecycle
from pki.ca.authority import Authority, IssueRequest
from pki.ca.lint import lint_certificate
from pki.errors import InvalidInput, PkiError
from pki.store.models import Certificate

ACTOR = "bench-populate"
KEY_POOL_SIZE = 8
REVOKE_BATCH = 500
# Mix of reasons used for synthetic revocations (certificateHold puts the certificate on hold).
REVOCATION_MIX = ("keyCompromise", "superseded", "cessationOfOperation", "affiliationChanged",
                  "privilegeWithdrawn", "unspecified", "certificateHold")
_GIVEN = ("Jeanne", "Louis", "Camille", "Hugo", "Léa", "Nathan", "Chloé", "Lucas", "Inès",
          "Jules", "Manon", "Gabriel", "Zoé", "Raphaël", "Élise", "Arthur")
_SURNAMES = ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand",
             "Leroy", "Moreau", "Simon", "Laurent", "Lefèvre", "Michel", "Garcia", "Fournier")


@dataclass(frozen=True)
class PopulateResult:
    certificates: int
    professionals: int
    revoked: int
    held: int
    workers: int
    issue_seconds: float        # steady-state issuance wall time (all workers)
    revoke_seconds: float
    total_seconds: float        # everything, including directory, key pool and start-up

    @property
    def rate(self) -> float:
        """Certificates per second over the issuance phase."""
        return self.certificates / self.issue_seconds if self.issue_seconds > 0 else 0.0


def key_pool(size: int = KEY_POOL_SIZE) -> list[rsa.RSAPublicKey]:
    return [rsa.generate_private_key(65537, 2048).public_key() for _ in range(size)]


def synthetic_professionals(auth: Authority, count: int) -> list[directory.ProfessionalEntry]:
    """``count`` professionals with fresh, valid, unused RPPS numbers (prefix 9)."""
    codes = sorted(ids.professions())
    wanted: dict[str, None] = {}
    while len(wanted) < count:
        batch = {ids.luhn_complete("9" + f"{secrets.randbelow(10**9):09d}")
                 for _ in range(count - len(wanted))}
        taken = directory.existing_rpps(auth.store, batch)
        wanted.update(dict.fromkeys(sorted(batch - taken)))
    out = []
    for i, rpps in enumerate(list(wanted)[:count]):
        out.append(directory.ProfessionalEntry(
            rpps, codes[i % len(codes)], _GIVEN[i % len(_GIVEN)],
            _SURNAMES[(i // len(_GIVEN)) % len(_SURNAMES)]))
    return out


def requests_for(rpps: Sequence[str], keys: Sequence[rsa.RSAPublicKey],
                 count: int) -> Iterator[IssueRequest]:
    """auth then sign for each professional, ``count`` requests in all."""
    n = 0
    for i, number in enumerate(rpps):
        for profile in ("auth", "sign"):
            if n >= count:
                return
            yield IssueRequest(profile=profile, public_key=keys[(2 * i + n) % len(keys)],
                               rpps=number)
            n += 1


def revoke_batch(auth: Authority, serials: Sequence[str], *, actor: str = ACTOR,
                 reasons: Sequence[str] = REVOCATION_MIX) -> tuple[int, int]:
    """Revoke/hold active certificates, a mix of reasons; returns (revoked, held).

    Through the lifecycle (``lifecycle.change_many``: its transition rules, one ``status_event``
    per certificate, one audit record per batch, the listeners), one reason at a time. Only
    active certificates change: a second pass over the same serials changes nothing.
    """
    by_reason: dict[str, list[str]] = {}
    for i, serial in enumerate(serials):
        by_reason.setdefault(reasons[i % len(reasons)], []).append(serial)
    revoked = held = 0
    for reason, part in by_reason.items():
        event, reason = lifecycle.event_of(reason)
        # Only active ones: a certificate on hold is not revoked again by the synthetic mix.
        active: set[str] = set()
        with auth.store.read() as session:
            for i in range(0, len(part), REVOKE_BATCH):
                active.update(session.execute(select(Certificate.serial).where(
                    Certificate.serial.in_(part[i:i + REVOKE_BATCH]),
                    Certificate.status == "active")).scalars())
        wanted = [s for s in part if s in active]
        outcome = lifecycle.change_many(auth, wanted, event, reason, actor=actor,
                                        selection={"bench": "revoked-fraction"},
                                        batch_size=REVOKE_BATCH, skip_ineligible=True)
        if event == "hold":
            held += outcome.changed
        else:
            revoked += outcome.changed
    return revoked, held


def _pick_revocations(serials: Sequence[str], fraction: float) -> list[str]:
    k = round(len(serials) * fraction)
    if k <= 0:
        return []
    rng = secrets.SystemRandom()
    return rng.sample(list(serials), k)


def populate(auth: Authority, count: int, *, revoked_fraction: float = 0.0, workers: int = 1,
             pool_size: int = KEY_POOL_SIZE,
             progress: Callable[[int], None] | None = None) -> PopulateResult:
    """Create the directory entries, issue ``count`` certificates, revoke a fraction."""
    if count < 1:
        raise InvalidInput("--count must be at least 1")
    if not 0.0 <= revoked_fraction <= 1.0:
        raise InvalidInput("--revoked-fraction must be between 0 and 1")
    if workers < 1:
        raise InvalidInput("--workers must be at least 1")
    t0 = time.perf_counter()
    people = synthetic_professionals(auth, (count + 1) // 2)
    directory.insert_professionals_bulk(auth.store, people, action="bench.professionals",
                                        actor=ACTOR, clock=auth.clock)
    keys = key_pool(pool_size)
    rpps = [p.rpps for p in people]
    if workers == 1:
        _warm_up(auth)
        t1 = time.perf_counter()
        serials = []
        # One process: build + lint + store on this thread, HSM signatures on another
        # (C_Sign runs without the GIL), so the two overlap.
        for issued in auth.issue_many(requests_for(rpps, keys, count), actor=ACTOR):
            serials.append(issued.serial)
            if progress is not None:
                progress(1)
        issue_seconds = time.perf_counter() - t1
        t2 = time.perf_counter()
        revoked, held = revoke_batch(auth, _pick_revocations(serials, revoked_fraction))
        revoke_seconds = time.perf_counter() - t2
        issued_count = len(serials)
    else:
        issued_count, issue_seconds, revoke_seconds, revoked, held = _run_parallel(
            auth, rpps, keys, count, revoked_fraction, workers, progress)
    return PopulateResult(issued_count, len(people), revoked, held, workers, issue_seconds,
                          revoke_seconds, time.perf_counter() - t0)


def _warm_up(auth: Authority) -> None:
    """Log in to the token, load the issuing keys, build the lint validators."""
    for ca in auth.issuing_cas():
        auth.hsm.key(ca.key_label)
    lint_certificate(auth.issuing_cas()[0].der)


# --- parallel mode ---------------------------------------------------------------------

def _split(items: Sequence[str], parts: int) -> list[list[str]]:
    return [list(items[i::parts]) for i in range(parts)]


def _run_parallel(auth: Authority, rpps: Sequence[str], keys: Sequence[rsa.RSAPublicKey],
                  count: int, revoked_fraction: float, workers: int,
                  progress: Callable[[int], None] | None
                  ) -> tuple[int, float, float, int, int]:
    ctx = multiprocessing.get_context("spawn")
    der_keys = [k.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo) for k in keys]
    slices = _split(rpps, workers)
    # Certificates per worker: two per professional, the odd one out (if any) on the last.
    counts = [2 * len(s) for s in slices]
    excess = sum(counts) - count
    for i in reversed(range(workers)):
        take = min(excess, counts[i])
        counts[i] -= take
        excess -= take
    barrier = ctx.Barrier(workers)
    results: Any = ctx.Queue()
    procs = [ctx.Process(target=_worker, name=f"bench-populate-{i}",
                         args=(str(auth.config.home), auth.store.url, slices[i], der_keys,
                               counts[i], revoked_fraction, barrier, results))
             for i in range(workers)]
    for proc in procs:
        proc.start()
    outcomes: list[dict[str, Any]] = []
    try:
        while len(outcomes) < workers:
            try:
                outcome = results.get(timeout=5)
            except Exception:  # queue.Empty: check the workers are still alive
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    barrier.abort()
                    raise PkiError(f"worker {dead[0].name} died "
                                   f"(exit {dead[0].exitcode})") from None
                continue
            if "error" in outcome:
                barrier.abort()
                raise PkiError(f"worker failed: {outcome['error']}")
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome["issued"])
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
    issue_seconds = (max(o["issue_end"] for o in outcomes)
                     - min(o["issue_start"] for o in outcomes))
    revoke_seconds = max(o["revoke_seconds"] for o in outcomes)
    return (sum(o["issued"] for o in outcomes), issue_seconds, revoke_seconds,
            sum(o["revoked"] for o in outcomes), sum(o["held"] for o in outcomes))


def _worker(home: str, db_url: str, rpps: list[str], der_keys: list[bytes], count: int,
            revoked_fraction: float, barrier: Any, results: Any) -> None:
    auth: Authority | None = None
    try:
        auth = Authority.open(Path(home), db_url)
        keys = []
        for der in der_keys:
            key = serialization.load_der_public_key(der)
            assert isinstance(key, rsa.RSAPublicKey)
            keys.append(key)
        _warm_up(auth)
        barrier.wait(timeout=120)
        start = time.time()
        serials = [c.serial for c in auth.issue_many(requests_for(rpps, keys, count),
                                                     actor=ACTOR)]
        end = time.time()
        revoked, held = revoke_batch(auth, _pick_revocations(serials, revoked_fraction))
        results.put({"issued": len(serials), "issue_start": start, "issue_end": end,
                     "revoke_seconds": time.time() - end, "revoked": revoked, "held": held})
    except PkiError as exc:
        results.put({"error": exc.message})
    except Exception as exc:  # report, never hang the parent
        results.put({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        if auth is not None:
            auth.close()
