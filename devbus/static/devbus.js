// devbus browser client: an ES module with no dependencies.
//
//   import { createDevbus } from "http://127.0.0.1:8765/devbus.js";
//   const bus = createDevbus();
//   const stop = bus.subscribe("agent.*", (event) => console.log(event.type, event.data));
//   await bus.send("agent.created", { id: 7 });
//
// The drop-in names `sendDevWebhook` and `subscribeToBackendEvents` keep the call shapes
// of the hand-rolled dev-webhook helper, so a project can re-export them unchanged.

/** The type of the control event sent when a resume id is no longer retained. */
export const DEVBUS_GAP = "devbus.gap";

// The bus rewrites this literal to its --prefix when it serves the file.
const DEFAULT_PREFIX = /* devbus:prefix */ "/api/dev";
const FALLBACK_URL = "http://127.0.0.1:8765";
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 3000;
const REMEMBERED_IDS = 4096;

const moduleUrl = parseUrl(import.meta.url);
let defaults = {};

function parseUrl(text) {
  try {
    return new URL(text);
  } catch {
    return null;
  }
}

function defaultUrl() {
  // Served by the bus (at /devbus.js): talk to where we came from. Copied into an app, the
  // module is served by the app's dev server or bundled (file:), so use the bus's default.
  if (moduleUrl && /^https?:$/.test(moduleUrl.protocol) && moduleUrl.pathname === "/devbus.js") {
    return moduleUrl.origin;
  }
  return FALLBACK_URL;
}

function defaultToken() {
  return (moduleUrl && moduleUrl.searchParams.get("token")) || undefined;
}

function isProductionBuild() {
  // Bundlers replace `process.env.NODE_ENV` with a literal; a plain browser has no `process`.
  try {
    // eslint-disable-next-line no-undef
    return process.env.NODE_ENV === "production";
  } catch {
    return false;
  }
}

function resolveOptions(options = {}) {
  const merged = { ...defaults, ...options };
  const url = String(merged.url || defaultUrl()).replace(/\/+$/, "");
  const prefix = String(merged.prefix ?? DEFAULT_PREFIX).replace(/\/+$/, "");
  const token = merged.token ?? defaultToken();
  return { url, prefix, token, api: url + prefix };
}

/** Set the url, token and prefix used by the drop-in helpers and by createDevbus() defaults. */
export function configure(options = {}) {
  defaults = { ...defaults, ...options };
}

function patternList(patterns) {
  if (patterns == null) return "";
  const list = typeof patterns === "string" ? patterns.split(",") : Array.from(patterns);
  return list.map((p) => String(p).trim()).filter(Boolean).join(",");
}

function authHeaders(config) {
  return config.token ? { Authorization: `Bearer ${config.token}` } : {};
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch {
    // not JSON: fall back to the status line
  }
  return `HTTP ${response.status} ${response.statusText}`.trim();
}

class DevbusRequestError extends Error {
  constructor(message, status, cause) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "DevbusError";
    this.status = status;
  }
}

async function request(config, path, init = {}) {
  let response;
  try {
    response = await fetch(config.api + path, {
      ...init,
      headers: { ...authHeaders(config), ...(init.headers || {}) },
    });
  } catch (error) {
    // fetch() says only "Failed to fetch" (bus down, or CORS refused): say where we looked.
    throw new DevbusRequestError(`devbus is not reachable at ${config.url} (is \`devbus run\` running?)`, 0, error);
  }
  if (!response.ok) throw new DevbusRequestError(await errorMessage(response), response.status);
  return response.json();
}

function report(error) {
  // An exception in an app's handler must not stop the stream; surface it like a DOM listener would.
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else console.error(error);
}

/** Remember the most recent ids delivered, to drop a frame that arrives twice. */
class RecentIds {
  constructor(limit) {
    this.ring = new Array(limit);
    this.next = 0;
    this.ids = new Set();
  }

  add(id) {
    if (this.ids.has(id)) return false;
    // A ring, not Set insertion order: deleting a Set's oldest entry repeatedly is slow.
    const evicted = this.ring[this.next];
    if (evicted !== undefined) this.ids.delete(evicted);
    this.ring[this.next] = id;
    this.next = (this.next + 1) % this.ring.length;
    this.ids.add(id);
    return true;
  }
}

function streamUrl(config, types, cursor) {
  const params = new URLSearchParams();
  if (types) params.set("types", types);
  if (cursor) params.set("since", cursor);
  if (config.token) params.set("token", config.token);
  const query = params.toString();
  return `${config.api}/events${query ? `?${query}` : ""}`;
}

