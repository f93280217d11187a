// Queue benchmark: datalayer's QueueService (gRPC, through the project's
// TypeScript client) against BullMQ's Queue + Worker, on the same Redis, in
// the same run, at the same concurrency. Started by scripts/bench/queue/run.sh,
// which copies this file next to a scratch node_modules (bullmq, ioredis,
// Connect) and the TypeScript client compiled into ./dl.
//
// For each system, in this order (datalayer, then BullMQ, phase by phase):
//   warm-up  WARMUP jobs, not reported;
//   full     N jobs: P producers enqueue as fast as they are answered
//            (BATCH jobs per call) while one consumer with concurrency C
//            takes and completes them; jobs/s from the first enqueue to the
//            last completion, enqueue->complete latency of every job;
//   half     jobs enqueued open-loop at half of that system's own full
//            rate (one job per call, not waiting for answers): p50/p99 of
//            enqueue->complete, from the enqueue call to the completion;
//   same     jobs open-loop at half of the slower system's full rate, for
//            both: latency at the same offered load.
// The half and same phases run N/2 jobs, or fewer: QBENCH_HALF_SECONDS
// (default 10) of offered load.
// "Complete" is datalayer's ack answered, or BullMQ's Worker 'completed'
// event (emitted once moveToCompleted has answered). The consumer does
// nothing with a job but complete it.
//
// datalayer's consumer (QBENCH_DL_CONSUMER) holds at most C jobs at once,
// as a BullMQ Worker of concurrency C does:
//   consume  (the default) the client's worker helper,
//            `dl.queue.consume(queue, { concurrency: C })`: one Consume
//            stream with C credits, each delivery acked with `msg.ack()`,
//            which acks on the stream itself (answered there as `acked`,
//            its credit given back by the ack: no unary call per job).
//            "Complete" is the `acked` answer;
//   consume-unary  the raw Consume stream with C credits, each delivery
//            acked with the unary Ack, then one `credit` sent back when it
//            answers (how the helper worked before acks on the stream);
//   lease    C loops, each Lease (one message, long-polling up to 2 s)
//            then Ack.
// One job per call, datalayer's producers use (QBENCH_DL_ENQUEUE):
//   add      (the default) the client's `dl.queue.add(queue, message)`,
//            which sends the adds of one event-loop turn as one
//            EnqueueBatch, each caller answered on its own, as BullMQ's
//            producers each call `queue.add`;
//   unary    one unary Enqueue per job.
// Batching (QBENCH_BATCH > 1) applies to the producers of both systems
// alike: datalayer's EnqueueBatch and BullMQ's addBulk, BATCH jobs per
// call, at full load only. Neither consumer batches: BullMQ's Worker moves
// each job to completed with its own Redis call (fetching the next job in
// the same call); datalayer's stream acks one message per request, and the
// service pipelines the acks that arrive together.
// Every phase checks its outcome: each job completed once, and the queue's
// Stats (datalayer) or job counts (BullMQ) as expected; the service's
// non-OK calls (from its metrics) are reported.
//
// CPU per job per process (redis-server, datalayer, this node process) is
// read from /proc/<pid>/stat (utime + stime) around each phase.
import { setMaxListeners } from "node:events";
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { Queue, Worker } from "bullmq";
import IORedis from "ioredis";
import { createClient } from "./dl/index.js";

