// devbus browser client: an ES module with no dependencies.
//
//   import { createDevbus } from "devbus";   // or from "http://127.0.0.1:8765/devbus.js"
//   const bus = createDevbus();
//   const stop = bus.subscribe("agent.*", (event) => console.log(event.type, event.data));
//   await bus.send("agent.created", { id: 7 });
//
// The drop-in names `sendDevWebhook` and `subscribeToBackendEvents` keep the call shapes
// of the hand-rolled dev-webhook helper, so a project can re-export them unchanged.
//
// Many tabs, one connection. A browser opens at most six HTTP/1.1 connections to one host,
// and every EventSource holds one for as long as its tab lives: the seventh tab's stream,
// and every fetch to the bus behind it, would wait forever. So the tabs of one app origin
// share one stream per bus: one tab (the holder, elected with a Web Lock) keeps the
// EventSource and relays what it receives over a BroadcastChannel; every tab filters by its
// own patterns. The shared stream carries every event, so that one position in the bus's
// log (the last id delivered) serves every tab: a new holder resumes from it with ?since=,
// and no subscribe or unsubscribe ever reconnects. Without Web Locks or BroadcastChannel
// (an old browser, a page that is not a secure context) each tab connects on its own.
//
// This file is the npm package's entry point and, byte for byte but for the prefix below,
// what the bus serves at /devbus.js. Its types are devbus.d.ts, which `npm run check`
// (tsc --checkJs) holds this file to.

/** @typedef {import("./devbus.js").DevbusEvent} DevbusEvent */
/** @typedef {import("./devbus.js").DevbusStatus} DevbusStatus */
/** @typedef {import("./devbus.js").DevbusOptions} DevbusOptions */

/**
 * The options in force for one client.
 * @typedef {{url: string, prefix: string, token: string | undefined, api: string}} Config
 */
/**
 * The first frame of every stream: where the bus stands when it opens.
 * @typedef {{type: "connected", run?: string, last_id?: string | null}} ConnectedFrame
 */
/**
 * One subscription in this tab.
 * @typedef {object} Listener
 * @property {(type: string) => boolean} matches
 * @property {(event: DevbusEvent) => void} onEvent
 * @property {((frame: ConnectedFrame) => void) | undefined} onConnected
 * @property {((status: DevbusStatus) => void) | undefined} onStatus
 */
/**
 * What the holder relays, in stream order: an event, the connected frame, or a status.
 * @typedef {{event: DevbusEvent} | {frame: ConnectedFrame} | {status: DevbusStatus}} Item
 */
/**
 * A message on the tabs' channel: the holder's relay (with where it stands, for tabs that
 * just joined), or a follower asking the holder to answer.
 * @typedef {{type: "relay", from: string, items: Item[], status: DevbusStatus, frame: ConnectedFrame | null, cursor: string | null} | {type: "ping", from: string}} Message
 */

/** The type of the control event sent when a resume id is no longer retained. */
/** @type {typeof import("./devbus.js").DEVBUS_GAP} */
export const DEVBUS_GAP = "devbus.gap";

// The bus rewrites this literal to its --prefix when it serves the file.
const DEFAULT_PREFIX = /* devbus:prefix */ "/api/dev";
const FALLBACK_URL = "http://127.0.0.1:8765";
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 3000;
const REMEMBERED_IDS = 4096;
// Handover: the holder answers a ping from its message handler, which neither timer
// throttling of hidden tabs (1/s, then 1/min) nor a busy bus delays, so only a frozen or
// hung holder stays silent. A follower pings after PING_AFTER_MS of silence and takes over
// when that ping goes unanswered for STEAL_AFTER_MS: with ticks every CHECK_MS, a frozen
// holder is replaced 650-850 ms after its last word (measured: 0.7-0.9 s with 20 tabs).
const BEAT_MS = 200;
const CHECK_MS = 100;
const PING_AFTER_MS = 400;
const STEAL_AFTER_MS = 250;

const moduleUrl = parseUrl(import.meta.url);
/** @type {DevbusOptions} */
let defaults = {};

