// Publish -> deliver latency with many subscribers on one topic: datalayer's
// TopicService/Subscribe against raw Redis Streams readers (ioredis, XREAD
// BLOCK 0 loops), at the same concurrency and publish rate. Started by
// scripts/bench/topics/run.sh, which copies this file next to a scratch
// node_modules (ioredis, Connect) and the TypeScript client compiled into ./dl.
//
// Modes (a run is a rate and a mode; TB_PLAN = "RATE:MODE,MODE RATE:...";
// default: every TB_MODES at every TB_RATES):
//   ts-same   S Subscribe streams on replica A through the project's
//             TypeScript client (Connect), each with its own createClient and
//             so its own HTTP/2 connection; Publish through replica A too, so
//             every publish wakes A's feed at once.
//   h2-same   the same streams through a lean client: node:http2, a
//             pre-encoded SubscribeRequest, a hand-written decoder of the
//             response fields used (see leanSubscriber).
//   ts-other, h2-other   the same subscribers on replica A; Publish through
//             replica B (TB_ADDR_B), so A's feed only sees a message at its
//             next poll (topic.poll_interval).
//   raw       S ioredis connections, each looping XREAD BLOCK 0 STREAMS key
//             <last id>; the publisher sends XADD key MAXLEN 100000 * p <payload>.
// Every subscriber starts right after a first message (after_id / its id as
// XREAD's first id), so each must receive every message that follows.
//
// Processes: this one coordinates; the subscribers run in TB_WORKERS child
// processes (S / TB_WORKERS each), and the publisher in one more, so that no
// event loop both publishes and receives. The publisher sends W warm-up
// messages then N measured ones at the run's rate on a fixed schedule,
// without waiting for answers but with at most TB_PUB_INFLIGHT (32) calls in
// flight (through the TypeScript client for the service, ioredis for raw;
// calls in flight together may be appended in either order). A payload
// is 100 bytes: the sequence number (u32 LE), the send time (f64 LE,
// CLOCK_MONOTONIC in ms via process.hrtime, the same clock in every
// process), taken just before the call, then 'x's. Each subscriber records
// receive time - send time for every measured message, and checks that it
// gets every message, warm-up included, exactly once (by sequence number),
// in the append order (each id after the previous one, and each the id its
// Publish / XADD answered, so every subscriber sees the same order), with no
// gap or fell_behind event, error or early end.
//
// CPU per delivery: utime + stime deltas (/proc/<pid>/stat) of redis-server,
// the datalayer replicas, the subscriber processes and the publisher, from
// the first measured send until every subscriber has everything (or the
// drain times out), divided by the measured deliveries. The table goes to
// stdout, progress to stderr; the exit status is 1 when any check failed or
// the run was disturbed.
import { fork } from "node:child_process";
import http2 from "node:http2";
import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import IORedis from "ioredis";
import { createClient } from "./dl/index.js";

const env = (k, d) => process.env[k] ?? d;
const ADDR_A = env("TB_ADDR_A");
const ADDR_B = env("TB_ADDR_B");
const REDIS_URL = env("TB_REDIS_URL");
const S = Number(env("TB_SUBSCRIBERS", 100));
const WORKERS = Math.max(1, Math.min(S, Number(env("TB_WORKERS", 2))));
// TB_RATES: the coordinator runs every mode at each rate (messages/s), and
// passes the rate of a run to its children as TB_RATE.
const RATES = env("TB_RATES", env("TB_RATE", "500")).split(/\s+/).filter(Boolean).map(Number);
const SECONDS = Number(env("TB_SECONDS", 10));
let RATE, WARM, N, TOTAL;
function setRate(rate) {
  RATE = rate;
  process.env.TB_RATE = String(rate);
  WARM = Math.round(RATE * Number(env("TB_WARMUP_SECONDS", 1)));
  N = Math.round(RATE * SECONDS);
  TOTAL = WARM + N;
}
setRate(Number(env("TB_RATE", RATES[0])));
// TB_PLAN: "RATE:MODE,MODE,... RATE:..."; default: every TB_MODES at every
// TB_RATES.
const MODES = env("TB_MODES", "ts-same h2-same h2-other raw").split(/\s+/).filter(Boolean);
const PLAN = env("TB_PLAN", RATES.map((r) => `${r}:${MODES.join(",")}`).join(" "))
  .split(/\s+/)
  .filter(Boolean)
  .map((step) => {
    const [rate, modes] = step.split(":");
    return { rate: Number(rate), modes: modes.split(",").filter(Boolean) };
  });
