from __future__ import annotations

from pki import urls


def test_slug_and_paths() -> None:
    slug = urls.ca_slug("AC IGC-SANTE FORT PERSONNES")
    assert slug == "ac-igc-sante-fort-personnes"
    assert urls.crl_path(slug) == "/crl/ac-igc-sante-fort-personnes.crl"
    assert urls.crl_path(slug, delta=True) == "/crl/ac-igc-sante-fort-personnes-delta.crl"
    assert urls.crl_path(slug, 3) == "/crl/ac-igc-sante-fort-personnes-p3.crl"
    assert urls.crl_url("http://h:1/", slug) == "http://h:1/crl/ac-igc-sante-fort-personnes.crl"
    assert urls.ca_cert_url("http://h", slug) == "http://h/ca/ac-igc-sante-fort-personnes.crt"
    assert urls.ocsp_url("http://h/") == "http://h/ocsp"


def test_shards() -> None:
    assert urls.shard_of(12345, 1) is None
    assert {urls.shard_of(s, 4) for s in range(100)} == {0, 1, 2, 3}
