"""A CPS home: the directory holding one installation's configuration, secrets and SQLite store.

Layout::

    HOME/                     mode 0700
    HOME/config.json          settings (the *configurable* values of SPEC.md), 0600
    HOME/secrets/*.pin        one PIN file per token (root, ca, broker, tsa), 0600 in a 0700
                              directory, never on a command line
    HOME/softhsm2.conf        SoftHSM configuration (when the module is SoftHSM)
    HOME/tokens/              SoftHSM token directory
    HOME/cps.db               SQLite store, 0600 (default; --db selects PostgreSQL)
    HOME/ca/*.pem             CA certificates (public)
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pki.errors import ConfigError, HomeNotFound

CONFIG_NAME = "config.json"
# The broker's mTLS server credentials: written by `cps-admin broker tls-cert` (the officer),
# read by the broker role, hidden from every other role.
BROKER_TLS_CERT_FILE = "secrets/broker-tls.crt"
BROKER_TLS_KEY_FILE = "secrets/broker-tls.key"
# The time-stamping unit: its key in the TSA token, and its certificate chain (public, the TSA
# certificate first) written by `cps-admin tsa cert` and read by the tsa role.
TSA_KEY_LABEL = "tsa:signing"
TSA_CHAIN_FILE = "tsa/tsa-chain.pem"
# The key sealing the patient space's secure messages at rest (default of login.json's
# ``message_key_file``): read by the patient and broker roles, hidden from every other role.
MESSAGE_KEY_FILE = "secrets/messages.key"
SOFTHSM_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


def default_home() -> Path:
    return Path(os.environ.get("CPS_HOME") or "./var/cps")


def find_softhsm_module() -> str:
    for candidate in SOFTHSM_MODULE_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    raise ConfigError("SoftHSM module libsofthsm2.so not found; install softhsm2 "
                      "or give --hsm-module")


@dataclass(frozen=True)
class HsmConfig:
    module: str
    # The issuing CAs' token (their keys and the OCSP responder keys): officer commands and the
    # signer role open it with ``user_pin_file``.
    token_label: str = "CPS-CA"  # noqa: S105 - a label, not a secret
    # Relative to the home; None when the module is not SoftHSM (a real HSM).
    softhsm_conf: str | None = "softhsm2.conf"
    user_pin_file: str = "secrets/ca.pin"
    so_pin_file: str = "secrets/ca-so.pin"
    # The roots' token: opened only by `cps-admin init` and the `cps-admin root` ceremonies.
    root_token_label: str = "CPS-ROOT"  # noqa: S105 - a label, not a secret
    root_pin_file: str = "secrets/root.pin"
    root_so_pin_file: str = "secrets/root-so.pin"
    # The login broker's token (its access-token signing key): the broker role only.
    broker_token_label: str = "CPS-BROKER"  # noqa: S105 - a label, not a secret
    broker_pin_file: str = "secrets/broker.pin"
    broker_so_pin_file: str = "secrets/broker-so.pin"
    # The time-stamping authority's token (its time-stamp signing key): the tsa role only.
    tsa_token_label: str = "CPS-TSA"  # noqa: S105 - a label, not a secret
    tsa_pin_file: str = "secrets/tsa.pin"
    tsa_so_pin_file: str = "secrets/tsa-so.pin"

    def tokens(self) -> tuple[tuple[str, str, str], ...]:
        """``(label, user PIN file, SO PIN file)`` of each token a home holds (root, CA, broker,
        TSA)."""
        return ((self.root_token_label, self.root_pin_file, self.root_so_pin_file),
                (self.token_label, self.user_pin_file, self.so_pin_file),
                (self.broker_token_label, self.broker_pin_file, self.broker_so_pin_file),
                (self.tsa_token_label, self.tsa_pin_file, self.tsa_so_pin_file))


@dataclass(frozen=True)
class OrgNames:
    """Names of the CA subjects (SPEC §2: configurable)."""

    country: str = "FR"
    organisation: str = "ASIP-SANTE"
    org_units: tuple[str, ...] = ("0002 187512751", "IGC-SANTE")


@dataclass(frozen=True)
class CrlConfig:
    validity_hours: int = 168          # full CRL nextUpdate - thisUpdate
    republish_before_hours: int = 24   # serve republishes this long before nextUpdate
    delta_validity_hours: int = 24
    delta_after_change_seconds: int = 5  # serve publishes a delta this soon after a change
    shards: int = 1
    # A root's CRL (the ARL) is signed only in a ceremony (`cps-admin root crl`), so it lives long.
    root_validity_days: int = 365


@dataclass(frozen=True)
class OcspConfig:
    validity_hours: int = 24           # nextUpdate of pre-signed responses
    refresh_before_hours: int = 8      # re-sign this long before nextUpdate
    responder_validity_days: int = 7   # delegated responder certificate
    responder_renew_before_days: int = 2
    # P-256 keeps pre-signed responses small (2M certificates fit in well under 1 GiB).
    responder_key_type: str = "p256"
    redis_url: str | None = None
    # Signer role: extra processes (each its own token session) that sign large batches of
    # records — an incident re-signing hundreds of thousands at once; 0 signs in-process only.
    sign_processes: int = 2


@dataclass(frozen=True)
class TsaConfig:
    # How often the tsa role asks the status tier for its own certificate's status (it stops
    # stamping while revoked or on hold).
    status_seconds: float = 60.0


@dataclass(frozen=True)
class ProfileConfig:
    # Test PKI arc by default; production uses 1.2.250.1.213.1.7.1.1.1.5.1 / .4.1 (SPEC §3).
    auth_policy_oid: str = "1.2.250.1.213.1.7.1.1.1.5.1"
    sign_policy_oid: str = "1.2.250.1.213.1.7.1.1.1.4.1"
    org_policy_oid: str = "1.2.250.1.213.1.7.1.1.1.6.1"
    # The time-stamping unit: its certificate's policy, and the policy of its time stamps
    # (the TSTInfo policy field). Test arcs like the others.
    tsa_cert_policy_oid: str = "1.2.250.1.213.1.7.1.1.1.8.1"
    tsa_policy_oid: str = "1.2.250.1.213.1.7.1.1.1.9.1"
    card_validity_days: int = 3 * 365   # CPS3; CPS4 uses 6 years
    org_validity_days: int = 3 * 365
    ca_validity_days: int = 20 * 365
    end_entity_key: str = "rsa2048"     # or p256


@dataclass(frozen=True)
class Config:
    home: Path
    hsm: HsmConfig
    ranges: tuple[str, ...] = ("FORT",)
    key_type: str = "rsa4096"
    db_url: str | None = None           # None: SQLite file in the home
    base_url: str = "http://127.0.0.1:8080"
    names: OrgNames = field(default_factory=OrgNames)
    crl: CrlConfig = field(default_factory=CrlConfig)
    ocsp: OcspConfig = field(default_factory=OcspConfig)
    profiles: ProfileConfig = field(default_factory=ProfileConfig)
    tsa: TsaConfig = field(default_factory=TsaConfig)

    # --- paths ---------------------------------------------------------------------------
    def path(self, relative: str) -> Path:
        return self.home / relative

    @property
    def sqlite_url(self) -> str:
        return f"sqlite:///{(self.home / 'cps.db').resolve()}"

    def effective_db_url(self, override: str | None = None) -> str:
        return override or self.db_url or self.sqlite_url

    def softhsm_conf_path(self) -> Path | None:
        return None if self.hsm.softhsm_conf is None else self.home / self.hsm.softhsm_conf

    def read_secret(self, relative: str) -> str:
        """A PIN file's content; refused when others than its owner may read it."""
        path = self.home / relative
        try:
            with path.open("r", encoding="utf-8") as fh:
                mode = os.fstat(fh.fileno()).st_mode
                if stat.S_ISREG(mode) and mode & 0o077:
                    raise ConfigError(f"secret file {path} is readable by others (mode "
                                      f"{stat.S_IMODE(mode):o}); chmod 600 it")
                return fh.read().strip()
        except FileNotFoundError:
            raise ConfigError(f"secret file {path} is missing") from None

    # --- (de)serialisation -------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("home")
        return data

    def save(self) -> None:
        write_private(self.home / CONFIG_NAME, json.dumps(self.to_json(), indent=2) + "\n",
                      mode=0o600)

    @classmethod
    def load(cls, home: Path) -> Config:
        path = home / CONFIG_NAME
        if not path.exists():
            raise HomeNotFound(f"no CPS home at {home} (run `cps-admin init` first)")
        try:
            raw = json.loads(path.read_text("utf-8"))
            return cls(
                home=home,
                hsm=HsmConfig(**raw["hsm"]),
                ranges=tuple(raw.get("ranges", ("FORT",))),
                key_type=raw.get("key_type", "rsa4096"),
                db_url=raw.get("db_url"),
                base_url=raw.get("base_url", "http://127.0.0.1:8080"),
                names=_names(raw.get("names", {})),
                crl=CrlConfig(**raw.get("crl", {})),
                ocsp=OcspConfig(**raw.get("ocsp", {})),
                profiles=ProfileConfig(**raw.get("profiles", {})),
                tsa=TsaConfig(**raw.get("tsa", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: invalid configuration ({exc})") from None


def _names(raw: dict[str, Any]) -> OrgNames:
    if "org_units" in raw:
        raw = {**raw, "org_units": tuple(raw["org_units"])}
    return OrgNames(**raw)


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file atomically with ``mode`` set before any byte is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_pin(digits: int = 8) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(digits))
