"""Dockerfile, .dockerignore and docker-compose.yml keep what the deployment relies on.

No Docker engine runs on our machines: these files are never built or started here.
What is checked is their structure (below) and, when Debian's ``docker-compose`` is
installed (``.ci/run`` installs it; with ``CI=true`` it must be), that Compose accepts
the file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from bot.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
BOTS = ("bot", "bot-worker")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in lines
        if line and not line.startswith("#")
    ]


# ----------------------------------------------------------------- Dockerfile
def test_dockerfile_slim_python_311_cached_requirements_non_root_readme_command() -> None:
    steps = _dockerfile()
    kinds = [kind for kind, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")

    # requirements.txt alone, installed, and only then the code: a code change keeps
    # the dependency layer cached.
    copy_reqs = steps.index(("COPY", "requirements.txt ."))
    install = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "-r requirements.txt" in a)
    copy_all = steps.index(("COPY", ". ."))
    assert copy_reqs < install < copy_all

    users = [args for kind, args in steps if kind == "USER"]
    assert users and users[-1] not in {"root", "0", "0:0"}
    assert kinds.index("USER") < kinds.index("CMD")

    cmd = next(args for kind, args in steps if kind == "CMD")
    command = " ".join(yaml.safe_load(cmd))  # exec form: a JSON list
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    real_run = readme.split("## Running for real", 1)[1].split("\n## ", 1)[0]
    assert f"`{command}`" in real_run, command
    assert command == "python run.py"

    env = " ".join(args for kind, args in steps if kind == "ENV")
    assert "WEB_HOST=0.0.0.0" in env  # reachable from outside the container


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    for entry in (".env", ".git", ".venv", "data", "*.db"):
        assert entry in ignored, entry
    assert "requirements.txt" not in ignored and "run.py" not in ignored


# ------------------------------------------------------------- docker-compose
def test_compose_services_restart_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"bot", "bot-worker", "postgres", "redis"}
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
    for name in ("postgres", "redis"):
        check = services[name]["healthcheck"]
        assert check["test"] and check["interval"] and check["retries"] >= 3, name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][-1] == "ping"
    for name in BOTS:
        depends = services[name]["depends_on"]
        assert depends == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }, name


def test_compose_volumes_are_named_and_declared(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    mounts = {
        "postgres": "/var/lib/postgresql/data",
        "redis": "/data",
        "bot": "/app/data",
        "bot-worker": "/app/data",
    }
    for name, target in mounts.items():
        volumes = compose["services"][name]["volumes"]
        sources = [v.split(":")[0] for v in volumes if v.split(":")[1] == target]
        assert len(sources) == 1, (name, volumes)
        assert sources[0] in declared, f"{name}: {sources[0]} is not a named volume"


def test_compose_bot_points_at_its_services_with_contract_names(compose: dict[str, Any]) -> None:
    services = compose["services"]
    postgres_env = services["postgres"]["environment"]
    for name in BOTS:
        bot = services[name]
        assert bot["env_file"].endswith(".env}") or bot["env_file"] == ".env"
        env = bot["environment"]
        # Only SPEC §7 names: a typo here would be silently ignored by the bot.
        assert set(env) <= {field.upper() for field in Settings.model_fields}, set(env)
        # The password is Compose's ${POSTGRES_PASSWORD:?...}: the same as PostgreSQL's.
        password = re.fullmatch(r".*://[^:]+:(\$\{[^}]+\})@.*", env["DATABASE_URL"])
        assert password and password.group(1) == postgres_env["POSTGRES_PASSWORD"]
        database = urlsplit(env["DATABASE_URL"].replace(password.group(1), "secret"))
        assert database.scheme == "postgresql+asyncpg"
        assert database.hostname == "postgres" and database.port == 5432
        assert database.username == postgres_env["POSTGRES_USER"]
        assert database.path == "/" + postgres_env["POSTGRES_DB"]
        assert postgres_env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
        assert urlsplit(env["REDIS_URL"]).hostname == "redis"
        assert env["WEB_HOST"] == "0.0.0.0"  # noqa: S104 - inside the container, on purpose
        settings = load_settings(
            database_url=env["DATABASE_URL"],
            redis_url=env["REDIS_URL"],
            web_host=env["WEB_HOST"],
            web_port=env["WEB_PORT"],
        )
        assert settings.web_port == 8080

    bot, worker = services["bot"], services["bot-worker"]
    assert bot["command"] == ["python", "run.py"]
    assert "profiles" not in bot
    published = [p.rsplit(":", 1) for p in bot["ports"]]
    assert [container for _, container in published] == [bot["environment"]["WEB_PORT"]]
    assert worker["command"] == ["python", "run.py", "--worker"]
    assert worker["profiles"] == ["replica"]
    assert "ports" not in worker  # one published entry point; the proxy targets `bot`


def test_env_example_documents_compose_variables() -> None:
    example = (REPO / ".env.example").read_text(encoding="utf-8")
    names = set(re.findall(r"^([A-Z_]+)=", example, flags=re.MULTILINE))
    compose_text = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    substituted = set(re.findall(r"\$\{([A-Z_]+)", compose_text))
    assert substituted - {"BOT_ENV_FILE"} <= names, substituted - names


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        reason = "docker-compose is not installed (apt-get install -y docker-compose)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must validate docker-compose.yml, but {reason}")
        pytest.skip(reason)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "POSTGRES_PASSWORD": "ci",
        "BOT_ENV_FILE": ".env.example",
    }

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - a fixed command, no shell
            [binary, *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    result = compose("--profile", "replica", "config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == {"bot", "bot-worker", "postgres", "redis"}
    bot_env = resolved["services"]["bot"]["environment"]
    assert bot_env["DATABASE_URL"] == "postgresql+asyncpg://bot:ci@postgres:5432/bot"
    # Without the password Compose refuses to start anything, naming it.
    del env["POSTGRES_PASSWORD"]
    refused = compose("config", "-q")
    assert refused.returncode != 0 and "POSTGRES_PASSWORD" in refused.stderr