/** @param {string} text */
function parseUrl(text) {
  try {
    return new URL(text);
  } catch {
    return null;
  }
}

function defaultUrl() {
  // Served by the bus (at /devbus.js): talk to where we came from. Installed from npm or
  // copied into an app, the module is bundled or served by the app, so use the bus's default.
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
    // @ts-ignore: `process` exists only where a bundler or Node.js provides it
    return process.env.NODE_ENV === "production"; // eslint-disable-line no-undef
  } catch {
    return false;
  }
}

/**
 * @param {DevbusOptions} [options]
 * @returns {Config}
 */
function resolveOptions(options = {}) {
  const merged = { ...defaults, ...options };
  const url = String(merged.url || defaultUrl()).replace(/\/+$/, "");
  const prefix = String(merged.prefix ?? DEFAULT_PREFIX).replace(/\/+$/, "");
  const token = merged.token ?? defaultToken();
  return { url, prefix, token, api: url + prefix };
}

/**
 * Set the url, token and prefix used by the drop-in helpers and by createDevbus() defaults.
 * @type {typeof import("./devbus.js").configure}
 */
export function configure(options = {}) {
  defaults = { ...defaults, ...options };
}

/** @param {string | readonly string[] | null | undefined} patterns */
function patternList(patterns) {
  if (patterns == null) return [];
  const list = typeof patterns === "string" ? patterns.split(",") : Array.from(patterns);
  return list.map((p) => String(p).trim()).filter(Boolean);
}

/**
 * A test for event types, matching as the bus matches `?types=` (Python's fnmatch): `*`
 * any run of characters, `?` one, `[abc]`, `[a-z]`, `[!abc]` sets; case-sensitive, whole
 * type. No pattern, or `*` among them, matches every type.
 * @type {typeof import("./devbus.js").typeMatcher}
 */
export function typeMatcher(patterns) {
  const list = patternList(patterns);
  if (list.length === 0 || list.includes("*")) return () => true;
  const compiled = list.map(compileGlob);
  return (type) => {
    const chars = Array.from(String(type));
    return compiled.some((tokens) => globMatch(tokens, chars));
  };
}

/**
 * A glob as tokens: "*", "?", a set, or one literal character.
 * @typedef {"*" | "?" | {negate: boolean, ranges: [number, number][]} | {char: string}} GlobToken
 */

/**
 * @param {string} pattern
 * @returns {GlobToken[]}
 */
function compileGlob(pattern) {
  const chars = Array.from(pattern);
  /** @type {GlobToken[]} */
  const tokens = [];
  let i = 0;
  while (i < chars.length) {
    const c = chars[i++];
    if (c === "*") {
      if (tokens[tokens.length - 1] !== "*") tokens.push("*");
    } else if (c === "?") {
      tokens.push("?");
    } else if (c === "[") {
      const set = compileSet(chars, i);
      if (set) {
        tokens.push(set.token);
        i = set.next;
      } else {
        tokens.push({ char: "[" }); // never closed: a literal bracket, as fnmatch reads it
      }
    } else {
      tokens.push({ char: c });
    }
  }
  return tokens;
}

/**
 * Read a set starting after its "[": fnmatch's rules (a leading "!" negates, a "]" first is
 * literal, "a-z" is a range, a range whose end is below its start matches nothing).
 * @param {string[]} chars
 * @param {number} start
 * @returns {{token: GlobToken, next: number} | null}
 */
function compileSet(chars, start) {
  let j = start;
  if (chars[j] === "!") j += 1;
  if (chars[j] === "]") j += 1;
  while (j < chars.length && chars[j] !== "]") j += 1;
  if (j >= chars.length) return null;
  let body = chars.slice(start, j);
  const negate = body[0] === "!";
  if (negate) body = body.slice(1);
  /** @type {[number, number][]} */
  const ranges = [];
  for (let k = 0; k < body.length; k += 1) {
    const low = /** @type {number} */ (body[k].codePointAt(0));
    if (body[k + 1] === "-" && k + 2 < body.length) {
      ranges.push([low, /** @type {number} */ (body[k + 2].codePointAt(0))]);
      k += 2;
    } else {
      ranges.push([low, low]);
    }
  }
  return { token: { negate, ranges }, next: j + 1 };
}

