// Types for the devbus browser client: the npm package `devbus`, and GET /devbus.js on the bus.

/** One event as the bus delivers it. */
export interface DevbusEvent<TData = Record<string, unknown>> {
  /** Opaque, unique, strictly increasing within one run of the bus. */
  id: string;
  type: string;
  data: TData;
  /** ISO-8601 UTC, e.g. "2026-11-28T14:44:36.480879Z". */
  timestamp: string;
  /** "http", "trigger", "zmq", "watch", or what the sender set. */
  source: string;
}

/** Data of the control event the bus sends when it cannot resume where the client left off. */
export interface DevbusGapData {
  last_event_id: string;
  resume_from: string;
  run: string;
}

export type DevbusStatus =
  | { state: "connecting"; url: string }
  | { state: "open"; run: string | null; lastId: string | null }
  /** Events may have been missed (bus restarted, or history exceeded): refetch your state. */
  | { state: "gap"; event: DevbusEvent<DevbusGapData> }
  /** `error` says why the stream could not open (bus down, bad token, ...), if known. */
  | { state: "reconnecting"; delayMs: number; error: string | null }
  | { state: "closed" };

export interface DevbusOptions {
  /** Base URL of the bus; default: the origin this module was served from, else http://127.0.0.1:8765. */
  url?: string;
  /** Sent as `Authorization: Bearer` to the API and as `?token=` on the stream. */
  token?: string;
  /** API prefix; default "/api/dev" (or the bus's --prefix when served by it). */
  prefix?: string;
}

export interface SubscribeOptions {
  /**
   * Resume after this event id (replayed by the bus, or a `devbus.gap` first). Such a
   * subscription reads its own stream instead of the one its tabs share.
   */
  since?: string;
  onStatus?: (status: DevbusStatus) => void;
}

export interface HistoryOptions {
  types?: string | readonly string[];
  since?: string;
  limit?: number;
}

export interface DevbusHealth {
  status: "ok";
  version: string;
  uptime_s: number;
  subscribers: number;
  events: number;
  /** One entry per `devbus run --forward` target. */
  forward?: ForwardTarget[];
  [key: string]: unknown;
}

export interface ForwardTarget {
  url: string;
  name: string;
  state: "up" | "down";
  queued: number;
  forwarded: number;
  rejected: number;
  dropped: number;
}

/** A refusal from the bus: `message` is the server's error text, `status` its HTTP status (0: unreachable). */
export interface DevbusError extends Error {
  status: number;
}

/**
 * A map from event type to the type of its `data`, such as the `DevbusEventMap` that
 * `devbus types --ts` writes. The default knows no types: every event is a `DevbusEvent`.
 */
export type UntypedEvents = Record<string, Record<string, unknown>>;

/** The `data` of a `K` event under the map `M`. */
export type DataOf<M, K extends string> = K extends keyof M ? M[K] : Record<string, unknown>;

/**
 * The gap event as a typed handler sees it: next to the data `D` of the events it asked for,
 * it has none of their fields (they read as `undefined`), so `event.data.name` compiles for
 * both, and `event.type === "devbus.gap"` tells them apart.
 */
export type DevbusGapEvent<D = {}> = DevbusEvent<
  DevbusGapData & { [P in Exclude<keyof D, keyof DevbusGapData>]?: undefined }
> & { type: typeof DEVBUS_GAP };

type TypedEvent<M, K> = K extends keyof M & string ? (DevbusEvent<M[K]> & { type: K }) | DevbusGapEvent<M[K]> : never;
type Matching<M, P extends string> = P extends keyof M
  ? P
  : P extends `${infer Head}*${string}`
    ? Extract<keyof M, `${Head}${string}`>
    : never;

/**
 * The events a handler subscribed to `P` receives under the map `M`: the typed events of the
 * types that `P` names or matches, or a plain `DevbusEvent` when the map knows none of them.
 */
export type EventFor<M, P extends string> = string extends keyof M
  ? DevbusEvent
  : [Matching<M, P>] extends [never]
    ? DevbusEvent
    : TypedEvent<M, Matching<M, P>>;

export interface Devbus<M extends object = UntypedEvents> {
  readonly url: string;
  /** POST the event to the webhook; resolves with its id, rejects with the server's error message. */
  send<K extends string>(type: K, data?: DataOf<M, K>, options?: { source?: string }): Promise<string>;
  /**
   * Receive events whose type matches a glob (`"agent.*"`, `["a.*", "b.created"]`; none: all).
   * Reconnects by itself and resumes without loss or duplicates; a `devbus.gap` event (also
   * reported to onStatus) means events were missed. Returns the unsubscribe function.
   * Every subscription of every tab of the page's origin shares one stream to the bus.
   * With a typed map (`createDevbus<DevbusEventMap>()`), `event` is typed by the patterns.
   */
  subscribe<P extends string = string>(
    patterns: P | readonly P[] | null | undefined,
    onEvent: (event: EventFor<M, P>) => void,
    options?: SubscribeOptions,
  ): () => void;
  /** Retained events, oldest first. */
  history(options?: HistoryOptions): Promise<DevbusEvent[]>;
  health(): Promise<DevbusHealth>;
  /** The event catalogue (GET /types): what each type seen looks like. */
  types(): Promise<DevbusCatalogue>;
  /** A shell command that POSTs this event to the webhook with curl (with the token, if any). */
  curl(type: string, data?: Record<string, unknown>, options?: { source?: string }): string;
}

/** One event type in the catalogue. */
export interface DevbusTypeInfo {
  type: string;
  count: number;
  first_seen: string;
  last_seen: string;
  sources: string[];
  /** One payload seen (null if every one was over the example size bound). */
  example: Record<string, unknown> | null;
  /** A JSON Schema of `data`, merged from every payload seen. */
  schema: Record<string, unknown>;
  /** False once the schema stopped learning at one of the bus's bounds. */
  schema_complete: boolean;
}

export interface DevbusCatalogue {
  types: DevbusTypeInfo[];
  limits: Record<string, number>;
}

export const DEVBUS_GAP: "devbus.gap";

/** A client; pass the `DevbusEventMap` written by `devbus types --ts` to type events by their type. */
export function createDevbus<M extends object = UntypedEvents>(options?: DevbusOptions): Devbus<M>;

/** Set the defaults used by the drop-in helpers and by createDevbus(). */
export function configure(options?: DevbusOptions): void;

/**
 * A test for event types that matches as the bus matches `?types=`: `*` any run of
 * characters, `?` one, `[abc]`, `[a-z]`, `[!abc]`; case-sensitive, the whole type. No
 * pattern, or `*` among them, matches every type.
 */
export function typeMatcher(patterns: string | readonly string[] | null | undefined): (type: string) => boolean;

/** Drop-in for the hand-rolled helper: POSTs {event_type, data}; never throws (warns instead). */
export function sendDevWebhook(eventType: string, data: Record<string, unknown>): Promise<void>;

/** Drop-in for the hand-rolled helper: calls onEvent for every frame; returns the cleanup function. */
export function subscribeToBackendEvents(onEvent: (eventType: string, data: unknown) => void): () => void;
