"""JSON with exact numbers: Decimals in, Decimals out, never through float."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any


def plain_number(value: Decimal) -> str:
    """Decimal as a JSON number without exponent and without trailing zeros."""
    text = format(value.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def dumps(payload: Any) -> str:
    """Compact JSON with Decimals written as exact plain numbers.

    Python's ``json`` can only write binary floats (``1.2e-05``); services written in
    other languages send ``0.000012``, and an amount must never pass through float.
    """
    if isinstance(payload, Decimal):
        return plain_number(payload)
    if isinstance(payload, dict):
        items = (f"{json.dumps(str(k), ensure_ascii=False)}:{dumps(v)}" for k, v in payload.items())
        return "{" + ",".join(items) + "}"
    if isinstance(payload, list | tuple):
        return "[" + ",".join(dumps(v) for v in payload) + "]"
    return json.dumps(payload, ensure_ascii=False)


def loads(raw: bytes | str) -> Any:
    """Parse JSON keeping every number with a fraction as Decimal.

    Malformed JSON raises ValueError, and so does JSON nested deeper than Python's
    recursion limit (``[[[[…]]]]`` fits thousands of levels into a few kilobytes)."""
    try:
        return json.loads(raw, parse_float=Decimal)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def jsonable(value: Any) -> Any:
    """A provider payload made storable in a JSON column: Decimals as exact text."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
