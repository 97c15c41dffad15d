// Compiles with `tsc --strict` against the types `devbus types --ts` writes (test_typescript.py).
import { createDevbus, type DevbusEvent as Envelope } from "./devbus";
import type { DevbusEvent, DevbusEventMap } from "./devbus-events";

const bus = createDevbus<DevbusEventMap>();

// The example: the handler reads a field of `agent.created`.
bus.subscribe("agent.created", (e) => e.data.name);

const names: string[] = [];
bus.subscribe("agent.created", (event) => {
  if (event.type === "devbus.gap") return; // the gap event: refetch
  names.push(event.data.name);
  const bulk: boolean = event.data.bulk;
  void bulk;
});

bus.subscribe("agents.*", (event) => {
  if (event.type === "agents.bulk_created") {
    const ids: string[] = event.data.agent_ids;
    const count: number = event.data.count;
    void [ids, count];
  }
});

// Optional fields, nulls and nested arrays.
bus.subscribe("misc.thing", (event) => {
  if (event.type !== "misc.thing") return;
  const a: string | null = event.data.a;
  const nested: number[][] | undefined = event.data.c?.d;
  const maybe: boolean | undefined = event.data.e;
  void [a, nested, maybe];
});

// A discriminated union over every type seen.
function describe(event: DevbusEvent): string {
  switch (event.type) {
    case "agent.created":
      return event.data.name;
    case "agents.bulk_created":
      return String(event.data.count);
    default:
      return event.type;
  }
}
void describe;

// Typed sends, and the untyped client keeps its old signatures.
void bus.send("agent.created", { id: "1", name: "Ada", created_at: "now", bulk: false });
const plain = createDevbus();
plain.subscribe("anything.*", (event: Envelope) => console.log(event.data["whatever"]));
plain.subscribe(null, (event) => console.log(event.type, event.data));
void plain.send("x.y", { free: "form" });
