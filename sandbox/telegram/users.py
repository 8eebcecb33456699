"""The simulated people: what a test's user does in Telegram, turned into updates.

Writing, pressing a button, forging callback data, blocking the bot, and a group being
upgraded to a supergroup each reach the bot as the update Telegram would send. These are
``/control/`` routes (listed in the package docstring), answered like the others in
``control``.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sandbox.common import json_response
from sandbox.telegram.control import control_error, json_body
from sandbox.telegram.delivery import UpdateDelivery
from sandbox.telegram.entities import utf16_len
from sandbox.telegram.model import CallbackQuery, Chat, User, inline_buttons
from sandbox.telegram.params import as_int

# The fake sender of a message an anonymous group admin sends on behalf of the group.
GROUP_ANONYMOUS_BOT = {
    "id": 1087968824,
    "is_bot": True,
    "first_name": "Group",
    "username": "GroupAnonymousBot",
}


class SimulatedUsers(UpdateDelivery):
    """The user's side of a chat: writes, presses, blocks; the group admin's upgrade."""

    def _ensure_user(self, body: Mapping[str, Any], user_id: int) -> User:
        user = self.users.get(user_id)
        if user is None:
            user = self.users[user_id] = User(id=user_id)
        if body.get("first_name"):
            user.first_name = str(body["first_name"])
        if body.get("username"):
            user.username = str(body["username"])
        if body.get("language_code"):
            user.language_code = str(body["language_code"])
        return user

    def _set_blocked(self, user: User, reason: str | None) -> None:
        """Block/unblock the bot for ``user``; Telegram tells the bot with ``my_chat_member``
        whenever the bot's status in the private chat changes (a deleted account does not
        block anything: its chat just stops working, without an update)."""
        was_blocked = user.block_reason == "blocked"
        user.block_reason = reason
        is_blocked = reason == "blocked"
        chat = self.chats.get(user.id)
        if was_blocked == is_blocked or chat is None:
            return  # nothing changed, or the user never opened a chat with the bot
        bot = self._bot_user()
        member = {"status": "member", "user": bot}
        kicked = {"status": "kicked", "user": bot, "until_date": 0}
        self._enqueue(
            "my_chat_member",
            {
                "chat": chat.to_api(),
                "from": user.to_api(),
                "date": int(time.time()),
                "old_chat_member": member if is_blocked else kicked,
                "new_chat_member": kicked if is_blocked else member,
            },
        )

    def _ensure_private_chat(self, user: User) -> Chat:
        chat = self.chats.get(user.id)
        if chat is None:
            chat = self.chats[user.id] = Chat(id=user.id, type="private")
        chat.first_name, chat.username = user.first_name, user.username
        return chat

    def _inject_callback(
        self, user: User, chat: Chat, message_id: int, data: str
    ) -> tuple[int, str, bool]:
        message = self.messages.get(chat.id, {}).get(message_id)
        query_id = str(4_000_000_000_000_000 + next(self._callback_ids))
        instance = hashlib.sha256(f"{self.bot_id}:{chat.id}".encode()).hexdigest()[:15]
        payload: dict[str, Any] = {
            "id": query_id,
            "from": user.to_api(),
            "chat_instance": str(int(instance, 16)),
            "data": data,
        }
        if message is not None:
            payload["message"] = self._message_api(message)
        else:
            # An unknown message reaches the bot as InaccessibleMessage (date 0).
            payload["message"] = {"chat": chat.to_api(), "message_id": message_id, "date": 0}
        self.callbacks[query_id] = CallbackQuery(query_id, user.id, chat.id, message_id, data)
        update_id, queued = self._enqueue("callback_query", payload)
        return update_id, query_id, queued

    async def _control_register_chat(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        chat_id = as_int(body.get("chat_id"))
        kind = body.get("type", "private")
        if chat_id is None or kind not in ("private", "group", "supergroup", "channel"):
            return control_error(400, "need chat_id and type private|group|supergroup|channel")
        if kind == "private":
            user = self._ensure_user(body, chat_id)
            chat = self._ensure_private_chat(user)
        else:
            chat = self.chats.get(chat_id) or Chat(id=chat_id, type=kind)
            chat.type = kind
            chat.title = body.get("title") or chat.title
            chat.username = body.get("username") or chat.username
            chat.is_forum = bool(body.get("is_forum", chat.is_forum))
            self.chats[chat_id] = chat
        return json_response(chat.to_api())

    async def _control_create_topic(self, request: web.Request) -> web.Response:
        """A forum topic opened by a member (``{name, message_thread_id?}``). As Telegram,
        its ``message_thread_id`` is the id of the message that created it, so it is taken
        from the chat's message ids (a test may choose it, as it may choose a migrated
        group's new id). The creation service message is not stored."""
        chat = self.chats.get(as_int(request.match_info["chat_id"]) or 0)
        if chat is None or chat.type != "supergroup" or not chat.is_forum:
            return control_error(400, "only a registered supergroup with is_forum")
        body = await json_body(request)
        name = str(body.get("name") or "").strip()
        if not 1 <= len(name) <= 128:
            return control_error(400, "need a topic name of 1-128 characters")
        thread = as_int(body.get("message_thread_id")) or max(chat.next_message_id, 2)
        if thread <= 1 or thread in chat.topics:  # 1 is the General topic
            return control_error(409, "message_thread_id is taken")
        chat.next_message_id = max(chat.next_message_id, thread + 1)
        chat.topics[thread] = name
        return json_response({"message_thread_id": thread, "name": name})

    async def _control_delete_topic(self, request: web.Request) -> web.Response:
        """A member deletes a topic: its messages go with it, and sending to it is then
        refused with "message thread not found"."""
        chat = self.chats.get(as_int(request.match_info["chat_id"]) or 0)
        thread = as_int(request.match_info["thread_id"])
        if chat is None or thread not in chat.topics:
            return control_error(404, "no such topic")
        del chat.topics[thread]
        for message in self.messages.get(chat.id, {}).values():
            if message.message_thread_id == thread:
                message.deleted = True
        self._notify()
        return json_response({"ok": True})

    async def _control_upgrade_chat(self, request: web.Request) -> web.Response:
        """A basic group becomes a supergroup under a new id (what an owner's "upgrade",
        or turning on a forum or a public link, does). The old id stays answering 400.

        As Telegram, both chats get a service message, delivered to the bot as updates:
        ``migrate_to_chat_id`` in the old group, ``migrate_from_chat_id`` in the new one.
        ``{user_id?}`` is who upgraded it (the service messages' sender);
        ``{updates: false}`` stores them without delivering, as for a bot that missed them
        (it was down past Telegram's 24 h, or another replica is the one sending)."""
        old = self.chats.get(as_int(request.match_info["chat_id"]) or 0)
        if old is None or old.type != "group" or old.migrated_to is not None:
            return control_error(400, "only a registered, not yet upgraded basic group")
        body = await json_body(request)
        # Telegram's supergroup ids are -100 followed by the channel id.
        new_id = as_int(body.get("new_chat_id")) or int(f"-100{abs(old.id)}")
        if new_id in self.chats:
            return control_error(409, "new_chat_id is taken")
        new = Chat(id=new_id, type="supergroup", title=old.title, username=old.username)
        self.chats[new_id] = new
        owner = self._ensure_user({}, as_int(body.get("user_id")) or 1)
        for chat, service in (
            (old, {"migrate_to_chat_id": new_id}),
            (new, {"migrate_from_chat_id": old.id}),
        ):
            message = self._new_message(chat, from_bot=False, sender=owner.to_api())
            message.service, message.seq = service, self._next_seq()
            if body.get("updates", True):
                self._enqueue("message", self._message_api(message))
        old.migrated_to = new_id
        return json_response(new.to_api())

    async def _control_message(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        user_id = as_int(body.get("user_id"))
        text = body.get("text")
        photo = bool(body.get("photo"))  # a user's photo; ``text``, if any, is its caption
        if photo and text is None:
            text = ""
        if user_id is None or not isinstance(text, str) or (not text and not photo):
            return control_error(400, "need user_id and text (or photo)")
        body.setdefault("first_name", "Buyer")
        body.setdefault("language_code", "en")
        user = self._ensure_user(body, user_id)
        if user.block_reason == "deactivated":
            return control_error(409, f"user {user_id} is deactivated and cannot write")
        chat_id = as_int(body.get("chat_id"))
        if chat_id is None or chat_id == user_id:
            # Writing to the bot unblocks it, as in the real app: the bot hears so first.
            chat = self._ensure_private_chat(user)
            self._set_blocked(user, None)
        elif (found := self.chats.get(chat_id)) is not None:
            chat = found
        else:
            return control_error(404, f"chat {chat_id} is not registered")
        as_chat = bool(body.get("as_chat"))
        if as_chat and chat.type not in ("group", "supergroup"):
            return control_error(400, "as_chat needs a group chat_id")
        message = self._new_message(
            chat,
            from_bot=False,
            sender=dict(GROUP_ANONYMOUS_BOT) if as_chat else user.to_api(),
        )
        if as_chat:
            message.sender_chat = chat.to_api()
        if photo:
            # What a phone uploads: a few sizes of one picture, largest last.
            n = message.message_id
            message.photo = [
                {
                    "file_id": f"AgACuser{n}x{w}",
                    "file_unique_id": f"AQADu{n}{w}",
                    "width": w,
                    "height": w * 3 // 4,
                    "file_size": w * w // 8,
                }
                for w in (90, 320, 800)
            ]
            message.caption = text or None
            message.plain = text
        else:
            message.text = message.plain = text
        message.seq = self._next_seq()
        command = None if photo else re.match(r"/[A-Za-z0-9_]+(?:@[A-Za-z0-9_]+)?", text)
        if command:
            length = utf16_len(command.group(0))
            message.entities = [{"type": "bot_command", "offset": 0, "length": length}]
        update_id, queued = self._enqueue("message", self._message_api(message))
        return json_response(
            {"update_id": update_id, "message_id": message.message_id, "queued": queued}
        )

    def _callback_parties(self, body: Mapping[str, Any]) -> tuple[User, Chat] | web.Response:
        user_id = as_int(body.get("user_id"))
        if user_id is None:
            return control_error(400, "need user_id")
        user = self.users.get(user_id) or self._ensure_user(body, user_id)
        chat_id = as_int(body.get("chat_id"))
        chat = self.chats.get(user_id if chat_id is None else chat_id)
        if chat is None:
            return control_error(404, f"chat {chat_id or user_id} not found")
        return user, chat

    async def _control_callback(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        parties = self._callback_parties(body)
        if isinstance(parties, web.Response):
            return parties
        message_id = as_int(body.get("message_id"))
        if message_id is None or not isinstance(body.get("data"), str):
            return control_error(400, "need message_id and data")
        update_id, query_id, queued = self._inject_callback(*parties, message_id, body["data"])
        return json_response(
            {"update_id": update_id, "callback_query_id": query_id, "queued": queued}
        )

    async def _control_press(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        parties = self._callback_parties(body)
        if isinstance(parties, web.Response):
            return parties
        user, chat = parties
        wanted = str(body.get("text", ""))
        match = body.get("match", "exact")
        if match not in ("exact", "prefix", "contains"):
            return control_error(400, "match must be exact, prefix or contains")
        message_id = as_int(body.get("message_id"))
        messages = list(self.messages.get(chat.id, {}).values())
        if message_id is not None:
            candidates = [m for m in messages if m.message_id == message_id]
        else:
            candidates = [m for m in reversed(messages) if m.from_bot and not m.deleted]
        available: list[str] = []
        for message in candidates:
            for row in inline_buttons(message.reply_markup):
                for button in row:
                    label = button["text"]
                    available.append(label)
                    if "callback_data" not in button or not _label_matches(label, wanted, match):
                        continue
                    data = button["callback_data"]
                    update_id, query_id, queued = self._inject_callback(
                        user, chat, message.message_id, data
                    )
                    return json_response(
                        {
                            "update_id": update_id,
                            "callback_query_id": query_id,
                            "message_id": message.message_id,
                            "data": data,
                            "queued": queued,
                        }
                    )
        where = f"message {message_id}" if message_id is not None else f"chat {chat.id}"
        return control_error(
            404,
            f"no callback button {wanted!r} ({match}) in {where}; available: {available}",
            available=available,
        )

    async def _control_block(self, request: web.Request) -> web.Response:
        user_id = as_int(request.match_info["user_id"])
        if user_id is None:
            return control_error(400, "bad user id")
        body = await json_body(request)
        reason = body.get("reason", "blocked")
        if reason not in ("blocked", "deactivated"):
            return control_error(400, "reason must be blocked or deactivated")
        user = self.users.get(user_id) or self._ensure_user({}, user_id)
        self._set_blocked(user, reason if body.get("blocked", True) else None)
        return json_response({"user_id": user_id, "blocked": user.block_reason})


def _label_matches(label: str, wanted: str, match: str) -> bool:
    label, wanted = label.strip(), wanted.strip()
    if match == "prefix":
        return label.startswith(wanted)
    if match == "contains":
        return wanted in label
    return label == wanted