/**
 * Whether `chars` matches the tokens whole: one pass, backtracking only to the last star.
 * @param {GlobToken[]} tokens
 * @param {string[]} chars
 */
function globMatch(tokens, chars) {
  let t = 0;
  let c = 0;
  let starToken = -1;
  let starChar = 0;
  while (c < chars.length) {
    const token = tokens[t];
    if (token === "*") {
      starToken = t++;
      starChar = c;
    } else if (t < tokens.length && matchesOne(token, chars[c])) {
      t += 1;
      c += 1;
    } else if (starToken >= 0) {
      t = starToken + 1;
      c = ++starChar;
    } else {
      return false;
    }
  }
  while (tokens[t] === "*") t += 1;
  return t === tokens.length;
}

/**
 * @param {GlobToken} token
 * @param {string} char
 */
function matchesOne(token, char) {
  if (token === "?") return true;
  if (token === "*") return false;
  if ("char" in token) return token.char === char;
  const code = /** @type {number} */ (char.codePointAt(0));
  const inside = token.ranges.some(([low, high]) => low <= code && code <= high);
  return inside !== token.negate;
}

/** @param {Config} config */
function authHeaders(config) {
  /** @type {Record<string, string>} */
  const headers = {};
  if (config.token) headers.Authorization = `Bearer ${config.token}`;
  return headers;
}

/** @param {Response} response */
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
  /**
   * @param {string} message
   * @param {number} status
   * @param {unknown} [cause]
   */
  constructor(message, status, cause) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "DevbusError";
    this.status = status;
  }
}

/**
 * @param {Config} config
 * @param {string} path
 * @param {RequestInit & {headers?: Record<string, string>}} [init]
 * @returns {Promise<any>}
 */
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

/** @param {unknown} error */
function report(error) {
  // An exception in an app's handler must not stop the stream; surface it like a DOM listener would.
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else console.error(error);
}

/**
 * Call an app's callback; what it throws is reported, never passed on.
 * @template {unknown[]} A
 * @param {((...args: A) => void) | undefined} callback
 * @param {A} args
 */
function call(callback, ...args) {
  if (!callback) return;
  try {
    callback(...args);
  } catch (error) {
    report(error);
  }
}

/** Remember the most recent ids delivered, to drop a frame that arrives twice. */
class RecentIds {
  /** @param {number} limit */
  constructor(limit) {
    /** @type {(string | undefined)[]} */
    this.ring = new Array(limit);
    this.next = 0;
    /** @type {Set<string>} */
    this.ids = new Set();
  }

  /** @param {string} id */
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

/**
 * @param {Config} config
 * @param {string | null} cursor
 */
function streamUrl(config, cursor) {
  const params = new URLSearchParams();
  if (cursor) params.set("since", cursor);
  if (config.token) params.set("token", config.token);
  const query = params.toString();
  return `${config.api}/events${query ? `?${query}` : ""}`;
}

/**
 * Open the SSE stream and keep it open: on any error the source is closed and reopened
 * with ?since=<cursor()>, so the bus replays what was missed (or says devbus.gap).
 * Returns the function that closes it for good.
 * @param {Config} config
 * @param {{cursor: () => string | null, onEvent: (event: DevbusEvent) => void, onConnected: (frame: ConnectedFrame) => void, onStatus: (status: DevbusStatus) => void}} handlers
 */
function openStream(config, { cursor, onEvent, onConnected, onStatus }) {
  /** @type {EventSource | null} */
  let source = null;
  /** @type {ReturnType<typeof setTimeout> | null} */
  let timer = null;
  let stopped = false;
  let delay = RETRY_MIN_MS;

  const connect = () => {
    timer = null;
    if (stopped) return;
    let opened = false;
    onStatus({ state: "connecting", url: config.url });
    const current = new EventSource(streamUrl(config, cursor()));
    source = current;
    current.onmessage = (message) => {
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
        onConnected(parsed);
        return;
      }
      onEvent(parsed);
    };
    current.onerror = async () => {
      if (stopped || source !== current) return;
      current.close();
      source = null;
      const wait = delay;
      delay = Math.min(delay * 2, RETRY_MAX_MS);
      let error = null;
      if (!opened) error = await probe(config);
      if (stopped) return;
      onStatus({ state: "reconnecting", delayMs: wait, error });
      timer = setTimeout(connect, wait);
    };
  };

