"""The buyer as a person: created on first sight, their language, chosen model and
whether Telegram still lets us write to them. Each method owns its transaction."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from db import repo
from db.models import User
from services.errors import ModelUnavailable
from services.openrouter import ModelCatalog
from services.pricing import AITokenService, ModelPrice


@dataclass(frozen=True)
class UserView:
    id: int
    language: str
    model: str | None


class UserCache:
    """Buyers this process saw lately, as every update needs them (language, model), so
    an update from a known buyer costs no transaction. An entry also means "the row
    exists and is reachable": a buyer marked unreachable is forgotten, so their next
    update goes to the database and marks them reachable again.

    Correct within one process: every write of a cached column here (``set_language``,
    ``set_model``, ``set_reachable``) and in the outbox (a 403 marks the buyer
    unreachable) calls ``forget`` after its commit, and a lookup that began before a
    ``forget`` does not store what it read (the ``token``), so a read racing a write
    cannot bring the old value back. Another replica's writes are not seen, so the app
    turns the cache off (``ttl`` 0) where replicas may run (Redis configured); ``ttl``
    still bounds how long any entry lives.
    """

    def __init__(
        self,
        *,
        ttl: float = 300.0,
        size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.size = size  # bounded: memory stays flat whatever the number of buyers
        self.clock = clock
        self._entries: OrderedDict[int, tuple[float, UserView]] = OrderedDict()
        self._epoch = 0

    def get(self, user_id: int) -> UserView | None:
        entry = self._entries.get(user_id)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._entries[user_id]
            return None
        self._entries.move_to_end(user_id)
        return entry[1]

    def token(self) -> int:
        """Taken before reading the row; ``put`` ignores a read older than a forget."""
        return self._epoch

    def put(self, view: UserView, token: int) -> None:
        if self.ttl <= 0 or token != self._epoch:
            return
        self._entries[view.id] = (self.clock() + self.ttl, view)
        self._entries.move_to_end(view.id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, user_id: int) -> None:
        self._epoch += 1
        self._entries.pop(user_id, None)


class UserService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        catalog: ModelCatalog,
        pricing: AITokenService,
        cache: UserCache | None = None,
    ) -> None:
        self.sessions = sessions
        self.catalog = catalog
        self.pricing = pricing
        self.cache = cache or UserCache()

    async def ensure_user(
        self,
        user_id: int,
        *,
        language: str,
        first_name: str | None,
        username: str | None,
        writing: bool = True,
    ) -> UserView:
        """The buyer's row, created on first sight; a returning buyer is reachable again.

        ``writing`` False: the update is not the buyer talking to us (Telegram telling us
        they blocked or unblocked the bot), so it says nothing about reachability."""
        cached = self.cache.get(user_id)
        if cached is not None:
            return cached  # known, reachable, this language and model (UserCache)
        token = self.cache.token()
        # One transaction whether the buyer is known or new: a new buyer's row is written
        # in the transaction that looked for it (a separate one cost ~1 ms of CPU on
        # every first update). ON CONFLICT DO NOTHING: when two first updates of one buyer
        # race (PostgreSQL; SQLite's BEGIN IMMEDIATE serialises them), the other insert
        # won and this one changes nothing (as the IntegrityError of a separate insert
        # transaction said before).
        async with self.sessions() as session, session.begin():
            user = await session.get(User, user_id)
            if user is not None:
                if writing and not user.reachable:
                    # A buyer who writes to us again has unblocked the bot.
                    user.reachable = True
                view = UserView(user.id, user.language, user.model)
                reachable = bool(user.reachable)
            else:
                inserted = await session.execute(
                    repo.upsert_insert(session)(User)
                    .values(
                        id=user_id,
                        language=language,
                        first_name=first_name,
                        username=username,
                        reachable=True,
                        created_at=utcnow(),
                    )
                    .on_conflict_do_nothing(index_elements=["id"])
                )
                view = UserView(user_id, language, None)
                # Not cached when the other insert won: its row is the one that counts.
                reachable = inserted.rowcount == 1  # type: ignore[attr-defined]
        if reachable:  # committed: only now may other updates skip the row
            self.cache.put(view, token)
        return view

    async def set_reachable(self, user_id: int, reachable: bool) -> None:
        """The buyer blocked the bot (False) or unblocked it (True), as Telegram told us."""
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(User).where(User.id == user_id).values(reachable=reachable)
            )
        self.cache.forget(user_id)

    async def set_language(self, user_id: int, language: str) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(update(User).where(User.id == user_id).values(language=language))
        self.cache.forget(user_id)

    async def set_model(self, user_id: int, model_id: str) -> ModelPrice:
        model = await self.catalog.get(model_id)
        if model is None or self.pricing.bounds(model) is None:
            raise ModelUnavailable(model=model_id)
        async with self.sessions() as session, session.begin():
            await session.execute(update(User).where(User.id == user_id).values(model=model_id))
        self.cache.forget(user_id)
        return model
