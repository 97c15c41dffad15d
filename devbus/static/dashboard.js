// The live dashboard (GET /). It uses the same client as any app: /devbus.js, so that its
// tabs share one stream with each other like an app's tabs do.

const token = new URLSearchParams(location.search).get("token");
const { createDevbus, typeMatcher, DEVBUS_GAP } = await import(
  token ? `/devbus.js?token=${encodeURIComponent(token)}` : "/devbus.js"
);

const ROWS_RENDERED = 500; // the DOM stays this small however many events arrive
const EVENTS_KEPT = 5000; // kept in memory so that a new filter applies to recent events
const HISTORY_LOADED = 200;
const HEALTH_EVERY_MS = 2000;
const PREVIEW_CHARS = 160;

const bus = createDevbus();
const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  seen: $("count-seen"),
  rate: $("count-rate"),
  subscribers: $("count-subscribers"),
  total: $("count-total"),
  forward: $("forward"),
  filter: $("filter"),
  pause: $("pause"),
  clear: $("clear"),
  shown: $("shown"),
  list: $("events"),
  empty: $("empty"),
  form: $("send-form"),
  type: $("send-type"),
  data: $("send-data"),
  error: $("send-error"),
  result: $("send-result"),
  types: $("types"),
  typesEmpty: $("types-empty"),
  typesCount: $("types-count"),
};

const EMPTY_HTML = ui.empty.innerHTML; // fixed markup from dashboard.html
let kept = []; // oldest first, at most EVENTS_KEPT
let pending = []; // arrived but not rendered yet (paused, or waiting for the next frame)
let paused = false;
let seen = 0;
let arrivedThisSecond = 0;
let match = () => true;
let frame = null;
const eventOfRow = new WeakMap();
const numbers = new Intl.NumberFormat();

// --- rendering -------------------------------------------------------------------------

function hue(type) {
  // One stable colour per namespace ("agent" in "agent.created") to help the eye group rows.
  const namespace = type.split(".")[0];
  let hash = 0;
  for (const char of namespace) hash = (hash * 31 + char.charCodeAt(0)) % 360;
  return hash;
}

