"""The console's two languages: English (``en``) and Simplified Chinese (``zh_Hans``).

Every string a person reads goes through gettext: ``_("…")`` in the templates and
in ``app.py``/``live.py``. The catalogues are ``locale/LANG/LC_MESSAGES/console.po``,
compiled in memory when the console starts (Babel's ``read_po`` and ``write_mo``
into a buffer, read back as ``gettext.GNUTranslations``): no build step, no ``.mo``
file. ``tests/gateway/console/test_i18n.py`` checks that every message used has a
Chinese translation.
"""

from __future__ import annotations

import gettext
import io
import re
from functools import lru_cache
from pathlib import Path

LANGS = ("en", "zh_Hans")
#: What the switch shows for each language (in that language).
LANG_NAMES = {"en": "English", "zh_Hans": "简体中文"}
#: The ``lang`` attribute of the page.
HTML_LANG = {"en": "en", "zh_Hans": "zh-Hans"}
LOCALE_DIR = Path(__file__).with_name("locale")
DOMAIN = "console"


def po_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


@lru_cache(maxsize=None)
def translations(lang: str) -> gettext.NullTranslations:
    """The compiled catalogue of ``lang`` (unknown languages: English)."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po
    if lang not in LANGS:
        lang = "en"
    with po_path(lang).open("rb") as f:
        catalog = read_po(f, locale=lang.replace("_Hans", ""), domain=DOMAIN)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


def gettext_for(lang: str):
    return translations(lang).gettext


def N_(message: str) -> str:
    """Marks a message for the catalogue where it is translated later."""
    return message


# -- what the code and templates use (for the completeness test) -----------------------
_CALL = re.compile(r"""\b(?:_|N_|gettext)\(\s*(?P<q>["'])(?P<msg>(?:\\.|(?!(?P=q)).)*)(?P=q)""")


def messages_used() -> set[str]:
    """Every literal message id passed to ``_``/``N_`` in the console's templates and
    Python modules."""
    here = Path(__file__).parent
    files = list((here / "templates").glob("*.html")) + list(here.glob("*.py"))
    out: set[str] = set()
    for f in files:
        text = f.read_text(encoding="utf-8")
        for m in _CALL.finditer(text):
            msg = m.group("msg")
            if m.group("q") == '"':
                msg = msg.replace('\\"', '"')
            else:
                msg = msg.replace("\\'", "'")
            out.add(msg)
    out.discard("…")
    return out


def catalogue(lang: str) -> dict[str, str]:
    """msgid → msgstr of a language's .po file."""
    from babel.messages.pofile import read_po
    with po_path(lang).open("rb") as f:
        cat = read_po(f, locale=lang.replace("_Hans", ""), domain=DOMAIN)
    return {m.id: m.string for m in cat if m.id}
