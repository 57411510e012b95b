"""Stock OpenSC (no OPENSC_CONF) reads the software card as the IAS-ECC CPS3 it answers as.

Through the real pcscd and vpcd: OpenSC 0.23 binds its own ``iasecc`` driver to the CPS3 ATR,
lists certificates, keys, PIN/PUK and the CPS data objects, signs after the PIN, reports the
PIN counter in the token flags, and unblocks the PIN with the PUK (``pkcs11-tool --unlock-pin``,
with OpenSC's PKCS#11 unblock switched on by ``opensc-unblock.conf``). OpenSC runs in child
processes: it keeps per-process state we do not want in the test runner.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pki.cards.card import SHA256_DIGEST_INFO_PREFIX
from pki.cards.opensc import OPENSC_PKCS11, opensc_unblock_env, stock_env
from tests.cards.conftest import HOLDER, PIN, Personalised

pytestmark = pytest.mark.skipif(
    not Path(OPENSC_PKCS11).exists(), reason="OpenSC not installed (apt-get install opensc)"
)
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "CPS3 (PIN CPS)"  # OpenSC: TokenInfo label + the PIN's label
M = ["pkcs11-tool", "--module", OPENSC_PKCS11]


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env or stock_env(), capture_output=True, text=True, timeout=120)


def digest_info_file(tmp_path: Path, message: bytes) -> Path:
    path = tmp_path / "digest-info"
    path.write_bytes(SHA256_DIGEST_INFO_PREFIX + hashlib.sha256(message).digest())
    return path


def verify(personalised: Personalised, usage: str, signature: bytes, message: bytes) -> None:
    key = personalised.result.certificates[usage].public_key()  # type: ignore[index]
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


def test_stock_opensc_uses_its_iasecc_driver_and_lists_everything(
    personalised: Personalised,
) -> None:
    name = run(["opensc-tool", "--name"])
    assert name.returncode == 0 and name.stdout.strip() == "IAS-ECC", name.stdout + name.stderr
    p15 = run(["pkcs15-tool", "-D"])
    assert p15.returncode == 0, p15.stderr
    for text in (
        "X.509 Certificate [Certificat d'Authentification CPS]",
        "X.509 Certificate [Certificat de Signature CPS]",
        "Private RSA Key [Cle d'Authentification CPS]",
        "Private RSA Key [Cle de Signature CPS]",
        "PIN [PIN CPS]",
        "PIN [PUK CPS]",
        "Data object 'CPS_NAME_PS'",
        "Data object 'CPS_INFO_PS'",
        "Data object 'CPS_ID_CARD'",
    ):
        assert text in p15.stdout, text
    listing = run([*M, "-O"])
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("Certificate Object") == 2
    assert listing.stdout.count("Data object") == 3
    for cert in personalised.result.certificates.values():
        serial = cert.serial_number
        assert serial.to_bytes(serial.bit_length() // 8 + 1, "big").hex().upper() in (
            listing.stdout.replace("serial:     ", "")
        )


def test_stock_opensc_signs_after_the_pin(personalised: Personalised, tmp_path: Path) -> None:
    data = digest_info_file(tmp_path, b"login challenge")
    sign = [*M, "--sign", "--id", "01", "-m", "RSA-PKCS", "-i", str(data)]
    sign += ["-o", str(tmp_path / "s")]
    wrong = run([*sign, "--login", "--pin", "9999"])
    assert wrong.returncode != 0 and "CKR_PIN_INCORRECT" in wrong.stderr
    good = run([*sign, "--login", "--pin", PIN])
    assert good.returncode == 0, good.stderr
    verify(personalised, "auth", (tmp_path / "s").read_bytes(), b"login challenge")
    test = run([*M, "--test", "--login", "--pin", PIN])
    assert "RSA-PKCS: OK" in test.stdout, test.stdout + test.stderr


_BACKEND = """
import sys
from pki.cards.errors import PinIncorrect
from pki.cards.pkcs11_card import Pkcs11Card, Pkcs11Module
module = Pkcs11Module(sys.argv[1])
card = Pkcs11Card(module, sys.argv[2])
h = card.holder()
print(h.national_id, h.profession_code, h.profession_label)
print(card.pin_tries_left())
for _ in range(2):
    try:
        card.verify_pin("9999")
    except PinIncorrect as exc:
        print("wrong", exc.retries_left, card.pin_tries_left())
