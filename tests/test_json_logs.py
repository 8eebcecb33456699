"""LOG_FORMAT=json: one JSON object per line, ids bound where known, never a secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import run
from bot.settings import load_settings
from services.logcontext import JsonFormatter, annotate, bind, configure_logging
from tests.harness import running_env

BUYER = 626262


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging replaces the root handlers (pytest's too): put them back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("aiogram.event", "httpx")}
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, old in quiet.items():
            logging.getLogger(name).setLevel(old)


def _lines(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    assert lines, "nothing was logged"
    parsed = []
    for line in lines:
        item = json.loads(line)  # every line is one JSON object
        assert isinstance(item, dict), line
        assert {"ts", "level", "logger", "message"} <= item.keys(), line
        parsed.append(item)
    return parsed


def test_log_format_setting_defaults_to_text_and_refuses_others(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    assert load_settings().log_format == "text"
    monkeypatch.setenv("LOG_FORMAT", "json")
    assert load_settings().log_format == "json"
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(Exception, match=r"^LOG_FORMAT is malformed"):
        load_settings()


@pytest.mark.usefixtures("restore_logging")
async def test_bound_fields_nest_reach_tasks_and_end_with_their_block() -> None:
    out = io.StringIO()
    configure_logging("json", logging.INFO, stream=out)
    log = logging.getLogger("t")
    log.info("outside")
    annotate(order_id=1)  # outside any scope: nothing global changes
    with bind(update_id=7, user_id=5):
        log.info("update %s", "x")
        with bind(order_id=9):
            await asyncio.create_task(asyncio.to_thread(log.info, "in a thread of a task"))
        annotate(order_id=3)
        log.info("annotated")
    log.info("after")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = _lines(out.getvalue())
    fields = [{k: v for k, v in line.items() if k.endswith("_id")} for line in lines]
    assert [line["message"] for line in lines] == [
        "outside",
        "update x",
        "in a thread of a task",
        "annotated",
        "after",
        "failed",
    ]
    assert fields == [
        {},
        {"update_id": 7, "user_id": 5},
        {"update_id": 7, "user_id": 5, "order_id": 9},
        {"update_id": 7, "user_id": 5, "order_id": 3},
        {},
        {},
    ]
    assert lines[1]["level"] == "INFO" and lines[1]["logger"] == "t"
    assert "RuntimeError: boom" in lines[-1]["exc"]


def test_text_stays_the_default_format(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    run._logging(True)
    logging.getLogger("t").info("hello")
    err = capsys.readouterr().err
    assert err.rstrip().endswith(" INFO t hello")
    assert not err.startswith("{")
    assert not any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


async def test_a_whole_purchase_logs_json_with_ids_and_no_secret(
    tmp_path: Path, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_env(tmp_path, log_format="json") as env:
        settings = env.app.settings
        # What run.py does with these settings (-v: INFO), writing to captured stderr.
        run._logging(True, settings.log_format)
        # ...and then everything at DEBUG, libraries included: no secret at any level.
        for name in ("", "aiogram.event", "httpx"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        order_id = await env.buy(BUYER)
        await env.pay(order_id)
        await env.delivered_message(BUYER, order_id)
        keys = [k["key"] for k in await env.orc.keys() if not k["deleted"]]
        # Refused callbacks log too: a forged one must not echo the expected signature.
        payment_id = (await env.order(order_id)).provider_payment_id
        assert payment_id is not None
        await env.kx.resend(payment_id, signature="bad")
    text = capsys.readouterr().err
    lines = _lines(text)

    secrets = {
        "bot token": settings.bot_token,
        "management key": settings.openrouter_management_key,
        "encryption key": settings.encryption_key,
        "KryptoExpress API key": settings.krypto_express_api_key,
        "callback secret": settings.krypto_express_callback_secret,
    }
    assert len(keys) == 1
    values = {name: s.get_secret_value() for name, s in secrets.items() if s is not None}
    values["buyer's key"] = keys[0]
    assert len(values) == 6 and all(len(v) >= 8 for v in values.values())
    for name, value in values.items():
        assert value not in text, f"the {name} was logged"

    by_message = {line["message"].split(" ")[0]: line for line in lines}
    created = by_message["order_created"]  # in the update that confirmed the quote
    assert created["user_id"] == BUYER and isinstance(created["update_id"], int)
    assert created["order_id"] == order_id
    confirmed = by_message["payment_confirmed"]  # the provider's callback, no update
    assert (confirmed["order_id"], confirmed["user_id"]) == (order_id, BUYER)
    assert "update_id" not in confirmed
    key_created = by_message["key_created"]  # fulfilment
    assert (key_created["order_id"], key_created["user_id"]) == (order_id, BUYER)
