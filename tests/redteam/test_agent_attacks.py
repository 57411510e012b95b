"""`cps-login agent` attacked by a hostile web page (the agent's own test stand-ins)."""

from __future__ import annotations

import secrets

from tests.agent.test_agent import Running, running  # noqa: F401


def test_a_no_referrer_link_from_a_hostile_page_never_prompts_the_pin(
        running: Running) -> None:  # noqa: F811
    """FINDING F2 (fixed in cps_login/agent.py): a hostile page opens the agent link
    top-level with rel=noreferrer (or Referrer-Policy: no-referrer): no Referer,
    Sec-Fetch-Site: cross-site. The Referer check was skipped and the agent prompted the PIN
    and verified it on the card for any syntactically valid tx: PIN-prompt spam and
    login-CSRF attempts. The broker's own page always sends its origin."""
    prompts: list[str] = []
    settings = running.agent.settings
    running.agent.settings = type(settings)(**{**settings.__dict__,
                                               "read_pin": lambda p: prompts.append(p) or "1234"})
    code, _, _ = running.authorize(tx=secrets.token_urlsafe(24), Referer="")    # none sent
    assert code == 403
    assert prompts == [] and running.card.opened == 0 and running.broker.hits == []


def test_dns_rebinding_host_variants(running: Running) -> None:  # noqa: F811
    for host in (f"127.0.0.1.evil.example:{running.port}", "127.0.0.1", f"[::1]:{running.port}",
                 f"LOCALHOST:{running.port}x", ""):
        code, _, _ = running.authorize(Host=host,
                                       Referer=running.broker.base + "/oidc/authorize")
        assert code == 421, host
    assert running.card.opened == 0


def test_referer_of_a_lookalike_origin_is_refused(running: Running) -> None:  # noqa: F811
    base = running.broker.base
    for referer in (base + ".evil.example/", base.replace("http://", "http://user@") + "/",
                    "https://" + base.split("://")[1] + "/"):
        code, _, _ = running.authorize(Referer=referer)
        assert code == 403, referer
    assert running.card.opened == 0