const env = (k, d) => process.env[k] ?? d;
const N = Number(env("QBENCH_JOBS", 20000));
const C = Number(env("QBENCH_CONCURRENCY", 50));
const P = Number(env("QBENCH_PRODUCERS", C));
const BATCH = Number(env("QBENCH_BATCH", 1));
const WARMUP = Number(env("QBENCH_WARMUP", 2000));
// datalayer's consumer: "consume" (the worker helper: one Consume stream
// with C credits, acks on the stream), "consume-unary" (the raw stream,
// unary Ack + credit) or "lease" (C loops of Lease + Ack).
const DL_CONSUMER = env("QBENCH_DL_CONSUMER", "consume");
const DL_ENQUEUE = env("QBENCH_DL_ENQUEUE", "add");
if (!["add", "unary"].includes(DL_ENQUEUE)) throw new Error(`QBENCH_DL_ENQUEUE must be add or unary, got ${DL_ENQUEUE}`);
const DL_CONSUMERS = {
  consume: "the worker helper: one Consume stream with C credits, acks on the stream",
  "consume-unary": "one Consume stream with C credits, unary Ack + credit",
  lease: "C loops of Lease + Ack",
};
if (!(DL_CONSUMER in DL_CONSUMERS)) throw new Error(`QBENCH_DL_CONSUMER: ${Object.keys(DL_CONSUMERS).join(", ")}, not ${DL_CONSUMER}`);
const HALF_SECONDS = Number(env("QBENCH_HALF_SECONDS", 10));
const PHASE_TIMEOUT_MS = Number(env("QBENCH_PHASE_TIMEOUT_MS", 60000));
const ADDR = env("QBENCH_ADDR");
const REDIS_URL = env("QBENCH_REDIS_URL");
const METRICS = env("QBENCH_METRICS_URL");
const TICK = Number(env("QBENCH_CLK_TCK", 100));
const PIDS = { redis: Number(env("QBENCH_REDIS_PID")), datalayer: Number(env("QBENCH_DATALAYER_PID")), node: process.pid };
const RUN = env("QBENCH_RUN_ID", String(Date.now()));
if (!ADDR || !REDIS_URL) throw new Error("QBENCH_ADDR and QBENCH_REDIS_URL are required (run it through run.sh)");

const log = (...a) => console.error(...a);
const problems = []; // errors and misbehaviour, printed at the end
const problem = (s) => {
  problems.push(s);
  log(`!! ${s}`);
};

// --- measurements -------------------------------------------------------------
function cpuTicks(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields 14 and 15 of stat(5); f[0] is field 3 (state).
  return Number(f[11]) + Number(f[12]);
}
const cpuSnap = () => Object.fromEntries(Object.entries(PIDS).map(([k, pid]) => [k, cpuTicks(pid)]));
/** µs of CPU per job, per process, between two snapshots. */
const cpuPerJob = (a, b, n) =>
  Object.fromEntries(Object.keys(a).map((k) => [k, (((b[k] - a[k]) / TICK) * 1e6) / n]));

// Commands Redis ran (INFO commandstats): script calls (EVALSHA, EVAL,
// FCALL) and every command, those run inside scripts included.
const infoConn = new IORedis(REDIS_URL, { maxRetriesPerRequest: null });
async function redisCalls() {
  const info = await infoConn.info("commandstats");
  let scripts = 0;
  let all = 0;
  for (const m of info.matchAll(/^cmdstat_(\w+):calls=(\d+)/gm)) {
    const calls = Number(m[2]);
    all += calls;
    if (/^(evalsha|eval|fcall|evalsha_ro|eval_ro|fcall_ro)$/.test(m[1])) scripts += calls;
  }
  return { scripts, all };
}

function pct(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}
function stats(values) {
  const s = Float64Array.from(values).sort();
  return { p50: pct(s, 50), p99: pct(s, 99), max: s[s.length - 1] ?? NaN, n: s.length };
}

// gRPC calls by method and code, from the service's metrics (non-OK is reported).
async function rpcCounts() {
  if (!METRICS) return {};
  const text = await (await fetch(METRICS)).text();
  const out = {};
  for (const line of text.split("\n")) {
    if (!line.startsWith("datalayer_rpc_requests_total{")) continue;
    const method = /method="([^"]*)"/.exec(line)?.[1];
    const code = /code="([^"]*)"/.exec(line)?.[1];
    const service = /service="([^"]*)"/.exec(line)?.[1] ?? "";
    if (!service.includes("queue")) continue;
    const key = `${method} ${code}`;
    out[key] = (out[key] ?? 0) + Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return out;
}

// --- datalayer ------------------------------------------------------------------
const enc = new TextEncoder();
/** The job's index, from a payload of ASCII digits. */
function indexOf(bytes) {
  let i = 0;
  for (const b of bytes) i = i * 10 + (b - 48);
  return i;
}

/** The request side of a bidi stream: `push` sends, `close` half-closes. */
function outbox() {
  const items = [];
  let wake;
  let closed = false;
  return {
    push(item) {
      items.push(item);
      wake?.();
    },
    close() {
      closed = true;
      wake?.();
    },
    async *[Symbol.asyncIterator]() {
      for (;;) {
        while (items.length > 0) yield items.shift();
        if (closed) return;
        await new Promise((resolve) => (wake = resolve));
        wake = undefined;
      }
    },
  };
}

