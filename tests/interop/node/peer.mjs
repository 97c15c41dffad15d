// zeromq.js (v6) as a peer of the bus, for tests/test_zmtp_interop.py (the same contract as peer.py and peer.c).
//
//     node peer.mjs pub|xpub|sub ENDPOINT HEARTBEAT_MS [PREFIX]
//
// A message is one line of its frames in hex, separated by spaces.
// - pub: the first stdin line is a warm-up message, sent every 20 ms until the line "go"
//   (a PUB drops what it sends before the bus's subscription arrives); then every line is sent.
// - xpub: prints "subscribed" once the bus's subscription arrived (noDrop: at the high-water
//   mark zeromq.js refuses the send with EAGAIN rather than waiting, so it is tried again),
//   then sends every stdin line.
// - sub: subscribes to PREFIX and prints every message it receives.
// Every role stops at the end of stdin, closing its socket with a linger so nothing queued is lost.
// ZMTP heartbeats are on: a PING every HEARTBEAT_MS, a TTL of thirty and a timeout of ten intervals
// (generous, for a busy machine: a bus that never answers still fails in one second).
import { createInterface } from "node:readline";
import { Publisher, Subscriber, XPublisher } from "zeromq";

const WARM_UP_MS = 20;
const RETRY_MS = 1;

const [role, endpoint, heartbeatText, prefix = ""] = process.argv.slice(2);
const heartbeat = Number(heartbeatText);
const options = {
  linger: role === "sub" ? 0 : 10000, // a publisher flushes what it queued
  heartbeatInterval: heartbeat,
  heartbeatTimeToLive: heartbeat * 30,
  heartbeatTimeout: heartbeat * 10,
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const frames = (line) => line.split(" ").filter(Boolean).map((word) => Buffer.from(word, "hex"));
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function send(socket, message) {
  for (;;) {
    try {
      await socket.send(message);
      return;
    } catch (error) {
      if (error.code !== "EAGAIN") throw error;
      await sleep(RETRY_MS);
    }
  }
}

async function publish(socket) {
  if (role === "pub") {
    const warm = frames((await lines.next()).value);
    let going = false;
    const told = lines.next().then(() => (going = true));
    while (!going) {
      await send(socket, warm);
      await Promise.race([told, sleep(WARM_UP_MS)]);
    }
  } else {
    const [subscription] = await socket.receive();
    if (subscription.length !== 1 || subscription[0] !== 1) throw new Error("the bus did not subscribe to everything");
    process.stdout.write("subscribed\n");
  }
  for (let line = await lines.next(); !line.done; line = await lines.next()) {
    await send(socket, frames(line.value));
  }
}

async function receive(socket) {
  lines.next().then(() => socket.close()); // the end of stdin ends the loop below
  for await (const message of socket) {
    process.stdout.write(message.map((frame) => frame.toString("hex")).join(" ") + "\n");
  }
}

const socket =
  role === "sub" ? new Subscriber(options) : role === "xpub" ? new XPublisher({ ...options, noDrop: true }) : new Publisher(options);
if (role === "sub") socket.subscribe(prefix);
socket.connect(endpoint);
if (role === "sub") {
  await receive(socket);
} else {
  await publish(socket);
  socket.close();
}
