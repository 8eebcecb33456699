"""/metrics, /healthz and /readyz (issue 13 items 3 and 4), driven through the real bot:
a purchase moves the counters an operator graphs, a forged callback shows up as a
rejection, and readiness names the check that fails when the database is gone, Redis
does not answer, the scheduler stopped or the outbox is stuck."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import create_async_engine

from core.clock import utcnow
from core.metrics import PREFIX, STATE, Metrics, TelegramSeen
from db.models import OutboxMessage
from processing.readiness import Readiness
from sandbox.runner import BOT_TOKEN
from tests.harness import Env, redis_url, running_env

BUYER = 818181
BUYER2 = 818182
REPO = Path(__file__).resolve().parents[1]
BOTS = ("bot", "bot-worker")
UNREACHABLE_DB = "postgresql+asyncpg://nobody@127.0.0.1:1/gone"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def base_url(env: Env) -> str:
    return f"http://{env.app.settings.web_host}:{env.app.web_port}"


async def scrape(env: Env, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{base_url(env)}/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def ready(env: Env) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{base_url(env)}/readyz")
    body: dict[str, Any] = answer.json()
    return answer.status_code, body


async def test_a_purchase_moves_the_metrics(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        before = await scrape(env)
        assert value(before, "aitoken_state_scrape_ok") == 1
        assert value(before, "aitoken_orders", status="delivered") == 0

        order_id = await env.buy(BUYER)
        # One 503 from OpenRouter (retried) and one 429 from Telegram on the way.
        await env.orc.add_fault(path="/api/v1/credits", status=503, count=1)
        await env.tg.add_fault(
            path=f"/bot{BOT_TOKEN}/sendMessage",
            status=429,
            count=1,
            body={
                "ok": False,
                "error_code": 429,
                "description": "Too Many Requests: retry after 1",
                "parameters": {"retry_after": 1},
            },
        )
        await env.pay(order_id)  # the provider calls back
        await env.delivered_message(BUYER, order_id)

        # A second order paid without a callback: the poll job finds it.
        second = await env.buy(BUYER2)
        await env.pay(second, callback=False)
        job = env.app.scheduler.get_job("payment_poll")
        assert job is not None
        await job.func()  # the scheduled wrapper itself: success time recorded
        await env.wait_status(second, "delivered")

        after = await scrape(env)
        confirmed = "aitoken_payments_confirmed_total"
        assert value(after, confirmed, provider="kryptoexpress", source="callback") == 1
        assert value(after, confirmed, provider="kryptoexpress", source="poll") == 1
        assert value(after, confirmed, provider="kryptoexpress", source="check") == 0
        assert value(after, "aitoken_orders", status="delivered") == 2
        assert value(after, "aitoken_orders", status="awaiting_payment") == 0
        assert value(after, "aitoken_paid_to_delivered_seconds_count") == 2
        assert value(after, "aitoken_paid_to_delivered_seconds_bucket", le="+Inf") == 2
        assert value(after, "aitoken_telegram_429_total", method="sendMessage") == 1
        errors = "aitoken_external_errors_total"
        assert value(after, errors, service="openrouter", kind="http_503") == 1
        assert value(after, "aitoken_job_last_success_timestamp_seconds", job="payment_poll") > (
            time.time() - 60
        )
        # The funds figures are the ledger's, consistent with each other.
        balance = value(after, "aitoken_openrouter_balance_usd")
        committed = value(after, "aitoken_openrouter_committed_usd")
        assert balance > 0 and committed > 0
        assert abs(value(after, "aitoken_openrouter_headroom_usd") - (balance - committed)) < 1e-6
        assert value(after, "aitoken_outbox_pending") >= 0


async def test_metrics_token_is_required_when_set(tmp_path: Path) -> None:
    async with running_env(tmp_path, metrics_token="s3cret-token") as env:
        url = f"{base_url(env)}/metrics"
        async with httpx.AsyncClient(timeout=10) as http:
            bare = await http.get(url)
            wrong = await http.get(url, headers={"Authorization": "Bearer s3cret-tokeN"})
            basic = await http.get(url, headers={"Authorization": "Basic s3cret-token"})
            health = await http.get(f"{base_url(env)}/healthz")
        assert [bare.status_code, wrong.status_code, basic.status_code] == [401, 401, 401]
        assert "aitoken_" not in bare.text
        assert health.status_code == 200  # liveness needs no token
        samples = await scrape(env, token="s3cret-token")
        assert value(samples, "aitoken_state_scrape_ok") == 1


async def test_a_forged_callback_is_counted_as_rejected(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        url = env.app.settings.callback_url("kryptoexpress")
        assert url is not None
        async with httpx.AsyncClient(timeout=10) as http:
            forged = await http.post(url, content=b"{}", headers={"X-Signature": "0" * 128})
        assert forged.status_code == 401
        samples = await scrape(env)
        rejected = "aitoken_callbacks_rejected_total"
        assert value(samples, rejected, provider="kryptoexpress", reason="bad_signature") == 1


async def test_readyz_is_200_then_names_the_database_when_it_is_gone(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        status, body = await ready(env)
        assert status == 200, body
        assert body["checks"] == {
            "database": "ok",
            "scheduler": "ok",
            "outbox": "ok",
            "telegram": "ok",
        }
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{base_url(env)}/healthz")).status_code == 200

        # The database becomes unreachable (every session now opens on a dead server).
        gone = create_async_engine(UNREACHABLE_DB)
        env.app.sessions.configure(bind=gone)
        try:
            status, body = await ready(env)
            samples = await scrape(env)
            async with httpx.AsyncClient(timeout=10) as http:
                alive = await http.get(f"{base_url(env)}/healthz")
        finally:
            env.app.sessions.configure(bind=env.app.engine)
            await gone.dispose()
        assert status == 503
        assert "database" in body["failing"]
        assert body["checks"]["database"] != "ok"
        assert body["checks"]["scheduler"] == "ok"
        # The scrape still answers, saying its database figures are missing.
        assert value(samples, "aitoken_state_scrape_ok") == 0
        assert ("aitoken_orders", frozenset({("status", "new")})) not in samples
        assert alive.status_code == 200  # liveness: the process answers

        status, body = await ready(env)
        assert status == 200, body


async def test_readyz_names_a_stuck_outbox_and_metrics_show_its_age(tmp_path: Path) -> None:
    async with running_env(tmp_path, ready_outbox_stuck_seconds=300) as env:
        await env.app.outbox.stop()  # the sender is wedged
        async with env.app.sessions() as session, session.begin():
            session.add(
                OutboxMessage(
                    chat_id=BUYER,
                    text="Order #1 delivered",
                    next_attempt_at=utcnow() - timedelta(minutes=10),
                    created_at=utcnow() - timedelta(minutes=11),
                )
            )
        status, body = await ready(env)
        assert status == 503
        assert body["failing"] == ["outbox"]
        assert "300s" in body["checks"]["outbox"]
        samples = await scrape(env)
        assert value(samples, "aitoken_outbox_pending") == 1
        assert value(samples, "aitoken_outbox_oldest_pending_age_seconds") >= 11 * 60


async def test_readyz_names_a_stopped_scheduler(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        env.app.scheduler.shutdown(wait=False)
        status, body = await ready(env)
        assert status == 503
        assert body["failing"] == ["scheduler"]


async def test_readyz_pings_redis_when_configured(tmp_path: Path) -> None:
    async with running_env(tmp_path, redis_url=await redis_url(3)) as env:
        status, body = await ready(env)
        assert status == 200, body
        assert body["checks"]["redis"] == "ok"
    async with running_env(tmp_path, redis_url="redis://127.0.0.1:1/3") as env:
        status, body = await ready(env)
        assert status == 503
        assert body["failing"] == ["redis"]


async def test_telegram_check_tolerates_a_blip_but_not_an_outage(tmp_path: Path) -> None:
    seen = TelegramSeen()
    readiness = Readiness(
        sessions=None,  # type: ignore[arg-type]  # only the telegram check runs here
        scheduler_running=lambda: True,
        telegram=seen,
        telegram_grace=timedelta(seconds=120),
    )
    assert await readiness.answer(readiness.telegram) == "ok"  # no call yet
    seen.failed("network: connection refused")
    assert await readiness.answer(readiness.telegram) == "ok"  # a blip
    assert seen.failing_since is not None
    seen.failing_since -= 121
    reason = await readiness.answer(readiness.telegram)
    assert reason.startswith("no answer from Telegram for 12") and "refused" in reason
    seen.ok()
    assert await readiness.answer(readiness.telegram) == "ok"


# ------------------------------------------------------------------ deploy files
def _compose_check() -> list[str]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    tests = {name: compose["services"][name]["healthcheck"]["test"] for name in BOTS}
    assert tests["bot"] == tests["bot-worker"]
    command: list[str] = tests["bot"]
    assert command[0] == "CMD" and "/readyz" in command[-1]
    return command[1:]


def _dockerfile_check() -> list[str]:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("HEALTHCHECK"))
    command: list[str] = json.loads(line.split(" CMD ", 1)[1])
    assert "/healthz" in command[-1]
    return command


async def _run(command: list[str], port: int) -> int:
    """The container's check, run here against the bot (port 8080 → the test's port)."""
    argv = [sys.executable, *command[1:]] if command[0] == "python" else command
    argv = [arg.replace("8080", str(port)) for arg in argv]
    process = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, "WEB_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


async def test_container_healthchecks_ask_readyz_and_healthz(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        port = env.app.web_port
        assert port is not None
        assert await _run(_compose_check(), port) == 0
        assert await _run(_dockerfile_check(), port) == 0
        env.app.scheduler.shutdown(wait=False)  # not ready, still alive
        assert await _run(_compose_check(), port) == 1
        assert await _run(_dockerfile_check(), port) == 0


def test_every_metric_is_prefixed_and_documented() -> None:
    doc = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    names = set(STATE)
    for family in Metrics().registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        names.add(family.name + suffix)
    assert len(names) >= 15
    for name in names:
        assert name.startswith(PREFIX), name
        assert f"`{name}`" in doc, name
