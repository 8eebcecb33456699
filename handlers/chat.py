"""💬 Chat: /chat (or the menu button) enters chat mode; plain messages then go to the
buyer's model on their own key, streamed; /new starts over, /forget deletes it all.

The router sits after every other feature's, just before the fallback: commands keep
working while chatting, and only plain text in chat mode reaches the model.
"""

from __future__ import annotations

from aiogram import Bot, F
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message, MessageGenerationStopped

from bot import keyboards, screens
from bot.chat_stream import AnswerStream
from core.callbacks import MenuCb
from handlers.spec import RouterSpec
from handlers.util import reply
from locales import Translator
from services.chat import ChatService, Outcome
from services.chat_markdown import markdown_to_html
from services.users import UserView

router = RouterSpec(__name__)


class ChatMode(StatesGroup):
    chatting = State()


@router.message(Command("chat"))
@router.callback_query(MenuCb.filter(F.action == "chat"))
async def open_chat(
    event: Message | CallbackQuery,
    t: Translator,
    user: UserView,
    chat: ChatService,
    state: FSMContext,
) -> None:
    if not chat.settings.enabled:
        await reply(event, t("chat.disabled"), keyboards.back_to_menu(t))
    elif not await chat.available(user.id):
        await reply(event, t("chat.no_key"), keyboards.buy_more(t))
    else:
        await state.set_state(ChatMode.chatting)
        await reply(event, t("chat.intro", model=chat.model_for(user.model)))


@router.message(Command("new"))
async def new_conversation(
    message: Message, t: Translator, user: UserView, chat: ChatService, state: FSMContext
) -> None:
    await chat.start_over(user.id)
    await state.set_state(ChatMode.chatting)
    await message.answer(t("chat.new"))


@router.message(Command("forget"))
async def forget(message: Message, t: Translator, user: UserView, chat: ChatService) -> None:
    await chat.forget(user.id)
    await message.answer(t("chat.forgotten"))


@router.message(ChatMode.chatting, F.text, ~F.text.startswith("/"))
async def ask(message: Message, bot: Bot, t: Translator, user: UserView, chat: ChatService) -> None:
    stream = AnswerStream(bot, message.chat.id, draft_id=message.message_id)
    answer = await chat.ask(
        user.id,
        message.text or "",
        user.model,
        draft_id=message.message_id,
        on_text=stream.update,
    )
    if answer.outcome is Outcome.CREDIT and not answer.text:
        await message.answer(t("chat.credit_used_up"), reply_markup=keyboards.buy_more(t))
        return
    html = markdown_to_html(answer.text) if answer.text else str(t("chat.empty"))
    await stream.finish(html, screens.chat_footer(t, answer))
    if answer.outcome is Outcome.CREDIT:
        await message.answer(t("chat.credit_used_up"), reply_markup=keyboards.buy_more(t))


@router.message(ChatMode.chatting, ~F.text)
async def refuse_media(message: Message, t: Translator) -> None:
    await message.answer(t("chat.media"))


@router.stopped_message_generation()
async def stop_pressed(event: MessageGenerationStopped, chat: ChatService) -> None:
    # Keeps what was written: the answer so far is sent as the final message.
    chat.stop(event.chat.id, event.draft_id)