function clock(timestamp) {
  const date = new Date(`${String(timestamp).slice(0, 23)}Z`);
  if (Number.isNaN(date.getTime())) return "";
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

function preview(event) {
  if (event.type === DEVBUS_GAP) return "Events may be missing: the bus restarted or its history moved on";
  const text = JSON.stringify(event.data) ?? "";
  return text.length > PREVIEW_CHARS ? `${text.slice(0, PREVIEW_CHARS)}…` : text;
}

function cell(className, text) {
  const span = document.createElement("span");
  span.className = className;
  span.textContent = text;
  return span;
}

function row(event) {
  const item = document.createElement("li");
  item.className = event.type === DEVBUS_GAP ? "event gap" : "event";
  item.style.setProperty("--hue", String(hue(event.type)));
  const summary = document.createElement("button");
  summary.type = "button";
  summary.tabIndex = -1; // the list is one tab stop; arrow keys move within it
  summary.setAttribute("aria-expanded", "false");
  summary.append(
    cell("time", clock(event.timestamp)),
    cell("type", event.type),
    cell("source", event.source ?? ""),
    cell("data", preview(event)),
    cell("id", event.id),
  );
  summary.title = event.id;
  item.append(summary);
  eventOfRow.set(item, event);
  return item;
}

function toggle(summary) {
  const item = summary.parentElement;
  const open = summary.getAttribute("aria-expanded") !== "true";
  summary.setAttribute("aria-expanded", String(open));
  let detail = item.querySelector("pre");
  if (open && !detail) {
    const event = eventOfRow.get(item);
    if (event.type !== DEVBUS_GAP) item.append(actions(event));
    detail = document.createElement("pre");
    detail.textContent = JSON.stringify(event, null, 2);
    item.append(detail);
  }
  if (detail) detail.hidden = !open;
  const bar = item.querySelector(".actions");
  if (bar) bar.hidden = !open;
}

function actionButton(label, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.addEventListener("click", onClick);
  return button;
}

// "Send again" and "Copy as curl" for one event, shown when its row is open.
function actions(event) {
  const bar = document.createElement("div");
  bar.className = "actions";
  const result = document.createElement("span");
  result.className = "result";
  result.setAttribute("role", "status");
  const source = event.source;
  const again = actionButton("Send again", async () => {
    try {
      const id = await bus.send(event.type, event.data, { source });
      result.textContent = `Sent again as ${id}`;
    } catch (error) {
      result.textContent = `Not sent: ${error.message}`;
    }
  });
  const copy = actionButton("Copy as curl", async () => {
    const command = bus.curl(event.type, event.data, { source });
    try {
      await navigator.clipboard.writeText(command);
      result.textContent = "Copied";
    } catch {
      // No clipboard (permission refused): show the command, selected, to copy by hand.
      result.textContent = command;
      getSelection().selectAllChildren(result);
    }
  });
  bar.append(again, copy, result);
  return bar;
}

// Roving tab stop: exactly one row button is reachable with Tab, so that the form after a
// list of 500 rows is one key press away; Up/Down/Home/End move between rows.
let activeRow = null;
let rowChosen = false; // until the user focuses a row, the tab stop follows the newest one

function setActive(item, { focus = false } = {}) {
  if (activeRow && activeRow !== item) activeRow.firstElementChild.tabIndex = -1;
  activeRow = item;
  if (!item) return;
  item.firstElementChild.tabIndex = 0;
  if (focus) item.firstElementChild.focus();
}

function updateShown() {
  if (!activeRow || !activeRow.isConnected) rowChosen = false;
  if (!rowChosen && activeRow !== ui.list.firstElementChild) setActive(ui.list.firstElementChild);
  const rows = ui.list.childElementCount;
  ui.empty.hidden = rows > 0;
  if (kept.length) ui.empty.textContent = "No kept event matches the filter.";
  else ui.empty.innerHTML = EMPTY_HTML;
  ui.shown.textContent = rows ? `showing ${numbers.format(rows)} newest of ${numbers.format(kept.length)} kept` : "";
}

function flush({ force = false } = {}) {
  frame = null;
  if ((paused && !force) || pending.length === 0) return;
  const fresh = pending.filter((event) => match(event.type)).slice(-ROWS_RENDERED);
  pending = [];
  const fragment = document.createDocumentFragment();
  for (let i = fresh.length - 1; i >= 0; i -= 1) fragment.append(row(fresh[i]));
  ui.list.prepend(fragment);
  while (ui.list.childElementCount > ROWS_RENDERED) ui.list.lastElementChild.remove();
  updateShown();
}

function rebuild() {
  // Render from what is kept, paused or not: a new filter should show its matches now.
  ui.list.replaceChildren();
  pending = kept.slice();
  flush({ force: true });
  updateShown();
}

function schedule() {
  if (frame === null && !paused) frame = requestAnimationFrame(() => flush());
}

// `live` is false for the history loaded at open: those events did not arrive now, so they
// count as seen but not towards events/s.
function receive(event, { live = true } = {}) {
  kept.push(event);
  if (kept.length > EVENTS_KEPT + EVENTS_KEPT / 10) kept = kept.slice(-EVENTS_KEPT);
  pending.push(event);
  if (pending.length > EVENTS_KEPT) pending = pending.slice(-ROWS_RENDERED);
  seen += 1;
  if (live) arrivedThisSecond += 1;
  ui.seen.textContent = numbers.format(seen);
  if (paused) ui.pause.textContent = `Resume (${numbers.format(Math.min(pending.length, EVENTS_KEPT))} new)`;
  schedule();
}

// --- filter, pause, clear --------------------------------------------------------------

ui.filter.addEventListener("input", () => {
  match = typeMatcher(ui.filter.value); // the same globs as the bus's ?types=
  rebuild();
});
ui.filter.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && ui.filter.value) {
    ui.filter.value = "";
    ui.filter.dispatchEvent(new Event("input"));
  }
});

