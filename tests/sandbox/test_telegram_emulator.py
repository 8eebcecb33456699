"""The Telegram emulator driven by a real aiogram Bot and Dispatcher."""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.filters import CommandStart
from aiogram.types import (
    BotCommand,
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
)
from aiohttp import web

from sandbox.common import Served
from sandbox.telegram import EntityParseError, TelegramEmulator, parse_html, parse_markdown_v2
from sandbox.telegram_control import TelegramControl, TelegramControlError, render_transcript

TOKEN = "123456:TEST-sandbox-token"
USER = 777001


def tiny_png(width: int = 3, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


class LoopbackSession(AiohttpSession):
    """AiohttpSession without the 250 ms close() pause kept for SSL shutdown (plain HTTP here)."""

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def make_bot(url: str, token: str = TOKEN) -> Bot:
    return Bot(token, session=LoopbackSession(api=TelegramAPIServer.from_base(url)))


def keyboard(*buttons: tuple[str, str]) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text=t, callback_data=d)] for t, d in buttons]
    )


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
    bot = make_bot(served.url)
    yield bot
    await bot.session.close()


async def test_polling_bot_start_press_edit_and_answer(bot: Bot, tg: TelegramControl) -> None:
    router = Router()

    @router.message(CommandStart())
    async def start(message: Message) -> None:
        await message.answer(
            "Welcome, <b>buyer</b> &amp; friend!",
            parse_mode="HTML",
            reply_markup=keyboard(("Buy 100 tokens", "buy:100"), ("Help", "help")),
        )

    @router.callback_query(F.data.startswith("buy:"))
    async def buy(callback: CallbackQuery) -> None:
        assert callback.data is not None and isinstance(callback.message, Message)
        amount = callback.data.removeprefix("buy:")
        await callback.message.edit_text(f"Bought {amount} tokens")
        await callback.answer("Done")

    dp = Dispatcher()
    dp.include_router(router)
    polling = asyncio.create_task(
        dp.start_polling(bot, handle_signals=False, close_bot_session=False)
    )
    try:
        sent = await tg.send_text(USER, "/start", first_name="Ann")
        menu = await tg.wait_for_text(USER, "Welcome", timeout=3)
        assert menu["plain"] == "Welcome, buyer & friend!"
        assert menu["text"] == "Welcome, <b>buyer</b> &amp; friend!"
        assert menu["entities"] == [{"type": "bold", "offset": 9, "length": 5}]
        assert menu["buttons"] == [
            [{"text": "Buy 100 tokens", "callback_data": "buy:100"}],
            [{"text": "Help", "callback_data": "help"}],
        ]
        assert menu["message_id"] == sent["message_id"] + 1

        pressed = await tg.press(USER, "Buy", match="prefix")
        assert pressed["data"] == "buy:100" and pressed["message_id"] == menu["message_id"]
        edited = await tg.wait_for_text(USER, "Bought 100 tokens", timeout=3)
        assert edited["message_id"] == menu["message_id"]
        assert edited["edited"] == 1
        assert edited["buttons"] == []  # an edit without reply_markup drops the keyboard
        answer = await tg.callback_answer(pressed["callback_query_id"], timeout=3)
        assert answer["text"] == "Done" and answer["show_alert"] is False

        # A tampering client can send data the bot never offered.
        forged = await tg.forge_callback(USER, menu["message_id"], "buy:999999")
        await tg.wait_for_text(USER, "Bought 999999 tokens", timeout=3)
        await tg.callback_answer(forged["callback_query_id"], timeout=3)

        with pytest.raises(AssertionError, match="available"):
            await tg.press(USER, "Nope")

        transcript = await tg.transcript(USER)
        assert transcript.splitlines()[0] == "👤 /start"
        assert "🤖 Bought 999999 tokens  (edited ×2)" in transcript
        methods = [e["method"] for e in await tg.events(chat_id=USER)]
        assert methods.count("editMessageText") == 2
        assert methods.count("answerCallbackQuery") == 2
    finally:
        await dp.stop_polling()
        await polling