// Open the SSE stream and keep it open: on any error the source is closed and reopened
// with ?since=<last id seen>, so the bus replays what was missed (or says devbus.gap).
function openStream(config, types, { since, onEvent, onConnected, onStatus }) {
  let cursor = since || null;
  let source = null;
  let timer = null;
  let stopped = false;
  let delay = RETRY_MIN_MS;
  const delivered = new RecentIds(REMEMBERED_IDS);

  const status = (value) => {
    if (!onStatus) return;
    try {
      onStatus(value);
    } catch (error) {
      report(error);
    }
  };

  const connect = () => {
    timer = null;
    if (stopped) return;
    let opened = false;
    status({ state: "connecting", url: config.url });
    source = new EventSource(streamUrl(config, types, cursor));
    source.onmessage = (message) => {
      let parsed;
      try {
        parsed = JSON.parse(message.data);
      } catch {
        console.warn("devbus: ignored a frame that is not JSON:", message.data);
        return;
      }
      if (parsed === null || typeof parsed !== "object") return;
      if (parsed.id === undefined) {
        // The connected frame: it says where the bus stands, so that a reconnect
        // resumes from here even if no event arrives before it.
        opened = true;
        delay = RETRY_MIN_MS;
        if (!cursor && parsed.run) cursor = parsed.last_id || `${parsed.run}-0`;
        status({ state: "open", run: parsed.run ?? null, lastId: parsed.last_id ?? null });
        if (onConnected) onConnected(parsed);
        return;
      }
      if (!delivered.add(parsed.id)) return;
      cursor = parsed.id;
      if (parsed.type === DEVBUS_GAP) status({ state: "gap", event: parsed });
      try {
        onEvent(parsed);
      } catch (error) {
        report(error);
      }
    };
    source.onerror = async () => {
      if (stopped || source === null) return;
      source.close();
      source = null;
      const wait = delay;
      delay = Math.min(delay * 2, RETRY_MAX_MS);
      let error = null;
      if (!opened) error = await probe(config);
      if (stopped) return;
      status({ state: "reconnecting", delayMs: wait, error });
      timer = setTimeout(connect, wait);
    };
  };

  connect();
  return () => {
    if (stopped) return;
    stopped = true;
    if (timer !== null) clearTimeout(timer);
    if (source !== null) source.close();
    source = null;
    status({ state: "closed" });
  };
}

// EventSource hides why a connection failed; ask the API the same question to find out.
async function probe(config) {
  try {
    await request(config, "/history?limit=1");
    return null;
  } catch (error) {
    return error.message;
  }
}

/**
 * Create a client for the bus at `url` (default: where this module was served from).
 * `send` resolves with the new event's id; `subscribe` returns an unsubscribe function.
 */
export function createDevbus(options = {}) {
  const config = resolveOptions(options);
  return {
    url: config.url,

    async send(type, data = {}, { source } = {}) {
      const body = { event_type: type, data };
      if (source !== undefined) body.source = source;
      const reply = await request(config, "/webhook", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      return reply.id;
    },

    subscribe(patterns, onEvent, { since, onStatus } = {}) {
      if (typeof EventSource === "undefined") {
        console.warn("devbus: EventSource is not available here (server-side render?); not subscribing");
        return () => {};
      }
      return openStream(config, patternList(patterns), { since, onEvent, onStatus });
    },

    async history({ types, since, limit } = {}) {
      const params = new URLSearchParams();
      const list = patternList(types);
      if (list) params.set("types", list);
      if (since) params.set("since", since);
      if (limit) params.set("limit", String(limit));
      const query = params.toString();
      const reply = await request(config, `/history${query ? `?${query}` : ""}`);
      return reply.events;
    },

    health() {
      return request(config, "/health");
    },

    /** The event catalogue: every type seen, its count, sources and JSON Schema. */
    types() {
      return request(config, "/types");
    },

    /** A shell command that sends this event again with curl (token included, if any). */
    curl(type, data = {}, { source } = {}) {
      const body = { event_type: type, data };
      if (source !== undefined) body.source = source;
      const quote = (text) => `'${String(text).replace(/'/g, "'\\''")}'`;
      const auth = config.token ? ` -H ${quote(`Authorization: Bearer ${config.token}`)}` : "";
      return `curl -X POST ${quote(`${config.api}/webhook`)} -H 'Content-Type: application/json'${auth} -d ${quote(JSON.stringify(body))}`;
    },
  };
}

let warnedProduction = false;

function skipInProduction() {
  if (!isProductionBuild()) return false;
  if (!warnedProduction) {
    warnedProduction = true;
    console.warn("devbus: production build, dev events are disabled");
  }
  return true;
}

/** Drop-in for the hand-rolled helper: POST {event_type, data}; never throws. */
export async function sendDevWebhook(eventType, data) {
  if (skipInProduction()) return;
  const config = resolveOptions();
  try {
    const response = await fetch(`${config.api}/webhook`, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders(config) },
      body: JSON.stringify({ event_type: eventType, data }),
    });
    if (!response.ok) console.warn(`devbus: ${eventType} was refused: ${await errorMessage(response)}`);
  } catch (error) {
    console.warn(`devbus: could not send ${eventType}; is \`devbus run\` running at ${config.url}?`, error);
  }
}

/** Drop-in for the hand-rolled helper: call onEvent(type, data) for every frame; never throws. */
export function subscribeToBackendEvents(onEvent) {
  if (skipInProduction()) return () => {};
  if (typeof EventSource === "undefined") {
    console.warn("devbus: EventSource is not available here (server-side render?); not subscribing");
    return () => {};
  }
  const config = resolveOptions();
  let down = false;
  const deliver = (parsed) => {
    try {
      onEvent(parsed.type, parsed.data);
    } catch (error) {
      report(error);
    }
  };
  try {
    return openStream(config, "", {
      onEvent: deliver,
      // The old helper passed the connected frame through like any other; so do we.
      onConnected: deliver,
      onStatus: (status) => {
        if (status.state === "reconnecting" && !down) {
          down = true;
          console.warn(`devbus: event stream at ${config.url} is down (${status.error || "disconnected"}); retrying`);
        } else if (status.state === "open") {
          down = false;
        }
      },
    });
  } catch (error) {
    console.warn("devbus: could not open the event stream:", error);
    return () => {};
  }
}
