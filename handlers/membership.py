"""The buyer blocked or unblocked the bot: Telegram says so with ``my_chat_member``.

A blocked buyer gets nothing from the outbox (broadcasts, alerts, reminders skip them)
until they unblock; the outbox also learns it from a 403, but only when it next sends.
"""

from __future__ import annotations

import logging

from aiogram.filters import KICKED, MEMBER, ChatMemberUpdatedFilter
from aiogram.types import ChatMemberUpdated

from handlers.spec import RouterSpec
from services.users import UserService

router = RouterSpec(__name__)
log = logging.getLogger(__name__)


@router.my_chat_member(ChatMemberUpdatedFilter(member_status_changed=KICKED))
async def blocked(event: ChatMemberUpdated, users: UserService) -> None:
    await users.set_reachable(event.from_user.id, False)
    log.info("buyer_blocked_bot user=%s", event.from_user.id)


@router.my_chat_member(ChatMemberUpdatedFilter(member_status_changed=MEMBER))
async def unblocked(event: ChatMemberUpdated, users: UserService) -> None:
    await users.set_reachable(event.from_user.id, True)
    log.info("buyer_unblocked_bot user=%s", event.from_user.id)
