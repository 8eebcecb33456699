# AI Token Bot: the real run (`python run.py`) in a slim image, as a non-root user.
# docker-compose.yml wires it to PostgreSQL and Redis; settings come from the environment.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Requirements first: this layer is rebuilt only when requirements.txt changes, not on
# every code edit. Every pinned dependency ships wheels for CPython 3.11 on Linux, so
# no compiler is needed.
COPY requirements.txt .
RUN pip install -r requirements.txt

# The code stays owned by root (the bot cannot rewrite itself); only data/ (the SQLite
# default and BACKUP_DIR if pointed there) is the bot's.
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home bot
COPY . .
RUN mkdir -p /app/data && chown bot:bot /app/data
USER bot

# Inside a container the HTTP server (provider callbacks, webhook) must listen on all
# interfaces; the published port decides who can reach it.
ENV WEB_HOST=0.0.0.0 \
    WEB_PORT=8080
EXPOSE 8080

# Liveness: the process answers (/healthz). An orchestrator that replaces unhealthy
# containers must not do so because PostgreSQL or Telegram is down, so readiness
# (/readyz) is left to the load balancer and to docker-compose.yml's check. No curl in
# the slim image: Python's own urllib asks (it raises, exit 1, on anything but 2xx).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WEB_PORT', '8080'), timeout=4)"]

CMD ["python", "run.py"]
