// Renders Telegram message records (plain text + entities) as DOM, never as HTML strings:
// the text comes from the bot, so nothing in it can become markup here.
"use strict";

const ENTITY_TAGS = {
  bold: "b", italic: "i", underline: "u", strikethrough: "s", code: "code",
  pre: "pre", blockquote: "blockquote", expandable_blockquote: "blockquote",
};

// Entity offsets count UTF-16 code units, exactly like JavaScript string indices.
function renderEntities(text, entities, start, end) {
  const out = document.createDocumentFragment();
  const sorted = [...entities].sort((a, b) => a.offset - b.offset || b.length - a.length);
  let pos = start;
  for (let i = 0; i < sorted.length; i++) {
    const e = sorted[i];
    const eEnd = e.offset + e.length;
    if (e.offset < pos || eEnd > end) continue; // overlaps a sibling: already rendered
    if (e.offset > pos) out.append(text.slice(pos, e.offset));
    const inner = sorted.filter((c, j) => j !== i && c.offset >= e.offset && c.offset + c.length <= eEnd);
    const el = entityElement(e, text.slice(e.offset, eEnd));
    el.append(renderEntities(text, inner, e.offset, eEnd));
    out.append(el);
    pos = eEnd;
  }
  if (pos < end) out.append(text.slice(pos, end));
  return out;
}

function entityElement(entity, content) {
  if (entity.type === "text_link" || entity.type === "url") {
    const a = document.createElement("a");
    a.href = entity.type === "url" ? content : entity.url;
    a.target = "_blank";
    a.rel = "noopener";
    return a;
  }
  if (entity.type === "spoiler") {
    const span = document.createElement("span");
    span.className = "spoiler";
    span.title = "Click to reveal";
    span.addEventListener("click", () => span.classList.add("revealed"));
    return span;
  }
  return document.createElement(ENTITY_TAGS[entity.type] || "span");
}

function timeOf(unix) {
  const d = new Date(unix * 1000);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// One message bubble (+ its inline keyboard). onPress(button) handles callback buttons.
function renderMessage(record, onPress) {
  const wrap = document.createElement("div");
  wrap.className = "msg " + (record.from_bot ? "in" : "out");
  wrap.dataset.messageId = record.message_id;
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  if (record.photo_file_id) {
    const img = document.createElement("img");
    img.className = "photo";
    img.alt = "photo";
    img.src = "/api/files/" + encodeURIComponent(record.photo_file_id);
    bubble.append(img);
  }
  if (record.document_name) {
    const doc = document.createElement("div");
    doc.className = "document";
    doc.textContent = "📄 " + record.document_name;
    bubble.append(doc);
  }
  const text = document.createElement("div");
  text.className = "text";
  // Like Telegram's apps: a message written right to left (Persian) is laid out so.
  text.dir = "auto";
  const plain = record.plain || "";
  text.append(renderEntities(plain, record.entities || [], 0, plain.length));
  bubble.append(text);
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = (record.edited ? "edited " : "") + timeOf(record.date);
  bubble.append(meta);
  wrap.append(bubble);
  const rows = record.buttons || [];
  if (rows.length) {
    const kb = document.createElement("div");
    kb.className = "keyboard";
    for (const row of rows) {
      const r = document.createElement("div");
      r.className = "kb-row";
      for (const button of row) {
        const b = document.createElement(button.url ? "a" : "button");
        b.className = "kb-button";
        b.dir = "auto";
        b.textContent = button.text;
        if (button.url) {
          b.href = button.url;
          b.target = "_blank";
          b.rel = "noopener";
        } else {
          b.type = "button";
          b.addEventListener("click", () => onPress(record, button, b));
        }
        r.append(b);
      }
      kb.append(r);
    }
    wrap.append(kb);
  }
  return wrap;
}

// Brings a chat container in line with a snapshot: new messages appended, edited ones
// replaced in place, deleted ones removed (as Telegram does).
function syncChat(container, records, onPress) {
  const nearBottom = container.scrollHeight - container.scrollTop - container.clientHeight < 80;
  const seen = new Map([...container.querySelectorAll(".msg")].map((el) => [el.dataset.messageId, el]));
  let added = false;
  for (const record of records) {
    const id = String(record.message_id);
    const old = seen.get(id);
    if (record.deleted) {
      if (old) old.remove();
      continue;
    }
    const signature = JSON.stringify([record.plain, record.entities, record.buttons, record.edited, record.photo_file_id]);
    if (old && old.dataset.signature === signature) continue;
    const el = renderMessage(record, onPress);
    el.dataset.signature = signature;
    if (old) old.replaceWith(el);
    else { container.append(el); added = true; }
  }
  const empty = container.querySelector(".empty");
  if (empty && container.querySelector(".msg")) empty.remove();
  if (added || nearBottom) container.scrollTop = container.scrollHeight;
}

// The answer being generated (sendMessageDraft): a live bubble at the end of the chat,
// with ⏹ when the bot allows stopping; it goes away when the final message arrives.
function syncDraft(container, draft, onStop) {
  let el = container.querySelector(".draft");
  if (!draft) {
    if (el) el.remove();
    return;
  }
  if (!el) {
    el = document.createElement("div");
    el.className = "msg in draft";
    container.append(el);
  }
  const text = document.createElement("div");
  text.className = "text";
  text.dir = "auto";
  text.append(draft.plain ? renderEntities(draft.plain, draft.entities || [], 0, draft.plain.length) : "Thinking…");
  const parts = [text];
  if (draft.can_stop && !draft.stopped) {
    const stop = document.createElement("button");
    stop.className = "stop";
    stop.textContent = "⏹ Stop";
    stop.addEventListener("click", onStop);
    parts.push(stop);
  }
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.append(...parts);
  el.replaceChildren(bubble);
  container.append(el); // stays last, under any message sent meanwhile
  container.scrollTop = container.scrollHeight;
}
