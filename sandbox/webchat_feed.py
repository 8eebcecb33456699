"""Live chat snapshots for the web chat: long-polls the Telegram emulator, no page reloads.

The emulator's ``/control/chats/{id}/wait`` answers as soon as the bot calls the Bot API
on that chat (send, edit, delete). A message the *user* writes is no Bot API call, so the
web app also fires a local ``Pulse`` after every action it performs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

import httpx

from sandbox.telegram_control import SEQ_HEADER

Record = dict[str, Any]


class Pulse:
    """A broadcast "something changed": waiters take ``current`` *before* they look."""

    def __init__(self) -> None:
        self.current = asyncio.Event()

    def fire(self) -> None:
        self.current.set()
        self.current = asyncio.Event()


class ChatFeed:
    """Reads chats of the Telegram emulator and waits for them to change."""

    def __init__(self, telegram_url: str) -> None:
        self._http = httpx.AsyncClient(base_url=telegram_url.rstrip("/"), timeout=30.0)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def snapshot(self, chat_id: int) -> tuple[list[Record], int]:
        """Every message of the chat (send order) and the emulator's seq at that moment."""
        response = await self._http.get(f"/control/chats/{chat_id}/messages")
        response.raise_for_status()
        return response.json(), int(response.headers.get(SEQ_HEADER, "0"))

    async def draft(self, chat_id: int) -> Record | None:
        """The draft (``sendMessageDraft``) shown in the chat now, if any."""
        response = await self._http.get(f"/control/chats/{chat_id}/drafts")
        response.raise_for_status()
        current: Record | None = response.json().get("current")
        return current

    async def stop_draft(self, chat_id: int) -> bool:
        """The buyer presses the draft's stop button; False if nothing can be stopped."""
        response = await self._http.post(f"/control/chats/{chat_id}/drafts/stop")
        return response.status_code == 200

    async def wait_change(
        self, chat_ids: list[int], after_seq: int, pulse: asyncio.Event, timeout: float
    ) -> None:
        """Return when the bot touches one of the chats, the pulse fires, or time is up."""
        waits: list[Awaitable[Any]] = [
            self._http.get(
                f"/control/chats/{chat_id}/wait",
                params={"after_seq": after_seq, "timeout": timeout},
                timeout=timeout + 10,
            )
            for chat_id in chat_ids
        ]
        tasks = [asyncio.ensure_future(w) for w in [*waits, pulse.wait()]]
        try:
            await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                # A cancelled long poll or a failed one: either way, look again.
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                    await task

    async def commands(self, language: str) -> list[dict[str, str]]:
        """The command menu a buyer's private chat shows for ``language``: what the bot
        registered (setMyCommands) for private chats, else for the default scope."""
        response = await self._http.get("/control/state")
        response.raise_for_status()
        entries = response.json().get("commands", [])
        # Telegram's order: the narrower scope first, in the user's language or else
        # without one; then the next scope.
        for scope in ("all_private_chats", "default"):
            by_language = {
                entry.get("language_code") or "": entry["commands"]
                for entry in entries
                if (entry.get("scope") or {}).get("type", "default") == scope
            }
            commands: list[dict[str, str]] = by_language.get(language) or by_language.get("") or []
            if commands:
                return commands
        return []

    async def file(self, file_id: str) -> tuple[bytes, str] | None:
        response = await self._http.get(f"/control/files/{file_id}")
        if response.status_code != 200:
            return None
        return response.content, response.headers.get("Content-Type", "application/octet-stream")


def chat_view(records: list[Record]) -> list[Record]:
    """What the page needs of each message; deleted ones stay so the page can drop them."""
    keys = (
        "message_id",
        "from_bot",
        "plain",
        "entities",
        "photo_file_id",
        "document_name",
        "buttons",
        "edited",
        "deleted",
        "date",
    )
    return [{key: record.get(key) for key in keys} for record in records]
