// The sandbox page: plain JavaScript, no build step. Everything it shows comes from
// the JSON API and the /api/stream server-sent events (see botyard/sandbox/__init__.py).
// Text from bots and users is only ever set with textContent, never parsed as HTML.
"use strict";

const page = { bot: null, user: null, users: [], stream: null, shownMessages: 0 };

const $ = (id) => document.getElementById(id);

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new Error(`the sandbox does not answer (${error.message}); is it still running?`);
  }
  const payload = await response
    .json()
    .catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(payload.error || `${response.status} ${response.statusText}`);
  return payload;
}

function show(id, message) {
  const node = $(id);
  node.textContent = message || "";
  node.hidden = !message;
}

// -- where we are -------------------------------------------------------------

function fromLocation() {
  const match = location.pathname.match(/^\/bots\/([^/]+)(?:\/users\/([^/]+))?\/?$/);
  if (!match) return { bot: null, user: null };
  return { bot: decodeURIComponent(match[1]), user: match[2] ? decodeURIComponent(match[2]) : null };
}

function select(bot, user, { push = true } = {}) {
  page.bot = bot;
  page.user = user === null ? null : String(user);
  page.shownMessages = 0;
  $("messages").replaceChildren();  // another chat: nothing of the last one stays
  delete $("messages").dataset.chat;  // set again once this chat's messages are shown
  const path = `/bots/${encodeURIComponent(bot)}/users/${encodeURIComponent(page.user)}`;
  if (location.pathname !== path) {
    if (push) history.pushState(null, "", path);
    else history.replaceState(null, "", path);
  }
  show("notice", "");
  for (const item of $("bots").children) item.classList.toggle("selected", item.dataset.bot === bot);
  renderUsers();
  openStream();
}

function openStream() {
  if (page.stream) page.stream.close();
  const query = page.bot === null
    ? ""
    : `?bot=${encodeURIComponent(page.bot)}&user=${encodeURIComponent(page.user)}`;
  const stream = new EventSource(`/api/stream${query}`);
  page.stream = stream;
  stream.addEventListener("open", () => setConnection("live", true));
  // What the page shows stays as it was: the last known values, until the sandbox is back.
  stream.addEventListener("error", () => setConnection("sandbox not reachable: reconnecting…", false));
  stream.addEventListener("bots", (event) => renderBots(JSON.parse(event.data)));
  stream.addEventListener("chat", (event) => {
    show("problem", "");
    renderChat(JSON.parse(event.data));
  });
  stream.addEventListener("problem", (event) => {
    show("problem", JSON.parse(event.data).error);
    renderChat(null);
  });
}

function setConnection(text, live) {
  const node = $("connection");
  node.textContent = text;
  node.classList.toggle("live", live);
}

// -- the bot list -------------------------------------------------------------

function renderBots(payload) {
  const stopping = payload.storage === "stopping";
  $("registry").textContent = payload.registry
    + (payload.storage === "ready" || stopping ? "" : ` · database ${payload.storage}`);
  if (stopping) setConnection("stopping…", false);
  else if (page.stream && page.stream.readyState === EventSource.OPEN) setConnection("live", true);
  show("reload-problem", payload.reload_rejected
    ? `Saving the registry was rejected; the bots run as before it. ${payload.reload_rejected}`
    : "");
  const list = $("bots");
  const known = new Map([...list.children].map((item) => [item.dataset.bot, item]));
  const items = payload.bots.map((bot) => {
    const item = known.get(bot.name) ?? newBotItem(bot.name);
    updateBotItem(item, bot);
    return item;
  });
  keepChildren(list, items);
  if (page.bot === null && payload.bots.length > 0) {
    const first = payload.bots.find((bot) => bot.enabled) ?? payload.bots[0];
    select(first.name, page.users[0]?.id ?? 1001, { push: false });
  }
}

function newBotItem(name) {
  const item = element(
    "li",
    { class: "bot", "data-bot": name },
    element(
      "div",
      { class: "bot-line" },
      element("span", { class: "bot-name", text: name }),
      element("span", { class: "status" }),
    ),
    element(
      "div",
      { class: "counters" },
      element("span", { class: "handled" }),
      element("span", { class: "errors" }),
      element("span", { class: "records" }),
    ),
    element("div", { class: "detail muted" }),
  );
  item.addEventListener("click", () => select(name, page.user ?? page.users[0]?.id ?? 1001));
  return item;
}