const KNOWN = ["ts-same", "ts-other", "h2-same", "h2-other", "raw"];
for (const { modes } of PLAN) {
  for (const m of modes) if (!KNOWN.includes(m)) throw new Error(`unknown mode ${m} (known: ${KNOWN.join(" ")})`);
}
const TICK = Number(env("TB_CLK_TCK", 100));
const DRAIN_MS = Number(env("TB_DRAIN_MS", 5000));
// Publish calls in flight at most: the publisher sends on its schedule without
// waiting for answers, up to this many (1: one at a time).
const INFLIGHT = Math.max(1, Number(env("TB_PUB_INFLIGHT", 32)));
const RUN = env("TB_RUN_ID", String(Date.now()));
process.env.TB_RUN_ID = RUN; // the same topic and key names in every child
const PIDS = {
  redis: Number(env("TB_REDIS_PID")),
  dlA: Number(env("TB_DATALAYER_PID")),
  dlB: Number(env("TB_DATALAYER_B_PID", 0)),
};
const PAYLOAD_BYTES = 100;
const RAW_MAXLEN = 100000;
if (!ADDR_A || !REDIS_URL) throw new Error("TB_ADDR_A and TB_REDIS_URL are required (run it through run.sh)");

const log = (...a) => console.error(...a);
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const topicOf = (mode) => `fanout.${mode}.${RATE}.${RUN}`;
const rawKey = () => `raw:fanout:${RATE}:${RUN}`;

function publisherFor(mode) {
  if (mode === "raw") {
    const redis = new IORedis(REDIS_URL);
    return {
      publish: (p) => redis.xaddBuffer(rawKey(), "MAXLEN", RAW_MAXLEN, "*", "p", p).then((id) => id.toString()),
      close: () => redis.quit(),
    };
  }
  const client = createClient({ baseUrl: `http://${mode.endsWith("-other") ? ADDR_B : ADDR_A}` });
  const topic = topicOf(mode);
  return {
    publish: (p) => client.topic.publish({ topic, payload: p }).then((r) => r.id),
    close: () => client.close(),
  };
}

// --- CPU -------------------------------------------------------------------
function ticks(pid) {
  if (!pid) return 0;
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return Number(f[11]) + Number(f[12]);
  } catch {
    return NaN;
  }
}
function machineTicks() {
  const f = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/);
  // cpu user nice system idle iowait irq softirq steal
  return [1, 2, 3, 6, 7, 8].reduce((a, i) => a + Number(f[i]), 0);
}