card.verify_pin(sys.argv[3])
print(card.pin_tries_left())
sys.stdout.write(card.sign("auth", b"through opensc").hex() + "\\n")
"""


def test_pkcs11_backend_over_stock_opensc(personalised: Personalised) -> None:
    """Holder from the CPS data objects; tries from the token flags (COUNT_LOW, FINAL_TRY)."""
    env = dict(stock_env(), PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", _BACKEND, OPENSC_PKCS11, TOKEN, PIN],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"{HOLDER.national_id} {HOLDER.profession_code} {HOLDER.profession_label}"
    assert lines[1:5] == ["3", "wrong 2 2", "wrong 1 1", "3"]
    verify(personalised, "auth", bytes.fromhex(lines[5]), b"through opensc")


def test_puk_unblock_through_pkcs11_tool(personalised: Personalised, tmp_path: Path) -> None:
    for _ in range(3):
        run([*M, "--login", "--pin", "9999", "-O"])
    info = run([*M, "-T"])
    assert "user PIN locked" in info.stdout
    locked = run([*M, "--login", "--pin", PIN, "-O"])
    assert locked.returncode != 0 and "CKR_PIN_LOCKED" in locked.stderr
    cli = [str(Path(sys.executable).parent / "cps-login"), "info"]
    shown = run([*cli, "--pkcs11-module", OPENSC_PKCS11, "--token-label", TOKEN])
    assert "PIN tries left: 0" in shown.stdout, shown.stdout + shown.stderr
    # OpenSC's default (no unblock through PKCS#11) takes the PUK for the old PIN: refused.
    stock = run([*M, "--unlock-pin", "--puk", personalised.result.puk, "--new-pin", "2468"])
    assert stock.returncode != 0
    unlock = run(
        [*M, "--unlock-pin", "--puk", personalised.result.puk, "--new-pin", "2468"],
        opensc_unblock_env(),
    )
    assert unlock.returncode == 0, unlock.stderr
    assert "user PIN locked" not in run([*M, "-T"]).stdout
    data = digest_info_file(tmp_path, b"after unblock")
    sign = [*M, "--sign", "--id", "01", "-m", "RSA-PKCS", "-i", str(data)]
    sign += ["-o", str(tmp_path / "s")]
    assert run([*sign, "--login", "--pin", "2468"]).returncode == 0
    verify(personalised, "auth", (tmp_path / "s").read_bytes(), b"after unblock")
    shown = run([*cli, "--pkcs11-module", OPENSC_PKCS11, "--token-label", TOKEN])
    assert "PIN tries left: 3" in shown.stdout, shown.stdout + shown.stderr


_UNBLOCK = """
import sys
from pki.cards.errors import CardError, PinLocked, PukIncorrect
from pki.cards.pkcs11_card import Pkcs11Card, Pkcs11Module
card = Pkcs11Card(Pkcs11Module(sys.argv[1]), sys.argv[2])
for _ in range(4):
    try:
        card.verify_pin("9999")
    except (CardError,) as exc:
        last = exc
print(type(last).__name__, card.pin_tries_left())
try:
    card.unblock_pin("00000000", "1357")
except PukIncorrect:
    print("wrong PUK")
except CardError as exc:
    print("refused", "opensc-unblock.conf" in str(exc))
    sys.exit(0)
card.unblock_pin(sys.argv[3], "1357")
card.verify_pin("1357")
print("unblocked", card.pin_tries_left())
"""


def test_project_unblocks_through_opensc(personalised: Personalised) -> None:
    """Pkcs11Card.unblock_pin over OpenSC: C_SetPIN(PUK, new PIN) unlogged. OpenSC's default
    refuses with a pointer to opensc-unblock.conf; with it, a wrong PUK is PukIncorrect and
    the right one unblocks."""
    argv = [sys.executable, "-c", _UNBLOCK, OPENSC_PKCS11, TOKEN, personalised.result.puk]
    stock = subprocess.run(
        argv,
        env=dict(stock_env(), PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stock.returncode == 0, stock.stderr
    assert stock.stdout.splitlines() == ["PinLocked 0", "refused True"]
    out = subprocess.run(
        argv,
        env=dict(opensc_unblock_env(), PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["PinLocked 0", "wrong PUK", "unblocked 3"]


def test_cps_login_pin_unblock_through_opensc(personalised: Personalised, tmp_path: Path) -> None:
    """`cps-login pin unblock` over OpenSC's PKCS#11: by default OpenSC refuses and the error
    names opensc-unblock.conf (no try spent); with it, the PUK unblocks a blocked PIN."""
    for _ in range(3):
        run([*M, "--login", "--pin", "9999", "-O"])
    puk, new_pin = tmp_path / "puk", tmp_path / "new"
    for path, value in ((puk, personalised.result.puk), (new_pin, "2468")):
        path.write_text(value)
        path.chmod(0o600)
    cli = [str(Path(sys.executable).parent / "cps-login"), "pin", "unblock", "--pkcs11-module",
           OPENSC_PKCS11, "--token-label", TOKEN, "--puk-file", str(puk),
           "--new-pin-file", str(new_pin)]
    stock = run(cli)
    assert stock.returncode == 1
    assert "pki/cards/data/opensc-unblock.conf" in stock.stderr, stock.stderr
    assert len(stock.stderr.strip().splitlines()) == 1
    done = run(cli, opensc_unblock_env())
    assert done.returncode == 0, done.stderr
    assert "user PIN locked" not in run([*M, "-T"]).stdout
    assert run([*M, "--login", "--pin", "2468", "-O"]).returncode == 0