function updateBotItem(item, bot) {
  const records = bot.fsm_records === null ? "…" : bot.fsm_records;
  item.dataset.status = bot.status;
  item.title = bot.detail || "";
  item.classList.toggle("selected", bot.name === page.bot);
  const status = item.querySelector(".status");
  status.className = `status status-${bot.status}`;
  setText(status, bot.status.replace("_", " "));
  setText(item.querySelector(".handled"), `handled ${bot.handled}`);
  setText(item.querySelector(".errors"), `errors ${bot.errors}`);
  setText(item.querySelector(".records"), `FSM records ${records}`);
  setText(item.querySelector(".detail"), bot.detail || "");
}

// Nodes are updated in place, never rebuilt: a click or a text selection survives a refresh.
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function keepChildren(parent, children) {
  const same = parent.children.length === children.length
    && children.every((child, index) => parent.children[index] === child);
  if (!same) parent.replaceChildren(...children);
}

// -- users --------------------------------------------------------------------

function renderUsers() {
  $("users").replaceChildren(
    ...page.users.map((user) =>
      element("button", {
        type: "button",
        class: String(user.id) === page.user ? "user selected" : "user",
        "data-user": String(user.id),
        title: `user id ${user.id}`,
        text: user.first_name,
        onclick: () => select(page.bot, user.id),
      }),
    ),
  );
}

async function addUser(event) {
  event.preventDefault();
  try {
    const user = await api("POST", "/api/users", { first_name: $("new-user").value });
    page.users.push(user);
    $("new-user").value = "";
    select(page.bot, user.id);
  } catch (error) {
    show("notice", error.message);
  }
}

// -- the chat -----------------------------------------------------------------

function renderChat(chat) {
  const messages = $("messages");
  const enabled = chat !== null;
  $("text").disabled = $("send").disabled = $("reset").disabled = !enabled;
  if (!enabled) {
    $("chat-title").textContent = "No chat";
    messages.replaceChildren();
    delete messages.dataset.chat;
    $("reply-keyboard").replaceChildren();
    show("toast", "");
    renderFsm(null);
    return;
  }
  setText($("chat-title"), `${chat.bot} · ${chat.user.first_name}`);
  show("bot-problem", chat.problem || "");
  const atBottom = messages.scrollTop + messages.clientHeight >= messages.scrollHeight - 8;
  const known = new Map(
    [...messages.querySelectorAll(".message")].map((item) => [item.dataset.key, item]),
  );
  const items = chat.messages.map((message) => {
    const item = known.get(message.key);
    const shape = JSON.stringify(message);
    if (item && item.shape === shape) return item;
    const fresh = renderMessage(message);
    fresh.shape = shape;
    if (item) item.replaceWith(fresh);  // an edit: the message changes where it is
    return fresh;
  });
  if (items.length === 0) {
    items.push(element("li", { class: "empty muted", text: "No messages yet: try /start." }));
  }
  keepChildren(messages, items);
  messages.dataset.chat = `${chat.bot}/${chat.user.id}`;
  if (atBottom || chat.messages.length > page.shownMessages) messages.scrollTop = messages.scrollHeight;
  page.shownMessages = chat.messages.length;
  const lastBot = [...chat.messages].reverse().find((message) => message.from === "bot" && !message.earlier);
  renderReplyKeyboard(lastBot ? lastBot.keyboard : []);
  const answer = chat.callback_answer?.text;
  show("toast", answer ? `${chat.bot} answered the button: ${answer}` : "");
  renderFsm(chat);
}

function renderMessage(message) {
  const item = element("li", {
    class: `message from-${message.from}${message.kind ? ` note-${message.kind}` : ""}`
      + (message.earlier ? " earlier" : ""),
    "data-key": message.key,
    "data-from": message.from,
  });
  if (message.message_id !== null) item.dataset.messageId = String(message.message_id);
  if (message.kind) item.dataset.kind = message.kind;
  item.append(element("div", { class: "text", text: message.text }));
  if (message.details) {
    item.append(
      element(
        "details",
        { class: "traceback" },
        element("summary", { text: "traceback" }),
        element("pre", { text: message.details }),
      ),
    );
  }
  if (message.from === "sandbox") return item;
  if (message.edited) {
    item.append(
      element("span", {
        class: "edited",
        text: "edited",
        title: `before: ${message.previous_texts.join(" → ")}`,
      }),
    );
  }
  for (const row of message.buttons) {
    const line = element("div", { class: "buttons" });
    for (const button of row) {
      if (message.earlier) {
        line.append(element("span", { class: "inline muted", title: "sent before the sandbox restarted", text: button.text }));
      } else if (button.callback_data !== undefined) {
        line.append(
          element("button", {
            type: "button",
            class: "inline",
            "data-callback": button.callback_data,
            text: button.text,
            onclick: () => press(message.message_id, button.callback_data),
          }),
        );
      } else if (button.url !== undefined) {
        line.append(
          element("a", { class: "inline", href: button.url, target: "_blank", rel: "noopener", text: button.text }),
        );
      } else {
        line.append(element("span", { class: "inline muted", text: button.text }));
      }
    }
    item.append(line);
  }
  return item;
}

