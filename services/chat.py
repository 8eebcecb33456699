"""💬 Chat: the buyer talks to their model on their own OpenRouter key (issue 16).

Every answer is billed by OpenRouter to the buyer's key, so what the buyer sees as cost
and credit left is OpenRouter's own figure; nothing is estimated here. The stored key is
decrypted for the call only and never logged. The conversation is kept per buyer
(``chat_messages``): each question carries the last turns that fit a token budget;
``/new`` starts over (a "new" marker row), ``/forget`` deletes it all.

Fair use: one question in flight per buyer (a second one is refused politely, never
queued behind a slow answer), a per-buyer rate per minute, an overall deadline per
answer. No database transaction is open while OpenRouter answers: history is read and
closed, the call is made, the turn is recorded in a transaction of its own.

The one-in-flight rule and the rate are kept in this process: replicas behind one bot
token each enforce their own (Telegram delivers a buyer's updates to one of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from core.metrics import Metrics
from db import repo
from db.models import ChatMessage
from locales import Phrase
from services.errors import DomainError
from services.openrouter_chat import ChatCallError, Delta, OpenRouterChat, Usage
from services.vault import KeyVault

log = logging.getLogger(__name__)

ROLE_USER = "user"
ROLE_ASSISTANT = "assistant"
ROLE_NEW = "new"  # /new: the conversation starts over after this row
# Stats of a generation the buyer stopped come a moment after the hang-up.
GENERATION_STATS_WAITS = (0.1, 0.2, 0.4, 0.8, 1.5)


class ChatDisabled(DomainError):
    key = "chat.disabled"


class ChatNoKey(DomainError):
    key = "chat.no_key"


class ChatBusy(DomainError):
    key = "chat.busy"


class ChatRateLimited(DomainError):
    key = "chat.rate_limited"


class Outcome(StrEnum):
    DONE = "done"
    STOPPED = "stopped"  # the buyer pressed stop: what was written is kept
    TIMEOUT = "timeout"
    FAILED = "failed"  # OpenRouter or the model failed
    CREDIT = "credit"  # the key's credit is used up


@dataclass(frozen=True)
class ChatAnswer:
    text: str  # the model's Markdown: the whole answer, or what came before it ended
    outcome: Outcome
    model: str
    cost: Decimal | None
    tokens_prompt: int
    tokens_completion: int
    credit_left: Decimal | None


@dataclass(frozen=True)
class ChatSettings:
    enabled: bool
    models: list[str]
    max_tokens: int
    history_turns: int
    history_tokens: int
    timeout: float
    rate_per_minute: int


@dataclass(frozen=True)
class ModelChatStats:
    model: str
    answers: int
    tokens: int
    cost: Decimal


@dataclass
class _InFlight:
    draft_id: int
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def estimate_tokens(text: str) -> int:
    """≈ 4 characters a token: only to fit the history in its budget, never billed."""
    return len(text) // 4 + 1


TextSink = Callable[[str], Awaitable[None]]


class ChatService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        client: OpenRouterChat,
        vault: KeyVault,
        settings: ChatSettings,
        metrics: Metrics | None = None,
    ) -> None:
        self.sessions = sessions
        self.client = client
        self.vault = vault
        self.settings = settings
        # Answers, tokens and cost per model for /metrics (core.metrics); /stats reads
        # the stored answers instead, so it agrees across replicas and restarts.
        self.metrics = metrics or Metrics()
        self._inflight: dict[int, _InFlight] = {}
        self._recent: dict[int, deque[float]] = defaultdict(deque)

    # ------------------------------------------------------------- offering
    async def available(self, user_id: int) -> bool:
        """Whether to offer 💬 Chat: on, and the buyer has a key with credit left (as
        OpenRouter last reported it; a key never checked yet counts as having some)."""
        if not self.settings.enabled:
            return False
        async with self.sessions() as session:
            key = await repo.get_api_key(session, user_id)
        if key is None:
            return False
        if key.last_limit is None or key.last_usage is None:
            return True
        return key.last_limit - key.last_usage > 0

    def model_for(self, preferred: str | None) -> str:
        allowed = self.settings.models
        return preferred if preferred in allowed else allowed[0]

    # --------------------------------------------------------- conversation
    async def start_over(self, user_id: int) -> None:
        async with self.sessions() as session, session.begin():
            session.add(
                ChatMessage(user_id=user_id, role=ROLE_NEW, content="", created_at=utcnow())
            )

    async def forget(self, user_id: int) -> int:
        """Delete the buyer's whole conversation; returns how many turns it held."""
        async with self.sessions() as session, session.begin():
            turns = (
                await session.execute(
                    select(func.count()).where(
                        ChatMessage.user_id == user_id, ChatMessage.role == ROLE_USER
                    )
                )
            ).scalar_one()
            await session.execute(delete(ChatMessage).where(ChatMessage.user_id == user_id))
        return int(turns)

    async def _history(self, session: AsyncSession, user_id: int) -> list[dict[str, str]]:
        """The latest turns since the last /new, newest kept first within the budget."""
        last_new = (
            await session.execute(
                select(func.max(ChatMessage.id)).where(
                    ChatMessage.user_id == user_id, ChatMessage.role == ROLE_NEW
                )
            )
        ).scalar()
        query = (
            select(ChatMessage.role, ChatMessage.content)
            .where(
                ChatMessage.user_id == user_id,
                ChatMessage.role.in_((ROLE_USER, ROLE_ASSISTANT)),
                ChatMessage.id > (last_new or 0),
            )
            .order_by(ChatMessage.id.desc())
            .limit(self.settings.history_turns * 2)
        )
        picked: list[dict[str, str]] = []
        budget = self.settings.history_tokens
        for role, content in (await session.execute(query)).all():
            budget -= estimate_tokens(content)
            if budget < 0:
                break
            picked.append({"role": role, "content": content})
        picked.reverse()
        # A turn starts with the buyer's question: drop an answer left without it.
        while picked and picked[0]["role"] != ROLE_USER:
            picked.pop(0)
        return picked

    # ------------------------------------------------------------- asking
    def stop(self, chat_id: int, draft_id: int) -> bool:
        """The buyer pressed stop under the draft ``draft_id``; False if nothing runs."""
        running = self._inflight.get(chat_id)
        if running is None or running.draft_id != draft_id:
            return False
        running.stop.set()
        return True

    def _admit(self, user_id: int, draft_id: int) -> _InFlight:
        """One question in flight per buyer, at most the rate per minute. No await in
        here: the check and the claim happen at once for this process."""
        if not self.settings.enabled:
            raise ChatDisabled()
        if user_id in self._inflight:
            raise ChatBusy()
        now = time.monotonic()
        recent = self._recent[user_id]
        while recent and now - recent[0] > 60:
            recent.popleft()
        if len(recent) >= self.settings.rate_per_minute:
            raise ChatRateLimited(
                seconds=Phrase("unit.seconds", count=int(60 - (now - recent[0])) + 1)
            )
        recent.append(now)
        running = self._inflight[user_id] = _InFlight(draft_id)
        return running

    async def ask(
        self,
        user_id: int,
        question: str,
        preferred_model: str | None,
        *,
        draft_id: int,
        on_text: TextSink,
    ) -> ChatAnswer:
        """Ask the buyer's model; ``on_text`` gets the answer so far as it grows."""
        running = self._admit(user_id, draft_id)
        try:
            async with self.sessions() as session:
                row = await repo.get_api_key(session, user_id)
                history = await self._history(session, user_id) if row is not None else []
            if row is None:
                raise ChatNoKey()
            key = self.vault.decrypt(row.encrypted_key)
            model = self.model_for(preferred_model)
            messages = [*history, {"role": ROLE_USER, "content": question}]
            answer = await self._call(key, model, messages, running, on_text)
            await self._record(user_id, question, answer)
            self._count(answer)
            log.info(
                "chat_answer user_id=%s model=%s outcome=%s cost=%s tokens=%s",
                user_id,
                answer.model,
                answer.outcome.value,
                answer.cost,
                answer.tokens_prompt + answer.tokens_completion,
            )
            return answer
        finally:
            self._inflight.pop(user_id, None)

    async def _call(
        self,
        key: str,
        model: str,
        messages: list[dict[str, str]],
        running: _InFlight,
        on_text: TextSink,
    ) -> ChatAnswer:
        text = ""
        usage: Usage | None = None
        generation_id: str | None = None
        failure: ChatCallError | None = None

        async def consume() -> None:
            nonlocal text, usage, generation_id
            stream = self.client.stream(key, model, messages, self.settings.max_tokens)
            async for item in stream:
                if isinstance(item, Delta):
                    text += item.text
                    generation_id = item.generation_id
                    await on_text(text)
                else:
                    usage = item

        reader = asyncio.create_task(consume())
        stopper = asyncio.create_task(running.stop.wait())
        try:
            await asyncio.wait(
                {reader, stopper},
                timeout=self.settings.timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stopper.cancel()
            if not reader.done():
                # Hanging up makes OpenRouter stop generating, and billing.
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, ChatCallError):
                    await reader
        if reader.done() and not reader.cancelled():
            exc = reader.exception()
            if isinstance(exc, ChatCallError):
                failure = exc
            elif exc is not None:
                raise exc
        if failure is not None:
            outcome = Outcome.CREDIT if failure.credit else Outcome.FAILED
            log.warning("chat_failed model=%s status=%s reason=%s", model, failure.status, failure)
        elif running.stop.is_set() and usage is None:
            outcome = Outcome.STOPPED
        elif usage is None:
            outcome = Outcome.TIMEOUT
        else:
            outcome = Outcome.DONE
        if usage is None and text:
            usage = await self._stats_after_hangup(key, generation_id)
        credit = await self.client.credit(key)
        return ChatAnswer(
            text=text,
            outcome=outcome,
            model=(usage.model if usage and usage.model else model),
            cost=usage.cost if usage else None,
            tokens_prompt=usage.prompt_tokens if usage else 0,
            tokens_completion=usage.completion_tokens if usage else 0,
            credit_left=None if credit is None else credit.remaining,
        )

    async def _stats_after_hangup(self, key: str, generation_id: str | None) -> Usage | None:
        """The cost of an answer cut short, from OpenRouter's generation stats."""
        if generation_id is None:
            return None
        for pause in GENERATION_STATS_WAITS:
            await asyncio.sleep(pause)
            stats = await self.client.generation(key, generation_id)
            if stats is not None:
                return stats
        return None

    async def _record(self, user_id: int, question: str, answer: ChatAnswer) -> None:
        if not answer.text:
            return  # nothing was answered: the question is not part of the conversation
        now = utcnow()
        async with self.sessions() as session, session.begin():
            session.add(
                ChatMessage(user_id=user_id, role=ROLE_USER, content=question, created_at=now)
            )
            session.add(
                ChatMessage(
                    user_id=user_id,
                    role=ROLE_ASSISTANT,
                    content=answer.text,
                    model=answer.model,
                    tokens_prompt=answer.tokens_prompt,
                    tokens_completion=answer.tokens_completion,
                    cost=answer.cost,
                    created_at=now,
                )
            )

    def _count(self, answer: ChatAnswer) -> None:
        self.metrics.chat_answered(
            answer.model,
            answer.outcome.value,
            prompt_tokens=answer.tokens_prompt if answer.text else 0,
            completion_tokens=answer.tokens_completion if answer.text else 0,
            cost=answer.cost if answer.text else None,
        )


async def chat_stats(session: AsyncSession, start: datetime, end: datetime) -> list[ModelChatStats]:
    """Answers, tokens and cost per model between ``start`` and ``end`` (for /stats)."""
    rows = await session.execute(
        select(
            ChatMessage.model,
            func.count(),
            func.coalesce(func.sum(ChatMessage.tokens_prompt), 0),
            func.coalesce(func.sum(ChatMessage.tokens_completion), 0),
            func.sum(ChatMessage.cost),
        )
        .where(
            ChatMessage.role == ROLE_ASSISTANT,
            ChatMessage.created_at >= start,
            ChatMessage.created_at < end,
        )
        .group_by(ChatMessage.model)
        .order_by(ChatMessage.model)
    )
    return [
        ModelChatStats(
            str(model), int(count), int(prompt or 0) + int(completion or 0), Decimal(cost or 0)
        )
        for model, count, prompt, completion, cost in rows.all()
    ]
