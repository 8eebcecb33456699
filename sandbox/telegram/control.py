"""The ``/control/`` routes that read what the bot did and set the emulator's knobs.

The routes are listed in the package docstring (``sandbox.telegram``); those that play the
user (writing, pressing, blocking, upgrading a group) are in ``users``. Control requests
are JSON, never faulted and never in the event log; errors answer ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from sandbox.common import dumps, json_response, loads
from sandbox.telegram.delivery import UpdateDelivery
from sandbox.telegram.files import sniff_mime
from sandbox.telegram.limits import RateLimits
from sandbox.telegram.params import as_int

MAX_CONTROL_WAIT = 60.0
SEQ_HEADER = "X-Sandbox-Seq"


class ControlRoutes(UpdateDelivery):
    """Reads (messages, waits, events, callback answers, files, state) and settings."""

    def _chat_records(self, chat_id: int) -> list[dict[str, Any]]:
        return [m.record() for m in self.messages.get(chat_id, {}).values()]

    async def _control_messages(self, request: web.Request) -> web.Response:
        chat_id = as_int(request.match_info["chat_id"])
        records = self._chat_records(chat_id) if chat_id is not None else []
        response = json_response(records)
        # The snapshot's seq: waiting for "after_seq=<this>" can never miss a change.
        response.headers[SEQ_HEADER] = str(self._seq)
        return response

    async def _control_chat_wait(self, request: web.Request) -> web.Response:
        chat_id = as_int(request.match_info["chat_id"])
        after = as_int(request.query.get("after_seq")) or 0
        timeout = min(_as_float(request.query.get("timeout"), 10.0), MAX_CONTROL_WAIT)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            events = []
            for event in reversed(self.events):
                if event.seq <= after:
                    break
                if event.chat_id == chat_id:
                    events.append(event.to_json())
            remaining = deadline - asyncio.get_running_loop().time()
            if events or self._closing or remaining <= 0:
                return json_response({"seq": self._seq, "events": events[::-1]})
            await self._wait_change(remaining)

    async def _control_events(self, request: web.Request) -> web.Response:
        after = as_int(request.query.get("after_seq")) or 0
        chat_id = as_int(request.query.get("chat_id"))
        events = [
            e.to_json()
            for e in self.events
            if e.seq > after and (chat_id is None or e.chat_id == chat_id)
        ]
        return json_response(events)

    async def _control_callback_answers(self, request: web.Request) -> web.Response:
        wanted = request.query.get("callback_query_id")
        answers = [
            q.to_json()
            for q in self.callbacks.values()
            if q.answered and (wanted is None or q.id == wanted)
        ]
        return json_response(answers)

    async def _control_callback_answer(self, request: web.Request) -> web.Response:
        query_id = request.match_info["query_id"]
        timeout = min(_as_float(request.query.get("timeout"), 0.0), MAX_CONTROL_WAIT)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            query = self.callbacks.get(query_id)
            if query is None:
                return control_error(404, f"unknown callback query {query_id}")
            remaining = deadline - asyncio.get_running_loop().time()
            if query.answered or self._closing or remaining <= 0:
                return json_response(query.to_json())
            await self._wait_change(remaining)

    async def _control_file(self, request: web.Request) -> web.Response:
        stored = self.files.get(request.match_info["file_id"])
        if stored is None:
            return control_error(404, "unknown file_id")
        if stored.data is None:
            return control_error(404, "file was sent by URL; no bytes stored", url=stored.url)
        return web.Response(body=stored.data, content_type=sniff_mime(stored.data, None))

    async def _control_set_callback_age(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        try:
            max_age = float(body["max_age"])
        except (KeyError, TypeError, ValueError):
            return control_error(400, "need max_age (seconds)")
        if max_age < 0:
            return control_error(400, "max_age must not be negative")
        self.callback_max_age = max_age
        return json_response({"max_age": self.callback_max_age})

    async def _control_get_callback_age(self, request: web.Request) -> web.Response:
        return json_response({"max_age": self.callback_max_age})

    async def _control_state(self, request: web.Request) -> web.Response:
        chats = []
        for chat in self.chats.values():
            user = self.users.get(chat.id) if chat.type == "private" else None
            chats.append(
                {
                    **chat.to_api(),
                    "messages": len(self.messages.get(chat.id, {})),
                    "topics": [
                        {"message_thread_id": thread, "name": name}
                        for thread, name in chat.topics.items()
                    ],
                    "blocked": user.block_reason if user else None,
                }
            )
        return json_response(
            {
                "webhook": (
                    self._webhook_info() | {"secret_token": self.webhook.secret_token}
                    if self.webhook
                    else None
                ),
                "pending_updates": len(self.pending),
                "updates": self.pending,
                "allowed_updates": self.allowed_updates,
                "chats": chats,
                "users": [u.to_api() | {"blocked": u.block_reason} for u in self.users.values()],
                "commands": [
                    {"scope": loads(scope), "language_code": lang, "commands": commands}
                    for (scope, lang), commands in self.commands.items()
                ],
                "bot_texts": [
                    {"field": field_name, "language_code": lang, "value": value}
                    for (field_name, lang), value in self.bot_texts.items()
                ],
                "seq": self._seq,
            }
        )

    async def _control_set_limits(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        current = self.flood.limits.to_json()
        unknown = sorted(set(body) - set(current))
        if unknown:
            return control_error(400, f"unknown limit fields {unknown}", known=sorted(current))
        merged = {**current, **body}
        try:
            limits = RateLimits(
                enforce=bool(merged["enforce"]),
                global_per_second=int(merged["global_per_second"]),
                per_chat_per_second=float(merged["per_chat_per_second"]),
                per_chat_burst=int(merged["per_chat_burst"]),
                group_per_minute=int(merged["group_per_minute"]),
                group_window=float(merged["group_window"]),
                retry_after=None if merged["retry_after"] is None else int(merged["retry_after"]),
            )
        except (TypeError, ValueError) as exc:
            return control_error(400, f"bad limits: {exc}")
        if min(limits.global_per_second, limits.per_chat_burst, limits.group_per_minute) < 1 or (
            limits.per_chat_per_second <= 0 or limits.group_window <= 0
        ):
            return control_error(400, "limits must be positive")
        self.flood.configure(limits)
        return json_response(limits.to_json())

    async def _control_get_limits(self, request: web.Request) -> web.Response:
        return json_response(self.flood.limits.to_json())

    async def _control_rate_stats(self, request: web.Request) -> web.Response:
        return json_response(self.flood.stats())

    async def _control_reset(self, request: web.Request) -> web.Response:
        self._reset_state()
        self.faults.clear()
        self._notify()
        return json_response({"ok": True})


def _as_float(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


async def json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = loads(raw)
    except ValueError:
        raise web.HTTPBadRequest(
            text=dumps({"error": "body is not JSON"}), content_type="application/json"
        ) from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(
            text=dumps({"error": "body must be a JSON object"}), content_type="application/json"
        )
    return data


def control_error(status: int, message: str, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status)
