"""What an update costs the bot beyond its handler (issue 14 item 2): aiogram's response
classes are built once, not after every garbage collection, and a known buyer's update
does not open a transaction for their row, while a change of language, model or
reachability is seen on the very next update."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path
from typing import Any

from aiogram.methods import GetUpdates, Response, SendMessage
from sqlalchemy import event, select

from db.models import User
from sandbox.runner import BOT_TOKEN
from tests.harness import Env, running_env

BUYER = 5_100_001


def _statements(env: Env) -> list[str]:
    """Every SQL statement the app runs from now on (BEGIN/COMMIT are not statements)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(env.app.engine.sync_engine, "before_cursor_execute", record)
    return seen


async def test_response_classes_outlive_garbage_collection(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        gc.collect()
        # Built again here only if nothing kept the class the bot's calls used.
        for method in (SendMessage, GetUpdates):
            kept = weakref.ref(Response[method.__returning__])  # type: ignore[name-defined]
            gc.collect()
            assert kept() is not None, method.__name__


async def test_a_known_buyer_costs_no_user_lookup(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        statements = _statements(env)
        await env.tg.send_text(BUYER, "/lang")
        await env.tg.wait_for_text(BUYER, "Choose your language")
        assert not [s for s in statements if "users" in s], statements


async def test_language_change_is_seen_on_the_next_update(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.tg.send_text(BUYER, "/lang")
        await env.tg.wait_for_text(BUYER, "Choose your language")
        await env.tg.press(BUYER, "Русский", match="prefix")
        await env.tg.wait_for_text(BUYER, "Язык переключён на русский")
        await env.tg.send_text(BUYER, "/lang")  # the cached buyer, now in Russian
        await env.tg.wait_for_text(BUYER, "Выберите язык")
        async with env.app.sessions() as session:
            user = await session.get(User, BUYER)
            assert user is not None and user.language == "ru"


async def test_buyer_the_outbox_found_unreachable_is_reachable_when_writing_again(
    tmp_path: Path,
) -> None:
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)  # now a cached, reachable buyer
        # What a 403 on a queued message does (processing/outbox/outcomes.py).
        await env.app.outbox._unreachable(BUYER, "Forbidden: bot was blocked by the user")
        await env.start_chat(BUYER)
        for _ in range(100):
            async with env.app.sessions() as session:
                user = await session.get(User, BUYER)
            if user is not None and user.reachable:
                break
            await asyncio.sleep(0.05)
        assert user is not None and user.reachable is True


async def test_confirm_reads_the_quote_once_and_answers_the_tap(
    tmp_path: Path,
) -> None:
    """✅ Confirm's claim is its check: no separate transaction reads the quote before it
    (one SELECT of the quote, in the claim); the tap still gets its "creating" answer."""
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.open_packages(BUYER)
        await env.choose_package(BUYER)
        await env.tg.press(BUYER, "USDT")
        await env.tg.wait_for(BUYER, lambda m: "Your quote" in (m["plain"] or ""))
        statements = _statements(env)
        pressed = await env.tg.press(BUYER, "✅ Confirm order")
        answer = await env.tg.callback_answer(pressed["callback_query_id"])
        assert answer["text"] == "Creating your invoice…" and not answer["show_alert"]
        await env.tg.wait_for(BUYER, lambda m: bool(m.get("photo")))
        reads = [s for s in statements if s.lstrip().startswith("SELECT") and "FROM quotes" in s]
        assert len(reads) == 1, reads
        (order,) = await env.orders(BUYER)
        assert order.status == "awaiting_payment"


async def test_a_failed_tap_answer_does_not_strand_a_claimed_order(tmp_path: Path) -> None:
    """The tap is answered after the claim: if Telegram fails that answer (a 5xx), the
    claimed order still gets its invoice and the buyer the payment screen (else it would
    sit in ``new`` and a retap would find nothing to show)."""
    async with running_env(tmp_path) as env:
        await env.start_chat(BUYER)
        await env.open_packages(BUYER)
        await env.choose_package(BUYER)
        await env.tg.press(BUYER, "USDT")
        await env.tg.wait_for(BUYER, lambda m: "Your quote" in (m["plain"] or ""))
        await env.tg.add_fault(path=f"/bot{BOT_TOKEN}/answerCallbackQuery", status=500, count=1)
        await env.tg.press(BUYER, "✅ Confirm order")
        screen = await env.tg.wait_for(BUYER, lambda m: bool(m.get("photo")))
        assert "Order #" in (screen.get("caption") or "")
        (order,) = await env.orders(BUYER)
        assert order.status == "awaiting_payment" and order.provider_payment_id is not None


async def _users(env: Env) -> list[User]:
    async with env.app.sessions() as session:
        return list((await session.execute(select(User).order_by(User.id))).scalars())


def _transactions(env: Env) -> list[list[str]]:
    """The statements of each transaction the app begins from now on, in begin order."""
    current: dict[int, list[str]] = {}
    begun: list[list[str]] = []

    def begin(conn: Any) -> None:
        current[id(conn)] = statements = []
        begun.append(statements)

    def record(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        current.setdefault(id(conn), []).append(statement)

    event.listen(env.app.engine.sync_engine, "begin", begin)
    event.listen(env.app.engine.sync_engine, "before_cursor_execute", record)
    return begun


async def test_a_new_buyer_is_looked_up_and_written_in_one_transaction(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        begun = _transactions(env)
        await env.start_chat(BUYER)
        touching = [t for t in begun if any("users" in s for s in t)]
        assert len(touching) == 1, touching
        (statements,) = touching
        assert any(s.lstrip().startswith("INSERT INTO users") for s in statements)
        assert [u.id for u in await _users(env)] == [BUYER]


async def test_two_first_updates_of_one_buyer_at_once_make_one_row(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        users = env.app.users
        views = await asyncio.gather(
            *(
                users.ensure_user(BUYER + 7, language=lang, first_name="Ann", username=None)
                for lang in ("en", "ru")
            )
        )
        assert {v.id for v in views} == {BUYER + 7}
        (row,) = [u for u in await _users(env) if u.id == BUYER + 7]
        assert row.reachable and row.language in ("en", "ru")
        # The one whose insert won is cached; the other read nothing it could cache.
        cached = users.cache.get(BUYER + 7)
        assert cached is None or cached.language == row.language
