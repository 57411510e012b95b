"""`cps-admin cert ...`: issue from a CSR, list, show, revoke (one, a file, an incident's
selection), hold/release, renew."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select
from tqdm import tqdm

from pki import ids
from pki.ca import lifecycle
from pki.ca.authority import Authority, IssuedCertificate, load_csr, parse_serial
from pki.ca.profiles import key_storage_of
from pki.cli.context import (
    AdminContext,
    emit_json,
    emit_json_stream,
    emit_record,
    emit_table,
    json_flag,
    pass_admin,
)
from pki.errors import BadCsr, InvalidInput, NotFound
from pki.store.models import Certificate, CertificateAuthority, Professional, Structure

STATUSES = ("active", "hold", "revoked", "expired")
USAGES = ("auth", "sign", "org")
CSR_KEY_STORAGE = ("software", "hsm")   # never "card": a CSR's key was made off any card


def display_status(status: str, not_after: dt.datetime, now: dt.datetime) -> str:
    """``expired`` once not_after has passed, unless revoked (revocation says more)."""
    if status != "revoked" and not_after <= now:
        return "expired"
    return status


def certificate_rows(obj: AdminContext, *, rpps: str | None = None, status: str | None = None,
                     serial: str | None = None, limit: int | None = None
                     ) -> Iterator[dict[str, Any]]:
    auth = obj.authority()
    now = auth.clock.now()
    query = (select(Certificate, CertificateAuthority.name, Professional.rpps,
                    Structure.structure_id)
             .join(CertificateAuthority, Certificate.ca_id == CertificateAuthority.id)
             .outerjoin(Professional, Certificate.professional_id == Professional.id)
             .outerjoin(Structure, Certificate.structure_id == Structure.id)
             .order_by(Certificate.id))
    if rpps is not None:
        query = query.where(Professional.rpps == ids.validate_rpps(rpps))
    if serial is not None:
        query = query.where(Certificate.serial == serial)
    if status == "expired":
        query = query.where(Certificate.status != "revoked", Certificate.not_after <= now)
    elif status in ("active", "hold"):
        query = query.where(Certificate.status == status, Certificate.not_after > now)
    elif status == "revoked":
        query = query.where(Certificate.status == "revoked")
    if limit is not None:
        query = query.limit(limit)
    with auth.store.read() as session:
        for cert, issuer, pro_rpps, structure_id in session.execute(
                query.execution_options(yield_per=1000)):
            yield {
                "serial": cert.serial, "subject": cert.subject, "issuer": issuer,
                "usage": cert.profile,
                "status": display_status(cert.status, cert.not_after, now),
                "reason": cert.reason,
                "revoked_at": cert.revoked_at.isoformat() if cert.revoked_at else None,
                "invalidity_date": (cert.invalidity_date.isoformat()
                                    if cert.invalidity_date else None),
                "not_before": cert.not_before.isoformat(),
                "not_after": cert.not_after.isoformat(),
                "rpps": pro_rpps, "structure_id": structure_id,
                "der": cert.der,
            }


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "der"}


@click.group()
def cert() -> None:
    """End-entity certificates."""


def _csr_public_key(path: Path) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    csr = load_csr(path.read_bytes())
    key = csr.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise BadCsr("CSR key must be RSA or EC")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise BadCsr(f"CSR RSA key is {key.key_size} bits; at least 2048 required")
    return key


@contextlib.contextmanager
def _reserved_out(out: Path | None) -> Iterator[Callable[[IssuedCertificate], None]]:
    """Make sure ``out`` can be written BEFORE anything is signed or stored.

    A temporary file is created beside ``out`` first (the directory exists, is writable and
    has room for a file); the certificate is written into it and renamed over ``out`` once
    issued. A command that cannot write its output so fails before the CA signs anything.
    """
    if out is None:
        def echo_only(issued: IssuedCertificate) -> None:
            click.echo(f"issued {issued.profile} certificate serial {issued.serial} "
                       f"by {issued.ca_slug}")

        yield echo_only
        return
    if out.is_dir():
        raise InvalidInput(f"--out {out} is a directory; give a file name")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp",
                                        dir=out.parent if str(out.parent) else ".")
    except OSError as exc:
        raise InvalidInput(f"cannot write --out {out}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)

    def write(issued: IssuedCertificate) -> None:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(issued.pem.decode("ascii"))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
        click.echo(f"issued {issued.profile} certificate serial {issued.serial} "
                   f"by {issued.ca_slug} -> {out}")

    try:
        yield write
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    finally:
        tmp.unlink(missing_ok=True)


@cert.command("issue")
@click.option("--csr", "csr_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PKCS#10 request (PEM or DER); its signature proves possession of the key.")
@click.option("--rpps", default=None, help="Holder (auth/sign certificates).")
@click.option("--structure", "structure_id", default=None,
              help="Structure id, e.g. 1 + FINESS (org certificates).")
@click.option("--usage", required=True, type=click.Choice(USAGES))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the PEM certificate.")
@click.option("--key-storage", type=click.Choice(CSR_KEY_STORAGE), default="software",
              show_default=True,
              help="Where the CSR's key lives (product category 3 software, 2 security "
                   "module). Card keys come only from `card issue`.")
@pass_admin
def cert_issue(obj: AdminContext, csr_file: Path, rpps: str | None, structure_id: str | None,
               usage: str, out: Path, key_storage: str) -> None:
    """Issue a certificate for a CSR. The subject comes from the directory, not the CSR."""
    if usage == "org":
        if structure_id is None or rpps is not None:
            raise click.UsageError("--usage org needs --structure (and no --rpps)")
    elif rpps is None or structure_id is not None:
        raise click.UsageError(f"--usage {usage} needs --rpps (and no --structure)")
    data = csr_file.read_bytes()
    with _reserved_out(out) as write:
        write(obj.authority().issue_from_csr(
            data, usage, rpps=rpps, structure_id=structure_id,
            key_storage=key_storage))  # type: ignore[arg-type]


@cert.command("list")
@click.option("--status", type=click.Choice(STATUSES), default=None)
@click.option("--rpps", default=None, help="Only this professional's certificates.")
@click.option("--limit", type=click.IntRange(min=1), default=None)
@json_flag
@pass_admin
def cert_list(obj: AdminContext, status: str | None, rpps: str | None,
              limit: int | None) -> None:
    """Certificates with their live status (expired shown as such)."""
    rows = (_public(r) for r in certificate_rows(obj, rpps=rpps, status=status, limit=limit))
    if obj.json_output:
        emit_json_stream(rows)
    else:
        emit_table(list(rows), ["serial", "usage", "status", "not_after", "rpps", "subject"])


@cert.command("show")
@click.argument("serial")
@click.option("--pem", is_flag=True, help="Print the certificate in PEM after the details.")
@json_flag
@pass_admin
def cert_show(obj: AdminContext, serial: str, pem: bool) -> None:
    """One certificate, by serial (hex as `openssl x509 -serial` prints it; any case/colons)."""
    canonical = parse_serial(serial)
    rows = list(certificate_rows(obj, serial=canonical))
    if not rows:
        raise NotFound(f"no certificate with serial {canonical}")
    row = rows[0]
    certificate = x509.load_der_x509_certificate(row["der"])
    pem_text = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    data = _public(row)
    data["key"] = _key_text(certificate)
    data["key_storage"] = key_storage_of(certificate)     # the product category, read back
    data["policies"] = _policies(certificate)
    if obj.json_output:
        data["pem"] = pem_text
        emit_json(data)
        return
    emit_record(data)
    if pem:
        click.echo(pem_text, nl=False)


def _key_text(certificate: x509.Certificate) -> str:
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__


def _policies(certificate: x509.Certificate) -> list[str]:
    try:
        ext = certificate.extensions.get_extension_for_class(x509.CertificatePolicies)
    except x509.ExtensionNotFound:
        return []
    return [p.policy_identifier.dotted_string for p in ext.value]


def _parse_when(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"invalidity date {value!r} is not ISO 8601 "
                           f"(e.g. 2025-01-31T10:00:00Z)") from None
    if when.tzinfo is None:
        raise InvalidInput(f"invalidity date {value!r} needs a timezone (e.g. Z or +01:00)")
    return when.astimezone(dt.UTC)


@cert.command("revoke")
@click.argument("serial", required=False)
@click.option("--reason", required=True, metavar="|".join(lifecycle.REASONS),
              help="RFC 5280 reason; certificateHold suspends (see `cert release`).")
@click.option("--invalidity-date", default=None, metavar="ISO",
              help="When the key is known or suspected to have been compromised.")
@click.option("--from-file", "from_file", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Many at once: one serial per line (blank lines and # comments skipped). "
                   "Every line is checked first; nothing is applied if one is bad.")
@click.option("--card-model", default=None, metavar="M",
              help="Select the certificates of every card of this model (as recorded at "
                   "personalisation: the ATR hex, or the PKCS#11 token's manufacturer / model).")
@click.option("--issued-before", default=None, metavar="DATE",
              help="Select certificates whose notBefore is before DATE (ISO 8601; a date "
                   "alone means midnight UTC).")
@click.option("--issuer", default=None, metavar="CA",
              help="Select certificates of this issuing CA (slug or name).")
@click.option("--dry-run", is_flag=True,
              help="Print how many certificates would change; change nothing.")
@click.option("--batch-size", type=click.IntRange(min=1, max=50_000), default=lifecycle.BATCH,
              show_default=True, help="Certificates per transaction and audit record.")
@json_flag
@pass_admin
def cert_revoke(obj: AdminContext, serial: str | None, reason: str,
                invalidity_date: str | None, from_file: Path | None, card_model: str | None,
                issued_before: str | None, issuer: str | None, dry_run: bool,
                batch_size: int) -> None:
    """Revoke (or hold, with --reason certificateHold) one certificate, a list, or a selection.

    \b
    cps-admin cert revoke SERIAL --reason keyCompromise
    cps-admin cert revoke --from-file serials.txt --reason certificateHold
    cps-admin cert revoke --card-model 3BAC00...9000 --issued-before 2026-01-01 \\
        --reason certificateHold [--dry-run]
    """
    reason = lifecycle.parse_reason(reason)
    when = _parse_when(invalidity_date)
    selecting = any(v is not None for v in (card_model, issued_before, issuer))
    if sum((serial is not None, from_file is not None, selecting)) != 1:
        raise click.UsageError("give one SERIAL, --from-file FILE, or a selection "
                               "(--card-model, --issued-before, --issuer)")
    if serial is not None:
        if dry_run:
            raise click.UsageError("--dry-run is for --from-file and selections")
        change = lifecycle.revoke(obj.authority(), serial, reason, when)
        click.echo(f"{change.serial}: {change.status} ({change.reason}) "
                   f"at {change.at.isoformat()}")
        return
    event, reason = lifecycle.event_of(reason)
    _change_many(obj, event, reason, when, from_file, card_model, issued_before, issuer,
                 dry_run, batch_size)


def _change_many(obj: AdminContext, event: str, reason: str | None, when: dt.datetime | None,
                 from_file: Path | None, card_model: str | None, issued_before: str | None,
                 issuer: str | None, dry_run: bool, batch_size: int) -> None:
    """A list (checked first, all or nothing) or a selection, through lifecycle.change_many."""
    auth = obj.authority()
    if from_file is not None:
        serials = read_serial_file(from_file)
        planned = lifecycle.plan(auth, serials, event, reason, batch_size=batch_size)
        if planned.problems:
            shown = "; ".join(planned.problems[:5])
            raise InvalidInput(f"{len(planned.problems)} of {len(serials)} serial(s) in "
                               f"{from_file} cannot be changed, nothing applied: {shown}"
                               + (" ..." if len(planned.problems) > 5 else ""))
        todo, already = planned.to_change, planned.already
        selection: dict[str, Any] = {"from_file": from_file.name, "lines": len(serials),
                                     "sha256": planned.sha256}
    else:
        chosen = lifecycle.Selection(
            card_model=card_model, issued_before=_parse_date(issued_before),
            issuer=issuer_slug(auth, issuer) if issuer is not None else None)
        todo, already = lifecycle.select_serials(auth, chosen, event), 0
        selection = chosen.describe()
    verb = {"hold": "suspend", "revoke": "revoke", "release": "release"}[event]
    if dry_run:
        if obj.json_output:
            emit_json({"dry_run": True, "event": event, "reason": reason, "count": len(todo),
                       "already": already, "selection": selection})
        else:
            click.echo(f"would {verb} {len(todo)} certificate(s)"
                       + (f" ({reason})" if reason else "")
                       + (f"; {already} already done" if already else ""))
        return
    with tqdm(total=len(todo), desc=verb, unit="cert", file=sys.stderr, leave=False,
              dynamic_ncols=True, mininterval=0.5, disable=None) as bar:
        outcome = lifecycle.change_many(auth, todo, event, reason, selection=selection,
                                        invalidity_date=when, batch_size=batch_size,
                                        progress=bar.update)
    already += outcome.already
    if obj.json_output:
        emit_json({"event": event, "reason": reason, "changed": outcome.changed,
                   "already": already, "batches": outcome.batches, "selection": selection})
    else:
        done = {"hold": "suspended", "revoke": "revoked", "release": "released"}[event]
        click.echo(f"{done} {outcome.changed} certificate(s)"
                   + (f" ({reason})" if reason else "") + f" in {outcome.batches} batch(es)"
                   + (f"; {already} already done" if already else ""))


def read_serial_file(path: Path) -> list[str]:
    """Every serial of a file, checked: all bad lines are reported and nothing is returned."""
    serials: list[str] = []
    bad: list[str] = []
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                serials.append(parse_serial(text))
            except InvalidInput as exc:
                bad.append(f"line {number}: {exc.message}")
    if bad:
        raise InvalidInput(f"{len(bad)} bad line(s) in {path}, nothing applied: "
                           + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
    if not serials:
        raise InvalidInput(f"no serial in {path}")
    return serials


def issuer_slug(auth: Authority, name: str) -> str:
    """An issuing CA named by slug or common name (any case)."""
    for ca in auth.issuing_cas():
        if name in (ca.slug, ca.name) or name.lower() == ca.name.lower():
            return ca.slug
    raise NotFound(f"no issuing CA {name!r}; known: "
                   f"{', '.join(c.slug for c in auth.issuing_cas())}")


def _parse_date(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"--issued-before {value!r} is not an ISO 8601 date "
                           f"(e.g. 2026-01-31 or 2026-01-31T10:00:00Z)") from None
    return (when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when).astimezone(dt.UTC)


@cert.command("release")
@click.argument("serial", required=False)
@click.option("--from-file", "from_file", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Many at once: one serial per line, all checked first (as cert revoke).")
@click.option("--card-model", default=None, metavar="M", help="Select by card model.")
@click.option("--issued-before", default=None, metavar="DATE", help="Select by notBefore.")
@click.option("--issuer", default=None, metavar="CA", help="Select by issuing CA.")
@click.option("--dry-run", is_flag=True, help="Print how many holds would be lifted.")
@click.option("--batch-size", type=click.IntRange(min=1, max=50_000), default=lifecycle.BATCH,
              show_default=True, help="Certificates per transaction and audit record.")
@json_flag
@pass_admin
def cert_release(obj: AdminContext, serial: str | None, from_file: Path | None,
                 card_model: str | None, issued_before: str | None, issuer: str | None,
                 dry_run: bool, batch_size: int) -> None:
    """Lift a certificateHold: one certificate, a list, or a selection (a false alarm)."""
    selecting = any(v is not None for v in (card_model, issued_before, issuer))
    if sum((serial is not None, from_file is not None, selecting)) != 1:
        raise click.UsageError("give one SERIAL, --from-file FILE, or a selection "
                               "(--card-model, --issued-before, --issuer)")
    if serial is None:
        _change_many(obj, "release", None, None, from_file, card_model, issued_before, issuer,
                     dry_run, batch_size)
        return
    if dry_run:
        raise click.UsageError("--dry-run is for --from-file and selections")
    change = lifecycle.release(obj.authority(), serial)
    click.echo(f"{change.serial}: {change.status} (hold released)")


@cert.command("renew")
@click.argument("serial")
@click.option("--csr", "csr_file", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="New key (CSR); default: renew the same public key.")
@click.option("--revoke-old", is_flag=True, help="Revoke the old certificate as superseded.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the new PEM certificate.")
@pass_admin
def cert_renew(obj: AdminContext, serial: str, csr_file: Path | None, revoke_old: bool,
               out: Path | None) -> None:
    """Issue a successor certificate for the same holder and usage (a card's: `card renew`)."""
    from pki.issuance.cards import card_of_certificate

    card_number = card_of_certificate(obj.authority(), serial)
    if card_number is not None:
        raise click.ClickException(
            f"certificate {parse_serial(serial)} is on card {card_number}, whose keys live on "
            f"the card: renew the card with `cps-admin card renew {card_number} "
            f"(--reader NAME | --token-label LABEL)`")
    key = _csr_public_key(csr_file) if csr_file is not None else None
    with _reserved_out(out) as write:
        write(lifecycle.renew(obj.authority(), serial, public_key=key, revoke_old=revoke_old))


def register(main: click.Group) -> None:
    main.add_command(cert)
