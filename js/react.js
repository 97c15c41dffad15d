// The React hook: subscribe a component to events for as long as it is mounted.
//
//   import { useDevbus } from "devbus/react";
//   const state = useDevbus("agent.*", (event) => setAgents((agents) => [...agents, event.data]));
//
// Every component (and every tab) shares one stream; see devbus.js. A hook needs no
// "use client" of its own: the component that calls it is a client component already.

import { useEffect, useRef, useState } from "react";
import { createDevbus } from "./devbus.js";

/** @typedef {import("./devbus.js").Devbus<any>} Devbus */
/** @typedef {import("./devbus.js").DevbusStatus} DevbusStatus */

/** @type {Devbus | null} */
let defaultBus = null;

function isProductionBuild() {
  try {
    // @ts-ignore: `process` exists only where a bundler or Node.js provides it
    return process.env.NODE_ENV === "production"; // eslint-disable-line no-undef
  } catch {
    return false;
  }
}

/** @type {typeof import("./react.js").useDevbus} */
export function useDevbus(patterns, onEvent, options = {}) {
  const handler = useRef(onEvent);
  const [state, setState] = useState(/** @type {Exclude<DevbusStatus["state"], "gap">} */ ("connecting"));
  const key = patterns == null ? "" : (typeof patterns === "string" ? [patterns] : Array.from(patterns)).join(",");
  const bus = options.bus;
  useEffect(() => {
    handler.current = onEvent;
  });
  useEffect(() => {
    if (isProductionBuild()) {
      setState("closed");
      return undefined;
    }
    // Created on first use, not at import, so that configure() called by the app applies.
    const client = bus ?? (defaultBus ??= createDevbus());
    return client.subscribe(key || null, (event) => handler.current(/** @type {any} */ (event)), {
      onStatus: (status) => {
        if (status.state !== "gap") setState(status.state);
      },
    });
  }, [key, bus]);
  return state;
}