async def test_send_photo_round_trips_through_control_files(
    bot: Bot, tg: TelegramControl, served: Served
) -> None:
    await tg.send_text(USER, "hi")
    png = tiny_png()
    message = await bot.send_photo(
        USER,
        BufferedInputFile(png, filename="qr.png"),
        caption="Pay <i>here</i>",
        parse_mode="HTML",
    )
    assert message.photo is not None and message.caption == "Pay here"
    size = message.photo[-1]
    assert (size.width, size.height, size.file_size) == (3, 2, len(png))

    async with httpx.AsyncClient(base_url=served.url) as http:
        response = await http.get(f"/control/files/{size.file_id}")
    assert response.content == png
    assert response.headers["content-type"].startswith("image/png")

    again = await bot.send_photo(USER, size.file_id)  # resend by file_id
    assert again.photo is not None and again.photo[-1].file_id == size.file_id
    record = await tg.last_message(USER)
    assert record is not None and record["photo"] and record["photo_file_id"] == size.file_id
    document = await bot.send_document(USER, BufferedInputFile(b"a,b\n", filename="r.csv"))
    assert document.document is not None and document.document.file_name == "r.csv"
    assert await tg.file_bytes(document.document.file_id) == b"a,b\n"
    assert "[📷 photo] Pay here" in await tg.transcript(USER)

    with pytest.raises(TelegramBadRequest, match="wrong file identifier"):
        await bot.send_photo(USER, "no-such-file-id")


async def test_edits_and_validation_errors(bot: Bot, tg: TelegramControl) -> None:
    await tg.send_text(USER, "hi")
    markup = keyboard(("A", "a"))
    sent = await bot.send_message(USER, "Same", reply_markup=markup)
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text(
            "Same", chat_id=USER, message_id=sent.message_id, reply_markup=markup
        )
    edited = await bot.edit_message_reply_markup(chat_id=USER, message_id=sent.message_id)
    assert isinstance(edited, Message) and edited.reply_markup is None
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("x", chat_id=USER, message_id=999)
    assert await bot.delete_message(USER, sent.message_id) is True
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("Other", chat_id=USER, message_id=sent.message_id)

    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(424242, "hello?")
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(USER, "x" * 4097)
    with pytest.raises(TelegramBadRequest, match="message caption is too long"):
        await bot.send_photo(USER, BufferedInputFile(tiny_png(), "p.png"), caption="c" * 1025)
    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        await bot.send_message(USER, "x", reply_markup=keyboard(("Long", "d" * 65)))
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message(USER, "<b>unclosed", parse_mode="HTML")
    with pytest.raises(TelegramBadRequest, match="Unsupported start tag"):
        await bot.send_message(USER, "1 < 2 <div>", parse_mode="HTML")
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await bot.answer_callback_query("12345")

    events = await tg.events(chat_id=USER)
    failed = [e for e in events if not e["ok"]]
    assert {e["error_code"] for e in failed} == {400}
    assert any(e["method"] == "sendMessage" and not e["ok"] for e in events)


async def test_blocked_and_deactivated_users(bot: Bot, tg: TelegramControl) -> None:
    await tg.send_text(USER, "hi")
    await tg.block(USER)
    with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
        await bot.send_message(USER, "promo")
    await tg.block(USER, reason="deactivated")
    with pytest.raises(TelegramForbiddenError, match="user is deactivated"):
        await bot.send_chat_action(USER, "typing")
    await tg.block(USER, blocked=False)
    assert (await bot.send_message(USER, "back")).text == "back"


