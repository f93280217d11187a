import { createClient } from "@datalayer/client";

const dl = createClient({ baseUrl: process.env.DATALAYER_URL ?? "http://localhost:50051" });
const queue = process.env.QUEUE ?? "analyses";

// SIGTERM or Ctrl-C: no new messages; running handlers finish (and are acked) first.
const stop = new AbortController();
process.once("SIGTERM", () => stop.abort());
process.once("SIGINT", () => stop.abort());

const summary = await dl.queue.work(
  queue,
  async (msg) => {
    const job = JSON.parse(new TextDecoder().decode(msg.payload));
    if (!job.id) throw new Error("a job needs an id"); // thrown: nacked (retried, then dead-lettered)
    console.log(`analysed job ${job.id} (attempt ${msg.attempt})`); // resolved: acked
  },
  { concurrency: 10, leaseDuration: "60s", signal: stop.signal },
);
console.log(`acked ${summary.acked}, nacked ${summary.nacked}, dead-lettered ${summary.deadLettered}`);
dl.close();
