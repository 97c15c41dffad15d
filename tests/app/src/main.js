// A page as an app builds it: devbus from npm, bundled by Vite. The tests drive it through
// `window`; `?bus=` says where the bus is, `?types=` what to subscribe to, `?react=1`
// subscribes with the React hook instead of createDevbus().subscribe.
import { configure, createDevbus, sendDevWebhook, subscribeToBackendEvents } from "devbus";
import { useDevbus } from "devbus/react";
import { createElement, useState } from "react";
import { createRoot } from "react-dom/client";

const params = new URLSearchParams(location.search);
configure({ url: params.get("bus") ?? undefined });
const types = params.get("types");
const received = []; // every event delivered, with `at`: when (Date.now())
const statuses = [];
const arrived = (event) => received.push({ ...event, at: Date.now() });
Object.assign(window, { devbus: { createDevbus, sendDevWebhook, subscribeToBackendEvents }, received, statuses });

function Events() {
  const [events, setEvents] = useState([]);
  const state = useDevbus(types, (event) => {
    arrived(event);
    setEvents((shown) => [...shown, event]);
  });
  return createElement(
    "section",
    null,
    createElement("p", { id: "state" }, state),
    createElement(
      "ul",
      { id: "events" },
      events.map((event) => createElement("li", { key: event.id }, `${event.type} ${JSON.stringify(event.data)}`)),
    ),
  );
}

if (params.get("react")) {
  createRoot(document.getElementById("root")).render(createElement(Events));
} else {
  const bus = createDevbus();
  const stop = bus.subscribe(types, arrived, {
    onStatus: (status) => statuses.push(status),
  });
  Object.assign(window, { bus, stop });
}
window.ready = true;