async def test_injected_429_gives_retry_after(bot: Bot, tg: TelegramControl) -> None:
    await tg.send_text(USER, "hi")
    await tg.add_fault(
        path="/bot",
        mode="status",
        status=429,
        body={
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 3",
            "parameters": {"retry_after": 3},
        },
    )
    with pytest.raises(TelegramRetryAfter) as caught:
        await bot.send_message(USER, "flood")
    assert caught.value.retry_after == 3
    await bot.send_message(USER, "later")  # the fault had count=1
    events = await tg.events(chat_id=USER)
    assert [(e["method"], e["ok"], e.get("error_code")) for e in events] == [
        ("sendMessage", False, 429),
        ("sendMessage", True, None),
    ]
    assert events[0]["fault"] is True and events[0]["at"] <= events[1]["at"]


async def test_webhook_delivery_with_secret_and_retry(bot: Bot, tg: TelegramControl) -> None:
    received: list[tuple[dict[str, Any], str | None]] = []
    arrived = asyncio.Event()
    attempts = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            return web.Response(status=500)  # Telegram retries non-2xx answers
        received.append(
            (await request.json(), request.headers.get("X-Telegram-Bot-Api-Secret-Token"))
        )
        arrived.set()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver = Served(app)
    await receiver.start()
    try:
        assert await bot.set_webhook(f"{receiver.url}/hook", secret_token="s3cret_TOKEN")
        info = await bot.get_webhook_info()
        assert info.url == f"{receiver.url}/hook"
        with pytest.raises(TelegramConflictError):
            await bot.get_updates()

        sent = await tg.send_text(USER, "/start")
        await asyncio.wait_for(arrived.wait(), 3)
        update, secret = received[0]
        assert secret == "s3cret_TOKEN"
        assert update["update_id"] == sent["update_id"]
        assert update["message"]["text"] == "/start"
        assert update["message"]["entities"] == [{"type": "bot_command", "offset": 0, "length": 6}]
        assert attempts == 2
        info = await bot.get_webhook_info()
        assert info.pending_update_count == 0
        assert info.last_error_message and "500" in info.last_error_message

        assert await bot.delete_webhook()
        await tg.send_text(USER, "polled")
        updates = await bot.get_updates(timeout=0)
        assert updates[-1].message is not None and updates[-1].message.text == "polled"
    finally:
        await receiver.stop()


async def test_get_updates_long_poll_wakes_and_offset_confirms(
    bot: Bot, tg: TelegramControl
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.05)
    await tg.send_text(USER, "wake up")
    updates = await poll
    assert loop.time() - started < 2
    assert [u.message.text for u in updates if u.message] == ["wake up"]

    await tg.send_text(USER, "second")
    assert len(await bot.get_updates(timeout=0)) == 2  # nothing confirmed yet
    rest = await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0)
    assert [u.message.text for u in rest if u.message] == ["second"]
    assert (await tg.state())["pending_updates"] == 1


async def test_raw_protocol_details(served: Served, tg: TelegramControl) -> None:
    await tg.send_text(USER, "hi", username="ann")
    async with httpx.AsyncClient(base_url=served.url) as http:
        wrong = await http.post("/bot1:wrong/getMe")
        assert (wrong.status_code, wrong.json()) == (
            401,
            {"ok": False, "error_code": 401, "description": "Unauthorized"},
        )
        unknown = await http.post(f"/bot{TOKEN}/fooBar")
        assert unknown.status_code == 404 and unknown.json()["description"] == "Not Found"
        me = await http.get(f"/bot{TOKEN}/GETME")  # method names are case-insensitive
        assert me.json()["result"]["id"] == 123456
        as_json = await http.post(
            f"/bot{TOKEN}/sendMessage",
            json={"chat_id": USER, "text": "json", "reply_markup": {"inline_keyboard": []}},
        )
        as_form = await http.post(
            f"/bot{TOKEN}/sendMessage",
            data={"chat_id": str(USER), "text": "form", "disable_notification": "true"},
        )
        assert as_json.json()["ok"] and as_form.json()["result"]["text"] == "form"
        by_username = await http.post(f"/bot{TOKEN}/getChat", json={"chat_id": "@ann"})
        assert by_username.json()["result"]["id"] == USER

    records = await tg.messages(USER)
    assert [r["plain"] for r in records] == ["hi", "json", "form"]
    assert render_transcript(records).splitlines() == ["👤 hi", "🤖 json", "🤖 form"]
    with pytest.raises(AssertionError, match="transcript"):
        await tg.wait_for_text(USER, "never said", timeout=0.2)


