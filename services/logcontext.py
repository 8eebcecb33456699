"""Log context and the log line formats (``LOG_FORMAT``: ``text`` or ``json``).

Who a line is about (``update_id``, ``user_id``, ``order_id``) is bound in a context
variable, not passed to every call: ``bind`` opens a scope for a block (an update, a
payment report, a delivery attempt) and ``annotate`` adds what the block learns later
(the order a payment belongs to) to the innermost scope. asyncio copies the context into
the tasks a scope starts, so their lines carry the same ids. Only ids are bound: the
formatter prints the message and these fields, never the arguments' secrets (no call
site logs a key or token; tests/test_json_logs.py checks a whole purchase).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO

Field = int | str

# None outside any scope, so ``annotate`` there changes nothing global.
_scope: ContextVar[dict[str, Field] | None] = ContextVar("log_scope", default=None)


@contextmanager
def bind(**fields: Field | None) -> Iterator[None]:
    """Fields on every line logged in this block (and tasks it starts); None is skipped."""
    token = _scope.set({**(_scope.get() or {}), **_known(fields)})
    try:
        yield
    finally:
        _scope.reset(token)


def annotate(**fields: Field | None) -> None:
    """Add fields to the innermost ``bind`` scope (a no-op outside one)."""
    scope = _scope.get()
    if scope is not None:
        scope.update(_known(fields))


def bound() -> dict[str, Field]:
    return dict(_scope.get() or {})


def _known(fields: dict[str, Field | None]) -> dict[str, Field]:
    return {name: value for name, value in fields.items() if value is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the bound ids, exc."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **bound(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(log_format: str, level: int, stream: IO[str] | None = None) -> None:
    """Root logging to ``stream`` (stderr) in the chosen format; replaces earlier setup."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
