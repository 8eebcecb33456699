"""Every user-visible string, per language, in ``locales/<lang>.toml``.

Keys are dotted (``menu.ai_tokens``); values are ``str.format`` templates written in
Telegram's HTML. The catalogue is plain TOML rather than gettext so there is no compile
step and a test can check that every language has every key with the same placeholders.

Escaping happens here, once: every parameter is HTML-escaped when it is put into a
template (a buyer called ``Tom & <Jerry>`` is text, never markup, and Telegram refuses
a message with a stray ``<``). A rendered template is ``Markup`` — safe HTML — so it can
be a parameter of another template unchanged; anything else that is already safe HTML
must be wrapped in ``Markup`` by the caller, where the reason is visible. Places that
Telegram does not parse as HTML (button labels, callback alerts, command descriptions)
use ``Translator.plain``.
"""

from __future__ import annotations

import string
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

__all__ = [
    "DEFAULT_LANGUAGE",
    "LANGUAGES",
    "Markup",
    "Translator",
    "catalog",
    "escape",
    "normalize_language",
    "placeholders",
    "translator",
]

LOCALES_DIR = Path(__file__).resolve().parent
DEFAULT_LANGUAGE = "en"
LANGUAGES = ("en", "ru")


def _flatten(prefix: str, table: dict[str, Any], out: dict[str, str]) -> None:
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            _flatten(name, value, out)
        else:
            out[name] = str(value)


@cache
def catalog(language: str) -> dict[str, str]:
    """``<lang>.toml`` plus any ``<lang>.<feature>.toml`` (one file per feature keeps
    features from editing one shared file); a key defined twice is an error."""
    files = [LOCALES_DIR / f"{language}.toml", *sorted(LOCALES_DIR.glob(f"{language}.*.toml"))]
    out: dict[str, str] = {}
    for path in files:
        with path.open("rb") as fh:
            part: dict[str, str] = {}
            _flatten("", tomllib.load(fh), part)
        duplicated = part.keys() & out.keys()
        if duplicated:
            raise ValueError(f"{path.name} redefines {sorted(duplicated)}")
        out.update(part)
    return out


def placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def normalize_language(code: str | None) -> str:
    """Telegram's language_code (``ru``, ``ru-RU``, ``en-GB``) → one of LANGUAGES."""
    if code:
        short = code.split("-")[0].lower()
        if short in LANGUAGES:
            return short
    return DEFAULT_LANGUAGE


class Translator:
    """Renders keys in one language, falling back to English for a missing key."""

    def __init__(self, language: str) -> None:
        self.language = normalize_language(language)
        self._texts = catalog(self.language)
        self._fallback = catalog(DEFAULT_LANGUAGE)

    def _template(self, key: str) -> str | None:
        return self._texts.get(key) or self._fallback.get(key)

    def __call__(self, key: str, **params: Any) -> Markup:
        """The template as Telegram HTML, each parameter escaped unless it is ``Markup``."""
        template = self._template(key)
        if template is None:
            return escape(key)
        # The template itself is ours (the catalogue), so it is trusted HTML.
        return Markup(template).format(**params)  # noqa: S704

    def plain(self, key: str, **params: Any) -> str:
        """The template as plain text, for what Telegram shows verbatim (button labels,
        callback alerts, command descriptions): parameters are not escaped."""
        template = self._template(key)
        if template is None:
            return key
        return template.format(**params)

    def has(self, key: str) -> bool:
        return key in self._texts or key in self._fallback


def translator(language: str | None) -> Translator:
    return _translator(normalize_language(language))


@cache
def _translator(language: str) -> Translator:
    return Translator(language)
