"""``cps-verify`` (relying parties) and the work behind ``cps-login sign`` (the card holder).

``cps-verify FILE [--signature SIG]``: a PDF without ``--signature`` is checked as PAdES, any
other file against ``SIG`` (default ``FILE.p7s``) as detached CAdES. ``--batch DIR`` checks
every ``FILE`` + ``FILE.p7s`` pair in ``DIR``. Exit 0 only when every report is TOTAL_PASSED,
1 otherwise, 2 for bad input (one ``error: ...`` line).

Trust: ``--trust PEM`` (roots and CA certificates, e.g. ``cps-admin ca export --all``) or the
home's store (``--home``, ``$CPS_HOME``, ``./var/cps``). Revocation: the status tier named by
each certificate (OCSP, CRL), else what the signature embeds; ``--offline`` uses only the latter.
The issuing CA's status: the root's CRL, from ``--root-crl FILE`` (offline too) or the status
tier.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID

from cps_sign.report import Report
from cps_sign.verify import Verifier

if TYPE_CHECKING:
    from cps_sign.revocation import LiveRevocation, RootCrls

PROD_SIGN_POLICY = "1.2.250.1.213.1.7.1.1.1.4.1"
MAX_FILE = 256 * 1024 * 1024


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _read(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > MAX_FILE:
                fail(f"{what} {path} is larger than {MAX_FILE} bytes")
            return handle.read()    # read(MAX_FILE) would allocate MAX_FILE bytes each time
    except OSError as exc:
        fail(f"cannot read {what} {path}: {exc.strerror}")
    raise AssertionError("unreachable")


def load_pem_certificates(path: Path) -> list[x509.Certificate]:
    data = _read(path, "certificate file")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError:
            fail(f"{path} holds no PEM or DER certificate")
    return certs


def load_root_crls(files: tuple[str, ...], roots: list[x509.Certificate],
                   live: LiveRevocation | None) -> RootCrls | None:
    """``--root-crl`` files (PEM or DER), each a CRL signed by one of ``roots`` and not past
    its nextUpdate: a stale or foreign file is an error here, not a silent "not checked"."""
    if not files:
        return None
    from cps_sign.revocation import RootCrls

    now = dt.datetime.now(dt.UTC)
    crls = []
    for name in files:
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            fail(f"cannot read {name}: {exc.strerror or exc}")
        try:
            crl = (x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----BEGIN")
                   else x509.load_der_x509_crl(data))
        except ValueError:
            fail(f"{name} holds no PEM or DER CRL")
        root = next((c for c in roots if c.subject == crl.issuer), None)
        key = root.public_key() if root is not None else None
        if root is None or not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) \
                or not crl.is_signature_valid(key):
            fail(f"{name} is not a CRL signed by a trusted root (issuer: "
                 f"{crl.issuer.rfc4514_string()})")
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            fail(f"{name} is out of date (nextUpdate {crl.next_update_utc.isoformat()}): "
                 "get the root's current CRL")
        crls.append(crl)
    return RootCrls(crls, fallback=live)


def build_verifier(home: str | None, db_url: str | None, trust: str | None,
                   policies: tuple[str, ...], offline: bool,
                   root_crl_files: tuple[str, ...] = ()) -> Verifier:
    from cps_sign.revocation import LiveRevocation

    live = None if offline else LiveRevocation()
    if trust is not None:
        certs = load_pem_certificates(Path(trust))
        roots = [c for c in certs if c.issuer == c.subject]
        if not roots:
            fail(f"{trust} holds no root (self-signed) certificate")
        return Verifier(roots, [c for c in certs if c not in roots],
                        policies or (PROD_SIGN_POLICY,), live=live,
                        root_crls=load_root_crls(root_crl_files, roots, live))
    from pki.config import Config
    from pki.errors import PkiError

    path = Path(home or os.environ.get("CPS_HOME") or "var/cps")
    if not (path / "config.json").exists():
        fail(f"no trust: give --trust ROOTS.pem or a home with a store (--home; {path} has "
             "no config.json)")
    try:
        config = Config.load(path)
        anchors, intermediates = home_trust(config.effective_db_url(db_url))
    except (PkiError, OSError, ValueError) as exc:
        fail(f"cannot read the trust of {path}: {exc}")
    return Verifier(anchors, intermediates,
                    policies or (config.profiles.sign_policy_oid,), live=live,
                    root_crls=load_root_crls(root_crl_files, anchors, live))


def home_trust(db_url: str) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """(roots, other CAs) from the store's ``ca`` table. A SQLite store is read with the
    standard library's ``sqlite3``, read-only: importing SQLAlchemy and the models would cost
    a batch 0.4 s of start-up (bench/verify.py). Other stores through ``load_trust``."""
    if not db_url.startswith("sqlite:///"):
        from cps_login.trust import load_trust
        from pki.store.db import Store

        store = Store(db_url)
        try:
            loaded = load_trust(store)
        finally:
            store.dispose()
        return loaded.anchors, loaded.intermediates
    import sqlite3
    import urllib.parse

    file = db_url[len("sqlite:///"):]
    if not Path(file).is_file():
        raise ValueError(f"no store at {file}")
    try:
        db = sqlite3.connect(f"file:{urllib.parse.quote(file)}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT role, cert_der FROM ca ORDER BY id").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise ValueError(f"store {file}: {exc}") from None
    cas = [(role, x509.load_der_x509_certificate(der)) for role, der in rows]
    anchors = [cert for role, cert in cas if role == "ROOT"]
    if not anchors:
        raise ValueError(f"no root CA in the store {file}")
    return anchors, [cert for role, cert in cas if role != "ROOT"]


def verify_one(verifier: Verifier, file: Path, signature: Path | None) -> Report:
    content = _read(file, "file")
    if signature is None and content.startswith(b"%PDF-"):
        report = verifier.verify_pades(content)
    else:
        sig_path = signature or file.with_name(file.name + ".p7s")
        report = verifier.verify_cades(content, der_of(_read(sig_path, "signature")))
    return report


def der_of(signature: bytes) -> bytes:
    """DER as is; a PEM-armoured CMS (``openssl cms -sign`` writes one) unarmoured."""
    if signature.startswith(b"-----BEGIN"):
        from asn1crypto import pem

        try:
            _, _, der = pem.unarmor(signature)
        except ValueError:
            return signature        # the verifier reports the format failure
        return bytes(der)
    return signature


def batch_pairs(directory: Path) -> Iterator[tuple[Path, Path]]:
    try:
        names = sorted(p for p in directory.iterdir() if p.is_file())
    except OSError as exc:
        fail(f"cannot list {directory}: {exc.strerror}")
        return
    present = {p.name for p in names}
    for path in names:
        if not path.name.endswith(".p7s") and path.name + ".p7s" in present:
            yield path, path.with_name(path.name + ".p7s")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--signature", type=click.Path(dir_okay=False), default=None,
              help="detached CAdES signature (default FILE.p7s; none for a signed PDF)")
@click.option("--batch", "batch_dir", type=click.Path(file_okay=False), default=None,
              help="verify every FILE + FILE.p7s pair in this directory")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report(s)")
@click.option("--trust", default=None, type=click.Path(dir_okay=False),
              help="PEM file with the IGC-Santé root (and CA certificates)")
@click.option("--home", default=None, help="CPS home whose store holds the CAs (trust)")
@click.option("--db", "db_url", default=None, help="store URL of that home")
@click.option("--policy", "policies", multiple=True,
              help="signature certificate policy OID (default: the home's, or production's)")
@click.option("--offline", is_flag=True,
              help="no network: revocation only from what the signatures embed (B-LT)")
@click.option("--root-crl", "root_crls", multiple=True, type=click.Path(dir_okay=False),
              help="the root's CRL (PEM or DER; repeatable): the issuing CA's status, "
                   "offline too")
def verify_main(file: str | None, signature: str | None, batch_dir: str | None,
                as_json: bool, trust: str | None, home: str | None, db_url: str | None,
                policies: tuple[str, ...], offline: bool, root_crls: tuple[str, ...]) -> None:
    """Validate CAdES / PAdES signatures: TOTAL_PASSED, TOTAL_FAILED or INDETERMINATE."""
    if (file is None) == (batch_dir is None):
        fail("give one FILE or --batch DIR")
    if batch_dir is not None and signature is not None:
        fail("--signature applies to one FILE, not to --batch")
    verifier = build_verifier(home, db_url, trust, policies, offline, root_crls)
    if file is not None:
        report = verify_one(verifier, Path(file), Path(signature) if signature else None)
        click.echo(json.dumps(report.as_dict()) if as_json else report.line())
        sys.exit(0 if report.passed else 1)
    assert batch_dir is not None
    pairs = list(batch_pairs(Path(batch_dir)))
    if not pairs:
        fail(f"no FILE + FILE.p7s pair in {batch_dir}")
    reports = [(content.name, verify_one(verifier, content, sig)) for content, sig in pairs]
    if as_json:
        click.echo(json.dumps([{**rep.as_dict(), "file": name} for name, rep in reports]))
    else:
        passed = sum(rep.passed for _, rep in reports)
        lines = [f"{name}: {rep.line()}" for name, rep in reports]
        click.echo("\n".join([*lines, f"{passed} of {len(reports)} TOTAL_PASSED"]))
    sys.exit(0 if all(rep.passed for _, rep in reports) else 1)


# --- signing (cps-login sign) --------------------------------------------------------------

def ca_issuers_url(cert: x509.Certificate) -> str | None:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for desc in aia:
        if (desc.access_method == AuthorityInformationAccessOID.CA_ISSUERS
                and isinstance(desc.access_location, x509.UniformResourceIdentifier)):
            return str(desc.access_location.value)
    return None


def fetch_chain(leaf: x509.Certificate, timeout: float = 10.0) -> list[x509.Certificate]:
    """Issuing CA then root, following caIssuers URLs (AIA), as far as they lead."""
    chain: list[x509.Certificate] = []
    cert = leaf
    while cert.issuer != cert.subject and len(chain) < 4:
        url = ca_issuers_url(cert)
        if url is None or not url.startswith(("http://", "https://")):
            break
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - checked
                data = resp.read(256 * 1024)
            cert = x509.load_der_x509_certificate(data)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ValueError(f"cannot fetch the CA certificate {url}: {exc}") from None
        chain.append(cert)
    return chain


def tsa_ocsp(tsa: x509.Certificate, candidates: Sequence[x509.Certificate]) -> bytes:
    """The TSA certificate's OCSP response (B-LT): its issuer among ``candidates`` (the
    token's certificates and the chain), else fetched from its AIA caIssuers URL."""
    from cps_sign.fetch import fetch_ocsp

    issuer = next((c for c in candidates if c.subject == tsa.issuer), None)
    if issuer is None:
        fetched = fetch_chain(tsa)
        issuer = fetched[0] if fetched else None
    if issuer is None:
        raise ValueError("the TSA's issuing CA certificate is needed for B-LT (--chain)")
    return fetch_ocsp(tsa, issuer)