async def test_unauthorized_bot_and_commands(served: Served, bot: Bot) -> None:
    intruder = make_bot(served.url, "999:nope")
    try:
        with pytest.raises(TelegramUnauthorizedError):
            await intruder.get_me()
    finally:
        await intruder.session.close()
    await bot.set_my_commands([BotCommand(command="start", description="Start")])
    assert [c.command for c in await bot.get_my_commands()] == ["start"]
    assert await bot.delete_my_commands()
    assert await bot.get_my_commands() == []


def test_parse_html_entities_in_utf16() -> None:
    link = '<a href="https://x.y/?a=1&amp;b=2">link</a>'
    plain, entities = parse_html(f'💎 {link} <pre><code class="language-py">x</code></pre>')
    assert plain == "💎 link x"
    assert entities == [
        {"type": "text_link", "offset": 3, "length": 4, "url": "https://x.y/?a=1&b=2"},
        {"type": "pre", "offset": 8, "length": 1, "language": "py"},
    ]


def test_markdown_v2_plain_rendering_and_reserved_characters() -> None:
    assert parse_markdown_v2(r"*Total:* 1\.50 \$ [docs](https://x.y)") == "Total: 1.50 $ docs"
    with pytest.raises(EntityParseError, match=r"Character '\.' is reserved"):
        parse_markdown_v2("Total: 1.50")


# ----------------------------------------------------- group upgrade, length limits (issue 10)
async def test_upgraded_group_answers_migrate_to_chat_id(
    served: Served, bot: Bot, tg: TelegramControl
) -> None:
    await tg.register_chat(-4001, "group", title="Admins")
    assert (await bot.send_message(-4001, "before")).chat.type == "group"
    new = await tg.upgrade_chat(-4001)
    assert new["id"] == -1004001 and new["type"] == "supergroup"
    # Both chats get a service message, delivered to the bot as updates.
    updates = await bot.get_updates()
    moves = [
        (u.message.chat.id, u.message.migrate_to_chat_id, u.message.migrate_from_chat_id)
        for u in updates
        if u.message is not None
    ]
    assert moves == [(-4001, -1004001, None), (-1004001, None, -4001)]
    # The raw answer has Telegram's shape (telegram-bot-api Client.cpp fail_query).
    async with httpx.AsyncClient() as http:
        raw = await http.post(
            f"{served.url}/bot{TOKEN}/sendMessage", json={"chat_id": -4001, "text": "x"}
        )
    assert raw.status_code == 400
    assert raw.json() == {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: group chat was upgraded to a supergroup chat",
        "parameters": {"migrate_to_chat_id": -1004001},
    }
    with pytest.raises(TelegramMigrateToChat) as caught:
        await bot.send_message(-4001, "after")
    assert caught.value.migrate_to_chat_id == -1004001
    assert (await bot.send_message(-1004001, "after")).chat.type == "supergroup"
    # Only a basic group upgrades, and only once.
    with pytest.raises(TelegramControlError):
        await tg.upgrade_chat(-4001)


