// Must NOT compile: `nmae` is a typo for `name` (test_typescript.py checks tsc says so).
import { createDevbus } from "./devbus";
import type { DevbusEventMap } from "./devbus-events";

const bus = createDevbus<DevbusEventMap>();
bus.subscribe("agent.created", (e) => e.data.nmae);
