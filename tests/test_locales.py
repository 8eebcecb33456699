"""The locale catalogues agree with English: keys, placeholders and HTML markup."""

from __future__ import annotations

import re
import string

import pytest

import locales
from locales import (
    DEFAULT_LANGUAGE,
    LANGUAGES,
    Markup,
    Translator,
    catalog,
    normalize_language,
    placeholders,
    translator,
)
from sandbox.telegram import parse_html

BALANCED_TAGS = ("b", "i", "code", "pre", "tg-spoiler", "a")
OTHER_LANGUAGES = [lang for lang in LANGUAGES if lang != DEFAULT_LANGUAGE]
ALL_TEMPLATES = [
    pytest.param(lang, key, id=f"{lang}:{key}")
    for lang in LANGUAGES
    for key in sorted(catalog(lang))
]


def dummy_params(template: str) -> dict[str, str]:
    return {name: f"X{name}X" for name in placeholders(template)}


def render(template: str) -> str:
    return template.format(**dummy_params(template))


def test_languages_include_english() -> None:
    assert DEFAULT_LANGUAGE in LANGUAGES
    assert catalog(DEFAULT_LANGUAGE), "en.toml is empty"


@pytest.mark.parametrize("language", LANGUAGES)
def test_language_file_exists(language: str) -> None:
    assert (locales.LOCALES_DIR / f"{language}.toml").is_file()


@pytest.mark.parametrize("language", OTHER_LANGUAGES)
def test_same_keys_as_english(language: str) -> None:
    english = set(catalog(DEFAULT_LANGUAGE))
    other = set(catalog(language))
    missing = sorted(english - other)
    extra = sorted(other - english)
    assert not missing and not extra, f"{language}.toml: missing keys {missing}; extra keys {extra}"


@pytest.mark.parametrize("language", OTHER_LANGUAGES)
def test_same_placeholders_as_english(language: str) -> None:
    english = catalog(DEFAULT_LANGUAGE)
    other = catalog(language)
    mismatches = {
        key: {"en": sorted(placeholders(english[key])), language: sorted(placeholders(text))}
        for key, text in other.items()
        if key in english and placeholders(text) != placeholders(english[key])
    }
    assert not mismatches, f"{language}.toml: placeholders differ from English: {mismatches}"


@pytest.mark.parametrize("language", OTHER_LANGUAGES)
def test_no_empty_values(language: str) -> None:
    empty = sorted(key for key, text in catalog(language).items() if not text.strip())
    assert not empty, f"{language}.toml: empty values for {empty}"


@pytest.mark.parametrize(("language", "key"), ALL_TEMPLATES)
def test_template_renders(language: str, key: str) -> None:
    template = catalog(language)[key]
    rendered = render(template)
    for name in placeholders(template):
        assert f"X{name}X" in rendered
    assert Translator(language)(key, **dummy_params(template)) == rendered


@pytest.mark.parametrize(("language", "key"), ALL_TEMPLATES)
def test_html_tags_balanced(language: str, key: str) -> None:
    rendered = render(catalog(language)[key])
    for tag in BALANCED_TAGS:
        opening = len(re.findall(rf"<{re.escape(tag)}(?:\s[^>]*)?>", rendered))
        closing = len(re.findall(rf"</{re.escape(tag)}\s*>", rendered))
        assert opening == closing, (
            f"{language}:{key}: <{tag}> opened {opening} times, closed {closing} times"
        )


# What a buyer may call themselves, or a provider may put in an error: all text.
HOSTILE = 'Tom & <Jerry> <3 a>b &amp; <a href="https://evil.example/">free</a>'


@pytest.mark.parametrize(("language", "key"), ALL_TEMPLATES)
def test_template_is_valid_telegram_html_whatever_the_parameters(language: str, key: str) -> None:
    """Every parameter is escaped by the translator: the message parses under Telegram's
    HTML rules (the emulator's parser refuses what Telegram refuses) and shows each
    parameter exactly as given, with no link smuggled in."""
    template = catalog(language)[key]
    names = placeholders(template)
    plain, entities = parse_html(Translator(language)(key, **dict.fromkeys(names, HOSTILE)))
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    assert plain.count(HOSTILE) == len(fields)
    assert not [e for e in entities if e["type"] == "text_link"]


def test_safe_fragments_are_not_escaped_twice() -> None:
    t = Translator("en")
    # A rendered template is safe HTML: as a parameter of another it stays as it is.
    line = t(
        "orders.line", order_id=1, tokens="5", model="<m>", total="$1", status=t("status.paid")
    )
    assert line == "#1 · 5 tokens · &lt;m&gt; · $1 — <b>paid</b>"
    assert t("broadcast.preview", text=Markup("<b>hi</b>"), count=1).count("<b>hi</b>") == 1
    # Button labels are shown verbatim by Telegram: no escaping there.
    assert t.plain("buy.model_button", name="A & B") == "🧠 Model: A & B"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("ru-RU", "ru"),
        ("ru", "ru"),
        ("RU", "ru"),
        ("en-GB", "en"),
        ("en", "en"),
        (None, "en"),
        ("", "en"),
        ("de", "en"),
        ("de-DE", "en"),
    ],
)
def test_normalize_language(code: str | None, expected: str) -> None:
    assert normalize_language(code) == expected


def test_russian_label_is_translated() -> None:
    russian = Translator("ru")("menu.ai_tokens")
    english = Translator("en")("menu.ai_tokens")
    assert russian != english
    assert russian == catalog("ru")["menu.ai_tokens"]


def test_unknown_language_falls_back_to_english() -> None:
    german = translator("de")
    assert german.language == DEFAULT_LANGUAGE
    assert german("menu.ai_tokens") == catalog(DEFAULT_LANGUAGE)["menu.ai_tokens"]
    assert german("menu.ai_tokens") != Translator("ru")("menu.ai_tokens")


def test_unknown_key_is_returned_as_is() -> None:
    assert Translator("ru")("no.such.key") == "no.such.key"
