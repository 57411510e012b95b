"""`cps-admin init`: a new home with its HSM tokens, CA hierarchy and store.

Per range (SPEC §2): an offline root ``AC RACINE IGC-SANTE <RANGE>`` and two issuing CAs,
``AC IGC-SANTE <RANGE> PERSONNES`` and ``... ORGANISATIONS`` (pathLenConstraint 0). The roots'
keys go in the root token (``CPS-ROOT``), the issuing CAs' in the CA token (``CPS-CA``); the
broker token (``CPS-BROKER``) is created empty. Either the whole home is created or nothing is
left behind.
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki import audit, urls
from pki.ca import profiles, softhsm
from pki.ca.authority import Authority
from pki.ca.issuer import lint_then_sign
from pki.ca.root import RootCeremony, ca_pem, issuing_builder, publish_root_crls
from pki.clock import SYSTEM_CLOCK, Clock, utc_seconds
from pki.config import (
    CONFIG_NAME,
    Config,
    CrlConfig,
    HsmConfig,
    find_softhsm_module,
    write_private,
)
from pki.errors import HomeExists, InvalidInput
from pki.hsm import Hsm, KeyType
from pki.store.db import Store
from pki.store.models import CertificateAuthority

RANGES = ("ELEMENTAIRE", "STANDARD", "FORT")
ISSUING_ROLES = ("PERSONNES", "ORGANISATIONS")


def root_name(range_: str) -> str:
    return f"AC RACINE IGC-SANTE {range_}"


def issuing_name(range_: str, role: str) -> str:
    return f"AC IGC-SANTE {range_} {role}"


def init_home(home: Path, *, ranges: tuple[str, ...] = ("FORT",), key_type: str = "rsa4096",
              db_url: str | None = None, base_url: str = "http://127.0.0.1:8080",
              crl_shards: int = 1, hsm_module: str | None = None,
              clock: Clock = SYSTEM_CLOCK) -> Config:
    """Create ``home``; refuse when it already holds a configuration or a token."""
    kt = KeyType.parse(key_type)
    wanted = tuple(dict.fromkeys(r.upper() for r in ranges))
    bad = [r for r in wanted if r not in RANGES]
    if bad or not wanted:
        raise InvalidInput(f"unknown range {', '.join(bad) or '(none)'}; "
                           f"expected some of {', '.join(RANGES)}")
    if crl_shards < 1:
        raise InvalidInput("crl shards must be at least 1")
    if (home / CONFIG_NAME).exists() or (home / "tokens").exists():
        raise HomeExists(f"{home} already holds a CPS home; refusing to overwrite it")
    created = not home.exists()
    if home.exists() and any(home.iterdir()):
        raise HomeExists(f"{home} exists and is not empty; choose a new directory")
    module = hsm_module or find_softhsm_module()
    is_softhsm = "softhsm" in Path(module).name
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        home.chmod(0o700)       # also an existing (empty) folder the umask left open
        (home / "secrets").mkdir(mode=0o700)
        config = Config(home=home, hsm=HsmConfig(module=module,
                                                 softhsm_conf="softhsm2.conf" if is_softhsm
                                                 else None),
                        ranges=wanted, key_type=kt.value, db_url=db_url,
                        base_url=base_url.rstrip("/"), crl=CrlConfig(shards=crl_shards))
        _init_tokens(config, home)
        store = Store(config.effective_db_url())
        store.migrate()
        root_hsm = _open(config, config.hsm.root_token_label, config.hsm.root_pin_file)
        try:
            ca_hsm = _open(config, config.hsm.token_label, config.hsm.user_pin_file)
            try:
                _create_hierarchy(config, store, root_hsm, ca_hsm, kt, clock)
                # No running role may sign with a root key: the roots' first CRLs are signed now.
                publish_root_crls(RootCeremony(Authority(config, store, clock), root_hsm))
            finally:
                ca_hsm.close()
        finally:
            root_hsm.close()
            store.dispose()
        config.save()
        return config
    except BaseException:
        if created:
            shutil.rmtree(home, ignore_errors=True)
        else:
            for child in home.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
        raise


def _init_tokens(config: Config, home: Path) -> None:
    """Three tokens in one SoftHSM configuration, each with its own PIN files (root, CA,
    broker); the broker's stays empty until the broker role generates its key."""
    for _label, pin_file, so_pin_file in config.hsm.tokens():
        write_private(config.path(pin_file), secrets.token_urlsafe(18) + "\n")
        write_private(config.path(so_pin_file), secrets.token_urlsafe(18) + "\n")
    conf_path = config.softhsm_conf_path()
    if conf_path is None:
        return      # a real HSM: its tokens are set up by its own tools
    softhsm.write_softhsm_conf(conf_path, home / "tokens")
    for label, pin_file, so_pin_file in config.hsm.tokens():
        softhsm.init_token(config.hsm.module, conf_path, label, config.path(so_pin_file),
                           config.path(pin_file))