function datalayer() {
  const producer = createClient({ baseUrl: `http://${ADDR}` });
  const worker = createClient({ baseUrl: `http://${ADDR}` });
  const errs = (what, e) => problem(`datalayer ${what}: ${e?.code !== undefined ? `code ${e.code} ` : ""}${e?.message ?? e}`);
  let redelivered = 0;
  const ack = async (queue, m, onDone) => {
    if (m.attempt !== 1) redelivered++;
    const i = indexOf(m.payload);
    // The job itself: nothing.
    try {
      await worker.queue.ack({ queue, messageId: m.messageId, leaseToken: m.leaseToken });
      onDone(i);
    } catch (e) {
      errs(`Ack of message ${m.messageId}`, e);
    }
  };
  const checkRedelivered = () => {
    if (redelivered) problem(`datalayer: ${redelivered} deliveries had attempt > 1 (redelivered)`);
    redelivered = 0;
  };
  // C workers, each a loop of Lease (one message, long-polling) then Ack.
  const leaseLoops = async (queue, onDone) => {
    const abort = new AbortController();
    setMaxListeners(2 * C + 10, abort.signal); // every loop's call listens to it
    const loop = async () => {
      while (!abort.signal.aborted) {
        let res;
        try {
          res = await worker.queue.lease(
            { queue, maxMessages: 1, wait: { seconds: 2n, nanos: 0 } },
            { timeoutMs: 5000, signal: abort.signal },
          );
        } catch (e) {
          if (!abort.signal.aborted) errs("Lease", e);
          continue;
        }
        for (const m of res.messages) await ack(queue, m, onDone);
      }
    };
    const loops = Array.from({ length: C }, loop);
    return {
      async stop() {
        abort.abort();
        await Promise.all(loops);
        checkRedelivered();
      },
    };
  };
  // The worker helper: one Consume stream with C credits, each delivery
  // acked on the stream (its credit given back by the ack).
  const consumeHelper = async (queue, onDone) => {
    const abort = new AbortController();
    const acking = new Set();
    const loop = (async () => {
      try {
        for await (const msg of worker.queue.consume(queue, { concurrency: C, signal: abort.signal })) {
          if (msg.attempt !== 1) redelivered++;
          const i = indexOf(msg.payload);
          // The job itself: nothing.
          const p = msg.ack().then(
            () => onDone(i),
            (e) => errs(`ack of message ${msg.id}`, e),
          );
          acking.add(p);
          void p.finally(() => acking.delete(p));
        }
        if (!abort.signal.aborted) problem("datalayer consume(): the loop ended before it was stopped");
      } catch (e) {
        if (!abort.signal.aborted) errs("consume()", e);
      }
    })();
    return {
      async stop() {
        abort.abort();
        await loop;
        await Promise.all(acking);
        checkRedelivered();
      },
    };
  };
  // The raw Consume stream with C credits; each unary Ack answered gives one back.
  const consumeStream = async (queue, onDone) => {
    const requests = outbox();
    const abort = new AbortController();
    requests.push({ kind: { case: "start", value: { queue, credits: C } } });
    const stream = worker.queue.consume(requests, { signal: abort.signal });
    const loop = (async () => {
      try {
        for await (const r of stream) {
          if (!r.message) {
            problem("datalayer Consume: an answer without a message");
            continue;
          }
          ack(queue, r.message, onDone).then(() => requests.push({ kind: { case: "credit", value: 1 } }));
        }
        if (!abort.signal.aborted) problem("datalayer Consume: the stream ended before it was stopped");
      } catch (e) {
        if (!abort.signal.aborted) errs("Consume", e);
      }
    })();
    return {
      async stop() {
        abort.abort();
        await loop;
        checkRedelivered();
      },
    };
  };
  return {
    name: "datalayer",
    async enqueue(queue, indices) {
      if (indices.length === 1) {
        const message = { payload: enc.encode(String(indices[0])) };
        if (DL_ENQUEUE === "add") await producer.queue.add(queue, message);
        else await producer.queue.enqueue({ queue, message });
        return;
      }
      const res = await producer.queue.enqueueBatch({
        queue,
        messages: indices.map((i) => ({ payload: enc.encode(String(i)) })),
      });
      if (res.results.length !== indices.length) {
        problem(`datalayer EnqueueBatch of ${indices.length}: expected ${indices.length} results, got ${res.results.length}`);
      }
    },
    async consumer(queue, onDone) {
      if (DL_CONSUMER === "consume") return consumeHelper(queue, onDone);
      return DL_CONSUMER === "consume-unary" ? consumeStream(queue, onDone) : leaseLoops(queue, onDone);
    },
    async verify(queue, n) {
      const s = await producer.queue.stats({ queue });
      const got = { enqueued: s.enqueuedTotal, acked: s.ackedTotal, waiting: s.waiting, leased: s.leased, dead: s.dead, retried: s.retriedTotal };
      const want = { enqueued: BigInt(n), acked: BigInt(n), waiting: 0n, leased: 0n, dead: 0n, retried: 0n };
      for (const k of Object.keys(want)) {
        if (got[k] !== want[k]) problem(`datalayer Stats(${queue}).${k}: expected ${want[k]}, got ${got[k]}`);
      }
    },
    close() {
      producer.close();
      worker.close();
    },
  };
}

