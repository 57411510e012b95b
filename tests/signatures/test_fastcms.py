"""The fast CMS reader (cps_sign.fastcms) against the reference (asn1crypto's classes,
cps_sign.cmsparts): the same parts on good signatures, and the same report from a verifier
with and without the fast path on thousands of mutated signatures."""

from __future__ import annotations

import random

import pytest
from asn1crypto import cms

from cps_sign import fastcms
from cps_sign.cmsparts import from_signed_data, tst_from_token
from cps_sign.revocation import LiveRevocation
from cps_sign.verify import Verifier
from tests.signatures.conftest import SignEnv
from tests.signatures.test_cades import CLAIM, sign


@pytest.fixture(scope="module")
def signatures(sign_env: SignEnv) -> dict[str, bytes]:
    card = sign_env.cards["alice"]
    return {level: sign(sign_env, card, level) for level in ("B-B", "B-T", "B-LT")}


def test_same_parts_as_asn1crypto(signatures: dict[str, bytes]) -> None:
    for level, signature in signatures.items():
        fast = fastcms.signed_parts(signature)
        assert fast == from_signed_data(cms.ContentInfo.load(signature)["content"]), level
        if fast.tst is not None:
            assert fastcms.tst_parts(fast.tst) == tst_from_token(
                cms.ContentInfo.load(fast.tst)), level
    assert fastcms.signed_parts(signatures["B-LT"]).ocsp
    assert fastcms.signed_parts(signatures["B-B"]).tst is None


def test_unusual_shapes_go_to_the_reference_reader(signatures: dict[str, bytes]) -> None:
    good = signatures["B-T"]
    for bad in (b"", good[:100], b"\x30\x80" + good[4:], b"\x31" + good[1:]):
        with pytest.raises(fastcms.Unfamiliar):
            fastcms.signed_parts(bad)


def test_same_reports_on_mutations(sign_env: SignEnv, signatures: dict[str, bytes]) -> None:
    policy = [sign_env.auth.config.profiles.sign_policy_oid]
    live = LiveRevocation()
    fast = Verifier([sign_env.root], [sign_env.issuing], policy, live=live)
    slow = Verifier([sign_env.root], [sign_env.issuing], policy, live=live, fast=False)
    rng = random.Random(20261127)
    checked = 0
    for signature in signatures.values():
        assert fast.verify_cades(CLAIM, signature) == slow.verify_cades(CLAIM, signature)
        for _ in range(700):
            data = bytearray(signature)
            for _ in range(rng.choice((1, 1, 2, 3))):
                i = rng.randrange(len(data))
                data[i] = rng.randrange(256) if rng.random() < 0.7 else data[i] ^ 0x80
            if rng.random() < 0.1:
                cut = rng.randrange(len(data))
                data = data[:cut] + data[cut + rng.randrange(1, 40):]
            mutated = bytes(data)
            a, b = fast.verify_cades(CLAIM, mutated), slow.verify_cades(CLAIM, mutated)
            assert (a.indication, a.sub_indication, a.signer, a.signing_time) == (
                b.indication, b.sub_indication, b.signer, b.signing_time), (a.detail, b.detail)
            checked += 1
    assert checked == 2100


def test_same_reports_with_any_constructed_bit_flipped(sign_env: SignEnv,
                                                      signatures: dict[str, bytes]) -> None:
    """Every byte of a B-LT signature with its 0x20 bit flipped — on a tag, the constructed
    bit: an [0] EXPLICIT or [1] IMPLICIT SET made primitive, an OID or a Name's SEQUENCE made
    constructed. The random mutations above found the fast reader taking three such shapes
    the reference reader refuses (one reported "signature valid" where the reference said
    malformed); byte by byte, none is left."""
    policy = [sign_env.auth.config.profiles.sign_policy_oid]
    live = LiveRevocation()
    fast = Verifier([sign_env.root], [sign_env.issuing], policy, live=live)
    slow = Verifier([sign_env.root], [sign_env.issuing], policy, live=live, fast=False)
    signature = signatures["B-LT"]
    for i in range(len(signature)):
        mutated = signature[:i] + bytes([signature[i] ^ 0x20]) + signature[i + 1:]
        a, b = fast.verify_cades(CLAIM, mutated), slow.verify_cades(CLAIM, mutated)
        assert (a.indication, a.sub_indication) == (b.indication, b.sub_indication), (
            i, a.detail, b.detail)
