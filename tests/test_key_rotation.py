"""ENCRYPTION_KEY as a list (newest first) and ``python run.py --rotate-keys``.

The CLI runs as a real subprocess against a migrated database (a temp SQLite file, or
the PostgreSQL of TEST_DATABASE_URL), and the rows are checked afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from bot.settings import ConfigError, load_settings
from core.clock import utcnow
from db.engine import create_engine, session_factory
from db.migrate import upgrade_to_head
from db.models import ApiKey, User
from services.vault import KeyVault
from tests.harness import database_url, wipe_postgres

REPO = Path(__file__).resolve().parents[1]
OLD = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()
PLAINTEXTS = {1000 + n: f"sk-or-v1-{n:064d}" for n in range(5)}


# ------------------------------------------------------------------- the vault
def test_keys_under_the_old_key_stay_readable_after_a_new_one_is_added() -> None:
    stored = KeyVault(OLD).encrypt("sk-or-v1-secret")
    vault = KeyVault(f"{NEW}, {OLD}")
    assert vault.decrypt(stored) == "sk-or-v1-secret"
    # New writes use the newest key only: the old one can later be dropped for them.
    fresh = vault.encrypt("sk-or-v1-other")
    assert KeyVault(NEW).decrypt(fresh) == "sk-or-v1-other"
    with pytest.raises(ValueError, match="cannot be decrypted"):
        KeyVault(OLD).decrypt(fresh)
    # Dropping the old key before rotating loses the old rows: that is why rotation exists.
    with pytest.raises(ValueError, match="cannot be decrypted"):
        KeyVault(NEW).decrypt(stored)
    assert KeyVault(NEW).decrypt(vault.rotate(stored)) == "sk-or-v1-secret"


# -------------------------------------------------------------------- settings
@pytest.fixture
def no_env_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ENCRYPTION_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env


@pytest.mark.usefixtures("no_env_key")
def test_settings_accept_a_key_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCRYPTION_KEY", f"{NEW},{OLD}")
    key = load_settings().encryption_key
    assert key is not None and key.get_secret_value() == f"{NEW},{OLD}"


@pytest.mark.usefixtures("no_env_key")
@pytest.mark.parametrize(
    ("value", "where"),
    [
        ("not-a-key", "the key"),
        (f"{NEW},not-a-key", "element 2 of 2"),
        (f"{NEW},,{OLD}", "element 2 of 3"),
        (f"{NEW[:-2]},{OLD}", "element 1 of 2"),
    ],
)
def test_a_malformed_list_element_stops_start_up_with_one_line(
    monkeypatch: pytest.MonkeyPatch, value: str, where: str
) -> None:
    monkeypatch.setenv("ENCRYPTION_KEY", value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert message.startswith("ENCRYPTION_KEY is malformed")
    assert where in message and "\n" not in message
    assert NEW not in message and OLD not in message and "not-a-key" not in message


# ------------------------------------------------------------------------- CLI
async def _seed(url: str, tokens: dict[int, str]) -> None:
    if url.startswith("postgresql"):
        await wipe_postgres(url)
    engine = create_engine(url)
    try:
        await upgrade_to_head(engine)
        now = utcnow()
        async with session_factory(engine)() as session, session.begin():
            for user_id in tokens:
                session.add(User(id=user_id, created_at=now))
            await session.flush()
            for user_id, token in tokens.items():
                session.add(
                    ApiKey(
                        user_id=user_id,
                        name=f"tg-{user_id}",
                        openrouter_hash=f"hash-{user_id}",
                        label=f"label-{user_id}",
                        encrypted_key=token,
                        limit_usd=Decimal("1.00"),
                        created_at=now,
                        updated_at=now,
                    )
                )
    finally:
        await engine.dispose()


async def _stored(url: str) -> dict[int, str]:
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session:
            rows = await session.execute(select(ApiKey.user_id, ApiKey.encrypted_key))
            return {user_id: token for user_id, token in rows.all()}
    finally:
        await engine.dispose()


def _rotate_cli(tmp_path: Path, url: str, keys: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": url,
        "ENCRYPTION_KEY": keys,
    }
    return subprocess.run(  # noqa: S603 - our own interpreter and script, no shell
        [sys.executable, str(REPO / "run.py"), "--rotate-keys"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_rotate_keys_cli_re_encrypts_every_key_with_the_newest(tmp_path: Path) -> None:
    url = database_url(tmp_path)
    old = KeyVault(OLD)
    # Four keys stored under the old key, one already under the new (written after the
    # operator restarted with the list): all five end up under the new key.
    tokens = {user_id: old.encrypt(plain) for user_id, plain in PLAINTEXTS.items()}
    tokens[1004] = KeyVault(NEW).encrypt(PLAINTEXTS[1004])
    await _seed(url, tokens)

    result = _rotate_cli(tmp_path, url, f"{NEW},{OLD}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "rotated 5 stored key(s) to the newest ENCRYPTION_KEY"
    assert NEW not in result.stdout + result.stderr and OLD not in result.stdout + result.stderr

    stored = await _stored(url)
    assert set(stored) == set(PLAINTEXTS)
    newest_alone = KeyVault(NEW)
    for user_id, token in stored.items():
        assert token != tokens[user_id]  # rewritten, not just readable
        assert newest_alone.decrypt(token) == PLAINTEXTS[user_id]
        with pytest.raises(ValueError):
            old.decrypt(token)


async def test_rotate_keys_cli_names_rows_no_listed_key_opens(tmp_path: Path) -> None:
    url = database_url(tmp_path)
    lost = Fernet.generate_key().decode()
    tokens = {1000: KeyVault(OLD).encrypt(PLAINTEXTS[1000]), 1001: KeyVault(lost).encrypt("x")}
    await _seed(url, tokens)

    result = _rotate_cli(tmp_path, url, f"{NEW},{OLD}")
    assert result.returncode == 1
    assert result.stdout.startswith("rotated 1 stored key(s)")
    assert "no listed ENCRYPTION_KEY opens api_keys id(s): " in result.stderr
    stored = await _stored(url)
    assert KeyVault(NEW).decrypt(stored[1000]) == PLAINTEXTS[1000]
    assert stored[1001] == tokens[1001]  # left as it was, for the operator to recover


def test_rotate_keys_without_a_key_is_a_config_error(tmp_path: Path) -> None:
    result = _rotate_cli(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", "")
    assert result.returncode == 2
    assert result.stderr.strip() == "config error: ENCRYPTION_KEY is required but not set"