  connect();
  return () => {
    stopped = true;
    if (timer !== null) clearTimeout(timer);
    if (source !== null) source.close();
    source = null;
  };
}

/**
 * EventSource hides why a connection failed; ask the API the same question to find out.
 * @param {Config} config
 * @returns {Promise<string | null>}
 */
async function probe(config) {
  try {
    await request(config, "/history?limit=1");
    return null;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

/**
 * One tab's end of a stream: its subscriptions, the position in the bus's log, and the
 * stream itself while this tab holds it. Events reach it from its own stream or from the
 * holder's relay, and each is delivered once, in order, to every subscription it matches.
 */
class Hub {
  /**
   * @param {Config} config
   * @param {string | null} since
   * @param {() => void} onEmpty called when the last subscription leaves
   */
  constructor(config, since, onEmpty) {
    this.config = config;
    this.onEmpty = onEmpty;
    /** @type {Set<Listener>} */
    this.listeners = new Set();
    /** The last event id delivered: where a stream (re)opened by this tab resumes. */
    this.cursor = since;
    this.recent = new RecentIds(REMEMBERED_IDS);
    /** @type {DevbusStatus} */
    this.status = { state: "connecting", url: config.url };
    /** @type {ConnectedFrame | null} */
    this.frame = null;
    /** @type {(() => void) | null} */
    this.stopStream = null;
    /** Set while this tab holds the shared stream: passes on what the stream brings. @type {((item: Item) => void) | null} */
    this.relay = null;
  }

  /**
   * Add a subscription; it hears the current state once the caller has returned.
   * @param {Listener} listener
   */
  add(listener) {
    this.listeners.add(listener);
    queueMicrotask(() => {
      if (!this.listeners.has(listener)) return;
      call(listener.onStatus, this.status);
      if (this.frame) call(listener.onConnected, this.frame);
    });
    return () => {
      if (!this.listeners.delete(listener)) return;
      call(listener.onStatus, { state: "closed" });
      if (this.listeners.size === 0) this.onEmpty();
    };
  }

  /** Open this tab's own stream, resuming from the cursor. */
  hold() {
    if (this.stopStream) return;
    this.stopStream = openStream(this.config, {
      cursor: () => this.cursor,
      onEvent: (event) => this.apply({ event }),
      onConnected: (frame) => this.apply({ frame }),
      onStatus: (status) => this.apply({ status }),
    });
  }

  /** Close this tab's own stream (another tab holds it now, or nobody listens). */
  letGo() {
    if (this.stopStream) this.stopStream();
    this.stopStream = null;
  }

  /**
   * Deliver one item from the stream (relaying it if this tab holds it) or from the relay.
   * @param {Item} item
   */
  apply(item) {
    if ("event" in item) {
      const event = item.event;
      if (!this.recent.add(event.id)) return;
      this.cursor = event.id;
      if (this.relay) this.relay(item);
      const gap = event.type === DEVBUS_GAP;
      for (const listener of this.listeners) {
        if (gap) call(listener.onStatus, { state: "gap", event: /** @type {any} */ (event) });
        if (gap || listener.matches(event.type)) call(listener.onEvent, event);
      }
    } else if ("frame" in item) {
      const frame = item.frame;
      if (!this.cursor && frame.run) this.cursor = frame.last_id || `${frame.run}-0`;
      if (this.relay) this.relay(item);
      this.frame = frame;
      this.status = { state: "open", run: frame.run ?? null, lastId: frame.last_id ?? null };
      for (const listener of this.listeners) {
        call(listener.onStatus, this.status);
        call(listener.onConnected, frame);
      }
    } else {
      if (this.relay) this.relay(item);
      this.frame = null;
      this.status = item.status;
      for (const listener of this.listeners) call(listener.onStatus, item.status);
    }
  }

  /**
   * Catch up with the holder's state, as a tab that just joined (or missed a change) must.
   * @param {DevbusStatus} status
   * @param {ConnectedFrame | null} frame
   * @param {string | null} cursor
   */
  sync(status, frame, cursor) {
    if (cursor && !this.cursor) this.cursor = cursor;
    if (status.state === this.status.state) return;
    if (status.state === "open" && frame) this.apply({ frame });
    else this.apply({ status });
  }
}

/** @returns {boolean} */
function canShare() {
  try {
    return (
      typeof BroadcastChannel === "function" &&
      typeof navigator !== "undefined" &&
      typeof navigator.locks?.request === "function" &&
      typeof MessageChannel === "function"
    );
  } catch {
    return false;
  }
}

/** @param {string} text a short, stable, non-secret tag for a token in lock and channel names */
function tag(text) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i += 1) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return hash.toString(16);
}

