"""Every message the console shows has a Simplified Chinese translation, and the
catalogues compile in memory (no build step)."""

from __future__ import annotations

from consolefix import login
from starlette.testclient import TestClient

from lanecore.gateway.console import i18n


def test_every_message_used_has_a_chinese_translation():
    used = i18n.messages_used()
    assert len(used) > 100 and "Lanes" in used and "Acknowledge" in used
    zh = i18n.catalogue("zh_Hans")
    missing = sorted(m for m in used if not zh.get(m))
    assert missing == [], f"untranslated in zh_Hans: {missing}"
    en = i18n.catalogue("en")
    assert sorted(m for m in used if m not in en) == []
    same = sorted(m for m in used if zh[m] == m)
    assert same == [], f"'translated' as the English: {same}"
    assert i18n.gettext_for("zh_Hans")("Lanes") == "通道"
    assert i18n.gettext_for("en")("Lanes") == "Lanes"


def test_the_chinese_pages_carry_no_english_message(make_app):
    app, _ = make_app()
    english = {m for m in i18n.messages_used() if len(m) > 3}
    with TestClient(app) as c:
        login(c, "ada")
        token = c.get("/lanes").text.split('name="csrf" content="')[1].split('"')[0]
        c.post("/lang", data={"lang": "zh_Hans", "csrf": token})
        for path in ("/lanes", "/alarms", "/audits", "/devices", "/products", "/members",
                     "/promotions", "/coupons", "/terminals", "/analytics", "/staff"):
            text = c.get(path).text
            leaked = sorted(m for m in english if f">{m}<" in text)
            assert leaked == [], (path, leaked)
