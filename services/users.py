"""The buyer as a person: created on first sight, their language, chosen model and
whether Telegram still lets us write to them. Each method owns its transaction."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from db.models import User
from services.errors import ModelUnavailable
from services.openrouter import ModelCatalog
from services.pricing import AITokenService, ModelPrice


@dataclass(frozen=True)
class UserView:
    id: int
    language: str
    model: str | None


class UserService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        catalog: ModelCatalog,
        pricing: AITokenService,
    ) -> None:
        self.sessions = sessions
        self.catalog = catalog
        self.pricing = pricing

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
        async with self.sessions() as session:
            async with session.begin():
                user = await session.get(User, user_id)
                if user is not None:
                    if writing and not user.reachable:
                        # A buyer who writes to us again has unblocked the bot.
                        user.reachable = True
                    return UserView(user.id, user.language, user.model)
            try:
                async with session.begin():
                    session.add(
                        User(
                            id=user_id,
                            language=language,
                            first_name=first_name,
                            username=username,
                            reachable=True,
                            created_at=utcnow(),
                        )
                    )
            except IntegrityError:
                # Two first updates of one buyer at once: the other insert won.
                pass
            return UserView(user_id, language, None)

    async def set_reachable(self, user_id: int, reachable: bool) -> None:
        """The buyer blocked the bot (False) or unblocked it (True), as Telegram told us."""
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(User).where(User.id == user_id).values(reachable=reachable)
            )

    async def set_language(self, user_id: int, language: str) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(update(User).where(User.id == user_id).values(language=language))

    async def set_model(self, user_id: int, model_id: str) -> ModelPrice:
        model = await self.catalog.get(model_id)
        if model is None or self.pricing.bounds(model) is None:
            raise ModelUnavailable(model=model_id)
        async with self.sessions() as session, session.begin():
            await session.execute(update(User).where(User.id == user_id).values(model=model_id))
        return model