/**
 * The election and relay between the tabs of one origin that read one bus. Every tab asks
 * for the Web Lock named after the bus; the one granted holds the stream, relays it and
 * answers pings; the others wait in the lock's queue, so when the holder closes the next
 * is granted at once. A frozen or hung holder keeps its lock: the followers notice its
 * silence (an unanswered ping), and the one with the smallest id steals the lock.
 */
class Share {
  /**
   * @param {Hub} hub
   * @param {string} name the lock's and the channel's name
   */
  constructor(hub, name) {
    this.hub = hub;
    this.name = name;
    this.id = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
    this.channel = new BroadcastChannel(name);
    this.channel.onmessage = (message) => this.receive(message.data);
    this.holding = false;
    this.stopped = false;
    this.frozen = false;
    this.grants = 0;
    this.heldGrant = 0;
    /** @type {AbortController | null} */
    this.queued = null;
    /** @type {(() => void) | null} */
    this.unlock = null;
    this.heardAt = performance.now();
    this.pingedAt = 0;
    /** @type {Set<string>} */
    this.pingers = new Set();
    /** @type {Item[]} */
    this.outbox = [];
    this.flushing = false;
    // A message to ourselves schedules the flush: unlike setTimeout, it is not throttled in
    // a hidden tab, and it runs after every event of one network read, batching them.
    this.wake = new MessageChannel();
    this.wake.port1.onmessage = () => this.flush();
    /** @type {ReturnType<typeof setInterval> | null} */
    this.beatTimer = null;
    this.checkTimer = setInterval(() => this.check(), CHECK_MS);
    this.onFreeze = () => this.pause();
    this.onResume = () => this.resume();
    /** @param {PageTransitionEvent} event */
    this.onPageShow = (event) => {
      if (event.persisted) this.resume();
    };
    document.addEventListener("freeze", this.onFreeze);
    document.addEventListener("resume", this.onResume);
    addEventListener("pagehide", this.onFreeze);
    addEventListener("pageshow", this.onPageShow);
    this.request(false);
    this.post({ type: "ping", from: this.id });
  }

  /** @param {boolean} steal */
  request(steal) {
    const grant = ++this.grants;
    /** @type {LockOptions} */
    const options = { steal };
    if (!steal) {
      this.queued = new AbortController();
      options.signal = this.queued.signal;
    }
    navigator.locks.request(this.name, options, () => this.hold(grant)).catch(() => {
      // Our waiting request was withdrawn, or the lock we held was stolen: then step down.
      if (grant === this.heldGrant) this.stepDown();
    });
  }

