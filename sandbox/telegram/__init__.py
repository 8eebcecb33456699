"""Telegram Bot API emulator: enough of https://core.telegram.org/bots/api to run the real bot.

The bot talks to it exactly as to Telegram, through
``AiohttpSession(api=TelegramAPIServer.from_base(url))``: ``{url}/bot{token}/{method}``.
Every answer is ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N,
"description": "..."}`` with HTTP status N, using Telegram's own error texts so that
aiogram raises the same exceptions it raises in production (TelegramBadRequest,
TelegramForbiddenError, TelegramRetryAfter, TelegramConflictError, ...).

Bot API methods: getMe, getUpdates, setWebhook, deleteWebhook, getWebhookInfo, sendMessage,
sendPhoto, sendDocument, editMessageText, editMessageCaption, editMessageReplyMarkup,
deleteMessage, deleteMessages, answerCallbackQuery, setMyCommands, getMyCommands,
deleteMyCommands, setChatMenuButton, getChatMenuButton, sendChatAction, getChat, getFile,
set/getMyName, set/getMyDescription, set/getMyShortDescription, close, logOut.
Files uploaded by the bot are downloadable at ``/file/bot{token}/{file_path}``.

Test steering lives under ``/control/`` (JSON, never faulted, never in the event log):

- ``POST /control/chats`` ``{chat_id, type, title?, first_name?, username?, is_forum?}``
- ``POST /control/updates/message`` ``{user_id, text, first_name?, username?,
  language_code?, chat_id?, photo?}`` -> ``{update_id, message_id, queued}`` (``photo``:
  the user sends a picture, ``text`` its caption)
- ``POST /control/updates/callback`` ``{user_id, message_id, data, chat_id?}`` ->
  ``{update_id, callback_query_id, queued}`` (data may be forged)
- ``POST /control/updates/press`` ``{user_id, text, chat_id?, message_id?, match?}`` ->
  ``{update_id, callback_query_id, message_id, data, queued}``; 404 lists the buttons
- ``GET /control/chats/{chat_id}/messages`` -> message records in send order (header
  ``X-Sandbox-Seq`` carries the global seq of the snapshot)
- ``GET /control/chats/{chat_id}/wait?after_seq=N&timeout=S`` -> ``{seq, events}``
- ``GET /control/events?after_seq=N&chat_id=C`` -> list of Bot API call events
- ``GET /control/callback_answers`` -> answered callback queries;
  ``GET /control/callback_answers/{id}?timeout=S`` long-polls one query until answered
- ``GET /control/files/{file_id}`` -> the uploaded bytes
- ``POST /control/users/{user_id}/block`` ``{blocked?: true, reason?: "blocked"|"deactivated"}``:
  blocking and unblocking send the bot a ``my_chat_member`` update (``kicked`` / ``member``),
  as Telegram does; so does a blocked user who writes again (before the message)
- ``POST /control/updates/message`` with ``as_chat: true`` (and a group ``chat_id``): an
  anonymous admin writing on behalf of the group (``sender_chat`` = the group, ``from`` =
  @GroupAnonymousBot)
- ``POST|GET /control/callback_queries`` ``{max_age}``: answerCallbackQuery for a query older
  than ``max_age`` seconds (default 15, Telegram's observed limit) fails "query is too old"
- ``POST /control/chats/{chat_id}/upgrade`` ``{new_chat_id?, user_id?, updates?}`` -> the
  new supergroup: a basic group becomes a supergroup with a new id (``-100…``); the service
  messages ``migrate_to_chat_id`` (old group) and ``migrate_from_chat_id`` (new one) are
  delivered as updates. From then on every call naming the old id answers 400 "group chat
  was upgraded to a supergroup chat" with ``parameters.migrate_to_chat_id``, as Telegram
  does (aiogram: TelegramMigrateToChat)
- ``POST /control/chats/{chat_id}/topics`` ``{name, message_thread_id?}`` ->
  ``{message_thread_id, name}``: a topic opened in a forum supergroup;
  ``DELETE /control/chats/{chat_id}/topics/{thread_id}`` deletes it. sendMessage,
  sendPhoto and sendDocument take ``message_thread_id`` of an open topic; a deleted or
  unknown topic, the General topic (1), or a chat without topics answers 400 "message
  thread not found", as Telegram does
- setMyCommands keeps one list per (scope, language): scopes are checked as Telegram does
  (a chat scope naming an unknown chat is "chat not found"); descriptions are kept per
  language within Telegram's 512 / 120 characters. ``GET /control/state`` lists both
  (``commands``, ``bot_texts``) and each chat's open ``topics``
- ``GET /control/state``, ``POST /control/reset``, ``POST|GET|DELETE /control/faults``
- ``POST /control/limits`` ``{enforce, global_per_second?, per_chat_per_second?,
  per_chat_burst?, group_per_minute?, group_window?, retry_after?}`` -> the limits now in
  force; ``GET /control/limits``; ``GET /control/rate_stats`` -> what was sent when (below)

Flood control (off unless a test turns it on with ``/control/limits``). Telegram documents
about 30 messages/s overall, about 1/s per chat "with short bursts", and 20/min per group,
and answers 429 with ``parameters.retry_after`` beyond them. Modelled here, for the send
methods (sendMessage, sendPhoto, sendDocument; edits and callback answers are free), as:

- overall: at most ``global_per_second`` (30) sends in any sliding 1-second window;
- per chat: a token bucket of ``per_chat_burst`` (3) tokens refilled at
  ``per_chat_per_second`` (1/s), i.e. a burst of 3 and then 1/s;
- group/supergroup chats, additionally: at most ``group_per_minute`` (20) sends in any
  sliding ``group_window`` (60 s; tests shorten it) window.

Every admitted attempt counts (as with Telegram, a send that then fails still spent its
slot); a refused one does not. ``retry_after`` is the given number, else the whole seconds
until the limit frees. ``/control/rate_stats`` reports successful sends per calendar second
overall and per chat, the maxima over sliding windows, and the number of 429s answered.

Emulator simplifications, on purpose:

- Flood control is off by default (above); a 429 can also be injected as a fault, and the
  event log (``at`` per call, failed and faulted calls included) lets a test prove compliance.
- Webhook URLs may be plain ``http://`` on loopback (Telegram demands HTTPS); a failed
  delivery is retried after ``webhook_retry_delays`` and then dropped (Telegram keeps
  retrying for up to a day).
- MarkdownV2/Markdown are reduced to a plain rendering with a reserved-character check;
  only HTML yields ``entities``.
- Text limits (4,096 for texts, 1,024 for captions) count the visible text after entity
  parsing in UTF-16 code units, as Telegram does; markup does not count.
- A bare "&" is kept literally and a ";" after a reference is optional, as in tdlib; the
  emulator does not check link URLs (Telegram drops a text_link whose URL it rejects).
- Any upload is accepted as a photo; PNG/JPEG/GIF headers give the real width/height.

The package, bottom up (each module imports only those above it):

- ``limits``: message sizes, callback data, long poll, flood control
- ``errors``: ``BotApiError`` and Telegram's error texts
- ``entities``: HTML and MarkdownV2 parsing, UTF-16 lengths
- ``files``: uploads and stored files
- ``model``: chats, users, messages, call events, callback queries, webhook
- ``params``: decoding Bot API parameters (JSON, form, multipart)
- ``state``: the bot's state, the call log and shared helpers (``EmulatorState``)
- ``delivery``: the update queue and the webhook sender
- ``botapi``: the Bot API methods
- ``control``: the ``/control/`` routes that read what the bot did and set the knobs
- ``users``: the ``/control/`` routes that play the user (write, press, block, upgrade)
- ``emulator``: ``TelegramEmulator``, the aiohttp app joining them
"""

from sandbox.telegram.emulator import TelegramEmulator
from sandbox.telegram.entities import EntityParseError, parse_html, parse_markdown_v2, utf16_len
from sandbox.telegram.model import StoredMessage, inline_buttons

__all__ = [
    "EntityParseError",
    "StoredMessage",
    "TelegramEmulator",
    "inline_buttons",
    "parse_html",
    "parse_markdown_v2",
    "utf16_len",
]
