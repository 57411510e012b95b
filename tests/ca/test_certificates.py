"""Issued certificates: chain verification (openssl), pkilint (in process and CLI), profiles.

Homes use rsa2048 and p256 CA keys for speed; tests/cli/test_cli_rsa4096.py runs the product
default (rsa4096) end to end.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pytest
from conftest import add_professional, add_structure  # tests/conftest.py helpers
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from pki import ids
from pki.ca import profiles
from pki.ca.authority import Authority, IssueRequest
from pki.ca.hierarchy import init_home
from pki.ca.lint import INFORMATIONAL, lint_certificate
from pki.config import Config

from .pkihelpers import make_csr, openssl, pem

LINT_CLI = str(Path(sys.executable).with_name("lint_pkix_cert"))
SKI_INFO = "pkix.subject_key_identifier_method_1_identified"


@dataclass
class Issued:
    home: Path
    auth: Authority
    rpps: str
    structure_id: str
    certs: dict[str, x509.Certificate]   # root, personnes, organisations, auth, sign, org


@pytest.fixture(scope="module", params=["rsa2048", "p256"])
def issued(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issued]:
    home = tmp_path_factory.mktemp(f"certs-{request.param}") / "cps"
    init_home(home, key_type=request.param)
    auth = Authority.open(home)
    rpps = add_professional(auth, "1000345678", profession=40, given="Élodie",
                            surname="Le Gall")
    structure_id = add_structure(auth)
    user_key = rsa.generate_private_key(65537, 2048)
    certs = {
        "root": auth.ca("ac-racine-igc-sante-fort").certificate,
        "personnes": auth.ca("ac-igc-sante-fort-personnes").certificate,
        "organisations": auth.ca("ac-igc-sante-fort-organisations").certificate,
        "auth": auth.issue_from_csr(make_csr(user_key), "auth", rpps=rpps).certificate,
        "sign": auth.issue(IssueRequest("sign", user_key.public_key(), rpps=rpps)).certificate,
        "org": auth.issue_from_csr(make_csr(ec.generate_private_key(ec.SECP256R1()),
                                            dns=("dmp.chu-test.fr",)),
                                   "org", structure_id=structure_id).certificate,
    }
    try:
        yield Issued(home, auth, rpps, structure_id, certs)
    finally:
        auth.close()


def _write(tmp_path: Path, name: str, cert: x509.Certificate) -> Path:
    path = tmp_path / f"{name}.pem"
    path.write_bytes(pem(cert))
    return path


@pytest.mark.parametrize("leaf,intermediate", [("auth", "personnes"), ("sign", "personnes"),
                                               ("org", "organisations")])
def test_leaf_chain_verifies_with_openssl(issued: Issued, tmp_path: Path, leaf: str,
                                          intermediate: str) -> None:
    root = _write(tmp_path, "root", issued.certs["root"])
    inter = _write(tmp_path, "inter", issued.certs[intermediate])
    cert = _write(tmp_path, leaf, issued.certs[leaf])
    ok = openssl("verify", "-x509_strict", "-CAfile", str(root), "-untrusted", str(inter),
                 str(cert))
    assert ok.returncode == 0, ok.stderr.decode()
    assert ok.stdout.decode().strip().endswith(": OK")
    # The wrong intermediate must not verify (the test can fail).
    other = "organisations" if intermediate == "personnes" else "personnes"
    wrong = _write(tmp_path, "wrong", issued.certs[other])
    bad = openssl("verify", "-CAfile", str(root), "-untrusted", str(wrong), str(cert))
    assert bad.returncode != 0


def test_ca_certificates_verify_with_openssl(issued: Issued, tmp_path: Path) -> None:
    root = _write(tmp_path, "root", issued.certs["root"])
    for name in ("root", "personnes", "organisations"):
        res = openssl("verify", "-x509_strict", "-CAfile", str(root),
                      str(_write(tmp_path, name, issued.certs[name])))
        assert res.returncode == 0, (name, res.stderr.decode())


@pytest.mark.parametrize("name", ["root", "personnes", "organisations", "auth", "sign", "org"])
def test_zero_lint_findings_in_process_and_cli(issued: Issued, tmp_path: Path,
                                               name: str) -> None:
    cert = issued.certs[name]
    assert lint_certificate(cert.public_bytes(_der())) == []
    path = _write(tmp_path, name, cert)
    notice = subprocess.run([LINT_CLI, "lint", "-s", "NOTICE", str(path)], capture_output=True,
                            text=True, check=False)
    assert notice.returncode == 0, notice.stdout + notice.stderr
    assert notice.stdout.strip() == ""
    info = subprocess.run([LINT_CLI, "lint", "-s", "INFO", "-f", "JSON", str(path)],
                          capture_output=True, text=True, check=False)
    codes = {d["code"] for r in json.loads(info.stdout)["results"]
             for d in r["finding_descriptions"]}
    assert codes == {SKI_INFO}
    assert codes <= INFORMATIONAL


def _der() -> object:
    from cryptography.hazmat.primitives.serialization import Encoding
    return Encoding.DER


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.Extension[object]:
    return cert.extensions.get_extension_for_class(cls)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("usage", ["auth", "sign"])
def test_professional_profile(issued: Issued, usage: str) -> None:
    cert = issued.certs[usage]
    cfg = Config.load(issued.home)
    # Subject: C=FR, title=<label>, one multi-valued RDN GN+SN+CN, CN = "8" + RPPS.
    rdns = list(cert.subject.rdns)
    assert len(rdns) == 3
    assert [a.oid for a in rdns[0]] == [NameOID.COUNTRY_NAME]
    assert rdns[0].get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "FR"
    assert rdns[1].get_attributes_for_oid(NameOID.TITLE)[0].value == \
        ids.profession(40).label
    multi = {a.oid: a.value for a in rdns[2]}
    assert multi == {NameOID.GIVEN_NAME: "Élodie", NameOID.SURNAME: "Le Gall",
                     NameOID.COMMON_NAME: "8" + issued.rpps}
    assert cert.issuer == issued.certs["personnes"].subject
    # Key usage, critical; EKU on auth only.
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature is (usage == "auth")  # type: ignore[attr-defined]
    assert ku.value.content_commitment is (usage == "sign")  # type: ignore[attr-defined]
    for flag in ("key_encipherment", "data_encipherment", "key_agreement", "key_cert_sign",
                 "crl_sign"):
        assert getattr(ku.value, flag) is False
    if usage == "auth":
        assert list(_ext(cert, x509.ExtendedKeyUsage).value) == \
            [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    else:
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    policy = (cfg.profiles.auth_policy_oid if usage == "auth" else cfg.profiles.sign_policy_oid)
    pols = _ext(cert, x509.CertificatePolicies)
    assert not pols.critical
    assert [p.policy_identifier.dotted_string for p in pols.value] == [policy]  # type: ignore[attr-defined]
    # Private extensions: product category 3 (software: these keys come from a CSR or the
    # officer, not from a card; see test_product_category), profession code as INTEGER.
    cat = cert.extensions.get_extension_for_oid(ObjectIdentifier("1.2.250.1.71.1.2.5"))
    assert cat.value.value == bytes.fromhex("020103")  # type: ignore[attr-defined]
    prof = cert.extensions.get_extension_for_oid(ObjectIdentifier("1.2.250.1.71.1.2.7"))
    assert prof.value.value == bytes.fromhex("020128")  # INTEGER 40  # type: ignore[attr-defined]
    _check_common_leaf(cert, issued.certs["personnes"], "ac-igc-sante-fort-personnes", cfg)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=3 * 365)


def _check_common_leaf(cert: x509.Certificate, issuer: x509.Certificate, slug: str,
                       cfg: Config) -> None:
    base = cfg.base_url
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False  # type: ignore[attr-defined]
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == \
        _ext(issuer, x509.SubjectKeyIdentifier).value.digest  # type: ignore[attr-defined]
    assert _ext(cert, x509.SubjectKeyIdentifier).value == \
        x509.SubjectKeyIdentifier.from_public_key(cert.public_key())  # type: ignore[arg-type]
    crl = _ext(cert, x509.CRLDistributionPoints).value
    assert [n.value for dp in crl for n in dp.full_name] == [  # type: ignore[attr-defined]
        f"{base}/crl/{slug}.crl"]
    fresh = _ext(cert, x509.FreshestCRL).value
    assert [n.value for dp in fresh for n in dp.full_name] == [  # type: ignore[attr-defined]
        f"{base}/crl/{slug}-delta.crl"]
    aia = {d.access_method: d.access_location.value
           for d in _ext(cert, x509.AuthorityInformationAccess).value}  # type: ignore[attr-defined]
    assert aia == {x509.oid.AuthorityInformationAccessOID.OCSP: f"{base}/ocsp",
                   x509.oid.AuthorityInformationAccessOID.CA_ISSUERS: f"{base}/ca/{slug}.crt"}
    # 16-byte positive serial with at least 64 bits of entropy.
    assert 1 << 64 <= cert.serial_number < 1 << 127
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"
    assert cert.not_valid_before_utc <= dt.datetime.now(dt.UTC)


def test_organisation_profile(issued: Issued) -> None:
    cert = issued.certs["org"]
    cfg = Config.load(issued.home)
    subject = cert.subject
    assert [a.oid for a in subject] == [NameOID.COUNTRY_NAME, NameOID.STATE_OR_PROVINCE_NAME,
                                        NameOID.ORGANIZATION_NAME,
                                        NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.COMMON_NAME]
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == \
        issued.structure_id
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dmp.chu-test.fr"
    assert cert.issuer == issued.certs["organisations"].subject
    eku = list(_ext(cert, x509.ExtendedKeyUsage).value)  # type: ignore[call-overload]
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert _ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(  # type: ignore[attr-defined]
        x509.DNSName) == ["dmp.chu-test.fr"]
    ku = _ext(cert, x509.KeyUsage)
    # The org CSR carries a P-256 key: keyEncipherment would be prohibited (RFC 5480).
    assert ku.critical and ku.value.digital_signature  # type: ignore[attr-defined]
    assert not ku.value.key_encipherment  # type: ignore[attr-defined]
    cat = cert.extensions.get_extension_for_oid(ObjectIdentifier("1.2.250.1.71.1.2.5"))
    assert cat.value.value == bytes.fromhex("020103")  # type: ignore[attr-defined]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_oid(ObjectIdentifier("1.2.250.1.71.1.2.7"))
    _check_common_leaf(cert, issued.certs["organisations"],
                       "ac-igc-sante-fort-organisations", cfg)


@pytest.mark.parametrize("name,cn,path_len", [
    ("root", "AC RACINE IGC-SANTE FORT", 1),
    ("personnes", "AC IGC-SANTE FORT PERSONNES", 0),
    ("organisations", "AC IGC-SANTE FORT ORGANISATIONS", 0)])
def test_ca_profile(issued: Issued, name: str, cn: str, path_len: int) -> None:
    cert = issued.certs[name]
    assert cert.subject.rfc4514_string() == \
        f"CN={cn},OU=IGC-SANTE,OU=0002 187512751,O=ASIP-SANTE,C=FR"
    assert cert.issuer.rfc4514_string() == \
        "CN=AC RACINE IGC-SANTE FORT,OU=IGC-SANTE,OU=0002 187512751,O=ASIP-SANTE,C=FR"
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is True  # type: ignore[attr-defined]
    assert bc.value.path_length == path_len  # type: ignore[attr-defined]
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign and ku.value.crl_sign  # type: ignore[attr-defined]
    assert not ku.value.digital_signature  # type: ignore[attr-defined]
    key = cert.public_key()
    if Config.load(issued.home).key_type == "rsa2048":
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    years = (cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365
    assert 19.9 < years <= 20.0


def test_issued_serial_matches_store_and_openssl(issued: Issued) -> None:
    cert = issued.certs["auth"]
    out = openssl("x509", "-noout", "-serial", input=pem(cert)).stdout.decode().strip()
    serial = out.removeprefix("serial=")
    from pki.ca.lifecycle import status_of
    row = status_of(issued.auth, serial.lower())
    assert row.serial == serial
    assert x509.load_der_x509_certificate(row.der) == cert
    assert re.fullmatch(r"[0-9A-F]{32}", serial) or re.fullmatch(r"[0-9A-F]{30}", serial)


def test_ca_private_keys_sensitive_non_extractable_and_not_on_disk(issued: Issued) -> None:
    from pki.ca.root import RootCeremony
    auth = issued.auth
    root_hsm = RootCeremony(auth).root_hsm      # the roots' keys are in the ceremonies' token
    assert len({ca.key_label for ca in auth.cas()}) == 3
    for ca in auth.cas():
        label = ca.key_label
        # The Authority's own logged-in session for the issuing CAs.
        session = (root_hsm if ca.role == "ROOT" else auth.hsm)._session
        keys = list(session.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY,
                                         pkcs11.Attribute.LABEL: label}))
        assert len(keys) == 1, label
        key = keys[0]
        assert key[pkcs11.Attribute.TOKEN] is True
        assert key[pkcs11.Attribute.SENSITIVE] is True
        assert key[pkcs11.Attribute.EXTRACTABLE] is False
        assert key[pkcs11.Attribute.ALWAYS_SENSITIVE] is True
        assert key[pkcs11.Attribute.NEVER_EXTRACTABLE] is True
        with pytest.raises(pkcs11.PKCS11Error):
            key[pkcs11.Attribute.PRIVATE_EXPONENT if auth.config.key_type.startswith("rsa")
                else pkcs11.Attribute.VALUE]
    # Nothing in the home looks like a private key (PEM, PKCS#8 DER or the HSM key's numbers).
    markers = (b"PRIVATE KEY", b"BEGIN RSA", b"BEGIN EC")
    for path in issued.home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(m in data for m in markers), path
    # The public modulus/point is in the CA certificates; CA key material only lives in tokens/.
    assert (issued.home / "tokens").is_dir()


def test_issue_refuses_unknown_profile_and_missing_holder(issued: Issued) -> None:
    from pki.errors import InvalidInput, NotFound
    key = rsa.generate_private_key(65537, 2048).public_key()
    with pytest.raises(InvalidInput):
        issued.auth.issue(IssueRequest("bogus", key, rpps=issued.rpps))
    with pytest.raises(NotFound):
        issued.auth.issue(IssueRequest("auth", key, rpps=ids.luhn_complete("1999999999")))
    assert profiles.profile("auth").issuer_role == "PERSONNES"