  /**
   * The lock is ours: open the stream and keep the lock until we step down.
   * @param {number} grant
   */
  hold(grant) {
    if (this.stopped || this.frozen || grant !== this.grants) return undefined;
    this.queued = null;
    this.holding = true;
    this.heldGrant = grant;
    this.hub.relay = (item) => this.send(item);
    this.hub.hold();
    this.beatTimer = setInterval(() => this.flush(true), BEAT_MS);
    this.flush(true);
    return new Promise((resolve) => {
      this.unlock = () => resolve(undefined);
    });
  }

  /** Close our stream and give the lock back; queue for it again unless stopped or frozen. */
  stepDown() {
    if (!this.holding) return;
    this.flush();
    this.holding = false;
    this.heldGrant = 0;
    if (this.beatTimer !== null) clearInterval(this.beatTimer);
    this.beatTimer = null;
    this.hub.relay = null;
    this.hub.letGo();
    if (this.unlock) this.unlock();
    this.unlock = null;
    this.heardAt = performance.now();
    this.pingedAt = 0;
    if (!this.stopped && !this.frozen) this.request(false);
  }

  /** A frozen or hidden page can neither hold the stream nor be handed it. */
  pause() {
    this.frozen = true;
    this.stepDown();
    if (this.queued) this.queued.abort();
    this.queued = null;
  }

  resume() {
    if (!this.frozen || this.stopped) return;
    this.frozen = false;
    this.heardAt = performance.now();
    this.pingedAt = 0;
    this.request(false);
    this.post({ type: "ping", from: this.id });
  }

  stop() {
    this.stopped = true;
    this.stepDown();
    if (this.queued) this.queued.abort();
    this.queued = null;
    clearInterval(this.checkTimer);
    document.removeEventListener("freeze", this.onFreeze);
    document.removeEventListener("resume", this.onResume);
    removeEventListener("pagehide", this.onFreeze);
    removeEventListener("pageshow", this.onPageShow);
    this.wake.port1.close();
    this.channel.close();
  }

  /** @param {Item} item */
  send(item) {
    this.outbox.push(item);
    if (!this.flushing) {
      this.flushing = true;
      this.wake.port2.postMessage(null);
    }
  }

  /** Relay what the stream brought since the last flush; with `beat`, even if nothing. */
  flush(beat = false) {
    this.flushing = false;
    if (!this.holding || (this.outbox.length === 0 && !beat)) return;
    const items = this.outbox;
    this.outbox = [];
    const hub = this.hub;
    this.post({ type: "relay", from: this.id, items, status: hub.status, frame: hub.frame, cursor: hub.cursor });
  }

  /** @param {Message} message */
  post(message) {
    try {
      this.channel.postMessage(message);
    } catch (error) {
      console.warn("devbus: could not reach the other tabs:", error);
    }
  }

  /** @param {Message} message */
  receive(message) {
    if (this.stopped || !message || message.from === this.id) return;
    if (message.type === "ping") {
      if (this.holding) this.flush(true);
      else this.pingers.add(message.from);
      return;
    }
    if (message.type !== "relay") return;
    // A holder we stole from, back from a pause, may relay what it had buffered before it
    // learns that the lock is gone: the hub drops what it has already delivered.
    this.heardAt = performance.now();
    this.pingedAt = 0;
    this.pingers.clear();
    if (this.holding) {
      for (const item of message.items) if ("event" in item) this.hub.apply(item);
      return;
    }
    for (const item of message.items) this.hub.apply(item);
    this.hub.sync(message.status, message.frame, message.cursor);
  }

  /** Ask a silent holder to answer; take its place when it does not. */
  check() {
    if (this.holding || this.frozen || this.stopped) return;
    const now = performance.now();
    if (this.pingedAt === 0) {
      if (now - this.heardAt < PING_AFTER_MS) return;
      this.pingedAt = now;
      this.pingers.add(this.id);
      this.post({ type: "ping", from: this.id });
      return;
    }
    const waited = now - this.pingedAt;
    // Every live follower pings within CHECK_MS of the others, so by now each has heard the
    // others' pings: the smallest id steals, and the rest do only if it fails to.
    const first = [...this.pingers].sort()[0] === this.id;
    if (waited >= STEAL_AFTER_MS * (first ? 1 : 3)) {
      this.pingedAt = 0;
      this.pingers.clear();
      this.heardAt = now;
      if (this.queued) this.queued.abort();
      this.queued = null;
      this.request(true);
    }
  }
}