ui.pause.addEventListener("click", () => {
  paused = !paused;
  ui.pause.setAttribute("aria-pressed", String(paused));
  ui.pause.textContent = paused ? "Resume" : "Pause";
  if (!paused) schedule();
  showStatus();
});

ui.clear.addEventListener("click", () => {
  kept = [];
  pending = [];
  ui.list.replaceChildren();
  if (paused) ui.pause.textContent = "Resume";
  updateShown();
});

ui.list.addEventListener("keydown", (event) => {
  const item = event.target.closest(".event");
  const moves = {
    ArrowDown: () => item.nextElementSibling,
    ArrowUp: () => item.previousElementSibling,
    Home: () => ui.list.firstElementChild,
    End: () => ui.list.lastElementChild,
  };
  if (!item || !(event.key in moves)) return;
  event.preventDefault();
  const target = moves[event.key]();
  if (target) setActive(target, { focus: true });
});

ui.list.addEventListener("focusin", (event) => {
  const item = event.target.closest(".event");
  if (!item) return;
  setActive(item);
  rowChosen = true;
});

ui.list.addEventListener("click", (event) => {
  const summary = event.target.closest(".event > button");
  if (summary) toggle(summary);
});

document.addEventListener("keydown", (event) => {
  const typing = event.target.closest("input, textarea");
  if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey) {
    event.preventDefault();
    ui.filter.focus();
  }
});

// --- connection status and counters ----------------------------------------------------

let connection = { state: "connecting" };

