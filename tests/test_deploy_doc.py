"""docs/deploy.md names only settings that exist (a cheap guard against drift), and the
README links it."""

from __future__ import annotations

import re
from pathlib import Path

from bot.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "deploy.md"
# An environment variable's shape: NAME or NAME=value, upper case with an underscore.
SETTING = re.compile(r"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?:=\S*)?")
# Named by the guide, added by work merged separately (issue 13 item 3, /metrics).
# Remove a name here once its setting exists.
PENDING: set[str] = set()


def named_settings(text: str) -> set[str]:
    """Names in inline code (`NAME`, `NAME=value`), in ``${NAME}`` and at the start of
    code-block lines."""
    names = {
        m.group(1) for span in re.findall(r"`([^`\n]+)`", text) if (m := SETTING.fullmatch(span))
    }
    names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", text))  # Compose's ${NAME:-default}
    for block in re.findall(r"```.*?\n(.*?)```", text, flags=re.DOTALL):
        names |= {m.group(1) for line in block.splitlines() if (m := SETTING.match(line.strip()))}
    return names


def known_settings() -> set[str]:
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    from_example = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, flags=re.MULTILINE))
    return {name.upper() for name in Settings.model_fields} | from_example


def test_every_setting_the_guide_names_exists() -> None:
    named = named_settings(GUIDE.read_text(encoding="utf-8"))
    assert {"BOT_TOKEN", "ENCRYPTION_KEY", "ADMIN_TOPIC_FUNDS", "BACKUP_KEEP"} <= named
    unknown = named - known_settings() - PENDING
    assert not unknown, f"docs/deploy.md names settings that do not exist: {sorted(unknown)}"


def test_the_check_catches_a_made_up_name() -> None:
    assert named_settings("set `ADMIN_TOPIC_CHEESE=5`") - known_settings() == {"ADMIN_TOPIC_CHEESE"}


def test_readme_links_the_guide() -> None:
    assert "(docs/deploy.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