async def test_text_limits_count_visible_utf16_units(bot: Bot, tg: TelegramControl) -> None:
    await tg.send_text(USER, "hi")
    # Markup does not count: 4,096 visible characters inside tags go through.
    sent = await bot.send_message(USER, "<b>" + "x" * 4096 + "</b>", parse_mode="HTML")
    assert sent.text is not None and len(sent.text) == 4096
    # An entity reference is one character once parsed.
    await bot.send_message(USER, "&lt;" * 4096, parse_mode="HTML")
    # Outside the BMP a character is two UTF-16 code units: 2,049 emoji are 4,098.
    await bot.send_message(USER, "😀" * 2048)
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(USER, "😀" * 2049)
    with pytest.raises(TelegramBadRequest, match="message caption is too long"):
        await bot.send_photo(USER, BufferedInputFile(tiny_png(), "p.png"), caption="😀" * 513)
    await bot.send_photo(USER, BufferedInputFile(tiny_png(), "p.png"), caption="😀" * 512)
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.edit_message_text("😀" * 2049, chat_id=USER, message_id=sent.message_id)


# ------------------------------------------------ real Telegram behaviours (issue 10)
@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("Hi, Tom & <Jerry>!", 'Unsupported start tag "jerry" at byte offset 10'),
        ("<3 Anna", 'Unsupported start tag "3" at byte offset 0'),
        ("5 <", "Unclosed start tag at byte offset 2"),
        ("<b>x</i>", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        ("<b>open", 'Can\'t find end tag corresponding to start tag "b"'),
    ],
)
async def test_html_refused_like_telegram(
    bot: Bot, tg: TelegramControl, text: str, error: str
) -> None:
    await tg.send_text(USER, "hi")
    with pytest.raises(TelegramBadRequest) as refused:
        await bot.send_message(USER, text, parse_mode="HTML")
    assert refused.value.message == f"Bad Request: can't parse entities: {error}"


def test_html_references_as_tdlib_decodes_them() -> None:
    # A bare "&" and unknown names stay literal; the four named references and numeric
    # ones decode, with or without ";".
    assert parse_html("Tom & Jerry &nbsp; &lt3 &amp &#60; &#x3c &#X3c;") == (
        "Tom & Jerry &nbsp; <3 & < < &#X3c;",
        [],
    )


async def test_callback_query_answered_too_late_is_refused(bot: Bot, tg: TelegramControl) -> None:
    await tg.send_text(USER, "hi")
    sent = await bot.send_message(USER, "Pick", reply_markup=keyboard(("A", "a")))
    fresh = await tg.forge_callback(USER, sent.message_id, "a")
    assert await bot.answer_callback_query(fresh["callback_query_id"]) is True

    await tg.set_callback_max_age(0.05)
    late = await tg.forge_callback(USER, sent.message_id, "a")
    await asyncio.sleep(0.1)
    with pytest.raises(TelegramBadRequest) as refused:
        await bot.answer_callback_query(late["callback_query_id"], text="Done")
    assert refused.value.message == (
        "Bad Request: query is too old and response timeout expired or query ID is invalid"
    )
    assert (await tg.callback_answers())[-1]["callback_query_id"] == fresh["callback_query_id"]
    # The refusal is logged against the chat, so a test of the bot can find it there.
    answers = [e for e in await tg.events(chat_id=USER) if e["method"] == "answerCallbackQuery"]
    assert [e["ok"] for e in answers] == [True, False]


async def test_callback_max_age_is_reset_to_telegrams_default(
    served: Served, tg: TelegramControl
) -> None:
    await tg.set_callback_max_age(0)
    await tg.reset()
    async with httpx.AsyncClient(base_url=served.url) as http:
        assert (await http.get("/control/callback_queries")).json() == {"max_age": 15.0}
        refused = await http.post("/control/callback_queries", json={"max_age": -1})
        assert refused.status_code == 400


