"""A local web chat for ``run.py --sandbox``: talk to the bot in a browser, offline.

One page (``sandbox/static/``, plain HTML/CSS/JS) shows a Telegram-like private chat
with the bot, a wallet that pays the buyer's invoices, the admin group and the
operator's OpenRouter account. The page never talks to the emulators itself: every
action goes through this app, which plays the Telegram user through the emulator's
control API and pushes each change to the page as server-sent events.

Serves on loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from locales import LANGUAGE_NAMES
from locales import LANGUAGES as LANGUAGES_OFFERED
from sandbox.common import LOOPBACK, Served, dumps, json_response
from sandbox.provider_control import ControlError
from sandbox.runner import ADMIN_CHAT_ID, ADMIN_ID
from sandbox.telegram_control import TelegramControl, TelegramControlError
from sandbox.webchat_feed import ChatFeed, Pulse, chat_view
from sandbox.webchat_money import OpenRouterPane
from sandbox.webchat_wallet import Wallet

if TYPE_CHECKING:
    from bot.app import BotApp
    from sandbox.runner import Sandbox

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
DEFAULT_PORT = 8765
# Two buyers to switch between: user id -> first name (their private chat id is the same).
BUYERS = {5550001: "Alice", 5550002: "Boris"}
MAX_NAME_LENGTH = 64  # Telegram's limit for a first name
# The buyer's Telegram app language: every language the bot offers, by its own name.
LANGUAGES = LANGUAGES_OFFERED
PANEL_REFRESH_SECONDS = 5.0


class WebChat:
    """The aiohttp app behind the page; ``start()`` returns its URL."""

    def __init__(
        self,
        sandbox: Sandbox,
        app: BotApp,
        *,
        port: int = DEFAULT_PORT,
        started_at: float | None = None,
    ) -> None:
        self.tg = TelegramControl(sandbox.telegram_url)
        self.feed = ChatFeed(sandbox.telegram_url)
        self.wallet = Wallet(sandbox.kryptoexpress_url, sandbox.cryptopay_url, app)
        self.openrouter = OpenRouterPane(sandbox.openrouter_url, app)
        self.pulse = Pulse()
        self.languages: dict[int, str] = dict.fromkeys(BUYERS, "en")
        # The buyer's display name (Telegram's first_name), settable on the page: try a
        # name like "Tom & <Jerry>" and see that the bot treats it as text.
        self.names: dict[int, str] = dict(BUYERS)
        # For the "time to first page" figure: when `python run.py --sandbox` began.
        self.started_at = started_at
        self.first_page_after: float | None = None
        self._port = port
        self._served: Served | None = None
        self.app = self._build()

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> str:
        self._served = Served(self.app, LOOPBACK, self._port)
        try:
            return await self._served.start()
        except OSError:
            # The friendly port is taken (a second sandbox?): any free one will do.
            self._served = Served(self.app, LOOPBACK, 0)
            return await self._served.start()

    async def stop(self) -> None:
        if self._served is not None:
            await self._served.stop()
        for client in (self.tg, self.feed, self.wallet, self.openrouter):
            await client.aclose()

    def _build(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", STATIC)
        app.router.add_get("/api/config", self.config)
        app.router.add_get("/api/stream", self.stream)
        app.router.add_get("/api/files/{file_id}", self.file)
        app.router.add_post("/api/send", self.send)
        app.router.add_post("/api/press", self.press)
        app.router.add_post("/api/stop", self.stop_draft)
        app.router.add_post("/api/language", self.language)
        app.router.add_post("/api/name", self.name)
        app.router.add_get("/api/panels", self.panels)
        # The rail is in the path: the two providers' invoice ids may coincide.
        app.router.add_post("/api/wallet/{provider}/{payment_id}/{action}", self.wallet_action)
        app.router.add_post("/api/openrouter/credits", self.set_credits)
        app.router.add_post("/api/openrouter/keys/{hash}/spend", self.spend)
        return app

    # ------------------------------------------------------------------ pages
    async def index(self, request: web.Request) -> web.FileResponse:
        if self.first_page_after is None and self.started_at is not None:
            self.first_page_after = time.monotonic() - self.started_at
            print(f"web chat: first page served {self.first_page_after:.2f} s after start")
        return web.FileResponse(STATIC / "index.html")

    async def config(self, request: web.Request) -> web.Response:
        buyer = _buyer(request.query.get("buyer"))
        language = self.languages[buyer]
        return json_response(
            {
                "buyers": [{"id": id_, "name": self.names[id_]} for id_ in BUYERS],
                "buyer": buyer,
                "language": language,
                "languages": [{"code": c, "name": LANGUAGE_NAMES[c]} for c in LANGUAGES],
                "admin": {"chat_id": ADMIN_CHAT_ID, "user_id": ADMIN_ID},
                "commands": await self.feed.commands(language),
            }
        )

    async def file(self, request: web.Request) -> web.Response:
        found = await self.feed.file(request.match_info["file_id"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        return web.Response(body=body, content_type=content_type)

    # ------------------------------------------------------------- live feed
    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``chat`` (a chat's messages) and ``panels`` (wallet,
        OpenRouter), each sent only when it differs from what the page has."""
        buyer = _buyer(request.query.get("buyer"))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        sent: dict[str, str] = {}
        chats = [buyer, ADMIN_CHAT_ID]
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            while True:
                changed = self.pulse.current  # taken before looking: no change is missed
                seq = 0
                for chat_id in chats:
                    records, seq = await self.feed.snapshot(chat_id)
                    payload = {
                        "chat_id": chat_id,
                        "messages": chat_view(records),
                        "draft": await self.feed.draft(chat_id),
                    }
                    await _send_event(response, sent, f"chat:{chat_id}", "chat", payload)
                await _send_event(response, sent, "panels", "panels", await self._panels(buyer))
                # A comment line: a closed page shows up as a failed write, ending the loop.
                await response.write(b": ping\n\n")
                await self.feed.wait_change(chats, seq, changed, PANEL_REFRESH_SECONDS)
        return response

    async def panels(self, request: web.Request) -> web.Response:
        """What the stream's ``panels`` event carries, once (for scripts and tests)."""
        return json_response(await self._panels(_buyer(request.query.get("buyer"))))

    async def _panels(self, buyer: int) -> dict[str, Any]:
        return {
            "wallet": await self.wallet.invoices(buyer),
            "openrouter": await self.openrouter.view(),
        }

    # ---------------------------------------------------------------- actions
    async def stop_draft(self, request: web.Request) -> web.Response:
        """The buyer presses ⏹ under the answer being written (a draft with can_stop)."""
        buyer = _buyer(request.query.get("buyer"))
        stopped = await self.feed.stop_draft(buyer)
        self.pulse.fire()
        return json_response({"stopped": stopped})

    async def send(self, request: web.Request) -> web.Response:
        """The buyer writes in the private chat, or (``admin``) the admin in the group."""
        body = await request.json()
        text = str(body.get("text") or "").strip()
        if not text:
            raise web.HTTPBadRequest(text="empty message")
        if body.get("admin"):
            result = await self.tg.send_text(
                ADMIN_ID, text, chat_id=ADMIN_CHAT_ID, first_name="Admin"
            )
        else:
            buyer = _buyer(body.get("buyer"))
            result = await self.tg.send_text(
                buyer, text, language_code=self.languages[buyer], first_name=self.names[buyer]
            )
        self.pulse.fire()
        return json_response(result)

    async def press(self, request: web.Request) -> web.Response:
        """A tap on an inline button: a real callback query carrying the button's data."""
        body = await request.json()
        chat_id = int(body["chat_id"])
        user_id = ADMIN_ID if chat_id == ADMIN_CHAT_ID else _buyer(chat_id)
        try:
            pressed = await self.tg.forge_callback(
                user_id, int(body["message_id"]), str(body["data"]), chat_id=chat_id
            )
            answer = await self.tg.callback_answer(pressed["callback_query_id"])
        except (TelegramControlError, AssertionError) as exc:
            return json_response({"error": str(exc).splitlines()[0]}, 502)
        return json_response({"text": answer.get("text"), "show_alert": answer.get("show_alert")})

    async def language(self, request: web.Request) -> web.Response:
        """The buyer's Telegram app language: sent with every message from now on."""
        body = await request.json()
        buyer, language = _buyer(body.get("buyer")), body.get("language")
        if language not in LANGUAGES:
            raise web.HTTPBadRequest(text=f"language must be one of {', '.join(LANGUAGES)}")
        self.languages[buyer] = language
        return json_response({"buyer": buyer, "language": language})

    async def name(self, request: web.Request) -> web.Response:
        """The buyer's display name in Telegram: sent with every message from now on."""
        body = await request.json()
        buyer, name = _buyer(body.get("buyer")), str(body.get("name") or "").strip()
        if not 1 <= len(name) <= MAX_NAME_LENGTH:
            raise web.HTTPBadRequest(text=f"a name has 1-{MAX_NAME_LENGTH} characters")
        self.names[buyer] = name
        return json_response({"buyer": buyer, "name": name})

    async def wallet_action(self, request: web.Request) -> web.Response:
        """``{"asset": …}`` in the body picks the asset a Crypto Pay invoice is paid in."""
        buyer = _buyer(request.query.get("buyer"))
        body = await request.json() if request.can_read_body else {}
        asset = body.get("asset") if isinstance(body, dict) else None
        try:
            payment_id = int(request.match_info["payment_id"])
            await self.wallet.act(
                buyer,
                request.match_info["provider"],
                payment_id,
                request.match_info["action"],
                asset=None if asset is None else str(asset),
            )
        except (ValueError, LookupError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        except ControlError as exc:
            # The provider refused (an invoice already paid or expired): say why.
            raise web.HTTPBadRequest(text=f"the provider refused: {exc.body[:200]}") from None
        self.pulse.fire()
        return json_response({"ok": True})

    async def set_credits(self, request: web.Request) -> web.Response:
        amount = _amount((await request.json()).get("total_credits"))
        await self.openrouter.set_credits(amount)
        self.pulse.fire()
        return json_response({"ok": True})

    async def spend(self, request: web.Request) -> web.Response:
        amount = _amount((await request.json()).get("amount"))
        await self.openrouter.spend(request.match_info["hash"], amount)
        self.pulse.fire()
        return json_response({"ok": True})


async def _send_event(
    response: web.StreamResponse, sent: dict[str, str], key: str, event: str, payload: Any
) -> None:
    data = dumps(payload)
    if sent.get(key) == data:
        return
    sent[key] = data
    await response.write(f"event: {event}\ndata: {data}\n\n".encode())


def _buyer(value: Any) -> int:
    """One of the two sandbox buyers (the first when none is named)."""
    if value in (None, ""):
        return next(iter(BUYERS))
    try:
        buyer = int(value)
    except (TypeError, ValueError):
        raise web.HTTPBadRequest(text="unknown buyer") from None
    if buyer not in BUYERS:
        raise web.HTTPBadRequest(text="unknown buyer")
    return buyer


def _amount(value: Any) -> Decimal:
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise web.HTTPBadRequest(text="amount must be a number") from None
    if not amount.is_finite() or amount < 0:
        raise web.HTTPBadRequest(text="amount must be a non-negative number")
    return amount


__all__ = ["BUYERS", "WebChat"]