function renderReplyKeyboard(rows) {
  $("reply-keyboard").replaceChildren(
    ...rows.map((row) =>
      element(
        "div",
        { class: "buttons" },
        ...row.map((text) => element("button", { type: "button", class: "keyboard", text, onclick: () => sendText(text) })),
      ),
    ),
  );
}

function chatPath(suffix) {
  return `/api/bots/${encodeURIComponent(page.bot)}/users/${encodeURIComponent(page.user)}/${suffix}`;
}

async function sendText(text) {
  try {
    await api("POST", chatPath("messages"), { text });
    show("notice", "");
    return true;
  } catch (error) {
    show("notice", error.message);
    return false;
  }
}

async function send(event) {
  event.preventDefault();
  if (await sendText($("text").value)) $("text").value = "";
  $("text").focus();
}

async function press(messageId, callbackData) {
  try {
    await api("POST", chatPath("buttons"), { message_id: messageId, callback_data: callbackData });
    show("notice", "");
  } catch (error) {
    show("notice", error.message);
  }
}

// -- FSM state beside the chat ------------------------------------------------

function renderFsm(chat) {
  const fsm = chat ? chat.fsm : { state: null, data: {} };
  $("fsm-who").textContent = chat ? `${chat.user.first_name} (${chat.user.id}) in ${chat.bot}` : "";
  $("fsm-state").textContent = chat ? fsm.state ?? "none" : "–";
  $("fsm-data").textContent = JSON.stringify(fsm.data ?? {}, null, 2);
  $("fsm-updated").textContent = when(fsm.updated_at) ?? "–";
  $("fsm-expires").textContent = when(fsm.expires_at) ?? (fsm.stored ? "never" : "–");
  show("fsm-error", fsm.error || "");
  renderDocuments(chat ? chat.documents : []);
}

function renderDocuments(documents) {
  const shape = JSON.stringify(documents);
  const list = $("documents");
  if (list.dataset.shape === shape) return;  // a text selection survives a refresh
  list.dataset.shape = shape;
  if (documents.length === 0) {
    list.replaceChildren(element("li", { class: "muted", text: "none" }));
    return;
  }
  list.replaceChildren(
    ...documents.map((found) =>
      element(
        "li",
        { class: "document", "data-collection": found.collection },
        element("span", { class: "muted", text: found.collection }),
        element("pre", { text: JSON.stringify(found.document, null, 2) }),
      ),
    ),
  );
}

function when(iso) {
  if (!iso) return null;
  return `${new Date(iso).toISOString().slice(0, 19).replace("T", " ")} UTC`;
}

async function reset() {
  try {
    const fsm = await api("POST", chatPath("reset"), {});
    $("fsm-state").textContent = fsm.state ?? "none";
    $("fsm-data").textContent = JSON.stringify(fsm.data ?? {}, null, 2);
    show("notice", "");
  } catch (error) {
    show("notice", error.message);
  }
}

// -- start --------------------------------------------------------------------

async function start() {
  $("composer").addEventListener("submit", send);
  $("add-user").addEventListener("submit", addUser);
  $("reset").addEventListener("click", reset);
  window.addEventListener("popstate", () => {
    const where = fromLocation();
    if (where.bot !== null) select(where.bot, where.user ?? page.users[0]?.id, { push: false });
  });
  try {
    page.users = (await api("GET", "/api/users")).users;
  } catch (error) {
    show("problem", error.message);
  }
  const where = fromLocation();
  if (where.bot !== null) select(where.bot, where.user ?? page.users[0]?.id ?? 1001, { push: false });
  else {
    renderUsers();
    openStream();
  }
}

start();
