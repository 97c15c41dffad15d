// Types for the devbus React hook (`import { useDevbus } from "devbus/react"`).

import type { Devbus, DevbusStatus, EventFor, UntypedEvents } from "./devbus.js";

export interface UseDevbusOptions<M extends object = UntypedEvents> {
  /** The client to subscribe with; default: `createDevbus()` with the defaults set by `configure()`. */
  bus?: Devbus<M>;
}

/**
 * Call `onEvent` for each event whose type matches `patterns` while the component is
 * mounted, and return the state of the stream (`"connecting"`, `"open"`, `"reconnecting"`,
 * `"closed"`). The latest `onEvent` is called, so it may close over fresh state; changing
 * `patterns` resubscribes. Every component and every tab shares one stream. In a production
 * build (`process.env.NODE_ENV === "production"`) it subscribes to nothing and returns `"closed"`.
 */
export function useDevbus<M extends object = UntypedEvents, P extends string = string>(
  patterns: P | readonly P[] | null | undefined,
  onEvent: (event: EventFor<M, P>) => void,
  options?: UseDevbusOptions<M>,
): Exclude<DevbusStatus["state"], "gap">;
