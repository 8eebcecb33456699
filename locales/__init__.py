"""Every user-visible string, per language, in ``locales/<lang>.toml``.

Keys are dotted (``menu.ai_tokens``); values are ``str.format`` templates written in
Telegram's HTML. The catalogue is plain TOML rather than gettext so there is no compile
step and a test can check that every language has every key with the same placeholders.

Plural entries. A value may instead be a table whose keys are all CLDR plural
categories (``zero one two few many other``; ``other`` is required)::

    [unit.tokens]
    one = "{count} токен"
    few = "{count} токена"
    many = "{count} токенов"
    other = "{count} токена"

The parameter ``count`` picks the form by the language's CLDR rule (Babel's, never a
hand-written one): Russian 1, 21, 101 → ``one``; 2, 5002 → ``few``; 5, 11 → ``many``.
``{count}`` itself is written as a number of that language (``1 100 000`` in Russian).
A table with any other key is an ordinary group of keys, so a plain string entry stays
valid everywhere. Counts inside longer messages are passed as ``Phrase("unit.tokens",
count=n)``: the translator renders the phrase in its own language.

Numbers, money and dates. ``core.money.format_usd``/``format_tokens`` and
``core.clock.format_utc`` return strings that remember their value; as a parameter of a
template the translator writes them the way its language does (``$1,100.50`` in
English, ``1 100,50 $`` in Russian). Crypto amounts are plain strings on purpose: a
buyer pastes them into a wallet, so they never get grouping or a decimal comma.

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from babel import Locale
from babel.dates import format_datetime
from babel.numbers import format_currency, format_decimal, get_currency_symbol
from markupsafe import Markup, escape

from core.clock import Moment
from core.money import CENT, Number, Usd

__all__ = [
    "DEFAULT_LANGUAGE",
    "LANGUAGES",
    "LANGUAGES_COMPLETE",
    "LANGUAGE_NAMES",
    "PLURAL_CATEGORIES",
    "Entry",
    "Markup",
    "Phrase",
    "Translator",
    "catalog",
    "escape",
    "forms",
    "match_language",
    "normalize_language",
    "placeholders",
    "plural_categories",
    "telegram_code",
    "translator",
]

LOCALES_DIR = Path(__file__).resolve().parent
DEFAULT_LANGUAGE = "en"

# Every language the bot knows, by its own name (how /lang lists it).
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "ru": "Русский",
    "uk": "Українська",
    "es": "Español",
    "pt-BR": "Português (Brasil)",
    "tr": "Türkçe",
    "zh-Hans": "简体中文",
    "fa": "فارسی",
}
# Languages with a complete, reviewed catalogue: offered to buyers (/lang, the web chat,
# Telegram's command menu) and held to full parity by the tests. A registered language
# not listed here is not offered; a buyer whose Telegram speaks it gets English until
# its translation lands.
LANGUAGES_COMPLETE: tuple[str, ...] = ("en", "ru", "uk", "es", "pt-BR", "tr", "zh-Hans", "fa")
LANGUAGES = LANGUAGES_COMPLETE

PLURAL_CATEGORIES = frozenset({"zero", "one", "two", "few", "many", "other"})

# Telegram's language_code (IETF, any case) → ours, where the prefix alone is not enough.
_ALIASES = {
    "pt": "pt-BR",
    "pt-br": "pt-BR",
    "zh": "zh-Hans",
    "zh-hans": "zh-Hans",
    "zh-cn": "zh-Hans",
    "zh-sg": "zh-Hans",
}

Entry = str | dict[str, str]


def _is_plural(table: dict[str, Any]) -> bool:
    return "other" in table and table.keys() <= PLURAL_CATEGORIES


def _flatten(prefix: str, table: dict[str, Any], out: dict[str, Entry]) -> None:
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and _is_plural(value):
            out[name] = {category: str(text) for category, text in value.items()}
        elif isinstance(value, dict):
            _flatten(name, value, out)
        else:
            out[name] = str(value)


def _files(language: str) -> list[Path]:
    # "en.admin.toml" belongs to en, never to a language whose code starts with "en.".
    parts = sorted(p for p in LOCALES_DIR.glob(f"{language}.*.toml") if p.name.count(".") == 2)
    main = LOCALES_DIR / f"{language}.toml"
    return [main, *parts] if main.is_file() else parts


@cache
def catalog(language: str) -> dict[str, Entry]:
    """``<lang>.toml`` plus any ``<lang>.<feature>.toml`` (one file per feature keeps
    features from editing one shared file); a key defined twice is an error."""
    out: dict[str, Entry] = {}
    for path in _files(language):
        with path.open("rb") as fh:
            part: dict[str, Entry] = {}
            _flatten("", tomllib.load(fh), part)
        duplicated = part.keys() & out.keys()
        if duplicated:
            raise ValueError(f"{path.name} redefines {sorted(duplicated)}")
        out.update(part)
    return out


def forms(entry: Entry) -> list[str]:
    """The templates of an entry: one for a plain string, one per plural category."""
    return [entry] if isinstance(entry, str) else list(entry.values())


def placeholders(entry: Entry) -> set[str]:
    return {
        name for text in forms(entry) for _, name, _, _ in string.Formatter().parse(text) if name
    }


def _locale(language: str) -> Locale:
    return Locale.parse(language, sep="-")


def plural_categories(language: str) -> frozenset[str]:
    """The CLDR categories a plural entry of ``language`` must have."""
    return frozenset(_locale(language).plural_form.tags) | {"other"}


def match_language(code: str | None, languages: Iterable[str]) -> str | None:
    """Telegram's language_code (``ru``, ``ru-RU``, ``pt-br``, ``zh-hans``, any case) → the
    one of ``languages`` it names, or None."""
    if not code:
        return None
    by_lower = {language.lower(): language for language in languages}
    lowered = code.strip().lower().replace("_", "-")
    for candidate in (lowered, lowered.split("-")[0]):
        language = by_lower.get(_ALIASES.get(candidate, candidate).lower())
        if language is not None:
            return language
    return None


def normalize_language(code: str | None) -> str:
    """Telegram's language_code → one of the offered LANGUAGES; anything else → English
    (also a registered language whose translation is not complete yet)."""
    return match_language(code, LANGUAGES) or DEFAULT_LANGUAGE


def telegram_code(language: str) -> str:
    """The two-letter code Telegram uses for ``language`` (setMyCommands)."""
    return language.split("-")[0]


@dataclass(frozen=True)
class Phrase:
    """A catalogue entry as a parameter of another: rendered in the language of the
    template it goes into (processing code builds parameters before the buyer's language
    is known)."""

    key: str
    params: dict[str, Any] = field(default_factory=dict)

    def __init__(self, key: str, **params: Any) -> None:
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "params", params)

    def __str__(self) -> str:
        return Translator(DEFAULT_LANGUAGE).plain(self.key, **self.params)


def _count(value: object) -> int | Decimal | None:
    """The number a plural entry is chosen by. ``Decimal("5.0")`` counts as 5: it is
    written "5", so it must take the form of 5 (CLDR gives a visible ".0" another)."""
    if isinstance(value, Number):
        value = value.value
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value


class Translator:
    """Renders keys in one language, falling back to English for a missing key."""

    def __init__(self, language: str) -> None:
        self.language = language if language in LANGUAGE_NAMES else normalize_language(language)
        self.locale = _locale(self.language)
        self._texts = catalog(self.language)
        self._fallback = catalog(DEFAULT_LANGUAGE)

    # ---------------------------------------------------------------- formats
    def number(self, value: int | Decimal) -> str:
        return format_decimal(value, locale=self.locale)

    def usd(self, amount: Decimal) -> str:
        """Two places, grouped per language. The shop prices everything in US dollars,
        so the sign is "$" everywhere (CLDR writes "US$" or "USD" in some languages)."""
        text = format_currency(amount.quantize(CENT), "USD", locale=self.locale)
        return text.replace(get_currency_symbol("USD", locale=self.locale), "$")

    def moment(self, moment: Moment) -> str:
        if moment.moment is None:
            return str(moment)
        if self.language == DEFAULT_LANGUAGE:
            # SPEC's English form (unambiguous for buyers everywhere).
            return str(moment)
        zone = moment.zone or UTC
        written = format_datetime(moment.moment, "short", tzinfo=zone, locale=self.locale)
        return f"{written} {moment.zone_name}"

    # ---------------------------------------------------------------- templates
    def _template(self, key: str, params: dict[str, Any]) -> str | None:
        entry = self._texts.get(key) or self._fallback.get(key)
        if entry is None or isinstance(entry, str):
            return entry
        value = _count(params.get("count"))
        category = "other" if value is None else self.locale.plural_form(value)
        return entry.get(category) or entry["other"]

    def _localise(self, params: dict[str, Any], *, plain: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in params.items():
            if isinstance(value, Phrase):
                render = self.plain if plain else self
                out[name] = render(value.key, **value.params)
            elif isinstance(value, Usd):
                out[name] = self.usd(value.amount)
            elif isinstance(value, Number):
                out[name] = self.number(value.value)
            elif isinstance(value, Moment):
                out[name] = self.moment(value)
            elif name == "count" and _count(value) is not None:
                out[name] = self.number(_count(value) or 0)
            else:
                out[name] = value
        return out

    def __call__(self, key: str, **params: Any) -> Markup:
        """The template as Telegram HTML, each parameter escaped unless it is ``Markup``."""
        template = self._template(key, params)
        if template is None:
            return escape(key)
        # The template itself is ours (the catalogue), so it is trusted HTML.
        return Markup(template).format(**self._localise(params, plain=False))  # noqa: S704

    def plain(self, key: str, **params: Any) -> str:
        """The template as plain text, for what Telegram shows verbatim (button labels,
        callback alerts, command descriptions): parameters are not escaped."""
        template = self._template(key, params)
        if template is None:
            return key
        return template.format(**self._localise(params, plain=True))

    def has(self, key: str) -> bool:
        return key in self._texts or key in self._fallback


def translator(language: str | None) -> Translator:
    return _translator(normalize_language(language))


@cache
def _translator(language: str) -> Translator:
    return Translator(language)