// --- BullMQ ---------------------------------------------------------------------
function bullmq() {
  const prefix = `bullbench${RUN}`;
  const opts = { maxRetriesPerRequest: null };
  const producerConn = new IORedis(REDIS_URL, opts);
  const queues = new Map();
  const queueOf = (name) => {
    if (!queues.has(name)) queues.set(name, new Queue(name, { connection: producerConn, prefix }));
    return queues.get(name);
  };
  return {
    name: "BullMQ",
    async enqueue(name, indices) {
      const q = queueOf(name);
      if (indices.length === 1) {
        await q.add("job", { i: indices[0] });
        return;
      }
      const jobs = await q.addBulk(indices.map((i) => ({ name: "job", data: { i } })));
      if (jobs.length !== indices.length) {
        problem(`BullMQ addBulk of ${indices.length}: expected ${indices.length} jobs, got ${jobs.length}`);
      }
    },
    async consumer(name, onDone) {
      await queueOf(name).waitUntilReady();
      const conn = new IORedis(REDIS_URL, opts);
      let retried = 0;
      const worker = new Worker(name, async () => {}, { connection: conn, prefix, concurrency: C });
      worker.on("completed", (job) => {
        if (job.attemptsMade > 1) retried++;
        onDone(job.data.i);
      });
      worker.on("failed", (job, e) => problem(`BullMQ job ${job?.id} failed: ${e?.message}`));
      worker.on("error", (e) => problem(`BullMQ Worker error: ${e?.message}`));
      await worker.waitUntilReady();
      return {
        async stop() {
          await worker.close();
          conn.disconnect();
          if (retried) problem(`BullMQ: ${retried} jobs completed after more than one attempt`);
        },
      };
    },
    async verify(name, n) {
      const c = await queueOf(name).getJobCounts("completed", "failed", "active", "wait", "delayed");
      const want = { completed: n, failed: 0, active: 0, wait: 0, delayed: 0 };
      for (const k of Object.keys(want)) {
        if (c[k] !== want[k]) problem(`BullMQ getJobCounts(${name}).${k}: expected ${want[k]}, got ${c[k]}`);
      }
    },
    async close() {
      for (const q of queues.values()) await q.close();
      producerConn.disconnect();
    },
  };
}

// --- one phase ------------------------------------------------------------------
/**
 * Runs n jobs through `sys` on a fresh queue. rate undefined: closed loop,
 * P producers of BATCH jobs per call; else open loop at `rate` jobs/s, one
 * job per call.
 */