// =====================================================================
// Role: publisher (a child). argv: pub MODE
// =====================================================================
async function publisherMain(mode) {
  const pub = publisherFor(mode);
  const pubLat = new Float64Array(N);
  const ids = new Array(TOTAL).fill("");
  let errors = 0;
  let firstError = "";
  let inflight = 0;
  let maxInflight = 0;
  let freed = null; // resolves when a call answers
  const t0 = nowMs();
  let measuredFrom = 0;
  const calls = [];
  for (let i = 0; i < TOTAL; i++) {
    const due = t0 + (i * 1000) / RATE;
    const wait = due - nowMs();
    if (wait > 0.5) await sleep(wait);
    while (inflight >= INFLIGHT) await new Promise((r) => (freed = r));
    if (i === WARM) {
      measuredFrom = nowMs();
      process.send({ type: "measuring" });
    }
    const p = Buffer.alloc(PAYLOAD_BYTES, "x");
    p.writeUInt32LE(i, 0);
    const s = nowMs();
    p.writeDoubleLE(s, 4);
    inflight++;
    maxInflight = Math.max(maxInflight, inflight);
    calls.push(
      pub.publish(p).then(
        (id) => {
          ids[i] = id;
        },
        (err) => {
          errors++;
          firstError ||= String(err?.message ?? err);
        },
      ).finally(() => {
        inflight--;
        if (i >= WARM) pubLat[i - WARM] = nowMs() - s;
        freed?.();
        freed = null;
      }),
    );
  }
  await Promise.all(calls);
  const sendSecs = (nowMs() - measuredFrom) / 1000;
  await pub.close();
  process.send({ type: "done", pubLat, ids, errors, firstError, sendSecs, maxInflight, ticks: ticks(process.pid) }, () => process.disconnect());
}

// =====================================================================
// Role: subscribers (a child). argv: sub MODE START_ID FROM COUNT
// =====================================================================
function parseId(id) {
  const dash = id.indexOf("-");
  return [Number(id.slice(0, dash)), Number(id.slice(dash + 1))];
}
function idAfter(a, b) {
  return a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]);
}

function newState(i, startId) {
  return {
    i,
    seen: new Uint8Array(TOTAL),
    distinct: 0,
    maxSeq: -1,
    dup: 0,
    reorder: 0,
    idMismatch: 0,
    ids: new Array(TOTAL),
    badPayload: 0,
    idBackwards: 0,
    lastId: parseId(startId),
    lastIdText: startId,
    gaps: 0,
    fellBehind: 0,
    errors: [],
    ended: false,
    firstProblem: null,
  };
}

