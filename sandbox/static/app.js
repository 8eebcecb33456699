// The sandbox web chat: wiring of the page to /api (see sandbox/webchat.py).
"use strict";

const $ = (id) => document.getElementById(id);
// assets: the asset picked per Crypto Pay invoice, kept across the wallet's re-renders.
const state = { buyer: null, admin: null, language: "en", commands: [], stream: null, assets: {} };

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!response.ok) {
    const text = await response.text();
    toast(text || response.statusText);
    throw new Error(text);
  }
  return response.json();
}

function toast(text, sticky) {
  const el = $("toast");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (el.hidden = true), sticky ? 6000 : 2500);
}

// ------------------------------------------------------------------ chats
async function press(record, button, el) {
  el.classList.add("pressed");
  const chatId = el.closest("[data-chat]").dataset.chat === "admin" ? state.admin.chat_id : state.buyer;
  try {
    const answer = await api("POST", "/api/press", {
      chat_id: chatId, message_id: record.message_id, data: button.callback_data,
    });
    if (answer.error) toast(answer.error);
    else if (answer.text) toast(answer.text, answer.show_alert);
  } finally {
    el.classList.remove("pressed");
  }
}

async function send(text) {
  await api("POST", "/api/send", { buyer: state.buyer, text });
}

function renderCommands() {
  const menu = $("commands");
  menu.replaceChildren();
  for (const c of state.commands) {
    const item = document.createElement("button");
    item.type = "button";
    item.className = "command";
    item.dataset.command = c.command;
    const name = document.createElement("b");
    name.textContent = "/" + c.command;
    item.append(name, " ", c.description);
    item.addEventListener("click", () => { menu.hidden = true; send("/" + c.command); });
    menu.append(item);
  }
}

// ------------------------------------------------------------------ panes
function button(label, onClick, cls) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (cls) b.className = cls;
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { await onClick(); } finally { b.disabled = false; }
  });
  return b;
}

// One card per invoice, either rail; the buttons make that rail's emulator act as the
// provider does (see sandbox/webchat_wallet.py).
function renderWallet(invoices) {
  const box = $("wallet");
  box.replaceChildren();
  if (!invoices.length) {
    box.innerHTML = '<p class="empty">No invoices yet.</p>';
    return;
  }
  for (const inv of invoices) {
    const cryptoPay = inv.provider === "cryptopay";
    const card = document.createElement("div");
    card.className = "invoice " + inv.status;
    card.dataset.orderId = inv.order_id;
    card.dataset.provider = inv.provider;
    const head = document.createElement("div");
    head.className = "invoice-head";
    // A Crypto Pay invoice is priced in USD: its crypto side exists once it is paid.
    head.textContent = cryptoPay
      ? `Order #${inv.order_id} · $${inv.fiat} in ${inv.currency}` +
        (inv.amount ? ` (${inv.amount} ${inv.currency})` : "")
      : `Order #${inv.order_id} · ${inv.amount} ${inv.currency} ($${inv.fiat})`;
    const rail = document.createElement("span");
    rail.className = "rail";
    rail.textContent = cryptoPay ? "Crypto Pay" : "KryptoExpress";
    const status = document.createElement("span");
    status.className = "status";
    status.textContent = inv.status.replace("_", " ");
    head.append(rail, status);
    const figures = document.createElement("div");
    figures.className = "hint";
    figures.textContent = cryptoPay
      ? (inv.paid ? `paid ${inv.amount} ${inv.currency} in @CryptoBot` : "unpaid in @CryptoBot") +
        (inv.expired ? " · expired at the provider" : "")
      : `received ${inv.received} · missing ${inv.missing}` +
        (inv.paid ? " · paid" : "") + (inv.expired ? " · expired at the provider" : "");
    card.append(head, figures);
    if (!inv.paid && !(cryptoPay && inv.expired)) {
      const path = `/api/wallet/${inv.provider}/${inv.payment_id}`;
      const act = (action, body) => () => api("POST", `${path}/${action}?buyer=${state.buyer}`, body && body());
      const actions = document.createElement("div");
      actions.className = "row";
      if (cryptoPay) {
        // The buyer picks the asset in @CryptoBot among those the invoice accepts.
        const asset = document.createElement("select");
        asset.className = "asset";
        asset.setAttribute("aria-label", "asset to pay in");
        for (const code of inv.assets) {
          const option = document.createElement("option");
          option.value = option.textContent = code;
          asset.append(option);
        }
        const key = `${inv.provider}:${inv.payment_id}`;
        if (inv.assets.includes(state.assets[key])) asset.value = state.assets[key];
        asset.addEventListener("change", () => { state.assets[key] = asset.value; });
        actions.append(
          asset,
          button("Pay", act("pay", () => ({ asset: asset.value })), "primary"),
          button("Let it expire", act("expire")),
        );
      } else {
        actions.append(
          button("Pay in full", act("pay_full"), "primary"),
          button("Pay half", act("pay_partial")),
          button("Pay after expiry", act("pay_late")),
          button("Let it expire", act("expire")),
        );
      }
      card.append(actions);
    }
    box.append(card);
  }
}

