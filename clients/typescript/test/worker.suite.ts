// The worker helpers on the Consume stream, end to end against the real
// binary: `dl.queue.work(queue, handler, { concurrency, signal })` (ack on
// resolve, nack with the error's message on throw, retries then the dead
// letters per max_attempts, at most `concurrency` handlers at once, nothing
// lost, a graceful stop, failed acks, lasting errors, the stream reopened
// after the service restarts) and the loop `for await (const msg of
// dl.queue.consume(queue, { concurrency }))` with `msg.ack()` / `msg.nack()`.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { describe, test, type TestContext } from "node:test";
import { Code, ConnectError, Delivery, createClient, fieldViolations, type DatalayerClient } from "@datalayer/client";
import { BIN, Redis, Stack, freePort, sleep, unique, waitFor } from "./harness.js";

const SERVICE = "datalayer.queue.v1.QueueService";
const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);
const millis = (ms: number) => ({ seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 });
const fixed = (ms: number) => ({ kind: { case: "fixed" as const, value: millis(ms) } });

/** Resolves `p`, or "pending" if it has not settled within `ms`. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | "pending"> {
  let timer: NodeJS.Timeout | undefined;
  const pending = new Promise<"pending">((resolve) => (timer = setTimeout(() => resolve("pending"), ms)));
  try {
    return await Promise.race([p, pending]);
  } finally {
    clearTimeout(timer);
  }
}

async function rejects(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  assert.fail("expected a rejection");
}

export function workerSuite(stack: () => Stack, store = "redis") {
  describe(`${SERVICE} worker helpers (${store})`, () => {
    const skip = (t: TestContext) => {
      if (!stack().serves(SERVICE)) {
        t.skip(`${SERVICE} is not served`);
        return true;
      }
      return false;
    };
    const client = (): DatalayerClient => stack().client();

    test("work(): 50 messages at concurrency 5; throwing handlers are retried, then dead-lettered; nothing lost", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = unique("ts.work");
      const n = 50;
      const bad = new Set([3, 13, 23, 33, 43]); // always throw: dead after 3 attempts
      const flaky = new Set([7, 17, 27, 37, 47]); // throw on attempt 1 only
      const sent = await dl.queue.enqueueBatch({
        queue: q,
        messages: Array.from({ length: n }, (_, i) => ({ payload: enc(`m${i}`), maxAttempts: 3, backoff: fixed(50) })),
      });
      const ids = sent.results.map((r) => r.messageId);
      assert.equal(new Set(ids).size, n);

      const attempts = new Map<string, number[]>();
      const ackedIds = new Set<string>();
      let inFlight = 0;
      let maxInFlight = 0;
      const stop = new AbortController();
      const summary = dl.queue.work(
        q,
        async (msg) => {
          assert.ok(msg instanceof Delivery);
          assert.equal(msg.queue, q);
          inFlight++;
          maxInFlight = Math.max(maxInFlight, inFlight);
          try {
            const i = Number(dec(msg.payload).slice(1));
            attempts.set(msg.id, [...(attempts.get(msg.id) ?? []), msg.attempt]);
            assert.equal(msg.maxAttempts, 3);
            await sleep(5 + Math.random() * 20);
            if (bad.has(i)) throw new Error(`m${i} is bad\nsee the logs`);
            if (flaky.has(i) && msg.attempt === 1) throw new Error("transient");
            ackedIds.add(msg.id);
          } finally {
            inFlight--;
          }
        },
        { concurrency: 5, signal: stop.signal, leaseDuration: "20s" },
      );
      const stats = await waitFor(async () => {
        const s = await dl.queue.stats({ queue: q });
        return s.ackedTotal === 45n && s.dead === 5n ? s : undefined;
      }, 30_000);
      stop.abort();
      assert.deepEqual(await summary, { acked: 45, nacked: 5 * 3 + 5, deadLettered: 5, failed: 0 });
      assert.deepEqual([stats.waiting, stats.delayed, stats.leased], [0n, 0n, 0n]);
      assert.equal(maxInFlight, 5, "never more than 5 handlers at once, and 5 were used");
      assert.equal(inFlight, 0, "work() resolved after its handlers finished");

      // Every message handled, each attempt once, in order; acked or dead.
      assert.deepEqual([...attempts.keys()].sort(), [...ids].sort());
      for (const [i, id] of ids.entries()) {
        const expected = bad.has(i) ? [1, 2, 3] : flaky.has(i) ? [1, 2] : [1];
        assert.deepEqual(attempts.get(id), expected, `m${i}`);
        assert.equal(ackedIds.has(id), !bad.has(i), `m${i}`);
      }
      const dead = await dl.queue.listDead({ queue: q });
      assert.deepEqual(
        dead.messages.map((d) => [dec(d.message?.payload ?? new Uint8Array()), d.message?.attempt, d.reason]).sort(),
        [...bad].map((i) => [`m${i}`, 3, `m${i} is bad see the logs`]).sort(),
        "dead with the error's message as the reason (the newline replaced)",
      );
    });

    test("consume(): a loop settles each delivery; never more than `concurrency` unsettled; leaving it stops it", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = unique("ts.consume");
      for (let i = 0; i < 5; i++) {
        await dl.queue.enqueue({ queue: q, message: { payload: enc(`c${i}`), headers: { "x-n": String(i) }, maxAttempts: 5 } });
      }
      const it = dl.queue.consume(q, { concurrency: 3, leaseDuration: "20s" })[Symbol.asyncIterator]();
      const first: Delivery[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await it.next();
        assert.ok(!r.done);
        first.push(r.value);
      }
      assert.deepEqual(first.map((d) => dec(d.payload)), ["c0", "c1", "c2"]);
      assert.deepEqual(first.map((d) => [d.attempt, d.maxAttempts, d.headers["x-n"]]), [
        [1, 5, "0"],
        [1, 5, "1"],
        [1, 5, "2"],
      ]);
      const left = (first[0].leaseExpiresAt?.getTime() ?? 0) - Date.now();
      assert.ok(left > 15_000 && left <= 21_000, `lease left ${left} ms`);
      assert.equal(first[0].message.leaseToken.length > 0, true);

      const fourth = it.next();
      assert.equal(await within(fourth, 700), "pending", "3 unsettled: no 4th is sent");
      assert.deepEqual([(await dl.queue.stats({ queue: q })).leased], [3n]);
      await first[0].ack();
      assert.equal(first[0].settled, true);
      const r4 = await within(fourth, 3000);
      assert.ok(r4 !== "pending" && !r4.done, "an ack gives a credit back");
      assert.equal(dec(r4.value.payload), "c3");
      await assert.rejects(first[0].ack(), /already acked or nacked/);
      await assert.rejects(first[0].nack("again"), /already acked or nacked/);

      // A nack: back at once with retryAfter 0, as attempt 2. Two settled: two more come.
      assert.equal(await first[1].nack(new Error("try later"), { retryAfter: 0 }), false);
      await r4.value.ack();
      const expires = await first[2].extend("30s");
      assert.ok(expires.getTime() - Date.now() > 25_000);
      const next = [await it.next(), await it.next()];
      assert.equal(await within(it.next(), 500), "pending", "c2 and these two: 3 unsettled");
      const byPayload = new Map(next.map((r) => (r.done ? ["", undefined] : [dec(r.value.payload), r.value])));
      assert.deepEqual([...byPayload.keys()].sort(), ["c1", "c4"]);
      assert.equal(byPayload.get("c1")?.attempt, 2);

      // Leaving the loop (a pending next() ends: done): the stream stops;
      // deliveries handed out can still be settled.
      await it.return?.();
      await first[2].ack();
      await byPayload.get("c1")?.ack();
      await byPayload.get("c4")?.nack("no", { deadLetter: true });
      const s = await dl.queue.stats({ queue: q });
      assert.deepEqual([s.waiting, s.leased, s.dead, s.ackedTotal], [0n, 0n, 1n, 4n]);
    });

    test("consume(): for await with break; messages received but not handed out go back at once", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = unique("ts.consume.break");
      for (let i = 0; i < 3; i++) await dl.queue.enqueue({ queue: q, message: { payload: enc(`b${i}`) } });
      let kept: Delivery | undefined;
      for await (const msg of dl.queue.consume(q, { concurrency: 3, leaseDuration: "30s" })) {
        kept = msg;
        // Let the other two arrive (they are leased to this loop, not yet handed out).
        await waitFor(async () => (await dl.queue.stats({ queue: q })).leased === 3n);
        await sleep(100);
        break;
      }
      assert.ok(kept);
      assert.equal(dec(kept.payload), "b0");
      // Without the nack on leaving, they would wait out their 30 s lease.
      const { messages } = await dl.queue.lease({ queue: q, maxMessages: 3, wait: millis(2000) });
      assert.deepEqual(messages.map((m) => [dec(m.payload), m.attempt]).sort(), [
        ["b1", 2],
        ["b2", 2],
      ]);
      for (const m of messages) await dl.queue.ack({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken });
      await kept.ack();
      const dead = await dl.queue.listDead({ queue: q });
      assert.equal(dead.messages.length, 0);
    });

    test("work() stops when its signal aborts: running handlers finish and are acked, then it resolves", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = unique("ts.work.stop");
      for (let i = 0; i < 3; i++) await dl.queue.enqueue({ queue: q, message: { payload: enc(`s${i}`) } });
      const stop = new AbortController();
      let started = 0;
      let sawAbort = 0;
      const begun = Date.now();
      const done = dl.queue.work(
        q,
        async (msg) => {
          started++;
          if (started === 2) setTimeout(() => stop.abort(), 50);
          await sleep(400);
          if (msg.signal.aborted) sawAbort++;
        },
        { concurrency: 2, signal: stop.signal },
      );
      const summary = await done;
      assert.ok(Date.now() - begun >= 400, "resolved only after the running handlers finished");
      assert.deepEqual(summary, { acked: 2, nacked: 0, deadLettered: 0, failed: 0 });
      assert.equal(started, 2, "no handler started after the stop");
      assert.equal(sawAbort, 2, "msg.signal tells a handler the worker is stopping");
      const s = await dl.queue.stats({ queue: q });
      assert.deepEqual([s.ackedTotal, s.waiting, s.leased], [2n, 1n, 0n]);

      // Aborted before it starts: resolves at once, takes nothing.
      const already = await dl.queue.work(q, () => assert.fail("not called"), { signal: AbortSignal.abort() });
      assert.deepEqual(already, { acked: 0, nacked: 0, deadLettered: 0, failed: 0 });
      assert.equal((await dl.queue.stats({ queue: q })).waiting, 1n);
    });

    test("work(): a failed ack is reported to onError (the message is another's now); lasting errors reject", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = unique("ts.work.lost");
      const sent = await dl.queue.enqueue({ queue: q, message: { payload: enc("slow"), backoff: fixed(50) } });
      const errors: ConnectError[] = [];
      const stop = new AbortController();
      const seen: number[] = [];
      let other: number | undefined;
      const summary = dl.queue.work(
        q,
        async (msg) => {
          seen.push(msg.attempt);
          await sleep(500); // outlives its 300 ms lease...
          // ...and another consumer leases it meanwhile (an expired lease
          // nobody took is still accepted by Ack).
          const { messages } = await dl.queue.lease({ queue: q, wait: millis(2000) });
          other = messages[0]?.attempt;
          await dl.queue.ack({ queue: q, messageId: messages[0].messageId, leaseToken: messages[0].leaseToken });
          stop.abort(); // the worker settles this one, then stops
        },
        {
          concurrency: 1, // the stream holds no credit while the handler runs
          leaseDuration: 300,
          signal: stop.signal,
          onError: (e, d) => {
            assert.equal(d?.id, sent.messageId);
            errors.push(e);
          },
        },
      );
      const result = await summary;
      assert.deepEqual([seen, other], [[1], 2]);
      assert.deepEqual(result, { acked: 0, nacked: 0, deadLettered: 0, failed: 1 });
      assert.equal(errors.length, 1);
      assert.equal(errors[0].code, Code.FailedPrecondition, errors[0].message);
      assert.equal((await dl.queue.stats({ queue: q })).ackedTotal, 1n);

      const badQueue = await rejects(dl.queue.work("bad queue", () => {}, { concurrency: 2 }));
      assert.ok(badQueue instanceof ConnectError);
      assert.equal(badQueue.code, Code.InvalidArgument);
      assert.deepEqual(fieldViolations(badQueue).map((v) => v.field), ["start.queue"]);
      const loop = async () => {
        for await (const _ of dl.queue.consume("bad queue")) assert.fail("no message");
      };
      const loopErr = await rejects(loop());
      assert.ok(loopErr instanceof ConnectError && loopErr.code === Code.InvalidArgument);
      await assert.rejects(dl.queue.work(q, () => {}, { concurrency: 0 }), RangeError);
      assert.throws(() => dl.queue.consume(q, { concurrency: 10_001 }), RangeError);
      assert.throws(() => dl.queue.consume(q, { leaseDuration: "soon" }), RangeError);
    });

    test("work() acks on the stream: no unary Ack; a lost lease is FAILED_PRECONDITION from the stream's answer", async (t) => {
      if (skip(t)) return;
      // Unary calls of this client, by method (the Consume stream counts once, when opened).
      const calls = new Map<string, number>();
      const dl = stack().client({
        interceptors: [(next) => (req) => (calls.set(req.method.name, (calls.get(req.method.name) ?? 0) + 1), next(req))],
      });
      const other = client(); // another consumer, and the test's own calls
      const q = unique("ts.work.streamacks");
      const n = 200;
      for (let i = 0; i < n; i += 50) {
        await other.queue.enqueueBatch({
          queue: q,
          messages: Array.from({ length: 50 }, (_, k) => ({ payload: enc(`a${i + k}`) })),
        });
      }
      const handled = new Set<string>();
      let stop = new AbortController();
      const done = dl.queue.work(q, (msg) => void handled.add(dec(msg.payload)), { concurrency: 10, signal: stop.signal });
      await waitFor(async () => (await other.queue.stats({ queue: q })).ackedTotal === BigInt(n), 20_000);
      stop.abort();
      assert.deepEqual(await done, { acked: n, nacked: 0, deadLettered: 0, failed: 0 });
      assert.equal(handled.size, n);
      assert.deepEqual(Object.fromEntries(calls), { Consume: 1 }, "acked on the stream, credits given back by the acks");
      const s = await other.queue.stats({ queue: q });
      assert.deepEqual([s.waiting, s.leased, s.dead], [0n, 0n, 0n]);

      // A handler that outlives its lease: the message is leased (and acked)
      // by another consumer meanwhile; the worker's ack on the stream is
      // answered not ok, FAILED_PRECONDITION, reported as a failed ack.
      // (Another queue: the service may still be finishing the stopped
      // stream's lease slice on `q`, which would take a message enqueued now.)
      const q2 = `${q}.lost`;
      const sent = await other.queue.enqueue({ queue: q2, message: { payload: enc("slow") } });
      const errors: [ConnectError, Delivery | undefined][] = [];
      stop = new AbortController();
      let stolen: number | undefined;
      const lost = dl.queue.work(
        q2,
        async () => {
          await sleep(500); // past its 300 ms lease
          const { messages } = await other.queue.lease({ queue: q2, wait: millis(2000) });
          stolen = messages[0]?.attempt;
          await other.queue.ack({ queue: q2, messageId: messages[0].messageId, leaseToken: messages[0].leaseToken });
        },
        { concurrency: 1, leaseDuration: 300, signal: stop.signal, onError: (e, d) => errors.push([e, d]) },
      );
      await waitFor(async () => errors.length > 0, 10_000);
      stop.abort();
      assert.deepEqual(await lost, { acked: 0, nacked: 0, deadLettered: 0, failed: 1 });
      assert.equal(stolen, 2);
      assert.equal(errors.length, 1);
      assert.equal(errors[0][0].code, Code.FailedPrecondition, errors[0][0].message);
      assert.equal(errors[0][1]?.id, sent.messageId);
      assert.equal(calls.get("Ack"), undefined, "the lost ack went on the stream too");
      assert.equal(calls.get("Consume"), 2);
    });

    if (store === "redis") {
      test("work() reopens the stream when the service restarts, and goes on", async () => {
        const redis = new Redis(await freePort());
        await redis.start();
        const port = await freePort();
        const baseUrl = `http://127.0.0.1:${port}`;
        const start = (): ChildProcess =>
          spawn(BIN, [], {
            stdio: ["ignore", "ignore", process.env.DATALAYER_LOG ? "inherit" : "ignore"],
            env: {
              ...process.env,
              DATALAYER__SERVER__ADDR: `127.0.0.1:${port}`,
              DATALAYER__REDIS__URL: `redis://127.0.0.1:${redis.port}`,
              DATALAYER__METRICS__ADDR: "127.0.0.1:0",
              DATALAYER__TELEMETRY__LOG_LEVEL: "warn",
            },
          });
        let service = new Stack(baseUrl, redis, start());
        const dl = createClient({ baseUrl });
        try {
          await service.waitServing();
          const q = unique("ts.work.restart");
          const handled = new Set<string>();
          const breaks: ConnectError[] = [];
          const stop = new AbortController();
          const done = dl.queue.work(q, (msg) => void handled.add(dec(msg.payload)), {
            concurrency: 2,
            signal: stop.signal,
            onError: (e) => breaks.push(e),
          });
          for (let i = 0; i < 5; i++) await dl.queue.enqueue({ queue: q, message: { payload: enc(`r${i}`) } });
          await waitFor(async () => (await dl.queue.stats({ queue: q })).ackedTotal === 5n, 10_000);

          service.proc.kill("SIGKILL");
          await once(service.proc, "exit");
          await waitFor(async () => breaks.length > 0, 5000);
          await sleep(300); // a reconnection or two fail while it is down
          service = new Stack(baseUrl, redis, start());
          await service.waitServing();
          for (let i = 5; i < 10; i++) await dl.queue.enqueue({ queue: q, message: { payload: enc(`r${i}`) } });
          await waitFor(async () => handled.size === 10, 15_000);
          // Handled is not yet acked: the last ack may still be on its way.
          await waitFor(async () => (await dl.queue.stats({ queue: q })).ackedTotal === 10n, 10_000);
          stop.abort();
          const summary = await done;
          assert.equal(summary.acked, 10);
          assert.ok(
            breaks.every((e) => [Code.Unavailable, Code.Canceled, Code.Aborted].includes(e.code)),
            breaks.map((e) => `${Code[e.code]}: ${e.message}`).join("; "),
          );
          const s = await dl.queue.stats({ queue: q });
          assert.deepEqual([s.ackedTotal, s.waiting, s.leased, s.dead], [10n, 0n, 0n, 0n]);
        } finally {
          dl.close();
          await service.stop();
        }
      });
    }
  });
}