async function phase(sys, label, n, rate) {
  const queue = `qbench.${RUN}.${label}`;
  const sent = new Float64Array(n);
  const done = new Float64Array(n);
  const enqLat = [];
  let completed = 0;
  let dups = 0;
  let enqErrors = 0;
  let lastDone = 0;
  let finish;
  const allDone = new Promise((resolve) => (finish = resolve));
  const onDone = (i) => {
    const t = performance.now();
    if (!(i >= 0 && i < n)) return problem(`${sys.name} ${label}: completed a job with index ${i}, not in 0..${n - 1}`);
    if (done[i] !== 0) {
      dups++;
      return;
    }
    done[i] = t;
    lastDone = t;
    if (++completed === n) finish();
  };
  const consumer = await sys.consumer(queue, onDone);
  const send = async (indices) => {
    const t = performance.now();
    for (const i of indices) sent[i] = t;
    try {
      await sys.enqueue(queue, indices);
      enqLat.push(performance.now() - t);
    } catch (e) {
      enqErrors++;
      if (enqErrors <= 5) problem(`${sys.name} ${label}: enqueue of ${indices.length}: ${e?.code !== undefined ? `code ${e.code} ` : ""}${e?.message ?? e}`);
    }
  };

  const calls0 = await redisCalls();
  const cpu0 = cpuSnap();
  const t0 = performance.now();
  let lag = [];
  if (rate === undefined) {
    let next = 0;
    const producer = async () => {
      while (next < n) {
        const from = next;
        next = Math.min(n, next + BATCH);
        const indices = [];
        for (let i = from; i < next; i++) indices.push(i);
        await send(indices);
      }
    };
    await Promise.all(Array.from({ length: Math.min(P, Math.ceil(n / BATCH)) }, producer));
  } else {
    // Open loop: job i is due at t0 + i/rate; each tick sends what is due.
    let i = 0;
    const pending = [];
    while (i < n) {
      const now = performance.now();
      const due = Math.min(n, Math.floor(((now - t0) * rate) / 1000) + 1);
      for (; i < due; i++) {
        lag.push(now - (t0 + (i * 1000) / rate));
        pending.push(send([i]));
      }
      if (i < n) await sleep(1);
    }
    await Promise.all(pending);
  }
  const enqueuedIn = performance.now() - t0;
  const timeout = sleep(PHASE_TIMEOUT_MS).then(() => "timeout");
  if ((await Promise.race([allDone, timeout])) === "timeout") {
    problem(`${sys.name} ${label}: only ${completed} of ${n} jobs completed within ${PHASE_TIMEOUT_MS} ms of the start`);
  }
  const cpu1 = cpuSnap();
  const calls1 = await redisCalls();
  await consumer.stop();
  if (dups) problem(`${sys.name} ${label}: ${dups} jobs completed more than once`);
  await sys.verify(queue, n);

  const lat = [];
  for (let i = 0; i < n; i++) if (done[i] !== 0) lat.push(done[i] - sent[i]);
  const elapsed = (lastDone || performance.now()) - t0;
  const r = {
    label,
    n,
    completed,
    seconds: elapsed / 1000,
    rate: (completed / elapsed) * 1000,
    offered: rate,
    enqueuedIn: enqueuedIn / 1000,
    lat: stats(lat),
    enq: stats(enqLat),
    lag: lag.length ? stats(lag) : undefined,
    cpu: cpuPerJob(cpu0, cpu1, Math.max(1, completed)),
    redis: {
      scripts: (calls1.scripts - calls0.scripts) / Math.max(1, completed),
      all: (calls1.all - calls0.all) / Math.max(1, completed),
    },
    enqErrors,
  };
  log(
    `${sys.name.padEnd(9)} ${label.padEnd(6)} ${String(completed).padStart(6)} jobs in ${r.seconds.toFixed(2)} s = ` +
      `${r.rate.toFixed(0)} jobs/s${rate ? ` (offered ${rate.toFixed(0)}/s)` : ""}; enqueue->complete p50 ${r.lat.p50.toFixed(2)} ms ` +
      `p99 ${r.lat.p99.toFixed(2)} ms max ${r.lat.max.toFixed(1)} ms; enqueue call p50 ${r.enq.p50.toFixed(2)} ms; ` +
      `CPU µs/job redis ${r.cpu.redis.toFixed(0)} datalayer ${r.cpu.datalayer.toFixed(0)} node ${r.cpu.node.toFixed(0)}` +
      (r.lag ? `; send lag p99 ${r.lag.p99.toFixed(2)} ms` : ""),
  );
  return r;
}

// --- main -----------------------------------------------------------------------
const systems = [datalayer(), bullmq()];
const rpc0 = await rpcCounts();
const results = {};
for (const sys of systems) results[sys.name] = {};