// The lean subscriber: one HTTP/2 connection (node:http2, nghttp2 in C++)
// per subscriber, a pre-encoded SubscribeRequest, and a hand-written decoder
// of the few SubscribeResponse fields used (Message.id, Message.payload, and
// which event it is), the way h2load sends pre-encoded bodies: what it
// costs per message is close to what ioredis costs to parse an XREAD reply.
function varint(n) {
  const out = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return out;
}
function field(no, bytes) {
  return Buffer.concat([Buffer.from([(no << 3) | 2, ...varint(bytes.length)]), bytes]);
}
function subscribeBody(topic, afterId) {
  // SubscribeRequest: topic = 1, after_id = 3; gRPC frame: flag 0, length.
  const msg = Buffer.concat([field(1, Buffer.from(topic)), field(3, Buffer.from(afterId))]);
  const head = Buffer.alloc(5);
  head.writeUInt32BE(msg.length, 1);
  return Buffer.concat([head, msg]);
}
// Reads a varint at b[i]: [value, next index].
function readVarint(b, i) {
  let v = 0, shift = 0, c;
  do {
    c = b[i++];
    v += (c & 0x7f) * 2 ** shift;
    shift += 7;
  } while (c & 0x80);
  return [v, i];
}
// Calls fn(fieldNo, wireType, start, end) for each field of b[from, to).
function fields(b, from, to, fn) {
  let i = from;
  while (i < to) {
    let key;
    [key, i] = readVarint(b, i);
    const no = key >>> 3, wt = key & 7;
    if (wt === 2) {
      let len;
      [len, i] = readVarint(b, i);
      fn(no, wt, i, i + len);
      i += len;
    } else if (wt === 0) {
      [, i] = readVarint(b, i);
    } else if (wt === 1) i += 8;
    else if (wt === 5) i += 4;
    else throw new Error(`wire type ${wt}`);
  }
}
function leanSubscriber(st, topic, startId, onMessage) {
  const session = http2.connect(`http://${ADDR_A}`);
  session.on("error", (err) => st.errors.push(`session: ${err.message}`));
  const req = session.request({
    ":method": "POST",
    ":path": "/datalayer.topic.v1.TopicService/Subscribe",
    "content-type": "application/grpc",
    te: "trailers",
  });
  let stopping = false;
  let buf = Buffer.alloc(0);
  const done = new Promise((resolve) => {
    req.on("response", (h) => {
      if (h[":status"] !== 200) st.errors.push(`HTTP ${h[":status"]}`);
      if (h["grpc-status"] !== undefined && h["grpc-status"] !== "0") st.errors.push(`grpc-status ${h["grpc-status"]} ${h["grpc-message"] ?? ""}`);
    });
    req.on("data", (chunk) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      let o = 0;
      while (buf.length - o >= 5) {
        const len = buf.readUInt32BE(o + 1);
        if (buf.length - o < 5 + len) break;
        const from = o + 5, to = o + 5 + len;
        fields(buf, from, to, (no, wt, a, b) => {
          if (wt !== 2) return;
          if (no === 1) {
            let id = "", p = null;
            fields(buf, a, b, (mno, mwt, ma, mb) => {
              if (mwt !== 2) return;
              if (mno === 1) id = buf.toString("latin1", ma, mb);
              else if (mno === 2) p = buf.subarray(ma, mb);
            });
            onMessage(st, id, p ?? Buffer.alloc(0));
          } else if (no === 2) {
            st.gaps++;
            st.firstProblem ??= "gap event";
          } else if (no === 3) {
            st.fellBehind++;
            st.firstProblem ??= "fell_behind event";
          }
        });
        o = to;
      }
      buf = o === buf.length ? Buffer.alloc(0) : buf.subarray(o);
    });
    req.on("trailers", (t) => {
      if (t["grpc-status"] !== "0" && !stopping) st.errors.push(`grpc-status ${t["grpc-status"]} ${t["grpc-message"] ?? ""}`);
    });
    req.on("error", (err) => {
      if (!stopping) st.errors.push(err.message);
    });
    req.on("close", () => {
      if (!stopping) st.ended = true;
      resolve();
    });
  });
  req.end(subscribeBody(topic, startId));
  return {
    st,
    done,
    stop: () => {
      stopping = true;
      req.close(http2.constants.NGHTTP2_CANCEL);
    },
    close: () => session.destroy(),
  };
}

