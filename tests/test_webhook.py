"""TELEGRAM_MODE=webhook: Telegram posts updates to the bot's HTTP server, with a secret."""

from __future__ import annotations

from pathlib import Path

import httpx

from sandbox.runner import free_port
from tests.harness import running_env

BUYER = 818181


async def test_webhook_mode_serves_the_conversation(tmp_path: Path) -> None:
    port = free_port()
    async with running_env(
        tmp_path,
        web_port=port,
        telegram_mode="webhook",
        telegram_webhook_url=f"http://127.0.0.1:{port}/telegram/webhook",
        telegram_webhook_secret="webhook-secret-for-tests",
    ) as env:
        state = await env.tg.state()
        assert state["webhook"]["url"].endswith("/telegram/webhook")
        # As in polling mode: exactly the update types the dispatcher handles.
        assert (
            set(state["webhook"]["allowed_updates"])
            == set(env.app.dp.resolve_used_update_types())
            >= {"message", "callback_query", "my_chat_member"}
        )
        await env.tg.send_text(BUYER, "/start")
        await env.tg.wait_for_text(BUYER, "Here you can buy")
        # Without the secret header the bot's server refuses the update.
        async with httpx.AsyncClient() as http:
            forged = await http.post(
                f"http://127.0.0.1:{port}/telegram/webhook",
                json={
                    "update_id": 1,
                    "message": {
                        "message_id": 1,
                        "date": 0,
                        "chat": {"id": BUYER, "type": "private"},
                        "text": "/start",
                    },
                },
            )
        assert forged.status_code == 401
