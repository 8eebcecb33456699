"""Message drafts (Bot API 9.x): ``sendMessageDraft`` and the user's stop button.

A draft is the temporary, animated preview of a message being generated: the bot sends
the growing text under one ``draft_id`` and then must ``sendMessage`` the final text (the
draft is ephemeral; a message sent to the chat replaces it). With ``can_stop`` the user
sees a stop button; pressing it sends the bot a ``stopped_message_generation`` update
(``MessageGenerationStopped``: ``chat``, ``draft_id``, optional ``message_thread_id``).

Drafts exist in private chats only. ``POST /control/drafts {"supported": false}`` makes
the method fail as it does for a client or chat without drafts, so a test can drive the
bot's fallback (edited messages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sandbox.common import json_response
from sandbox.telegram.control import control_error, json_body
from sandbox.telegram.delivery import UpdateDelivery
from sandbox.telegram.entities import format_text, utf16_len
from sandbox.telegram.errors import bad_request
from sandbox.telegram.limits import MAX_TEXT_LENGTH
from sandbox.telegram.model import CallContext
from sandbox.telegram.params import as_int

DRAFTS_UNAVAILABLE = "message drafts are unavailable in this chat"


@dataclass
class Draft:
    chat_id: int
    draft_id: int
    plain: str = ""
    text: str = ""
    parse_mode: str | None = None
    entities: list[dict[str, Any]] = field(default_factory=list)
    can_stop: bool = False
    keep_on_stop: bool = False
    frames: int = 0
    stopped: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "chat_id": self.chat_id,
            "draft_id": self.draft_id,
            "plain": self.plain,
            "text": self.text,
            "entities": self.entities,
            "can_stop": self.can_stop,
            "frames": self.frames,
            "stopped": self.stopped,
        }


class MessageDrafts(UpdateDelivery):
    drafts_supported: bool = True

    def _reset_drafts(self) -> None:
        self.drafts: dict[int, Draft] = {}  # chat id → the draft shown now
        self.draft_frames: dict[int, list[dict[str, Any]]] = {}  # chat id → every frame

    def _clear_draft(self, chat_id: int) -> None:
        """A message sent to the chat replaces the draft (it is only a preview)."""
        self.drafts.pop(chat_id, None)

    async def _send_message_draft(self, params: dict[str, Any], ctx: CallContext) -> bool:
        chat = self._chat_for(params)
        if chat.type != "private" or not self.drafts_supported:
            raise bad_request(DRAFTS_UNAVAILABLE)
        draft_id = as_int(params.get("draft_id"))
        if not draft_id:
            raise bad_request("draft_id must be non-zero")
        text = params.get("text")
        text = "" if text is None else str(text)
        plain, entities = format_text(text, params.get("parse_mode"), params.get("entities"))
        if utf16_len(plain) > MAX_TEXT_LENGTH:
            raise bad_request("message is too long")
        draft = self.drafts.get(chat.id)
        if draft is None or draft.draft_id != draft_id:
            draft = self.drafts[chat.id] = Draft(chat.id, draft_id)
        if draft.stopped:
            return True  # the user stopped it: the client shows no further frames
        draft.plain, draft.text, draft.entities = plain, text, entities
        draft.parse_mode = params.get("parse_mode")
        draft.can_stop = bool(params.get("can_stop"))
        draft.keep_on_stop = bool(params.get("keep_on_stop"))
        draft.frames += 1
        self.draft_frames.setdefault(chat.id, []).append(draft.to_json())
        ctx.chat_id = chat.id
        return True

    # ------------------------------------------------------------------ control
    async def _control_drafts(self, request: web.Request) -> web.Response:
        chat_id = as_int(request.match_info["chat_id"])
        draft = self.drafts.get(chat_id) if chat_id is not None else None
        frames = self.draft_frames.get(chat_id, []) if chat_id is not None else []
        current = draft.to_json() if draft else None
        return json_response({"current": current, "frames": frames, "seq": self._seq})

    async def _control_stop_draft(self, request: web.Request) -> web.Response:
        """The user presses the stop button under the draft shown in ``chat_id``."""
        chat_id = as_int(request.match_info["chat_id"])
        draft = self.drafts.get(chat_id) if chat_id is not None else None
        if draft is None or not draft.can_stop or draft.stopped:
            return control_error(409, f"no stoppable draft in chat {chat_id}")
        draft.stopped = True
        chat = self.chats[draft.chat_id]
        update_id, queued = self._enqueue(
            "stopped_message_generation", {"chat": chat.to_api(), "draft_id": draft.draft_id}
        )
        if not draft.keep_on_stop:
            self._clear_draft(draft.chat_id)
        self._notify()
        return json_response({"update_id": update_id, "queued": queued})

    async def _control_set_drafts(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        supported = body.get("supported")
        if not isinstance(supported, bool):
            return control_error(400, "need supported: true or false")
        self.drafts_supported = supported
        return json_response({"supported": supported})