async function subscribersMain(mode, startId, from, count) {
  let lat = new Float64Array(N * count);
  let nLat = 0;
  let lastRecv = 0;
  const onMessage = (st, id, p) => {
    const now = nowMs();
    lastRecv = now;
    if (p.length !== PAYLOAD_BYTES) {
      st.badPayload++;
      st.firstProblem ??= `message ${id}: payload of ${p.length} bytes`;
      return;
    }
    const dv = new DataView(p.buffer, p.byteOffset, p.byteLength);
    const seq = dv.getUint32(0, true);
    const sent = dv.getFloat64(4, true);
    const pid = parseId(id);
    if (!idAfter(pid, st.lastId)) {
      st.idBackwards++;
      st.firstProblem ??= `id ${id} after ${st.lastIdText}`;
    }
    st.lastId = pid;
    st.lastIdText = id;
    if (seq >= TOTAL) {
      st.badPayload++;
      st.firstProblem ??= `message ${id}: sequence ${seq} out of range`;
      return;
    }
    if (st.seen[seq]) {
      st.dup++;
      st.firstProblem ??= `message #${seq} (${id}) received again`;
      return;
    }
    st.seen[seq] = 1;
    st.ids[seq] = id;
    st.distinct++;
    // Information only: with publish calls in flight together, the append
    // order (the ids) may differ from the send order.
    if (seq < st.maxSeq) st.reorder++;
    st.maxSeq = Math.max(st.maxSeq, seq);
    if (seq >= WARM) {
      if (nLat === lat.length) {
        const b = new Float64Array(lat.length * 2);
        b.set(lat);
        lat = b;
      }
      lat[nLat++] = now - sent;
    }
  };

  const subs = [];
  const topic = topicOf(mode);
  for (let i = from; i < from + count; i++) {
    const st = newState(i, startId);
    if (mode === "raw") {
      const r = new IORedis(REDIS_URL, { maxRetriesPerRequest: null });
      r.on("error", () => {});
      let stopping = false;
      const done = (async () => {
        let last = startId;
        try {
          while (!stopping) {
            const res = await r.xreadBuffer("BLOCK", 0, "STREAMS", rawKey(), last);
            if (!res) continue;
            for (const [, entries] of res) {
              for (const [idBuf, fields] of entries) {
                const id = idBuf.toString();
                last = id;
                let p = null;
                for (let f = 0; f + 1 < fields.length; f += 2) {
                  if (fields[f].length === 1 && fields[f][0] === 0x70 /* p */) p = fields[f + 1];
                }
                onMessage(st, id, p ?? Buffer.alloc(0));
              }
            }
          }
        } catch (err) {
          if (!stopping) st.errors.push(String(err?.message ?? err));
        }
      })();
      subs.push({ st, done, stop: () => { stopping = true; r.disconnect(); }, close: () => {} });
    } else if (mode.startsWith("h2-")) {
      subs.push(leanSubscriber(st, topic, startId, onMessage));
    } else {
      const client = createClient({ baseUrl: `http://${ADDR_A}` });
      const ac = new AbortController();
      const done = (async () => {
        try {
          const stream = client.topic.subscribe({ topic, from: { case: "afterId", value: startId } }, { signal: ac.signal });
          for await (const e of stream) {
            switch (e.event.case) {
              case "message":
                onMessage(st, e.event.value.id, e.event.value.payload);
                break;
              case "gap":
                st.gaps++;
                st.firstProblem ??= `gap event, first kept ${e.event.value.firstKeptId}`;
                break;
              case "fellBehind":
                st.fellBehind++;
                st.firstProblem ??= `fell_behind event, resume after ${e.event.value.resumeAfterId}`;
                break;
              default:
                st.errors.push(`unknown event ${e.event.case}`);
            }
          }
          if (!ac.signal.aborted) st.ended = true;
        } catch (err) {
          if (!ac.signal.aborted) st.errors.push(String(err?.message ?? err));
        }
      })();
      subs.push({ st, done, stop: () => ac.abort(), close: () => client.close() });
    }
  }
  process.send({ type: "started" });

  process.on("message", async (m) => {
    if (m.type === "drain") {
      const by = Date.now() + m.ms;
      while (!subs.every((x) => x.st.distinct >= TOTAL) && Date.now() < by) await sleep(5);
      process.send({ type: "drained", complete: subs.every((x) => x.st.distinct >= TOTAL) });
    } else if (m.type === "stop") {
      for (const x of subs) x.stop();
      await Promise.allSettled(subs.map((x) => x.done));
      for (const x of subs) x.close();
      // Each delivered message has the id its Publish / XADD answered: every
      // subscriber saw the same messages in the same (append) order.
      for (const { st } of subs) {
        for (let q = 0; q < TOTAL; q++) {
          if (st.ids[q] !== undefined && m.ids[q] && st.ids[q] !== m.ids[q]) {
            st.idMismatch++;
            st.firstProblem ??= `message #${q} delivered as ${st.ids[q]}, published as ${m.ids[q]}`;
          }
        }
      }
      const states = subs.map(({ st }) => {
        const { seen, lastId, ids, ...rest } = st;
        return { ...rest, firstMissing: seen.indexOf(0) };
      });
      process.send({ type: "result", states, lat: lat.slice(0, nLat), lastRecv }, () => process.disconnect());
    }
  });
}

// =====================================================================
// Role: coordinator
// =====================================================================
const problems = [];
const problem = (s) => {
  problems.push(s);
  log(`!! ${s}`);
};