def default_tsa_url(leaf: x509.Certificate) -> str | None:
    """The PKI's own TSA: ``/tsa`` beside the OCSP responder the certificate names."""
    from cps_sign.fetch import ocsp_url

    url = ocsp_url(leaf)
    if url is None or not url.rstrip("/").endswith("/ocsp"):
        return None
    return url.rstrip("/")[: -len("/ocsp")] + "/tsa"


def sign_file(card: object, pin: str, file: Path, out: Path, fmt: str, level: str,
              tsa: str | None, chain_file: str | None) -> str:
    """Sign ``file`` into ``out`` (written only when everything succeeded); the summary."""
    from pyhanko.sign.general import SigningError
    from pyhanko.sign.timestamps.common_utils import TimestampRequestError

    from cps_sign.card_signer import CardSigner
    from cps_sign.fetch import FetchFailed, HttpTimeStamper, fetch_ocsp
    from cps_sign.signing import sign_cades, sign_pades
    from pki.cards.card import Card

    assert isinstance(card, Card)
    if out.resolve() == file.resolve():
        raise ValueError("--out must not be the signed file")
    content = _read(file, "file")
    if fmt == "pades" and not content.startswith(b"%PDF-"):
        raise ValueError(f"{file} is not a PDF (PAdES signs PDF files; use --format cades)")
    leaf = card.certificate("sign")
    chain = load_pem_certificates(Path(chain_file)) if chain_file else []
    if level == "B-LT" and not chain:
        chain = fetch_chain(leaf)
    timestamper = None
    if level != "B-B":
        url = tsa or default_tsa_url(leaf)
        if url is None:
            raise ValueError(f"{level} needs a time-stamping authority: --tsa URL")
        timestamper = HttpTimeStamper(url)
    signer = CardSigner(card, pin)
    issuer = next((c for c in chain if c.subject == leaf.issuer), None)
    try:
        if fmt == "cades":
            def ocsp_for() -> bytes:
                if issuer is None:
                    raise ValueError("the issuing CA certificate is needed for B-LT (--chain)")
                return fetch_ocsp(leaf, issuer)

            data = sign_cades(content, signer, level=level,  # type: ignore[arg-type]
                              timestamper=timestamper, chain=chain,
                              ocsp_for=ocsp_for if level == "B-LT" else None,
                              tsa_ocsp_for=tsa_ocsp if level == "B-LT" else None)
        else:
            data = sign_pades(content, signer, level=level,  # type: ignore[arg-type]
                              timestamper=timestamper, chain=chain)
    except (FetchFailed, TimestampRequestError, SigningError) as exc:
        raise ValueError(str(exc)) from None
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"cannot write {out}: {exc.strerror}") from None
    holder = card.holder()
    return f"signed {file.name} as {fmt.upper()} {level} by {holder.national_id} -> {out}"


def main() -> None:
    verify_main()
