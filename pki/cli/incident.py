"""`cps-admin incident status`: the renewal campaign after a mass suspension.

The certificates an incident suspended are those with a ``hold`` status event (since
``--since``); per issuing CA and card model (``card.model``, recorded at personalisation):

* suspended — certificates put on hold (cards: the distinct cards they sit on);
* renewed — of those, the ones with a successor (``certificate.renewed_from_id``: `cps-admin card
  renew` wrote a new key and certificate onto the card, and superseded the old ones);
* remaining — still on hold and not renewed: holders still to come in;
* released — the hold was lifted (a false alarm for that card) without a renewal;
* revoked — revoked since for another reason, without a renewal.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click
from sqlalchemy import and_, case, exists, func, select
from sqlalchemy.orm import aliased

from pki.cli.context import AdminContext, emit_json, emit_table, json_flag, pass_admin
from pki.errors import InvalidInput
from pki.store.models import Card, Certificate, CertificateAuthority, StatusEvent

COUNTS = ("suspended", "renewed", "remaining", "released", "revoked")


def _parse_since(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"--since {value!r} is not an ISO 8601 date "
                           f"(e.g. 2026-11-27 or 2026-11-27T08:00:00Z)") from None
    return (when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when).astimezone(dt.UTC)


def campaign(obj: AdminContext, since: dt.datetime | None, card_model: str | None,
             issuer: str | None) -> list[dict[str, Any]]:
    """One row per (issuer, card model): certificate and card counts."""
    from pki.cli.certs import issuer_slug

    auth = obj.authority()
    held = select(StatusEvent.certificate_id).where(StatusEvent.event == "hold")
    if since is not None:
        held = held.where(StatusEvent.at >= since)
    successor = aliased(Certificate)
    renewed = exists().where(and_(
        successor.renewed_from_id == Certificate.id,
        # an orphan successor (issued, never written onto the card) does not count
        ~and_(successor.status == "revoked", successor.reason == "cessationOfOperation")))
    is_renewed = case((renewed, 1), else_=0)
    not_renewed = case((renewed, 0), else_=1)

    def when(condition: Any) -> Any:
        return func.sum(case((condition, not_renewed), else_=0))

    query = (select(CertificateAuthority.slug, Card.model,
                    func.count(Certificate.id), func.count(func.distinct(Certificate.card_id)),
                    func.sum(is_renewed),
                    func.count(func.distinct(case((renewed, Certificate.card_id)))),
                    when(Certificate.status == "hold"),
                    func.count(func.distinct(case((and_(Certificate.status == "hold", ~renewed),
                                                   Certificate.card_id)))),
                    when(Certificate.status == "active"), when(Certificate.status == "revoked"))
             .join(CertificateAuthority, Certificate.ca_id == CertificateAuthority.id)
             .outerjoin(Card, Certificate.card_id == Card.id)
             .where(Certificate.id.in_(held))
             .group_by(CertificateAuthority.slug, Card.model)
             .order_by(CertificateAuthority.slug, Card.model))
    if card_model is not None:
        query = query.where(Card.model == card_model)
    if issuer is not None:
        query = query.where(CertificateAuthority.slug == issuer_slug(auth, issuer))
    rows = []
    with auth.store.read() as session:
        for (slug, model, certs, cards, renewed_n, renewed_cards, remaining, remaining_cards,
             released, revoked) in session.execute(query):
            rows.append({"issuer": slug, "card_model": model,
                         "suspended": int(certs), "renewed": int(renewed_n or 0),
                         "remaining": int(remaining or 0), "released": int(released or 0),
                         "revoked": int(revoked or 0),
                         "cards": {"suspended": int(cards), "renewed": int(renewed_cards),
                                   "remaining": int(remaining_cards)}})
    return rows


def _total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {k: sum(r[k] for r in rows) for k in COUNTS}
    total["cards"] = {k: sum(r["cards"][k] for r in rows)
                      for k in ("suspended", "renewed", "remaining")}
    return total


@click.group()
def incident() -> None:
    """Mass suspensions (cert revoke --card-model ...) and the renewal campaign after them."""


@incident.command("status")
@click.option("--since", default=None, metavar="DATE",
              help="Only suspensions from DATE on (ISO 8601; a date alone: midnight UTC).")
@click.option("--card-model", default=None, metavar="M", help="Only cards of this model.")
@click.option("--issuer", default=None, metavar="CA", help="Only this issuing CA.")
@json_flag
@pass_admin
def incident_status(obj: AdminContext, since: str | None, card_model: str | None,
                    issuer: str | None) -> None:
    """Suspended / renewed / remaining certificates (and cards), per issuer and card model."""
    when = _parse_since(since)
    rows = campaign(obj, when, card_model, issuer)
    total = _total(rows)
    if obj.json_output:
        emit_json({"since": when.isoformat() if when else None, "groups": rows,
                   "total": total})
        return
    table = [{**{k: v for k, v in r.items() if k != "cards"},
              "card_model": r["card_model"] or "(none recorded)",
              "cards": f"{r['cards']['remaining']}/{r['cards']['suspended']}"} for r in rows]
    table.append({"issuer": "total", "card_model": "", **{k: total[k] for k in COUNTS},
                  "cards": f"{total['cards']['remaining']}/{total['cards']['suspended']}"})
    emit_table(table, ["issuer", "card_model", *COUNTS, "cards"])
    click.echo("cards: remaining/suspended")


def register(main: click.Group) -> None:
    main.add_command(incident)
