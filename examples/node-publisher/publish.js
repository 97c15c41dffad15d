#!/usr/bin/env node
// node publish.js [COUNT] [TYPE]: send COUNT events {n} of TYPE to the bus, in order.
import { connect } from "./publisher.js";

const count = Number(process.argv[2] ?? 1);
const type = process.argv[3] ?? "node.tick";
if (!Number.isInteger(count) || count < 1) {
  console.error("usage: node publish.js [COUNT] [TYPE]");
  process.exit(2);
}

try {
  const bus = await connect();
  for (let n = 0; n < count; n++) await bus.send(type, { n });
  bus.close();
  console.error(`sent ${count} × ${type} (${bus.retries} waits for a full queue)`);
} catch (error) {
  console.error(error.message);
  process.exit(1);
}