log(`jobs ${N}, concurrency ${C}, producers ${P}, batch ${BATCH}, warm-up ${WARMUP}, datalayer consumer ${DL_CONSUMER}`);
for (const sys of systems) await phase(sys, "warmup", WARMUP);
for (const sys of systems) results[sys.name].full = await phase(sys, "full", N);
// N/2 jobs, or fewer: at most HALF_SECONDS of offered load.
const jobsAt = (rate) => Math.max(1, Math.min(Math.floor(N / 2), Math.ceil(rate * HALF_SECONDS)));
for (const sys of systems) {
  const rate = results[sys.name].full.rate / 2;
  results[sys.name].half = await phase(sys, "half", jobsAt(rate), rate);
}
const sameRate = Math.min(...systems.map((s) => results[s.name].full.rate)) / 2;
for (const sys of systems) results[sys.name].same = await phase(sys, "same", jobsAt(sameRate), sameRate);
for (const sys of systems) await sys.close();

const rpc1 = await rpcCounts();
const calls = [];
for (const [k, v] of Object.entries(rpc1)) {
  const d = v - (rpc0[k] ?? 0);
  if (d === 0) continue;
  calls.push(`${k}=${d}`);
  // Cancelled: the streams and long-polls this script ends at each phase's end.
  if (!/ (OK|Cancelled|CANCELLED)$/.test(k)) problem(`datalayer metrics: ${d} calls of ${k}`);
}

// --- the table --------------------------------------------------------------------
const dl = results.datalayer;
const bq = results.BullMQ;
const ms = (x) => `${x.toFixed(2)} ms`;
const rows = [
  ["jobs/s, enqueue -> complete (full load)", (r) => r.full.rate.toFixed(0)],
  ["  enqueue -> complete p50 / p99 (a backlog: producers outrun the consumer)", (r) => `${ms(r.full.lat.p50)} / ${ms(r.full.lat.p99)}`],
  ["half load: offered jobs/s (half its own)", (r) => r.half.offered.toFixed(0)],
  ["  enqueue -> complete p50 / p99", (r) => `${ms(r.half.lat.p50)} / ${ms(r.half.lat.p99)}`],
  [`same load: offered jobs/s (half the slower)`, (r) => r.same.offered.toFixed(0)],
  ["  enqueue -> complete p50 / p99", (r) => `${ms(r.same.lat.p50)} / ${ms(r.same.lat.p99)}`],
  ["CPU µs/job at full load: redis-server", (r) => r.full.cpu.redis.toFixed(0)],
  ["                         datalayer", (r) => r.full.cpu.datalayer.toFixed(0)],
  ["                         node (client + worker)", (r) => r.full.cpu.node.toFixed(0)],
  ["                         total", (r) => (r.full.cpu.redis + r.full.cpu.datalayer + r.full.cpu.node).toFixed(0)],
  ["Redis calls/job at full load: scripts / all commands", (r) => `${r.full.redis.scripts.toFixed(2)} / ${r.full.redis.all.toFixed(1)}`],
  ["CPU µs/job at half load: redis / datalayer / node", (r) => `${r.half.cpu.redis.toFixed(0)} / ${r.half.cpu.datalayer.toFixed(0)} / ${r.half.cpu.node.toFixed(0)}`],
];
const w0 = Math.max(...rows.map((r) => r[0].length));
const cols = rows.map(([, f]) => [f(dl), f(bq)]);
const w1 = Math.max(9, ...cols.map((c) => c[0].length));
const w2 = Math.max(6, ...cols.map((c) => c[1].length));
const line = (a, b, c) => `${a.padEnd(w0)}  ${b.padStart(w1)}  ${c.padStart(w2)}`;
const out = [];
out.push(`jobs ${N} (half and same load: ${dl.half.n} / ${bq.half.n} and ${dl.same.n} jobs), concurrency ${C}, producers ${P}, ${BATCH} job(s) per enqueue call at full load (EnqueueBatch / addBulk), datalayer consumer: ${DL_CONSUMERS[DL_CONSUMER]}`);
out.push(line("", "datalayer", "BullMQ"));
rows.forEach(([label], k) => out.push(line(label, cols[k][0], cols[k][1])));
out.push(`ratio datalayer/BullMQ jobs/s: ${(dl.full.rate / bq.full.rate).toFixed(2)}x (goal >= 2x)`);
out.push(`datalayer gRPC calls (method code=count): ${calls.join(" ") || "none counted"}`);
out.push(problems.length ? `problems (${problems.length}):` : "problems: none");
for (const p of problems) out.push(`  ${p}`);
console.log(out.join("\n"));
process.exit(0);
