"""Re-encrypt every stored API key with the newest ``ENCRYPTION_KEY`` (``--rotate-keys``).

Rotation order for an operator: put the new key first in ENCRYPTION_KEY and restart
(new keys are then written with it, old ones still read), run this, and only then drop
the old key from the list. Batches are committed one by one so a long run holds no
lock for long and an interrupted run can simply be repeated; each row is written by
compare-and-set on its old ciphertext, so a key the bot rewrote meanwhile is left alone.
Only ``id`` and ``encrypted_key`` are read and written (no whole rows), so this works
on any schema revision that has the column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.fernet import InvalidToken
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db.models import ApiKey
from services.vault import KeyVault


@dataclass
class RotationReport:
    rotated: int = 0
    changed_meanwhile: int = 0
    unreadable: list[int] = field(default_factory=list)  # api_keys.id no listed key opens


async def rotate_keys(
    sessions: async_sessionmaker[AsyncSession], vault: KeyVault, *, batch: int = 200
) -> RotationReport:
    report = RotationReport()
    last_id = 0
    while True:
        async with sessions() as session, session.begin():
            rows = (
                await session.execute(
                    select(ApiKey.id, ApiKey.encrypted_key)
                    .where(ApiKey.id > last_id)
                    .order_by(ApiKey.id)
                    .limit(batch)
                )
            ).all()
            for row_id, token in rows:
                try:
                    fresh = vault.rotate(token)
                except InvalidToken:
                    report.unreadable.append(row_id)
                    continue
                result = await session.execute(
                    update(ApiKey)
                    .where(ApiKey.id == row_id, ApiKey.encrypted_key == token)
                    .values(encrypted_key=fresh)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    report.rotated += 1
                else:
                    report.changed_meanwhile += 1
        if not rows:
            return report
        last_id = rows[-1][0]
