"""The Bot API methods the bot calls, with Telegram's checks and error texts."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sandbox.common import dumps, json_response
from sandbox.telegram.delivery import UpdateDelivery
from sandbox.telegram.entities import format_text, utf16_len
from sandbox.telegram.errors import (
    NOT_FOUND,
    QUERY_TOO_OLD,
    UNAUTHORIZED,
    BotApiError,
    bad_request,
    webhook_conflict,
)
from sandbox.telegram.files import sniff_mime
from sandbox.telegram.limits import MAX_CAPTION_LENGTH, MAX_POLL_TIMEOUT, MAX_TEXT_LENGTH
from sandbox.telegram.model import ApiHandler, CallContext, Chat, Webhook
from sandbox.telegram.params import as_int

COMMAND_SCOPES = frozenset(
    {
        "default",
        "all_private_chats",
        "all_group_chats",
        "all_chat_administrators",
        "chat",
        "chat_administrators",
        "chat_member",
    }
)
# Bot API limits of setMyDescription / setMyShortDescription (0-512 / 0-120 characters).
BOT_TEXT_LIMITS = {"name": 64, "description": 512, "short_description": 120}

CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)


class BotApiMethods(UpdateDelivery):
    async def _true(self, params: dict[str, Any], ctx: CallContext) -> bool:
        return True

    async def _get_me(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        return {
            **self._bot_user(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(self, params: dict[str, Any], ctx: CallContext) -> list[Any]:
        if self.webhook is not None:
            raise webhook_conflict()
        offset = as_int(params.get("offset")) or 0
        limit = min(max(as_int(params.get("limit")) or 100, 1), 100)
        timeout = min(max(as_int(params.get("timeout")) or 0, 0), MAX_POLL_TIMEOUT)
        if "allowed_updates" in params:
            self.allowed_updates = params["allowed_updates"] or None
        if offset < 0:
            # A negative offset keeps only the last -offset updates and forgets the rest.
            self.pending = self.pending[offset:]
        # A newer getUpdates terminates an older one still waiting (two bot instances).
        self._poll_generation += 1
        generation = self._poll_generation
        self._notify()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if offset > 0:  # updates below the offset are confirmed: forget them
                self.pending = [u for u in self.pending if u["update_id"] >= offset]
            if self.webhook is not None:
                raise webhook_conflict()
            if generation != self._poll_generation:
                raise BotApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; "
                    "make sure that only one bot instance is running",
                )
            remaining = deadline - asyncio.get_running_loop().time()
            if self.pending or self._closing or remaining <= 0:
                return self.pending[:limit]
            await self._wait_change(remaining)

    async def _set_webhook(self, params: dict[str, Any], ctx: CallContext) -> bool:
        url = str(params.get("url") or "")
        if not url:  # setWebhook with an empty url removes the webhook
            self.webhook = None
            self._notify()
            return True
        # Telegram insists on HTTPS; the emulator accepts http:// for loopback test servers.
        if not url.startswith(("http://", "https://")):
            raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            raise bad_request("secret token contains unallowed characters")
        if params.get("drop_pending_updates"):
            self.pending.clear()
        if "allowed_updates" in params:
            self.allowed_updates = params["allowed_updates"] or None
        self.webhook = Webhook(
            url=url,
            secret_token=str(secret) if secret else None,
            max_connections=as_int(params.get("max_connections")) or 40,
        )
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._webhook_worker())
        self._notify()
        return True

    async def _delete_webhook(self, params: dict[str, Any], ctx: CallContext) -> bool:
        self.webhook = None
        if params.get("drop_pending_updates"):
            self.pending.clear()
        self._notify()
        return True

    async def _get_webhook_info(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        return self._webhook_info()

    async def _send_message(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        chat = self._chat_for(params)
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise bad_request("message text is empty")
        plain, entities = format_text(text, params.get("parse_mode"), params.get("entities"))
        if not plain.strip():
            raise bad_request("message text is empty")
        if utf16_len(plain) > MAX_TEXT_LENGTH:
            raise bad_request("message is too long")
        markup = self._checked_markup(params)
        reply_to = self._reply_target(chat, params)
        thread = self._thread_target(chat, params)
        message = self._new_message(chat, from_bot=True, sender=self._bot_user())
        message.message_thread_id = thread
        message.text, message.plain, message.entities = text, plain, entities
        message.parse_mode = params.get("parse_mode")
        message.reply_markup, message.reply_to = markup, reply_to
        self._clear_draft(chat.id)
        ctx.touched.append(message)
        ctx.message_id = message.message_id
        return self._message_api(message)

    async def _send_media(
        self, params: dict[str, Any], ctx: CallContext, kind: str
    ) -> dict[str, Any]:
        chat = self._chat_for(params)
        caption = params.get("caption")
        plain, entities = "", list[dict[str, Any]]()
        if caption is not None:
            caption = str(caption)
            plain, entities = format_text(
                caption, params.get("parse_mode"), params.get("caption_entities")
            )
            if utf16_len(plain) > MAX_CAPTION_LENGTH:
                raise bad_request("message caption is too long")
        markup = self._checked_markup(params)
        reply_to = self._reply_target(chat, params)
        thread = self._thread_target(chat, params)
        stored = self._resolve_file(params.get(kind), kind)
        message = self._new_message(chat, from_bot=True, sender=self._bot_user())
        message.message_thread_id = thread
        message.caption, message.plain, message.entities = caption, plain, entities
        message.parse_mode = params.get("parse_mode")
        message.reply_markup, message.reply_to = markup, reply_to
        if kind == "photo":
            message.photo = [stored.photo_size()]
        else:
            message.document = stored.document()
        ctx.touched.append(message)
        ctx.message_id = message.message_id
        return self._message_api(message)

    async def _send_photo(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        return await self._send_media(params, ctx, "photo")

    async def _send_document(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        return await self._send_media(params, ctx, "document")

    async def _edit_message_text(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        _, message = self._edit_target(params)
        if message.has_media:
            raise bad_request("there is no text in the message to edit")
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise bad_request("message text is empty")
        plain, entities = format_text(text, params.get("parse_mode"), params.get("entities"))
        if not plain.strip():
            raise bad_request("message text is empty")
        if utf16_len(plain) > MAX_TEXT_LENGTH:
            raise bad_request("message is too long")
        # Quirk: an edit without reply_markup removes the inline keyboard.
        markup = self._checked_markup(params)
        return self._apply_edit(
            message,
            ctx,
            plain=plain,
            entities=entities,
            markup=markup,
            text=text,
            parse_mode=params.get("parse_mode"),
        )

    async def _edit_message_caption(
        self, params: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any]:
        _, message = self._edit_target(params)
        if not message.has_media:
            raise bad_request("there is no caption in the message to edit")
        caption = params.get("caption")
        plain, entities = "", list[dict[str, Any]]()
        if caption is not None:
            caption = str(caption)
            plain, entities = format_text(
                caption, params.get("parse_mode"), params.get("caption_entities")
            )
            if utf16_len(plain) > MAX_CAPTION_LENGTH:
                raise bad_request("message caption is too long")
        markup = self._checked_markup(params)
        return self._apply_edit(
            message,
            ctx,
            plain=plain,
            entities=entities,
            markup=markup,
            caption=caption,
            parse_mode=params.get("parse_mode"),
        )

    async def _edit_message_reply_markup(
        self, params: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any]:
        _, message = self._edit_target(params)
        markup = self._checked_markup(params)
        return self._apply_edit(
            message, ctx, plain=message.plain, entities=message.entities, markup=markup
        )

    def _delete_one(self, chat: Chat, message_id: int | None, ctx: CallContext) -> bool:
        message = self.messages.get(chat.id, {}).get(message_id) if message_id else None
        if message is None or message.deleted:
            return False
        message.deleted = True
        ctx.touched.append(message)
        return True

    async def _delete_message(self, params: dict[str, Any], ctx: CallContext) -> bool:
        chat = self._chat_for(params, check_blocked=False)
        if not self._delete_one(chat, as_int(params.get("message_id")), ctx):
            raise bad_request("message to delete not found")
        return True

    async def _delete_messages(self, params: dict[str, Any], ctx: CallContext) -> bool:
        chat = self._chat_for(params, check_blocked=False)
        ids = params.get("message_ids")
        if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
            raise bad_request("message_ids must be a list of 1-100 identifiers")
        # Like Telegram: missing messages are skipped silently.
        for message_id in ids:
            self._delete_one(chat, as_int(message_id), ctx)
        return True

    async def _answer_callback_query(self, params: dict[str, Any], ctx: CallContext) -> bool:
        query = self.callbacks.get(str(params.get("callback_query_id") or ""))
        if query is None:
            raise bad_request(QUERY_TOO_OLD)
        ctx.chat_id, ctx.message_id = query.chat_id, query.message_id  # refusals too
        if query.answered or time.monotonic() - query.created > self.callback_max_age:
            raise bad_request(QUERY_TOO_OLD)
        text = params.get("text")
        if text is not None and len(str(text)) > 200:
            raise bad_request("MESSAGE_TOO_LONG")
        query.answered = True
        query.text = None if text is None else str(text)
        query.show_alert = bool(params.get("show_alert"))
        query.url = params.get("url")
        query.answered_at = time.time()
        return True

    def _commands_key(self, params: Mapping[str, Any]) -> tuple[str, str]:
        """The scope (checked as Telegram does, ids made numbers) and language a command
        list is kept under."""
        scope = params.get("scope") or {"type": "default"}
        if not isinstance(scope, dict) or scope.get("type") not in COMMAND_SCOPES:
            raise bad_request("can't parse BotCommandScope")
        kind = scope["type"]
        key: dict[str, Any] = {"type": kind}
        if kind in ("chat", "chat_administrators", "chat_member"):
            key["chat_id"] = self._chat_for(scope, check_blocked=False).id
        if kind == "chat_member":
            user_id = as_int(scope.get("user_id"))
            if user_id is None or user_id not in self.users:
                raise bad_request("user not found")
            key["user_id"] = user_id
        return dumps(key), str(params.get("language_code") or "")

    async def _set_my_commands(self, params: dict[str, Any], ctx: CallContext) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise bad_request("commands must be a list of at most 100 BotCommand")
        for item in commands:
            if not isinstance(item, dict):
                raise bad_request("can't parse BotCommand")
            if not re.fullmatch(r"[a-z0-9_]{1,32}", str(item.get("command", ""))):
                raise bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(str(item.get("description", ""))) <= 256:
                raise bad_request("command description must be 1-256 characters long")
        key = self._commands_key(params)
        if commands:
            self.commands[key] = [
                {"command": c["command"], "description": c["description"]} for c in commands
            ]
        else:
            self.commands.pop(key, None)
        return True

    async def _get_my_commands(
        self, params: dict[str, Any], ctx: CallContext
    ) -> list[dict[str, Any]]:
        return self.commands.get(self._commands_key(params), [])

    async def _delete_my_commands(self, params: dict[str, Any], ctx: CallContext) -> bool:
        self.commands.pop(self._commands_key(params), None)
        return True

    async def _set_chat_menu_button(self, params: dict[str, Any], ctx: CallContext) -> bool:
        chat_id: int | None = None
        if params.get("chat_id") is not None:
            chat_id = self._chat_for(params, check_blocked=False).id
        button = params.get("menu_button") or {"type": "default"}
        if not isinstance(button, dict) or button.get("type") not in (
            "default",
            "commands",
            "web_app",
        ):
            raise bad_request("can't parse menu button JSON object")
        self.menu_buttons[chat_id] = button
        return True

    async def _get_chat_menu_button(
        self, params: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any]:
        chat_id = as_int(params.get("chat_id"))
        if chat_id in self.menu_buttons:
            return self.menu_buttons[chat_id]
        return self.menu_buttons.get(None, {"type": "default"})

    async def _send_chat_action(self, params: dict[str, Any], ctx: CallContext) -> bool:
        self._chat_for(params)
        if params.get("action") not in CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        return True

    async def _get_chat(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        chat = self._chat_for(params, check_blocked=False)
        # aiogram validates getChat into ChatFullInfo, which requires these fields.
        return {
            **chat.to_api(),
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": False,
                "limited_gifts": False,
                "unique_gifts": False,
                "premium_subscription": False,
                "gifts_from_channels": False,
            },
        }

    async def _get_file(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        stored = self.files.get(str(params.get("file_id") or ""))
        if stored is None:
            raise bad_request("invalid file_id")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.size,
            "file_path": stored.file_path,
        }

    def _bot_text_setter(self, field_name: str) -> ApiHandler:
        async def setter(params: dict[str, Any], ctx: CallContext) -> bool:
            key = (field_name, str(params.get("language_code") or ""))
            value = params.get(field_name)
            # The wording of this refusal is ours; the limits are the documented ones.
            if value and len(str(value)) > BOT_TEXT_LIMITS[field_name]:
                raise bad_request(f"{field_name} is too long")
            if value:
                self.bot_texts[key] = str(value)
            else:
                self.bot_texts.pop(key, None)
            return True

        return setter

    def _bot_text_getter(self, field_name: str) -> ApiHandler:
        async def getter(params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
            language = str(params.get("language_code") or "")
            value = self.bot_texts.get((field_name, language), self.bot_texts.get((field_name, "")))
            if value is None and field_name == "name":
                value = self.bot_first_name
            return {field_name: value or ""}

        return getter

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return json_response(UNAUTHORIZED.payload(), 401)
        file_id = self.file_paths.get(request.match_info["path"])
        stored = self.files.get(file_id) if file_id else None
        if stored is None or stored.data is None:
            return json_response(NOT_FOUND.payload(), 404)
        return web.Response(body=stored.data, content_type=sniff_mime(stored.data, None))
