"""Async client for the Telegram emulator's ``/control/`` API (see ``sandbox.telegram``).

A test plays the user: it writes to the bot, presses buttons, and waits for what the bot
says, without sleeping::

    async with TelegramControl(served.url) as tg:
        await tg.send_text(42, "/start")
        menu = await tg.wait_for_text(42, "Welcome")
        pressed = await tg.press(42, "Buy")
        answer = await tg.callback_answer(pressed["callback_query_id"])

Waiting failures raise AssertionError carrying the chat transcript; a non-2xx control
answer raises ``TelegramControlError`` (an AssertionError too, so pytest shows it plainly).
Answers are parsed as plain JSON (event ``at`` times are floats): nothing here is money.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from sandbox.control_client import ControlClient, ControlError

SEQ_HEADER = "X-Sandbox-Seq"
Record = dict[str, Any]


class TelegramControlError(ControlError, AssertionError):
    """An AssertionError too, so a failed steer reads plainly in pytest."""

    body_limit = 1000


def render_transcript(records: Iterable[Record]) -> str:
    """The chat as a person would read it, one message per block.

    ``👤 text`` for the user, ``🤖 text`` for the bot, ``[📷 photo]`` for photos and
    inline keyboard rows as ``[ A ] [ B ]``.
    """
    lines: list[str] = []
    for record in records:
        who = "🤖" if record.get("from_bot") else "👤"
        parts: list[str] = []
        if record.get("photo"):
            parts.append("[📷 photo]")
        if record.get("document"):
            parts.append(f"[📄 {record.get('document_name') or 'document'}]")
        if record.get("plain"):
            parts.append(str(record["plain"]))
        notes = []
        if record.get("edited"):
            notes.append(f"edited ×{record['edited']}")
        if record.get("deleted"):
            notes.append("deleted")
        suffix = f"  ({', '.join(notes)})" if notes else ""
        text_lines = " ".join(parts).splitlines() or [""]
        lines.append(f"{who} {text_lines[0]}{suffix}")
        lines.extend(f"   {line}" for line in text_lines[1:])
        for row in record.get("buttons") or []:
            lines.append("   " + " ".join(f"[ {button.get('text', '')} ]" for button in row))
    return "\n".join(lines) if lines else "(no messages)"


class TelegramControl(ControlClient):
    """Steers a running ``TelegramEmulator`` through its control API."""

    error = TelegramControlError

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        return response.json()

    # ------------------------------------------------------------------ user actions
    async def send_photo(self, user_id: int, caption: str = "") -> dict[str, Any]:
        """The user sends a photo (with an optional caption) in their private chat."""
        body: dict[str, Any] = {"user_id": user_id, "photo": True, "text": caption}
        result: dict[str, Any] = await self._json("POST", "/control/updates/message", body=body)
        return result

    async def send_text(
        self,
        user_id: int,
        text: str,
        *,
        language_code: str = "en",
        first_name: str = "Buyer",
        username: str | None = None,
        chat_id: int | None = None,
        as_chat: bool = False,
    ) -> dict[str, Any]:
        """The user writes ``text`` (private chat unless ``chat_id``) -> {update_id, message_id}.

        ``as_chat``: an anonymous admin of the group ``chat_id`` writes on its behalf."""
        body: dict[str, Any] = {
            "user_id": user_id,
            "text": text,
            "language_code": language_code,
            "first_name": first_name,
            "as_chat": as_chat,
        }
        if username is not None:
            body["username"] = username
        if chat_id is not None:
            body["chat_id"] = chat_id
        result: dict[str, Any] = await self._json("POST", "/control/updates/message", body=body)
        return result

    async def press(
        self,
        user_id: int,
        text: str,
        *,
        match: str = "exact",
        message_id: int | None = None,
        chat_id: int | None = None,
    ) -> dict[str, Any]:
        """Press the inline button labelled ``text`` on the newest bot message having it.

        ``match`` is "exact", "prefix" or "contains". Returns {update_id,
        callback_query_id, message_id, data}; raises TelegramControlError (404) listing
        the available buttons when there is none.
        """
        body: dict[str, Any] = {"user_id": user_id, "text": text, "match": match}
        if message_id is not None:
            body["message_id"] = message_id
        if chat_id is not None:
            body["chat_id"] = chat_id
        result: dict[str, Any] = await self._json("POST", "/control/updates/press", body=body)
        return result

    async def forge_callback(
        self, user_id: int, message_id: int, data: str, *, chat_id: int | None = None
    ) -> dict[str, Any]:
        """A callback query with arbitrary ``data``, as a tampering client could send."""
        body: dict[str, Any] = {"user_id": user_id, "message_id": message_id, "data": data}
        if chat_id is not None:
            body["chat_id"] = chat_id
        result: dict[str, Any] = await self._json("POST", "/control/updates/callback", body=body)
        return result

    async def stop_generation(self, chat_id: int) -> dict[str, Any]:
        """The user presses the stop button under the draft being generated in ``chat_id``."""
        result: dict[str, Any] = await self._json("POST", f"/control/chats/{chat_id}/drafts/stop")
        return result

    async def set_drafts_supported(self, supported: bool) -> None:
        await self._json("POST", "/control/drafts", body={"supported": supported})

    async def drafts(self, chat_id: int) -> dict[str, Any]:
        """``{"current": draft or None, "frames": [every draft frame sent]}``."""
        result: dict[str, Any] = await self._json("GET", f"/control/chats/{chat_id}/drafts")
        return result

    async def wait_for_draft(
        self, chat_id: int, predicate: Callable[[Record], bool], timeout: float = 10.0
    ) -> Record:
        """The first draft frame sent to ``chat_id`` satisfying ``predicate`` (long poll)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            drafts = await self.drafts(chat_id)
            for frame in drafts["frames"]:
                if predicate(frame):
                    return dict(frame)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no matching draft in chat {chat_id}: {drafts['frames']}")
            await self._json(
                "GET",
                f"/control/chats/{chat_id}/wait",
                params={"after_seq": drafts["seq"], "timeout": remaining},
                wait=remaining,
            )

    # ---------------------------------------------------------------------- inspection
    async def _snapshot(self, chat_id: int) -> tuple[list[Record], int]:
        response = await self._request("GET", f"/control/chats/{chat_id}/messages")
        return response.json(), int(response.headers.get(SEQ_HEADER, "0"))

    async def messages(self, chat_id: int) -> list[Record]:
        """Every message of the chat (user and bot) in send order, deleted ones included."""
        records, _ = await self._snapshot(chat_id)
        return records

    async def last_message(self, chat_id: int, *, from_bot: bool | None = True) -> Record | None:
        """The newest non-deleted message (by default the bot's), or None."""
        for record in reversed(await self.messages(chat_id)):
            if record["deleted"]:
                continue
            if from_bot is None or record["from_bot"] == from_bot:
                return record
        return None

    async def transcript(self, chat_id: int) -> str:
        return render_transcript(await self.messages(chat_id))

    async def wait_for(
        self,
        chat_id: int,
        predicate: Callable[[Record], bool],
        timeout: float = 10.0,
        *,
        description: str = "a matching message",
    ) -> Record:
        """The first message record (send order) satisfying ``predicate``.

        Re-checks whenever the bot sends, edits or deletes in the chat (long poll on the
        emulator, no sleeping); raises AssertionError with the transcript on timeout.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            records, seq = await self._snapshot(chat_id)
            for record in records:
                if predicate(record):
                    return record
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {description} in chat {chat_id}\n"
                    f"--- transcript ---\n{render_transcript(records)}"
                )
            await self._json(
                "GET",
                f"/control/chats/{chat_id}/wait",
                params={"after_seq": seq, "timeout": remaining},
                wait=remaining,
            )

    async def wait_for_text(
        self,
        chat_id: int,
        substring: str,
        timeout: float = 10.0,
        *,
        include_deleted: bool = False,
    ) -> Record:
        """The first bot message whose current text or caption (markup stripped) has it."""

        def matches(record: Record) -> bool:
            if not record["from_bot"] or (record["deleted"] and not include_deleted):
                return False
            return substring in (record.get("plain") or "")

        return await self.wait_for(
            chat_id, matches, timeout, description=f"bot text containing {substring!r}"
        )

    async def callback_answer(
        self,
        callback_query_id: str,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """Wait until the bot answers the callback query -> {text, show_alert, ...}."""
        answer: dict[str, Any] = await self._json(
            "GET",
            f"/control/callback_answers/{callback_query_id}",
            params={"timeout": timeout},
            wait=timeout,
        )
        if not answer.get("answered"):
            raise AssertionError(
                f"callback query {callback_query_id} not answered within {timeout}s "
                f"(data={answer.get('data')!r}); Telegram shows the user a spinner until it is"
            )
        return answer

    async def callback_answers(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._json("GET", "/control/callback_answers")
        return result

    async def events(self, after_seq: int = 0, *, chat_id: int | None = None) -> list[Record]:
        """Bot API calls {seq, at, method, chat_id, message_id, ok, error_code?, fault?}."""
        params: dict[str, Any] = {"after_seq": after_seq}
        if chat_id is not None:
            params["chat_id"] = chat_id
        result: list[Record] = await self._json("GET", "/control/events", params=params)
        return result

    async def file_bytes(self, file_id: str) -> bytes:
        response = await self._request("GET", f"/control/files/{file_id}")
        return response.content

    async def state(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", "/control/state")
        return result

    # ------------------------------------------------------------------------ steering
    async def register_chat(
        self,
        chat_id: int,
        type: str = "private",  # Telegram's own field name
        *,
        title: str | None = None,
        first_name: str | None = None,
        username: str | None = None,
        is_forum: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"chat_id": chat_id, "type": type, "is_forum": is_forum}
        for key, value in (("title", title), ("first_name", first_name), ("username", username)):
            if value is not None:
                body[key] = value
        result: dict[str, Any] = await self._json("POST", "/control/chats", body=body)
        return result

    async def upgrade_chat(
        self, chat_id: int, new_chat_id: int | None = None, *, updates: bool = True
    ) -> dict[str, Any]:
        """Upgrade a basic group to a supergroup; returns the new chat (its ``id``).
        ``updates=False``: the bot never sees the service messages (it missed them)."""
        body: dict[str, Any] = {"updates": updates}
        if new_chat_id is not None:
            body["new_chat_id"] = new_chat_id
        result: dict[str, Any] = await self._json(
            "POST", f"/control/chats/{chat_id}/upgrade", body=body
        )
        return result

    async def create_topic(self, chat_id: int, name: str, thread_id: int | None = None) -> int:
        """Open a topic in a forum supergroup; returns its ``message_thread_id``."""
        body: dict[str, Any] = {"name": name}
        if thread_id is not None:
            body["message_thread_id"] = thread_id
        result = await self._json("POST", f"/control/chats/{chat_id}/topics", body=body)
        return int(result["message_thread_id"])

    async def delete_topic(self, chat_id: int, thread_id: int) -> None:
        await self._request("DELETE", f"/control/chats/{chat_id}/topics/{thread_id}")

    async def block(self, user_id: int, blocked: bool = True, *, reason: str = "blocked") -> None:
        """``reason`` "blocked" (user blocked the bot) or "deactivated" (account deleted)."""
        await self._request(
            "POST",
            f"/control/users/{user_id}/block",
            body={"blocked": blocked, "reason": reason},
        )

    async def set_callback_max_age(self, seconds: float) -> None:
        """Answers to callback queries older than this fail "query is too old" (default 15)."""
        await self._request("POST", "/control/callback_queries", body={"max_age": seconds})

    async def add_fault(self, **spec: Any) -> None:
        """A ``sandbox.common.FaultRule``: path, method, mode, status, body, count, rate, delay."""
        await self._request("POST", "/control/faults", body=spec)

    async def clear_faults(self) -> None:
        await self._request("DELETE", "/control/faults")

    async def set_limits(self, **limits: Any) -> dict[str, Any]:
        """Turn the emulator's flood control on/off and tune it: ``enforce``,
        ``global_per_second``, ``per_chat_per_second``, ``per_chat_burst``,
        ``group_per_minute``, ``group_window`` (s), ``retry_after``. Returns the limits."""
        result: dict[str, Any] = await self._json("POST", "/control/limits", body=limits)
        return result

    async def limits(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", "/control/limits")
        return result

    async def rate_stats(self) -> dict[str, Any]:
        """Successful sends per second overall and per chat, sliding-window maxima
        (``max_in_any_second``, ``max_per_chat_in_any_second``, ``group_max_in_window``),
        and ``rejected_429``."""
        result: dict[str, Any] = await self._json("GET", "/control/rate_stats")
        return result

    async def reset(self) -> None:
        await self._request("POST", "/control/reset")
