"""Bot API parameters: query string, JSON, urlencoded or multipart, decoded to JSON types."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sandbox.common import loads
from sandbox.telegram.errors import bad_request
from sandbox.telegram.files import Upload

# Parameters that arrive JSON-serialized in form data (aiogram sends every complex value so).
JSON_FIELDS = frozenset(
    {
        "reply_markup",
        "entities",
        "caption_entities",
        "link_preview_options",
        "reply_parameters",
        "commands",
        "scope",
        "allowed_updates",
        "menu_button",
        "media",
        "message_ids",
    }
)
INT_FIELDS = frozenset(
    {
        "chat_id",
        "from_chat_id",
        "message_id",
        "message_thread_id",
        "reply_to_message_id",
        "offset",
        "limit",
        "timeout",
        "cache_time",
        "max_connections",
        "user_id",
        "width",
        "height",
        "duration",
    }
)
BOOL_FIELDS = frozenset(
    {
        "show_alert",
        "drop_pending_updates",
        "disable_notification",
        "protect_content",
        "allow_sending_without_reply",
        "disable_web_page_preview",
        "has_spoiler",
        "show_caption_above_media",
        "disable_content_type_detection",
        "allow_paid_broadcast",
    }
)


def decode_params(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Bring form/query strings to the types the JSON API would carry."""
    params: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str):
            if key in JSON_FIELDS:
                try:
                    value = loads(value)
                except ValueError:
                    raise bad_request(f"can't parse {key} JSON object") from None
            elif key in INT_FIELDS and re.fullmatch(r"-?\d+", value.strip()):
                value = int(value)
            elif key in BOOL_FIELDS:
                value = value.strip().lower() in ("true", "1")
        params[key] = value
    return params


async def read_params(request: web.Request) -> dict[str, Any]:
    """Query string + JSON, urlencoded or multipart body, with uploads resolved."""
    raw: dict[str, Any] = dict(request.query)
    uploads: dict[str, Upload] = {}
    if request.can_read_body:
        ctype = request.content_type
        if ctype == "application/json":
            body = await request.read()
            try:
                data = loads(body) if body.strip() else {}
            except ValueError:
                raise bad_request("can't parse JSON request body") from None
            if not isinstance(data, dict):
                raise bad_request("JSON request body must be an object")
            raw.update(data)
        elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    uploads[key] = Upload(value.filename, value.content_type, value.file.read())
                elif isinstance(value, bytes | bytearray):
                    raw[key] = bytes(value).decode()
                else:
                    raw[key] = value
    params = decode_params(raw)
    # aiogram sends files as `photo=attach://<field>` plus a file field named <field>.
    referenced: set[str] = set()
    for key, value in list(params.items()):
        if isinstance(value, str) and value.startswith("attach://"):
            name = value.removeprefix("attach://")
            if name in uploads:
                params[key] = uploads[name]
                referenced.add(name)
    for name, upload in uploads.items():
        if name not in referenced:
            params[name] = upload
    return params


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None