function showStatus() {
  const { state } = connection;
  let text = "Connecting…";
  if (state === "open") text = paused ? "Live · paused" : "Live";
  else if (state === "reconnecting") text = connection.error ? `Reconnecting: ${connection.error}` : "Reconnecting…";
  else if (state === "closed") text = "Closed";
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function onStatus(status) {
  if (status.state === "gap") return; // shown as a row, like any event
  connection = status;
  showStatus();
  if (status.state === "open") pollHealth(); // our own subscription now counts
}

// Events/s is averaged over the last few seconds, so that a burst reads as a rate, not a flicker.
const RATE_WINDOW_S = 5;
const lastSeconds = [];
setInterval(() => {
  lastSeconds.push(arrivedThisSecond);
  arrivedThisSecond = 0;
  if (lastSeconds.length > RATE_WINDOW_S) lastSeconds.shift();
  const rate = lastSeconds.reduce((sum, n) => sum + n, 0) / lastSeconds.length;
  ui.rate.textContent = rate >= 10 || rate === 0 ? numbers.format(Math.round(rate)) : rate.toFixed(1);
}, 1000);

function showForward(targets = []) {
  // One pill per --forward target, so a backend that stays down is seen, not guessed.
  ui.forward.hidden = targets.length === 0;
  ui.forward.replaceChildren(
    ...targets.map((target) => {
      const item = document.createElement("li");
      item.dataset.state = target.state;
      const extra = [`${numbers.format(target.queued)} queued`];
      if (target.dropped) extra.push(`${numbers.format(target.dropped)} dropped`);
      item.textContent = `→ ${target.name} ${target.state} · ${extra.join(" · ")}`;
      item.title = target.url;
      return item;
    }),
  );
}

async function pollHealth() {
  try {
    const health = await bus.health();
    ui.subscribers.textContent = numbers.format(health.subscribers);
    ui.total.textContent = numbers.format(health.events);
    showForward(health.forward);
  } catch {
    ui.subscribers.textContent = "–";
    ui.total.textContent = "–";
  }
}
pollHealth();
setInterval(pollHealth, HEALTH_EVERY_MS);

// --- the event catalogue: types, counts and the schema of their data ---------------------

const typeItems = new Map(); // type → its <li>, updated in place so an open one stays open

function typeItem(info) {
  const item = document.createElement("li");
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.append(cell("type", info.type), cell("count", ""));
  const meta = document.createElement("p");
  meta.className = "meta";
  const schema = document.createElement("pre");
  details.append(summary, meta, schema);
  item.append(details);
  item.dataset.type = info.type;
  return item;
}

function showType(item, info) {
  item.querySelector(".count").textContent = numbers.format(info.count);
  const partial = info.schema_complete ? "" : " · schema stopped learning at a bound";
  item.querySelector(".meta").textContent =
    `from ${info.sources.join(", ")} · last ${clock(info.last_seen)}${partial}`;
  const schema = JSON.stringify(info.schema, null, 2);
  const pre = item.querySelector("pre");
  if (pre.textContent !== schema) pre.textContent = schema;
}

async function pollTypes() {
  let catalogue;
  try {
    catalogue = await bus.types();
  } catch {
    return; // the status pill already says the bus is unreachable
  }
  const items = catalogue.types.map((info) => {
    let item = typeItems.get(info.type);
    if (!item) typeItems.set(info.type, (item = typeItem(info)));
    showType(item, info);
    return item;
  });
  // The bus sends them sorted by type: only reorder when a type was added.
  if (items.length !== ui.types.childElementCount) ui.types.replaceChildren(...items);
  ui.typesEmpty.hidden = items.length > 0;
  ui.typesCount.textContent = items.length ? `(${numbers.format(items.length)})` : "";
}
pollTypes();
setInterval(pollTypes, HEALTH_EVERY_MS);

// --- the send form ---------------------------------------------------------------------

function showError(message, field) {
  ui.error.textContent = message;
  ui.type.setAttribute("aria-invalid", String(field === ui.type));
  ui.data.setAttribute("aria-invalid", String(field === ui.data));
}

ui.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  ui.result.textContent = "";
  let data;
  try {
    data = ui.data.value.trim() ? JSON.parse(ui.data.value) : {};
  } catch (error) {
    showError(`Data is not valid JSON: ${error.message}`, ui.data);
    return;
  }
  const type = ui.type.value.trim();
  try {
    const id = await bus.send(type, data, { source: "dashboard" });
    showError("", null);
    ui.result.textContent = `Sent ${type} as ${id}`;
  } catch (error) {
    // The server's message names the field, e.g. "`event_type` ..." or "at $.data".
    const field = /\$\.data|`data`/.test(error.message) ? ui.data : ui.type;
    showError(error.message, error.status === 422 || error.status === 400 ? field : null);
  }
});

ui.data.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    ui.form.requestSubmit();
  }
});

// --- start: live first, then the recent history up to it ---------------------------------
// Subscribed without `since`, the page shares the stream of the other dashboard tabs. Once
// the stream is open, every later event comes through it; the history read after that
// covers everything before, and an event in both is shown once.

let early = []; // live events that arrived before the history did
let opened;
const open = new Promise((resolve) => (opened = resolve));
bus.subscribe(
  null,
  (event) => {
    if (early) early.push(event);
    else receive(event);
  },
  {
    onStatus(status) {
      onStatus(status);
      if (status.state === "open" || status.state === "reconnecting") opened();
    },
  },
);
await open;
try {
  const history = await bus.history({ limit: HISTORY_LOADED });
  for (const event of history) receive(event, { live: false });
  const loaded = new Set(history.map((event) => event.id));
  early = early.filter((event) => !loaded.has(event.id));
} catch (error) {
  connection = { state: "reconnecting", error: error.message };
  showStatus();
}
for (const event of early) receive(event);
early = null;
document.body.dataset.history = "loaded"; // every count from here on includes the history
updateShown();