function renderOpenRouter(account) {
  const credits = $("credits");
  if (document.activeElement !== credits) credits.value = account.total_credits;
  $("usage").textContent = `used $${account.total_usage}`;
  const body = $("keys");
  body.replaceChildren();
  if (!account.keys.length) {
    body.innerHTML = '<tr><td colspan="4" class="empty">No keys yet.</td></tr>';
    return;
  }
  for (const key of account.keys) {
    const tr = document.createElement("tr");
    for (const value of [key.name, key.limit === null ? "∞" : "$" + key.limit, "$" + key.usage]) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.append(td);
    }
    const td = document.createElement("td");
    const amount = document.createElement("input");
    amount.size = 4;
    amount.value = "0.50";
    amount.setAttribute("aria-label", "amount to spend");
    td.append("$", amount, button("Spend", () =>
      api("POST", `/api/openrouter/keys/${key.hash}/spend`, { amount: amount.value })));
    tr.append(td);
    body.append(tr);
  }
}

// ------------------------------------------------------------------ live feed
function connect() {
  if (state.stream) state.stream.close();
  const stream = new EventSource(`/api/stream?buyer=${state.buyer}`);
  stream.addEventListener("chat", (event) => {
    const data = JSON.parse(event.data);
    const box = data.chat_id === state.admin.chat_id ? $("admin-chat") : $("chat");
    syncChat(box, data.messages, press);
    syncDraft(box, data.draft, () => api("POST", `/api/stop?buyer=${state.buyer}`));
  });
  stream.addEventListener("panels", (event) => {
    const data = JSON.parse(event.data);
    renderWallet(data.wallet);
    renderOpenRouter(data.openrouter);
  });
  state.stream = stream;
}

async function selectBuyer(buyer) {
  const config = await api("GET", `/api/config?buyer=${buyer}`);
  state.buyer = config.buyer;
  state.admin = config.admin;
  state.language = config.language;
  state.commands = config.commands.length ? config.commands : [
    "start", "buy", "quota", "orders", "lang", "help", "cancel",
  ].map((command) => ({ command, description: "" }));
  $("language").replaceChildren(
    ...config.languages.map((l) => {
      const option = document.createElement("option");
      option.value = l.code;
      option.textContent = l.name;
      return option;
    }),
  );
  $("language").value = state.language;
  $("name").value = config.buyers.find((b) => b.id === state.buyer).name;
  const seg = $("buyers");
  seg.replaceChildren();
  for (const b of config.buyers) {
    const el = button(b.name, () => selectBuyer(b.id), b.id === state.buyer ? "active" : "");
    el.dataset.buyer = b.id;
    seg.append(el);
  }
  renderCommands();
  $("chat").replaceChildren();
  $("admin-chat").replaceChildren();
  connect();
}

// ------------------------------------------------------------------ start
$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  $("text").value = "";
  await send(text);
});
$("menu-button").addEventListener("click", () => { $("commands").hidden = !$("commands").hidden; });
$("admin-composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("admin-text").value.trim();
  if (!text) return;
  $("admin-text").value = "";
  await api("POST", "/api/send", { admin: true, text });
});
$("language").addEventListener("change", async () => {
  await api("POST", "/api/language", { buyer: state.buyer, language: $("language").value });
  const config = await api("GET", `/api/config?buyer=${state.buyer}`);
  state.commands = config.commands.length ? config.commands : state.commands;
  renderCommands();
  toast("Language " + $("language").value + ": the next message carries it");
});
$("name-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("name").value.trim();
  if (!name) return;
  await api("POST", "/api/name", { buyer: state.buyer, name });
  $("name").blur();
  const active = $("buyers").querySelector(".active");
  if (active) active.textContent = name;
  toast("Name " + name + ": the next message carries it");
});
$("credits-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  await api("POST", "/api/openrouter/credits", { total_credits: $("credits").value });
  $("credits").blur();
  toast("OpenRouter balance set to $" + $("credits").value);
});

selectBuyer("");
