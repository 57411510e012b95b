"""`cps-login approve` shows what a relying service wrote (binding message) on the holder's
terminal: a hostile service's control characters must arrive escaped, never interpreted."""

from __future__ import annotations

from cps_login.approve import Pending


def test_binding_message_controls_and_bidi_are_escaped() -> None:
    item = Pending.from_json({"auth_req_id": "x" * 43, "client_name": "Evil\x1b]0;title\x07",
                              "binding_message": "\x9b31mCode \u202e4321\x7f", "scope": "openid"})
    for text in (item.client_name, item.binding_message):
        assert text.isprintable(), text
    assert item.binding_message == "\\u009b31mCode \\u202e4321\\u007f"
    plain = Pending.from_json({"auth_req_id": "y" * 43, "binding_message": "Code 4711 é"})
    assert plain.binding_message == "Code 4711 é"
