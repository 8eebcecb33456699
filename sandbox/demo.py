"""``run.py --sandbox --demo``: one buyer buys tokens, then chats with the model on the
delivered key; the chat is printed as a transcript.

Each step is a real Telegram update through the emulator; the payment is a wallet
transfer at the KryptoExpress emulator, which sends the signed callback.
"""

from __future__ import annotations

import re
import time
from typing import Any

from bot.settings import Settings
from sandbox.provider_control import KryptoExpressControl, OpenRouterControl
from sandbox.runner import ADMIN_CHAT_ID, Sandbox
from sandbox.telegram_control import TelegramControl

BUYER = 5550001
Record = dict[str, Any]


def _has(message: Record, label: str) -> bool:
    return any(b["text"] == label for row in message.get("buttons") or [] for b in row)


def _screen(message: Record) -> str:
    """A message as the buyer sees it now: text, then its buttons."""
    lines = [
        "🤖 "
        + ("[📷 QR code] " if message.get("photo") else "")
        + (message.get("plain") or "").replace("\n", "\n   ")
    ]
    for row in message.get("buttons") or []:
        lines.append("   " + " ".join(f"[ {b['text']} ]" for b in row))
    return "\n".join(lines)


class Transcript:
    def __init__(self, tg: TelegramControl) -> None:
        self.tg = tg
        self.lines: list[str] = []

    async def say(self, text: str) -> None:
        self.lines.append(f"👤 {text}")
        await self.tg.send_text(BUYER, text, first_name="Alice")

    async def press(self, label: str, match: str = "exact") -> None:
        pressed = await self.tg.press(BUYER, label, match=match)
        self.lines.append(f"👆 pressed [ {pressed.get('label') or label} ]")

    async def see(self, predicate: Any, timeout: float = 15.0) -> Record:
        message = await self.tg.wait_for(BUYER, predicate, timeout)
        self.lines.append(_screen(message))
        return message

    def note(self, text: str) -> None:
        self.lines.append(f"   ··· {text}")


async def play_demo(sandbox: Sandbox, settings: Settings) -> int:
    started = time.monotonic()
    tg = TelegramControl(sandbox.telegram_url)
    kx = KryptoExpressControl(sandbox.kryptoexpress_url)
    orc = OpenRouterControl(sandbox.openrouter_url)
    chat = Transcript(tg)
    try:
        await chat.say("/start")
        await chat.see(lambda m: _has(m, "🤖 AI Tokens"))
        await chat.press("🤖 AI Tokens")
        await chat.see(lambda m: _has(m, "✏️ Custom amount"))
        await chat.press("Starter", match="prefix")
        await chat.see(lambda m: _has(m, "USDT"))
        await chat.press("USDT")
        await chat.see(lambda m: _has(m, "✅ Confirm order"))
        await chat.press("✅ Confirm order")
        screen = await chat.see(lambda m: bool(m.get("photo")))
        match = re.search(r"Order #(\d+)", screen.get("plain") or "")
        assert match, "no payment screen"
        order_id = int(match.group(1))
        payment = next(
            p for p in await kx.payments() if p["payment"]["address"] in (screen.get("plain") or "")
        )
        chat.note(
            f"the buyer's wallet sends {payment['payment']['cryptoAmount']} "
            f"{payment['payment']['cryptoCurrency']}; KryptoExpress calls back (signed)"
        )
        await kx.pay(payment["payment"]["id"])
        await chat.see(lambda m: "Payment received" in (m.get("plain") or ""))
        await chat.see(lambda m: f"Order #{order_id} delivered" in (m.get("plain") or ""))
        await chat.say("/quota")
        await chat.see(lambda m: "Your quota" in (m.get("plain") or ""))
        # 💬 Chat on the delivered key: the answer streams in drafts, then lands with
        # its cost (OpenRouter's own figure, paid from the buyer's key).
        await chat.say("/chat")
        await chat.see(lambda m: "Chat with" in (m.get("plain") or ""))
        await chat.say("echo: **Hello!** Streaming works, and 1 < 2 & 3 > 2.")
        await chat.see(lambda m: "This answer:" in (m.get("plain") or ""))
        frames = (await tg.drafts(BUYER))["frames"]
        chat.note(f"the answer streamed in {len(frames)} draft frame(s) before the message")
        admin = await tg.wait_for_text(ADMIN_CHAT_ID, f"order #{order_id}")
        elapsed = time.monotonic() - started

        print("=" * 72)
        print("AI Token Bot — sandbox demo (every step went over loopback HTTP)")
        print("=" * 72)
        print("\n".join(chat.lines))
        print("-" * 72)
        print(f"Admin group: {admin['plain']}")
        for key in (k for k in await orc.keys() if not k.get("deleted")):
            print(
                f"OpenRouter: key {key['name']} has limit ${key['limit']} "
                f"(the order's base cost; usage ${key['usage']})"
            )
        print(f"Demo finished in {elapsed:.1f} s.")
        return 0
    finally:
        await tg.aclose()
        await kx.aclose()
        await orc.aclose()
