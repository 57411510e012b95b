"""The product category (1.2.250.1.71.1.2.5, SPEC §3) says where the key lives (issue 13 #2).

0 card (keys generated on the card by ``card issue``), 2 security module, 3 software. A key
that arrives in a CSR was made outside any card (``openssl req``): it is never "card", whatever
the profile. Renewing with the same key keeps the category; a new key from a CSR is software.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ObjectIdentifier

from pki.ca import lifecycle
from pki.ca.authority import Authority
from pki.cards.card import HolderData
from pki.cli.admin import main
from pki.errors import InvalidInput
from pki.issuance.cards import issue_card
from tests.conftest import add_professional

from .pkihelpers import make_csr

CATEGORY = ObjectIdentifier("1.2.250.1.71.1.2.5")


def category(cert: x509.Certificate) -> int:
    raw = cert.extensions.get_extension_for_oid(CATEGORY).value
    assert isinstance(raw, x509.UnrecognizedExtension)
    assert raw.value[:2] == b"\x02\x01"          # DER INTEGER, one byte
    return raw.value[2]


@dataclass
class MemoryCard:
    """A blank card for ``issue_card``: keys "generated on the card" (here, in memory)."""

    keys: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    written: dict[str, bytes] = field(default_factory=dict)

    def generate_key_pair(self, usage: str, key_type: str) -> PublicKeyTypes:
        self.keys[usage] = ec.generate_private_key(ec.SECP256R1())
        return self.keys[usage].public_key()

    def write_certificate(self, usage: str, der: bytes) -> None:
        self.written[usage] = der

    def write_holder(self, holder: HolderData) -> None:
        pass

    def set_credentials(self, pin: str, puk: str) -> None:
        pass

    def finish_personalisation(self) -> None:
        pass


@dataclass
class Cli:
    home: Path
    tmp: Path
    rpps: str

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(main, ["--home", str(self.home), *args])

    def issue(self, *extra: str) -> tuple[Result, Path]:
        csr = self.tmp / f"req-{len(list(self.tmp.iterdir()))}.csr"
        csr.write_bytes(make_csr(ec.generate_private_key(ec.SECP256R1())))
        out = csr.with_suffix(".pem")
        return self.run("cert", "issue", "--csr", str(csr), "--rpps", self.rpps,
                        "--usage", "auth", "--out", str(out), *extra), out


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    from pki.ca.hierarchy import init_home

    tmp = tmp_path_factory.mktemp("category")
    home = tmp / "home"
    init_home(home, key_type="p256")
    auth = Authority.open(home)
    try:
        rpps = add_professional(auth)
    finally:
        auth.close()
    work = tmp / "work"
    work.mkdir()
    yield Cli(home, work, rpps)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_csr_issued_certificate_is_software_by_default(cli: Cli) -> None:
    res, out = cli.issue()
    assert res.exit_code == 0, res.output
    assert category(_cert(out)) == 3
    shown = cli.run("--json", "cert", "show", f"{_cert(out).serial_number:X}")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["key_storage"] == "software"


def test_officer_may_say_the_csr_key_is_in_a_security_module(cli: Cli) -> None:
    res, out = cli.issue("--key-storage", "hsm")
    assert res.exit_code == 0, res.output
    assert category(_cert(out)) == 2
    res, out = cli.issue("--key-storage", "software")
    assert res.exit_code == 0, res.output
    assert category(_cert(out)) == 3


def test_a_csr_can_never_claim_a_card(cli: Cli) -> None:
    res, out = cli.issue("--key-storage", "card")
    assert res.exit_code != 0 and not out.exists()
    auth = Authority.open(cli.home)
    try:
        with pytest.raises(InvalidInput, match="card"):
            auth.issue_from_csr(make_csr(ec.generate_private_key(ec.SECP256R1())), "auth",
                                rpps=cli.rpps, key_storage="card")  # type: ignore[arg-type]
    finally:
        auth.close()


def test_card_issue_is_card_and_renewals_follow_the_key(cli: Cli) -> None:
    auth = Authority.open(cli.home)
    try:
        rpps = add_professional(auth, body="1000345679", given="Ada")
        card = MemoryCard()
        result = issue_card(auth, rpps, card, "1234", backend="test", location="memory")
        assert {u: category(c) for u, c in result.certificates.items()} == \
            {"auth": 0, "sign": 0}
        serial = f"{result.certificates['auth'].serial_number:X}"
        same_key = lifecycle.renew(auth, serial)           # the key is still on the card
        assert category(same_key.certificate) == 0
        new_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        moved = lifecycle.renew(auth, serial, public_key=new_key)   # a key from elsewhere
        assert category(moved.certificate) == 3
        _, out = cli.issue()
        software = f"{_cert(out).serial_number:X}"
        assert category(lifecycle.renew(auth, software).certificate) == 3
    finally:
        auth.close()