function child(args) {
  const c = fork(fileURLToPath(import.meta.url), args, { serialization: "advanced", stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const queue = [];
  const waiters = [];
  c.on("message", (m) => {
    const w = waiters.findIndex((x) => x.type === m.type);
    if (w >= 0) waiters.splice(w, 1)[0].resolve(m);
    else queue.push(m);
  });
  const exited = new Promise((resolve) => c.on("exit", (code, signal) => resolve({ code, signal })));
  c.next = (type) => {
    const q = queue.findIndex((x) => x.type === type);
    if (q >= 0) return Promise.resolve(queue.splice(q, 1)[0]);
    return new Promise((resolve, reject) => {
      waiters.push({ type, resolve });
      exited.then(({ code, signal }) => reject(new Error(`child ${args.join(" ")} exited (${code ?? signal}) before "${type}"`)));
    });
  };
  return c;
}

function snap(children) {
  let node = 0;
  for (const c of children) node += ticks(c.pid);
  return {
    redis: ticks(PIDS.redis),
    dl: ticks(PIDS.dlA) + ticks(PIDS.dlB),
    node,
    self: ticks(process.pid),
    machine: machineTicks(),
    t: nowMs(),
  };
}

async function runMode(mode) {
  const raw = mode === "raw";
  const topic = topicOf(mode);
  const admin = createClient({ baseUrl: `http://${ADDR_A}` });
  const redis = new IORedis(REDIS_URL);
  const first = publisherFor(mode);
  const startId = await first.publish(Buffer.from("start"));
  await first.close();

  const per = Math.ceil(S / WORKERS);
  const workers = [];
  for (let from = 0; from < S; from += per) {
    workers.push(child(["sub", mode, startId, String(from), String(Math.min(per, S - from))]));
  }
  await Promise.all(workers.map((w) => w.next("started")));
  // Everyone subscribed: replica A's count of the topic's fan-out
  // subscribers, or Redis's count of blocked clients.
  const readyBy = Date.now() + 15000;
  for (;;) {
    let n;
    if (raw) n = Number(/blocked_clients:(\d+)/.exec(await redis.info("clients"))?.[1] ?? 0);
    else n = Number((await admin.topic.getTopicStats({ topic })).localSubscribers);
    if (n >= S) break;
    if (Date.now() > readyBy) {
      problem(`${mode}: only ${n} of ${S} subscribers were ready after 15 s`);
      break;
    }
    await sleep(50);
  }
  await sleep(200);

  log(`  ${mode}: ${S} subscribers ready in ${workers.length} processes; publishing ${WARM} + ${N} messages at ${RATE}/s`);
  const pub = child(["pub", mode]);
  await pub.next("measuring");
  const cpu0 = snap(workers);
  const pub0 = ticks(pub.pid);
  const done = await pub.next("done");
  const pubTicks = done.ticks - pub0;
  const sentAt = nowMs();
  const drained = await Promise.all(workers.map((w) => (w.send({ type: "drain", ms: DRAIN_MS }), w.next("drained"))));
  const cpu1 = snap(workers);
  const complete = drained.every((d) => d.complete);
  const drainMs = cpu1.t - sentAt;
  const results = await Promise.all(workers.map((w) => (w.send({ type: "stop", ids: done.ids }), w.next("result"))));
  let appendedOutOfOrder = 0;
  for (let q = 1; q < TOTAL; q++) {
    if (done.ids[q] && done.ids[q - 1] && !idAfter(parseId(done.ids[q]), parseId(done.ids[q - 1]))) appendedOutOfOrder++;
  }
  admin.close();
  await redis.quit();

  // Checks.
  let missing = 0, dup = 0, reorder = 0, idMis = 0, idBack = 0, bad = 0, gaps = 0, fell = 0, ended = 0, errs = 0;
  const firsts = [];
  for (const st of results.flatMap((r) => r.states)) {
    const m = TOTAL - st.distinct;
    missing += m;
    dup += st.dup;
    reorder += st.reorder;
    idMis += st.idMismatch;
    idBack += st.idBackwards;
    bad += st.badPayload;
    gaps += st.gaps;
    fell += st.fellBehind;
    if (st.ended) ended++;
    errs += st.errors.length;
    if (m > 0) firsts.push(`subscriber ${st.i}: ${m} of ${TOTAL} missing (first #${st.firstMissing})`);
    if (st.firstProblem) firsts.push(`subscriber ${st.i}: ${st.firstProblem}`);
    if (st.errors.length) firsts.push(`subscriber ${st.i}: error ${st.errors[0]}`);
    if (st.ended) firsts.push(`subscriber ${st.i}: stream ended by the server`);
  }
  const tag = `${mode}: ${S} subscribers x ${TOTAL} messages`;
  if (done.errors) problem(`${mode}: ${done.errors} publish calls failed (first: ${done.firstError})`);
  if (missing) problem(`${tag}: ${missing} deliveries missing${complete ? "" : ` (not all delivered ${DRAIN_MS} ms after the last send)`}`);
  if (dup) problem(`${tag}: ${dup} duplicate deliveries`);
  if (idBack) problem(`${tag}: ${idBack} deliveries out of order (an id not after the previous one)`);
  if (idMis) problem(`${tag}: ${idMis} deliveries whose id is not the one the publish answered`);
  if (reorder || appendedOutOfOrder) {
    log(`  ${mode}: ${reorder} deliveries after a later-sent message; the publisher's calls were appended out of send order ${appendedOutOfOrder} times (x ${S} subscribers)`);
  }
  if (bad) problem(`${tag}: ${bad} deliveries with a wrong payload`);
  if (gaps) problem(`${tag}: ${gaps} gap events`);
  if (fell) problem(`${tag}: ${fell} fell_behind events`);
  if (ended) problem(`${tag}: ${ended} streams ended by the server`);
  if (errs) problem(`${tag}: ${errs} subscriber errors`);
  for (const f of firsts.slice(0, 5)) problem(`  ${mode}: ${f}`);
  if (firsts.length > 5) problem(`  ${mode}: ... and ${firsts.length - 5} more such lines`);

  let n = 0;
  for (const r of results) n += r.lat.length;
  const v = new Float64Array(n);
  let o = 0;
  let lastRecv = 0;
  for (const r of results) {
    v.set(r.lat, o);
    o += r.lat.length;
    lastRecv = Math.max(lastRecv, r.lastRecv);
  }
  v.sort();
  const q = (p) => (n ? v[Math.min(n - 1, Math.ceil(n * p) - 1)] : NaN);
  const pl = Float64Array.from(done.pubLat).sort();
  const pq = (p) => pl[Math.min(pl.length - 1, Math.ceil(pl.length * p) - 1)];
  const secs = (cpu1.t - cpu0.t) / 1000;
  const us = (t) => (n ? ((t / TICK) * 1e6) / n : NaN);
  const mine = cpu1.redis - cpu0.redis + cpu1.dl - cpu0.dl + cpu1.node - cpu0.node + pubTicks + cpu1.self - cpu0.self;
  const other = (cpu1.machine - cpu0.machine - mine) / TICK / secs;
  if (other >= 0.25) problem(`${mode}: other processes used ${other.toFixed(2)} cores meanwhile; its figures are disturbed`);
  log(`  ${mode}: ${n} of ${N * S} measured deliveries, drained ${drainMs.toFixed(0)} ms after the last send`);
  return {
    mode,
    asked: RATE,
    expected: N * S,
    deliveries: n,
    rate: N / done.sendSecs,
    dps: n / ((lastRecv - cpu0.t) / 1000),
    p50: q(0.5), p90: q(0.9), p99: q(0.99), p999: q(0.999), max: n ? v[n - 1] : NaN,
    pubP50: pq(0.5),
    pubP99: pq(0.99),
    rds: us(cpu1.redis - cpu0.redis),
    dl: us(cpu1.dl - cpu0.dl),
    node: us(cpu1.node - cpu0.node + pubTicks),
    other,
    inflight: done.maxInflight,
    appendedOutOfOrder,
    ok: !(missing || dup || idMis || idBack || bad || gaps || fell || ended || errs || done.errors),
  };
}

async function coordinatorMain() {
  const rows = [];
  for (const { rate, modes } of PLAN) {
    setRate(rate);
    for (const mode of modes) {
      if (mode.endsWith("-other") && !ADDR_B) {
        problem("mode other needs TB_ADDR_B");
        continue;
      }
      rows.push(await runMode(mode));
    }
  }
  const label = {
    "ts-same": "TS client; Publish via same replica",
    "ts-other": "TS client; Publish via other replica",
    "h2-same": "lean h2; Publish via same replica",
    "h2-other": "lean h2; Publish via other replica",
    raw: "raw: XREAD BLOCK loops; XADD MAXLEN",
  };
  const f = (x, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : "-");
  console.log();
  console.log(`fan-out: ${S} subscribers on one topic (in ${WORKERS} node processes, the publisher in another), 100-byte payload;`);
  console.log(`  each run: ${Number(env("TB_WARMUP_SECONDS", 1))} s of warm-up, then ${SECONDS} s measured at the rate asked`);
  console.log("rate: asked / done messages/s; deliveries: measured ones received / expected (messages x subscribers)");
  console.log("latency: receive - send in ms over every measured delivery; pub: the publish call's own latency in ms;");
  console.log(`infl: most publish calls in flight at once (the publisher allows ${INFLIGHT})`);
  console.log("CPU in µs per delivered message: rds = redis-server, dl = datalayer (both replicas), node = subscriber + publisher processes;");
  console.log("other = cores busy with anything else meanwhile");
  console.log();
  console.log(
    `${"".padEnd(40)} ${"rate".padStart(8)} ${"deliveries".padStart(15)} ${"deliv/s".padStart(7)} | ${"p50".padStart(6)} ${"p90".padStart(6)} ${"p99".padStart(6)} ${"p99.9".padStart(6)} ${"max".padStart(6)} | ${"pub p50".padStart(7)} ${"pub p99".padStart(7)} ${"infl".padStart(4)} | ${"rds".padStart(5)} ${"dl".padStart(5)} ${"node".padStart(5)} ${"other".padStart(5)} | ok`,
  );
  for (const r of rows) {
    console.log(
      `${label[r.mode].padEnd(40)} ${`${r.asked}/${f(r.rate, 0)}`.padStart(8)} ${`${r.deliveries}/${r.expected}`.padStart(15)} ${f(r.dps, 0).padStart(7)} | ${f(r.p50).padStart(6)} ${f(r.p90).padStart(6)} ${f(r.p99).padStart(6)} ${f(r.p999).padStart(6)} ${f(r.max).padStart(6)} | ${f(r.pubP50, 3).padStart(7)} ${f(r.pubP99, 3).padStart(7)} ${String(r.inflight).padStart(4)} | ${f(r.rds, 1).padStart(5)} ${f(r.dl, 1).padStart(5)} ${f(r.node, 1).padStart(5)} ${f(r.other).padStart(5)} | ${r.ok ? "yes" : "NO"}`,
    );
  }
  console.log();
  if (problems.length === 0) {
    console.log(`fan-out: no failures: in every mode each of the ${S} subscribers received every message (warm-up included) exactly once, in the append order (ids growing, each the id its publish answered), with no gap, fell_behind, error or early end, and no publish failed`);
  } else {
    console.log("PROBLEMS (fan-out):");
    for (const p of problems) console.log(`  ${p}`);
  }
  process.exit(problems.length ? 1 : 0);
}

const [role, ...args] = process.argv.slice(2);
if (role === "pub") await publisherMain(args[0]);
else if (role === "sub") await subscribersMain(args[0], args[1], Number(args[2]), Number(args[3]));
else await coordinatorMain();
