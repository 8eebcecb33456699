"""The Telegram emulator's forum topics and bot profile, as the real Bot API answers them:
``message_thread_id`` in a forum supergroup, "message thread not found" for a topic that
is gone (or the General topic, or one that never was), command lists per scope, and
descriptions per language with Telegram's lengths."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import (
    BotCommand,
    BotCommandScopeAllPrivateChats,
    BotCommandScopeChat,
)

from sandbox.common import Served
from sandbox.telegram import TelegramEmulator
from sandbox.telegram_control import TelegramControl

TOKEN = "123456:TEST-sandbox-token"
FORUM = -1001000000777
PLAIN_GROUP = -1001000000778


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    server = Served(TelegramEmulator(TOKEN).app)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def tg(served: Served) -> AsyncIterator[TelegramControl]:
    async with TelegramControl(served.url, timeout=5.0) as control:
        yield control


@pytest.fixture
async def bot(served: Served) -> AsyncIterator[Bot]:
    bot = Bot(TOKEN, session=None)
    bot.session.api = TelegramAPIServer.from_base(served.url)
    yield bot
    await bot.session.close()


async def test_forum_topics_take_messages_and_a_gone_topic_is_not_found(
    bot: Bot, tg: TelegramControl
) -> None:
    await tg.register_chat(FORUM, type="supergroup", title="Admins", is_forum=True)
    payments = await tg.create_topic(FORUM, "Payments")
    funds = await tg.create_topic(FORUM, "Funds")
    assert payments != funds and payments > 1  # 1 is the General topic

    sent = await bot.send_message(FORUM, "paid", message_thread_id=payments)
    assert sent.message_thread_id == payments and sent.is_topic_message
    plain = await bot.send_message(FORUM, "to the group itself")
    assert plain.message_thread_id is None
    records = {r["plain"]: r for r in await tg.messages(FORUM)}
    assert records["paid"]["message_thread_id"] == payments
    assert records["to the group itself"]["message_thread_id"] is None

    await tg.delete_topic(FORUM, funds)
    for gone in (funds, 1, 999_999):  # deleted, General, never existed
        with pytest.raises(TelegramBadRequest, match="message thread not found"):
            await bot.send_message(FORUM, "lost", message_thread_id=gone)
    state = await tg.state()
    forum = next(c for c in state["chats"] if c["id"] == FORUM)
    assert forum["topics"] == [{"message_thread_id": payments, "name": "Payments"}]

    # A supergroup without topics has no such thread either.
    await tg.register_chat(PLAIN_GROUP, type="supergroup", title="Plain")
    with pytest.raises(TelegramBadRequest, match="message thread not found"):
        await bot.send_message(PLAIN_GROUP, "x", message_thread_id=payments)


async def test_commands_are_kept_per_scope_and_language(bot: Bot, tg: TelegramControl) -> None:
    await tg.register_chat(FORUM, type="supergroup", title="Admins", is_forum=True)
    buyer = [BotCommand(command="start", description="Main menu")]
    admin = [BotCommand(command="stats", description="Sales figures")]
    await bot.set_my_commands(buyer, scope=BotCommandScopeAllPrivateChats())
    await bot.set_my_commands(buyer, scope=BotCommandScopeAllPrivateChats(), language_code="ru")
    await bot.set_my_commands(admin, scope=BotCommandScopeChat(chat_id=FORUM))
    # Telegram knows the chat: a scope naming a chat it does not know is refused.
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.set_my_commands(admin, scope=BotCommandScopeChat(chat_id=-100123))

    private = await bot.get_my_commands(scope=BotCommandScopeAllPrivateChats())
    assert [c.command for c in private] == ["start"]
    group = await bot.get_my_commands(scope=BotCommandScopeChat(chat_id=FORUM))
    assert [c.command for c in group] == ["stats"]
    assert await bot.get_my_commands() == []  # the default scope was never set
    scopes = {
        (e["scope"]["type"], e["scope"].get("chat_id"), e["language_code"])
        for e in (await tg.state())["commands"]
    }
    assert scopes == {
        ("all_private_chats", None, ""),
        ("all_private_chats", None, "ru"),
        ("chat", FORUM, ""),
    }


async def test_descriptions_per_language_within_telegrams_lengths(
    bot: Bot, tg: TelegramControl
) -> None:
    assert await bot.set_my_description("Buy AI tokens")
    assert await bot.set_my_description("Купить токены", language_code="ru")
    assert await bot.set_my_short_description("AI tokens for crypto", language_code="ru")
    assert (await bot.get_my_description(language_code="ru")).description == "Купить токены"
    assert (await bot.get_my_description(language_code="de")).description == "Buy AI tokens"
    with pytest.raises(TelegramBadRequest):
        await bot.set_my_description("x" * 513)
    with pytest.raises(TelegramBadRequest):
        await bot.set_my_short_description("x" * 121)
    texts = {(t["field"], t["language_code"]): t["value"] for t in (await tg.state())["bot_texts"]}
    assert texts == {
        ("description", ""): "Buy AI tokens",
        ("description", "ru"): "Купить токены",
        ("short_description", "ru"): "AI tokens for crypto",
    }
