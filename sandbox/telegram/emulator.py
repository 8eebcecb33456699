"""The Telegram emulator: one aiohttp app serving the Bot API for one bot token, plus control."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from sandbox.common import json_response
from sandbox.telegram.botapi import BotApiMethods
from sandbox.telegram.control import ControlRoutes
from sandbox.telegram.drafts import MessageDrafts
from sandbox.telegram.errors import UNAUTHORIZED, BotApiError
from sandbox.telegram.limits import CALLBACK_MAX_AGE
from sandbox.telegram.model import Event
from sandbox.telegram.params import as_int, read_params
from sandbox.telegram.state import UNLOGGED_METHODS
from sandbox.telegram.users import SimulatedUsers

_PARAMS_KEY = web.RequestKey("tg_params", dict)
_PARAMS_ERROR_KEY = web.RequestKey("tg_params_error", BotApiError)
_HANDLED_KEY = web.RequestKey("tg_handled", bool)


class TelegramEmulator(BotApiMethods, ControlRoutes, SimulatedUsers, MessageDrafts):
    """Bot API + control API for one bot token."""

    def __init__(
        self,
        token: str,
        *,
        bot_username: str = "AITokenSandboxBot",
        bot_first_name: str = "AI Token Sandbox",
        webhook_retry_delays: Sequence[float] = (0.05, 0.2, 0.5),
        webhook_timeout: float = 10.0,
        callback_max_age: float = CALLBACK_MAX_AGE,
    ) -> None:
        super().__init__(
            token,
            bot_username=bot_username,
            bot_first_name=bot_first_name,
            webhook_retry_delays=webhook_retry_delays,
            webhook_timeout=webhook_timeout,
            callback_max_age=callback_max_age,
        )
        self._methods = {
            name.lower(): (name, handler)
            for name, handler in {
                "getMe": self._get_me,
                "getUpdates": self._get_updates,
                "setWebhook": self._set_webhook,
                "deleteWebhook": self._delete_webhook,
                "getWebhookInfo": self._get_webhook_info,
                "sendMessage": self._send_message,
                "sendMessageDraft": self._send_message_draft,
                "sendPhoto": self._send_photo,
                "sendDocument": self._send_document,
                "editMessageText": self._edit_message_text,
                "editMessageCaption": self._edit_message_caption,
                "editMessageReplyMarkup": self._edit_message_reply_markup,
                "deleteMessage": self._delete_message,
                "deleteMessages": self._delete_messages,
                "answerCallbackQuery": self._answer_callback_query,
                "setMyCommands": self._set_my_commands,
                "getMyCommands": self._get_my_commands,
                "deleteMyCommands": self._delete_my_commands,
                "setChatMenuButton": self._set_chat_menu_button,
                "getChatMenuButton": self._get_chat_menu_button,
                "sendChatAction": self._send_chat_action,
                "getChat": self._get_chat,
                "getFile": self._get_file,
                "setMyName": self._bot_text_setter("name"),
                "getMyName": self._bot_text_getter("name"),
                "setMyDescription": self._bot_text_setter("description"),
                "getMyDescription": self._bot_text_getter("description"),
                "setMyShortDescription": self._bot_text_setter("short_description"),
                "getMyShortDescription": self._bot_text_getter("short_description"),
                "close": self._true,
                "logOut": self._true,
            }.items()
        }
        # The logging middleware sits outside the fault middleware so that faulted calls
        # still reach the event log (a test can see when the bot retried after a 429).
        self.app = web.Application(
            middlewares=[self._bot_api_middleware, self.faults.middleware],
            client_max_size=50 * 1024 * 1024,  # Telegram's upload limit for bots
        )
        self.faults.install_control_routes(self.app)
        self._add_routes(self.app)
        self.app.on_shutdown.append(self._on_shutdown)
        self.app.on_cleanup.append(self._on_cleanup)

    async def _on_shutdown(self, app: web.Application) -> None:
        # Release pending long polls at once instead of holding the shutdown.
        self._closing = True
        self._notify()

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    # ------------------------------------------------------------------ Bot API plumbing
    def _add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/bot{token}/{method}", self._bot_api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        c = "/control"
        app.router.add_post(f"{c}/chats", self._control_register_chat)
        app.router.add_post(f"{c}/chats/{{chat_id}}/upgrade", self._control_upgrade_chat)
        app.router.add_post(f"{c}/chats/{{chat_id}}/topics", self._control_create_topic)
        app.router.add_delete(
            f"{c}/chats/{{chat_id}}/topics/{{thread_id}}", self._control_delete_topic
        )
        app.router.add_get(f"{c}/chats/{{chat_id}}/messages", self._control_messages)
        app.router.add_get(f"{c}/chats/{{chat_id}}/wait", self._control_chat_wait)
        app.router.add_post(f"{c}/updates/message", self._control_message)
        app.router.add_post(f"{c}/updates/callback", self._control_callback)
        app.router.add_post(f"{c}/updates/press", self._control_press)
        app.router.add_get(f"{c}/events", self._control_events)
        app.router.add_get(f"{c}/callback_answers", self._control_callback_answers)
        app.router.add_get(f"{c}/callback_answers/{{query_id}}", self._control_callback_answer)
        app.router.add_get(f"{c}/files/{{file_id}}", self._control_file)
        app.router.add_post(f"{c}/users/{{user_id}}/block", self._control_block)
        app.router.add_post(f"{c}/callback_queries", self._control_set_callback_age)
        app.router.add_get(f"{c}/callback_queries", self._control_get_callback_age)
        app.router.add_get(f"{c}/state", self._control_state)
        app.router.add_post(f"{c}/reset", self._control_reset)
        app.router.add_post(f"{c}/limits", self._control_set_limits)
        app.router.add_get(f"{c}/chats/{{chat_id}}/drafts", self._control_drafts)
        app.router.add_post(f"{c}/chats/{{chat_id}}/drafts/stop", self._control_stop_draft)
        app.router.add_post(f"{c}/drafts", self._control_set_drafts)
        app.router.add_get(f"{c}/limits", self._control_get_limits)
        app.router.add_get(f"{c}/rate_stats", self._control_rate_stats)

    @web.middleware
    async def _bot_api_middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if not request.path.startswith("/bot"):
            return await handler(request)
        at = time.time()
        # Parse before the fault middleware runs: a "drop" fault closes the socket.
        try:
            request[_PARAMS_KEY] = await read_params(request)
        except BotApiError as exc:
            request[_PARAMS_KEY] = {}
            request[_PARAMS_ERROR_KEY] = exc
        status: int | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            if not request.get(_HANDLED_KEY):  # the fault middleware answered
                self._log_fault(request, at, status)

    def _log_fault(self, request: web.Request, at: float, status: int | None) -> None:
        method = request.match_info.get("method")
        if method is None or request.match_info.get("token") != self.token:
            return
        known = self._methods.get(method.lower())
        if method.lower() in UNLOGGED_METHODS:
            return
        params: dict[str, Any] = request.get(_PARAMS_KEY, {})
        self._log(
            Event(
                seq=self._next_seq(),
                at=at,
                method=known[0] if known else method,
                chat_id=params.get("chat_id"),
                message_id=as_int(params.get("message_id")),
                ok=False,
                error_code=status,
                description="injected fault" if status else "injected fault: no answer",
                fault=True,
            )
        )

    async def _bot_api(self, request: web.Request) -> web.Response:
        request[_HANDLED_KEY] = True
        if request.match_info["token"] != self.token:
            return json_response(UNAUTHORIZED.payload(), 401)
        error: BotApiError | None = request.get(_PARAMS_ERROR_KEY)
        if error is not None:
            return json_response(error.payload(), error.error_code)
        status, body = await self.call(request.match_info["method"], request[_PARAMS_KEY])
        return json_response(body, status)
