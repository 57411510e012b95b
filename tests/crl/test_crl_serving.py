"""Serving (HTTP handlers over the cache), the scheduler tick, and the click group."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from email.utils import format_datetime

import pytest
from click.testing import CliRunner
from cryptography import x509

from pki import urls
from pki.ca import lifecycle
from pki.crl import publisher
from pki.crl.cache import CERT_TYPE, CRL_TYPE, PublicationCache, Resource
from pki.crl.cli import crl as crl_group
from pki.crl.http import respond
from pki.crl.service import CrlService
from pki.http import Request

from .conftest import START, CrlEnv

HOUR = dt.timedelta(hours=1)


def get(path: str, method: str = "GET", **headers: str) -> Request:
    return Request(method=method, path=path, query="", headers=headers, body=b"")


@pytest.fixture
def snapshot() -> dict[str, Resource]:
    return {"/crl/ac-x.crl": Resource.crl(b"\x30\x03full", START, START + 168 * HOUR,
                                          delta=False),
            "/crl/ac-x-delta.crl": Resource.crl(b"\x30\x03delt", START + HOUR, START + 2 * HOUR,
                                                delta=True)}


def test_get_serves_der_with_validators(snapshot: dict[str, Resource]) -> None:
    r = respond(snapshot, get("/crl/ac-x.crl"))
    assert r is not None and r.status == 200 and r.body == b"\x30\x03full"
    assert r.content_type == CRL_TYPE
    h = dict(r.headers)
    assert h["ETag"].startswith('"') and h["ETag"] != dict(
        respond(snapshot, get("/crl/ac-x-delta.crl")).headers)["ETag"]  # type: ignore[union-attr]
    assert h["Last-Modified"] == format_datetime(START, usegmt=True)
    assert h["Expires"] == format_datetime(START + 168 * HOUR, usegmt=True)
    assert "must-revalidate" in dict(respond(snapshot, get("/crl/ac-x-delta.crl")
                                             ).headers)["Cache-Control"]  # type: ignore[union-attr]


def test_conditional_get_and_head(snapshot: dict[str, Resource]) -> None:
    etag = snapshot["/crl/ac-x.crl"].etag
    for headers in ({"if-none-match": etag}, {"if-none-match": f'"zz", W/{etag}'},
                    {"if-none-match": "*"},
                    {"if-modified-since": format_datetime(START, usegmt=True)},
                    {"if-modified-since": format_datetime(START + HOUR, usegmt=True)}):
        r = respond(snapshot, get("/crl/ac-x.crl", **headers))
        assert r is not None and r.status == 304 and r.body == b"", headers
        assert dict(r.headers)["ETag"] == etag
    for headers in ({"if-none-match": '"other"'},
                    {"if-modified-since": format_datetime(START - HOUR, usegmt=True)},
                    {"if-modified-since": "yesterday-ish"},
                    # If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2).
                    {"if-none-match": '"other"',
                     "if-modified-since": format_datetime(START + HOUR, usegmt=True)}):
        r = respond(snapshot, get("/crl/ac-x.crl", **headers))
        assert r is not None and r.status == 200 and r.body == b"\x30\x03full", headers
    head = respond(snapshot, get("/crl/ac-x.crl", "HEAD"))
    assert head is not None and head.status == 200 and head.content_type == CRL_TYPE


def test_unknown_and_foreign_paths(snapshot: dict[str, Resource]) -> None:
    assert respond(snapshot, get("/crl/nope.crl")).status == 404  # type: ignore[union-attr]
    assert respond(snapshot, get("/ca/nope.crt")).status == 404  # type: ignore[union-attr]
    assert respond(snapshot, get("/ocsp")) is None
    assert respond(snapshot, get("/health")) is None
    post = respond(snapshot, get("/crl/ac-x.crl", "POST"))
    assert post is not None and post.status == 405 and ("Allow", "GET, HEAD") in post.headers


def test_service_tick_schedule_and_cache(make_env: Callable[..., CrlEnv]) -> None:
    env = make_env()
    card, other = env.issue(2)
    cfg = env.auth.config.crl
    service = CrlService(env.auth)
    service.load()
    handler = service.handler
    ca_cert = handler(get(urls.ca_cert_path(env.personnes)))
    assert ca_cert is not None and ca_cert.status == 200 and ca_cert.content_type == CERT_TYPE
    assert x509.load_der_x509_certificate(ca_cert.body) == env.auth.ca(env.personnes).certificate
    full_path = urls.crl_path(env.personnes)
    delta_path = urls.crl_path(env.personnes, delta=True)
    assert handler(get(full_path)).status == 404  # type: ignore[union-attr]

    first = service.tick()
    kinds = sorted((p.ca_slug, p.kind) for p in first)
    # (The root's CRL was signed at init, in the root token: not due.)
    assert kinds == sorted([(c.slug, "full") for c in env.auth.issuing_cas()]
                           + [(c.slug, "delta") for c in env.auth.issuing_cas()])
    assert service.tick() == []                                    # nothing due
    served = handler(get(full_path))
    assert served is not None and served.status == 200
    assert served.body == next(p.der for p in first if p.path == full_path)

    # A change: the delta waits delta_after_change_seconds, then goes out once.
    env.clock.advance(HOUR)
    lifecycle.revoke(env.auth, card.serial, "keyCompromise")
    assert service.tick() == []
    env.clock.advance(dt.timedelta(seconds=cfg.delta_after_change_seconds))
    out = service.tick()
    assert [(p.ca_slug, p.kind) for p in out] == [(env.personnes, "delta")]
    assert card.serial in {f"{r.serial_number:X}".rjust(len(card.serial), "0")
                           for r in x509.load_der_x509_crl(out[0].der)}
    assert handler(get(delta_path)).body == out[0].der  # type: ignore[union-attr]
    assert service.tick() == []

    # Another process publishes: the cache picks it up from the store.
    env.clock.advance(dt.timedelta(minutes=1))
    lifecycle.hold(env.auth, other.serial)
    by_cli = publisher.publish_delta(env.auth, env.personnes)
    service.tick()
    assert handler(get(delta_path)).body == by_cli[0].der  # type: ignore[union-attr]

    # Close to nextUpdate: the full CRLs are republished, each with a fresh delta.
    etag = dict(handler(get(full_path)).headers)["ETag"]  # type: ignore[union-attr]
    env.clock.advance(cfg.validity_hours * HOUR - cfg.republish_before_hours * HOUR)
    again = service.tick()
    assert {(p.ca_slug, p.kind) for p in again} >= {(env.personnes, "full"),
                                                   (env.personnes, "delta")}
    new_full = next(p for p in again if p.path == full_path)
    assert set(x509.load_der_x509_crl(new_full.der)) and new_full.entries == 2
    assert handler(get(full_path, **{"if-none-match": etag})).status == 200  # type: ignore[union-attr]
    assert service.last_errors == []


def test_service_reports_errors_and_carries_on(make_env: Callable[..., CrlEnv]) -> None:
    import dataclasses
    env = make_env()
    service = CrlService(env.auth, PublicationCache())
    env.auth.config = dataclasses.replace(env.auth.config,
        base_url="http://x", crl=dataclasses.replace(env.auth.config.crl, shards=2))
    published = service.tick()
    # The root's CRL (signed at init, in the root token) is not due; the partitioned issuing
    # CAs fail lint and say so.
    assert published == []
    assert sorted(e.ca_slug for e in service.last_errors) == sorted(
        c.slug for c in env.auth.issuing_cas())
    assert all(e.error.code == "lint_failed" for e in service.last_errors)


class _Obj:
    def __init__(self, env: CrlEnv) -> None:
        self.env = env

    def authority(self):
        return self.env.auth


def test_cli_publish(make_env: Callable[..., CrlEnv]) -> None:
    env = make_env()
    runner = CliRunner()
    res = runner.invoke(crl_group, ["publish"], obj=_Obj(env))
    assert res.exit_code == 0, res.output
    assert len(res.output.splitlines()) == len(env.auth.issuing_cas())   # roots: ceremony
    assert "full CRL #1" in res.output and env.personnes in res.output
    env.clock.advance(HOUR)
    res = runner.invoke(crl_group, ["publish", "--delta", "--json"], obj=_Obj(env))
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {d["kind"] for d in data} == {"delta"} and {d["base_number"] for d in data} == {1}
    assert {d["ca"] for d in data} == {c.slug for c in env.auth.issuing_cas()}
    res = runner.invoke(crl_group, ["publish", "--ca", env.personnes], obj=_Obj(env))
    assert res.exit_code == 0 and "full CRL #3" in res.output


def test_service_ready_only_once_every_full_crl_is_served(make_env: Callable[..., CrlEnv]) -> None:
    env = make_env()
    service = CrlService(env.auth, PublicationCache())
    service.load()
    assert not service.ready()          # a fresh home has published nothing yet
    service.tick()
    assert service.ready()
    # A second process starting on the same store is ready straight from what is stored.
    other = CrlService(env.auth, PublicationCache())
    other.load()
    assert other.ready()
