"""The one catalogue: every text in French and English, every key the templates use defined,
language negotiation (explicit choice, then Accept-Language, then French)."""

from __future__ import annotations

import re
from pathlib import Path

from cps_login.pages import i18n

TEMPLATES = Path(i18n.__file__).parent / "templates"
KEY_RE = re.compile(r"""\bt\(\s*["']([a-z_.]+)["']""")


def test_every_key_in_both_languages() -> None:
    for key, texts in i18n.CATALOGUE.items():
        assert set(texts) == set(i18n.LANGUAGES), key
        assert all(v.strip() for v in texts.values()), key
        # the same {fields} in both languages
        fields = {lang: sorted(re.findall(r"{(\w+)}", v)) for lang, v in texts.items()}
        assert fields["fr"] == fields["en"], key


def test_templates_use_only_known_keys() -> None:
    used = {k for f in TEMPLATES.rglob("*.html") for k in KEY_RE.findall(f.read_text("utf-8"))}
    assert used, "no t(...) calls found"
    used = {k for k in used if not k.endswith(".")} | {f"lang.{c}" for c in i18n.LANGUAGES}
    assert used - set(i18n.CATALOGUE) == set()


def test_no_bare_text_in_templates() -> None:
    """Visible words come from the catalogue: strip tags, Jinja and entities, nothing is left
    but punctuation."""
    for f in TEMPLATES.rglob("*.html"):
        text = re.sub(r"{[{%#].*?[}%#]}", "", f.read_text("utf-8"), flags=re.S)
        text = re.sub(r"<[^>]*>", "", text)
        words = re.findall(r"[A-Za-zÀ-ÿ]{2,}", text)
        assert words == [], (f.name, words)


def test_negotiation() -> None:
    assert i18n.negotiate([], None) == "fr"
    assert i18n.negotiate([("en-GB", 1.0), ("fr", 0.5)], None) == "en"
    assert i18n.negotiate([("de", 1.0)], None) == "fr"
    assert i18n.negotiate([("en", 1.0)], "fr") == "fr"
    assert i18n.negotiate([("en", 1.0)], "xx") == "en"
    assert i18n.translate("en", "history.count", count=3) == "3 access(es) shown"


def test_keys_built_from_names() -> None:
    from cps_login import access
    from cps_login.pages.views import CHANGES

    for prefix, names in (("mode", access.MODES), ("action", access.ACTIONS),
                          ("done", CHANGES)):
        for name in names:
            assert f"{prefix}.{name}" in i18n.CATALOGUE
