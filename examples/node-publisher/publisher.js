// Publish events to devbus over ZeroMQ from Node.js without losing any.
//
// The bus's ingest is a SUB socket. A plain PUB drops what it sends before the bus's
// subscription reaches it, and drops again whenever its queue is full. So this uses an
// XPUB that
//   - waits for the bus's subscription (a one-byte message, 0x01) before the first send;
//   - sets noDrop (ZMQ_XPUB_NODROP): at the high-water mark libzmq refuses the send with
//     EAGAIN instead of dropping, and zeromq.js hands that error to us rather than waiting,
//     so send() retries after a short pause until the bus has taken what is queued.
import { XPublisher } from "zeromq";
import { encode } from "@msgpack/msgpack";

const RETRY_MS = 1; // pause before trying a full queue again

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Connect to the bus's ingest and resolve once the bus listens.
 * @param {{ingest?: string, token?: string, source?: string, timeoutMs?: number}} options
 */
export async function connect({
  ingest = process.env.DEVBUS_INGEST || "tcp://127.0.0.1:8766",
  token = process.env.DEVBUS_TOKEN || undefined,
  source = "node",
  timeoutMs = 5000,
} = {}) {
  const sock = new XPublisher({ noDrop: true, linger: 30000 });
  sock.connect(ingest);
  const timer = setTimeout(() => sock.close(), timeoutMs);
  try {
    const [subscription] = await sock.receive(); // the bus subscribed: safe to send
    if (subscription[0] !== 1) throw new Error(`unexpected message from ${ingest}`);
  } catch (error) {
    throw new Error(`No devbus at ${ingest} within ${timeoutMs} ms; start one with \`devbus run\``, {
      cause: error,
    });
  } finally {
    clearTimeout(timer);
  }

  let retries = 0;

  /** Send one event; wait (never drop) while the bus is behind. */
  async function send(type, data = {}, eventSource = source) {
    const body = { type, data, source: eventSource };
    if (token) body.token = token;
    const frames = [type, encode(body)];
    for (;;) {
      try {
        await sock.send(frames);
        return;
      } catch (error) {
        if (error.code !== "EAGAIN") throw error;
        retries += 1;
        await sleep(RETRY_MS);
      }
    }
  }

  /** Close once everything queued is handed to the kernel (up to the linger). */
  function close() {
    sock.close();
  }

  return { send, close, get retries() { return retries; } };
}