def _open(config: Config, label: str, pin_file: str) -> Hsm:
    return Hsm(config.hsm.module, label, config.read_secret(pin_file), config.softhsm_conf_path())


def _create_hierarchy(config: Config, store: Store, root_hsm: Hsm, ca_hsm: Hsm, kt: KeyType,
                      clock: Clock) -> None:
    now = utc_seconds(clock.now())
    days = config.profiles.ca_validity_days
    with store.session() as session:
        for range_ in config.ranges:
            root_cn = root_name(range_)
            root_slug = urls.ca_slug(root_cn)
            root_key = root_hsm.generate_key(f"ca:{root_slug}", kt)
            root_subject = profiles.ca_name(config, root_cn)
            root_cert = lint_then_sign(profiles.ca_builder(
                root_subject, root_subject, root_key.public_key(), root_key.public_key(),
                not_before=now, days=days, path_length=1), root_key, f"root CA {root_cn}")
            root_row = _ca_row(root_slug, root_cn, range_, "ROOT", None, f"ca:{root_slug}", kt,
                               root_cert.public_bytes(serialization.Encoding.DER), now)
            session.add(root_row)
            session.flush()
            audit.append(session, "ca.init", root_slug, {"role": "ROOT", "key_type": kt.value,
                                                         "serial": f"{root_cert.serial_number:X}",
                                                         "token": root_hsm.token_label},
                         actor="cps-admin", clock=clock)
            for role in ISSUING_ROLES:
                cn = issuing_name(range_, role)
                slug = urls.ca_slug(cn)
                key = ca_hsm.generate_key(f"ca:{slug}", kt)
                cert = lint_then_sign(issuing_builder(
                    config, profiles.ca_name(config, cn), root_cert, root_slug,
                    key.public_key(), not_before=now), root_key, f"issuing CA {cn}")
                session.add(_ca_row(slug, cn, range_, role, root_row.id, f"ca:{slug}", kt,
                                    cert.public_bytes(serialization.Encoding.DER), now))
                audit.append(session, "ca.init", slug, {"role": role, "key_type": kt.value,
                                                        "serial": f"{cert.serial_number:X}",
                                                        "issuer": root_slug,
                                                        "token": ca_hsm.token_label},
                             actor="cps-admin", clock=clock)
        session.flush()
        rows = session.query(CertificateAuthority).all()
        for row in rows:
            write_private(config.path(f"ca/{row.slug}.pem"), ca_pem(row.cert_der), mode=0o644)


def _ca_row(slug: str, name: str, range_: str, role: str, parent_id: int | None, label: str,
            kt: KeyType, der: bytes, now: dt.datetime) -> CertificateAuthority:
    cert = x509.load_der_x509_certificate(der)
    return CertificateAuthority(slug=slug, name=name, range=range_, role=role,
                                parent_id=parent_id, key_label=label, key_type=kt.value,
                                cert_der=der, not_before=cert.not_valid_before_utc,
                                not_after=cert.not_valid_after_utc, crl_number=0,
                                created_at=now)