/** @type {Map<string, Hub>} */
const sharedHubs = new Map();

/**
 * The hub this tab uses for the bus at `config`: shared by every subscription of the tab
 * and, where the browser can, with the other tabs of the origin.
 * @param {Config} config
 * @param {string | undefined} since a subscription that resumes from its own id reads alone,
 *   since the shared stream is at another position
 */
function hubFor(config, since) {
  const key = `devbus ${config.api}${config.token ? ` ${tag(config.token)}` : ""}`;
  const existing = since ? undefined : sharedHubs.get(key);
  if (existing) return existing;
  /** @type {Share | null} */
  let share = null;
  const hub = new Hub(config, since || null, () => {
    if (share) share.stop();
    else hub.letGo();
    if (sharedHubs.get(key) === hub) sharedHubs.delete(key);
  });
  if (since) {
    hub.hold();
    return hub;
  }
  sharedHubs.set(key, hub);
  if (canShare()) {
    try {
      share = new Share(hub, key);
      return hub;
    } catch (error) {
      console.warn("devbus: cannot share the stream with other tabs; this tab connects on its own:", error);
    }
  }
  hub.hold(); // one stream for this tab's subscriptions
  return hub;
}

/**
 * @param {Config} config
 * @param {Omit<Listener, "onConnected"> & {onConnected?: (frame: ConnectedFrame) => void}} listener
 * @param {string | undefined} since
 */
function listen(config, listener, since) {
  const hub = hubFor(config, since);
  return hub.add({ onConnected: undefined, ...listener });
}

/**
 * Create a client for the bus at `url` (default: where this module was served from).
 * `send` resolves with the new event's id; `subscribe` returns an unsubscribe function.
 * @type {typeof import("./devbus.js").createDevbus}
 */
export function createDevbus(options = {}) {
  const config = resolveOptions(options);
  return {
    url: config.url,

    async send(type, data = /** @type {any} */ ({}), { source } = {}) {
      /** @type {{event_type: string, data: unknown, source?: string}} */
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
      const matches = typeMatcher(patterns);
      return listen(config, { matches, onEvent: /** @type {(event: DevbusEvent) => void} */ (onEvent), onStatus }, since);
    },

    async history({ types, since, limit } = {}) {
      const params = new URLSearchParams();
      const list = patternList(types).join(",");
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
      /** @type {{event_type: string, data: unknown, source?: string}} */
      const body = { event_type: type, data };
      if (source !== undefined) body.source = source;
      /** @param {string} text */
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

/**
 * Drop-in for the hand-rolled helper: POST {event_type, data}; never throws.
 * @type {typeof import("./devbus.js").sendDevWebhook}
 */
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

/**
 * Drop-in for the hand-rolled helper: call onEvent(type, data) for every frame; never throws.
 * @type {typeof import("./devbus.js").subscribeToBackendEvents}
 */
export function subscribeToBackendEvents(onEvent) {
  if (skipInProduction()) return () => {};
  if (typeof EventSource === "undefined") {
    console.warn("devbus: EventSource is not available here (server-side render?); not subscribing");
    return () => {};
  }
  const config = resolveOptions();
  let down = false;
  try {
    return listen(
      config,
      {
        matches: () => true,
        onEvent: (event) => onEvent(event.type, event.data),
        // The old helper passed the connected frame through like any other; so do we.
        onConnected: (frame) => onEvent(frame.type, /** @type {{data?: unknown}} */ (frame).data),
        onStatus: (status) => {
          if (status.state === "reconnecting" && !down) {
            down = true;
            console.warn(`devbus: event stream at ${config.url} is down (${status.error || "disconnected"}); retrying`);
          } else if (status.state === "open") {
            down = false;
          }
        },
      },
      undefined,
    );
  } catch (error) {
    console.warn("devbus: could not open the event stream:", error);
    return () => {};
  }
}