async def test_blocking_and_unblocking_send_my_chat_member(bot: Bot, tg: TelegramControl) -> None:
    await tg.send_text(USER, "hi", first_name="Ann")
    await tg.block(USER)
    with pytest.raises(TelegramForbiddenError, match="Forbidden: bot was blocked by the user"):
        await bot.send_message(USER, "promo")
    await tg.block(USER)  # already blocked: no second update
    await tg.block(USER, blocked=False)
    await tg.block(USER)
    await tg.send_text(USER, "/start")  # writing again unblocks, announced first

    updates = await bot.get_updates(allowed_updates=["message", "my_chat_member"])
    kinds = [u.event_type for u in updates]
    assert kinds == [
        "message",
        "my_chat_member",
        "my_chat_member",
        "my_chat_member",
        "my_chat_member",
        "message",
    ]
    statuses = [
        (u.my_chat_member.old_chat_member.status, u.my_chat_member.new_chat_member.status)
        for u in updates
        if u.my_chat_member is not None
    ]
    assert statuses == [
        ("member", "kicked"),
        ("kicked", "member"),
        ("member", "kicked"),
        ("kicked", "member"),
    ]
    first = updates[1].my_chat_member
    assert first is not None and first.chat.type == "private" and first.chat.id == USER
    assert first.from_user.id == USER and first.new_chat_member.user.id == 123456
    assert (await bot.send_message(USER, "back")).text == "back"


async def test_anonymous_admin_writes_on_behalf_of_the_group(bot: Bot, tg: TelegramControl) -> None:
    group = -100500
    await tg.register_chat(group, "supergroup", title="Operators")
    await tg.send_text(USER, "/stats", chat_id=group, as_chat=True)
    (update,) = await bot.get_updates()
    message = update.message
    assert message is not None and message.text == "/stats"
    assert message.sender_chat is not None and message.sender_chat.id == group
    assert message.from_user is not None
    assert (message.from_user.id, message.from_user.username) == (1087968824, "GroupAnonymousBot")
    with pytest.raises(TelegramControlError, match="as_chat needs a group"):
        await tg.send_text(USER, "hi", as_chat=True)


async def test_message_draft_streams_stops_and_is_replaced_by_the_message(
    bot: Bot, tg: TelegramControl
) -> None:
    """sendMessageDraft (Bot API 9.x): frames under one draft_id; the stop button sends a
    ``stopped_message_generation`` update; sendMessage replaces the draft."""
    stopped: asyncio.Queue[int] = asyncio.Queue()
    router = Router()

    @router.stopped_message_generation()
    async def on_stop(event: Any) -> None:
        await stopped.put(event.draft_id)

    dp = Dispatcher()
    dp.include_router(router)
    await tg.send_text(USER, "hi")  # opens the private chat
    polling = asyncio.create_task(
        dp.start_polling(
            bot,
            handle_signals=False,
            close_bot_session=False,
            allowed_updates=dp.resolve_used_update_types(),
        )
    )
    try:
        assert await bot.send_message_draft(chat_id=USER, draft_id=7, text="")  # "Thinking…"
        await bot.send_message_draft(chat_id=USER, draft_id=7, text="<b>Hel</b>", parse_mode="HTML")
        await bot.send_message_draft(
            chat_id=USER, draft_id=7, text="<b>Hello</b> &amp;", parse_mode="HTML", can_stop=True
        )
        drafts = await tg.drafts(USER)
        assert drafts["current"]["plain"] == "Hello &" and drafts["current"]["frames"] == 3
        assert [f["plain"] for f in drafts["frames"]] == ["", "Hel", "Hello &"]
        await tg.stop_generation(USER)
        assert await asyncio.wait_for(stopped.get(), 3) == 7
        with pytest.raises(TelegramControlError):
            await tg.stop_generation(USER)  # nothing left to stop

        await bot.send_message_draft(chat_id=USER, draft_id=8, text="again", can_stop=True)
        await bot.send_message(USER, "final")
        assert (await tg.drafts(USER))["current"] is None
        with pytest.raises(TelegramBadRequest, match="draft_id"):
            await bot.send_message_draft(chat_id=USER, draft_id=0, text="x")
        await tg.set_drafts_supported(False)
        with pytest.raises(TelegramBadRequest, match="drafts are unavailable"):
            await bot.send_message_draft(chat_id=USER, draft_id=9, text="x")
    finally:
        await dp.stop_polling()
        await polling
