// QueueService through the TypeScript client, against the real binary: every
// RPC (enqueue/lease/ack, nack with retries into the dead letters and back,
// lease expiry and fencing, extend, cancel, delays, dedup, priorities and
// groups, batches, stats, pause/resume, cron schedules) and the Consume
// bidi stream with its credits.
import assert from "node:assert/strict";
import { describe, test, type TestContext } from "node:test";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationMs, timestampDate, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, fieldViolations, type DatalayerClient } from "@datalayer/client";
// From the package's own module: `Message` is a name of protobuf-es too.
import {
  type ConsumeRequestSchema,
  type ConsumeResponse,
  type Message,
  type MessageSpec,
  type MessageSpecSchema,
} from "@datalayer/client/gen/datalayer/queue/v1/queue_pb";
import { type Stack, sleep, unique } from "./harness.js";

export const SERVICE = "datalayer.queue.v1.QueueService";

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array | undefined) => new TextDecoder().decode(b ?? new Uint8Array());
const queueName = () => unique("ts.queue");
const millis = (ms: number) => ({ seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 });
const seconds = (s: number) => millis(s * 1000);
/** A fixed backoff: retries are due after `ms`. */
const fixed = (ms: number) => ({ kind: { case: "fixed" as const, value: millis(ms) } });
/** A MessageSpec as a plain object (`payload` aside). */
type Spec = Omit<Exclude<MessageInitShape<typeof MessageSpecSchema>, MessageSpec>, "payload">;
const payloads = (messages: Message[]) => messages.map((m) => dec(m.payload));

async function rejects(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ConnectError, `expected a ConnectError, got ${e}`);
    return e;
  }
  assert.fail("expected the call to fail");
}

/** The fields a request was refused for: INVALID_ARGUMENT with a BadRequest. */
async function badFields(p: Promise<unknown>): Promise<string[]> {
  const err = await rejects(p);
  assert.equal(err.code, Code.InvalidArgument, err.message);
  return fieldViolations(err).map((v) => v.field);
}

/** Reads a stream in the background; `next()` waits for its next answer. */
function reader<T>(stream: AsyncIterable<T>) {
  const items: T[] = [];
  let wake: (() => void) | undefined;
  let ended = false;
  let error: unknown;
  const done = (async () => {
    try {
      for await (const item of stream) {
        items.push(item);
        wake?.();
      }
    } catch (e) {
      error = e;
    } finally {
      ended = true;
      wake?.();
    }
  })();
  return {
    done,
    get error() {
      return error;
    },
    get ended() {
      return ended;
    },
    /** The next answer, or undefined after `ms`. */
    async next(ms = 5000): Promise<T | undefined> {
      const deadline = Date.now() + ms;
      while (items.length === 0 && !ended && Date.now() < deadline) {
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, deadline - Date.now());
        });
      }
      return items.shift();
    },
  };
}

/** The request side of a bidi stream: `push` sends, `close` half-closes. */
function outbox<T>() {
  const items: T[] = [];
  let wake: (() => void) | undefined;
  let closed = false;
  return {
    push(item: T) {
      items.push(item);
      wake?.();
    },
    close() {
      closed = true;
      wake?.();
    },
    async *[Symbol.asyncIterator](): AsyncGenerator<T> {
      for (;;) {
        while (items.length > 0) yield items.shift() as T;
        if (closed) return;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    },
  };
}

export function queueSuite(stack: () => Stack, store = "redis") {
  describe(`${SERVICE} (${store})`, () => {
    const skip = (t: TestContext) => {
      if (!stack().serves(SERVICE)) {
        t.skip(`${SERVICE} is not served`);
        return true;
      }
      return false;
    };
    const client = (): DatalayerClient => stack().client();
    const enqueue = (dl: DatalayerClient, queue: string, payload: string, spec: Spec = {}) =>
      dl.queue.enqueue({ queue, message: { payload: enc(payload), ...spec } });
    /** Leases one message, waiting up to `waitMs` for it. */
    const leaseOne = async (dl: DatalayerClient, queue: string, waitMs = 3000, leaseMs?: number) => {
      const { messages } = await dl.queue.lease({
        queue,
        wait: millis(waitMs),
        leaseDuration: leaseMs === undefined ? undefined : millis(leaseMs),
      });
      assert.ok(messages.length <= 1);
      return messages[0];
    };

    test("enqueue → lease → ack round trip: payload, headers, lease token, stats", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = queueName();
      const before = Date.now();
      const sent = await enqueue(dl, q, "job-1", { headers: { "content-type": "text/plain", "x.trace_id": "abc" } });
      assert.match(sent.messageId, /^\d+$/);
      assert.equal(sent.deduplicated, false);

      const waiting = await dl.queue.stats({ queue: q });
      assert.deepEqual(
        [waiting.waiting, waiting.delayed, waiting.leased, waiting.dead, waiting.enqueuedTotal, waiting.paused],
        [1n, 0n, 0n, 0n, 1n, false],
      );
      assert.ok(waiting.oldestWaitingAge, "a waiting message has an age");
      assert.ok(durationMs(waiting.oldestWaitingAge) >= 0 && durationMs(waiting.oldestWaitingAge) < 10_000);
      assert.ok(waiting.enqueueRate > 0, `enqueue rate ${waiting.enqueueRate}`);

      const m = await leaseOne(dl, q, 0, 10_000);
      assert.ok(m, "the message was leased");
      assert.deepEqual(
        [m.messageId, dec(m.payload), m.headers, m.attempt, m.maxAttempts, m.priority, m.groupKey],
        [sent.messageId, "job-1", { "content-type": "text/plain", "x.trace_id": "abc" }, 1, 5, 0, ""],
      );
      assert.match(m.leaseToken, /^1-/);
      assert.ok(m.enqueuedAt && timestampMs(m.enqueuedAt) >= before - 1000 && timestampMs(m.enqueuedAt) <= Date.now() + 1000);
      assert.ok(m.leaseExpiresAt);
      const left = timestampMs(m.leaseExpiresAt) - Date.now();
      assert.ok(left > 8000 && left <= 11_000, `lease left ${left} ms`);
      assert.equal((await dl.queue.lease({ queue: q })).messages.length, 0, "one consumer at a time");
      const leased = await dl.queue.stats({ queue: q });
      assert.deepEqual([leased.waiting, leased.leased], [0n, 1n]);
      assert.equal(leased.oldestWaitingAge, undefined);

      await dl.queue.ack({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken });
      // Acking again with the same lease is a normal answer.
      await dl.queue.ack({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken });
      const wrong = await rejects(dl.queue.ack({ queue: q, messageId: m.messageId, leaseToken: "1-0000000000000000" }));
      assert.equal(wrong.code, Code.FailedPrecondition);
      assert.match(wrong.rawMessage, /lease lost/);
      const done = await dl.queue.stats({ queue: q });
      assert.deepEqual(
        [done.waiting, done.leased, done.dead, done.enqueuedTotal, done.ackedTotal, done.retriedTotal],
        [0n, 0n, 0n, 1n, 1n, 0n],
      );
      assert.ok(done.ackRate > 0);
      assert.equal((await dl.queue.lease({ queue: q })).messages.length, 0, "an acked message is gone");

      // A lease of several at once, FIFO.
      const ids = [];
      for (const p of ["a", "b", "c"]) ids.push((await enqueue(dl, q, p)).messageId);
      const batch = await dl.queue.lease({ queue: q, maxMessages: 2 });
      assert.deepEqual(payloads(batch.messages), ["a", "b"]);
      assert.deepEqual(batch.messages.map((x) => x.messageId), ids.slice(0, 2));
      assert.notEqual(batch.messages[0].leaseToken, batch.messages[1].leaseToken);
    });

    test("nack retries with attempts counted, then dead letters; ListDead, RedriveDead, PurgeDead", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = queueName();
      const sent = await enqueue(dl, q, "flaky", { maxAttempts: 2, backoff: fixed(50) });

      const first = await leaseOne(dl, q);
      assert.ok(first);
      assert.deepEqual([first.attempt, first.maxAttempts], [1, 2]);
      assert.equal((await dl.queue.nack({ queue: q, messageId: first.messageId, leaseToken: first.leaseToken })).dead, false);
      // Its old lease is fenced out.
      const stale = await rejects(dl.queue.ack({ queue: q, messageId: first.messageId, leaseToken: first.leaseToken }));
      assert.equal(stale.code, Code.FailedPrecondition);

      const second = await leaseOne(dl, q);
      assert.ok(second, "the nacked message is delivered again after its backoff");
      assert.deepEqual([second.messageId, second.attempt, dec(second.payload)], [sent.messageId, 2, "flaky"]);
      assert.notEqual(second.leaseToken, first.leaseToken);
      const nacked = await dl.queue.nack({ queue: q, messageId: second.messageId, leaseToken: second.leaseToken, reason: "boom" });
      assert.equal(nacked.dead, true, "its last attempt failed: dead");
      assert.equal((await dl.queue.lease({ queue: q, wait: millis(200) })).messages.length, 0, "a dead message is not delivered");

      // A nack can send a message to the dead letters at once.
      const other = await enqueue(dl, q, "poison", { maxAttempts: 10 });
      const o = await leaseOne(dl, q);
      assert.equal(o?.messageId, other.messageId);
      assert.equal((await dl.queue.nack({ queue: q, messageId: o.messageId, leaseToken: o.leaseToken, deadLetter: true })).dead, true);

      const stats = await dl.queue.stats({ queue: q });
      assert.deepEqual([stats.waiting, stats.delayed, stats.leased, stats.dead], [0n, 0n, 0n, 2n]);
      assert.deepEqual([stats.retriedTotal, stats.deadTotal, stats.ackedTotal], [1n, 2n, 0n]);

      const all = await dl.queue.listDead({ queue: q });
      assert.equal(all.nextCursor, "");
      assert.deepEqual(
        all.messages.map((d) => [d.message?.messageId, dec(d.message?.payload), d.message?.attempt, d.reason]),
        [
          [sent.messageId, "flaky", 2, "boom"],
          [other.messageId, "poison", 1, "nacked"],
        ],
      );
      for (const d of all.messages) {
        assert.ok(d.diedAt && Math.abs(timestampMs(d.diedAt) - Date.now()) < 10_000);
        assert.equal(d.message?.leaseToken, "", "a dead message has no lease");
      }
      const page1 = await dl.queue.listDead({ queue: q, limit: 1 });
      assert.deepEqual(page1.messages.map((d) => d.message?.messageId), [sent.messageId]);
      assert.notEqual(page1.nextCursor, "");
      const page2 = await dl.queue.listDead({ queue: q, limit: 1, cursor: page1.nextCursor });
      assert.deepEqual(page2.messages.map((d) => d.message?.messageId), [other.messageId]);
      assert.equal(page2.nextCursor, "");
      assert.deepEqual(await badFields(dl.queue.listDead({ queue: q, cursor: "nope" })), ["cursor"]);

      // Redriven: back with fresh attempts.
      assert.equal((await dl.queue.redriveDead({ queue: q, messageIds: [sent.messageId] })).redriven, 1n);
      assert.equal((await dl.queue.redriveDead({ queue: q, messageIds: [sent.messageId] })).redriven, 0n, "not dead any more");
      const again = await leaseOne(dl, q);
      assert.deepEqual([again?.messageId, again?.attempt, dec(again?.payload)], [sent.messageId, 1, "flaky"]);
      await dl.queue.ack({ queue: q, messageId: again.messageId, leaseToken: again.leaseToken });

      // Purged: gone for good.
      assert.equal((await dl.queue.purgeDead({ queue: q, messageIds: ["999999"] })).purged, 0n);
      assert.equal((await dl.queue.purgeDead({ queue: q, messageIds: [other.messageId] })).purged, 1n);
      const after = await dl.queue.stats({ queue: q });
      assert.deepEqual([after.dead, after.waiting, after.ackedTotal], [0n, 0n, 1n]);
      assert.deepEqual((await dl.queue.listDead({ queue: q })).messages, []);

      // With no ids: every dead message.
      for (const p of ["x", "y"]) {
        await enqueue(dl, q, p, { maxAttempts: 1 });
        const m = await leaseOne(dl, q);
        assert.ok(m);
        assert.equal((await dl.queue.nack({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken })).dead, true);
      }
      assert.equal((await dl.queue.redriveDead({ queue: q })).redriven, 2n);
      const back = await dl.queue.lease({ queue: q, maxMessages: 5, wait: millis(1000) });
      assert.deepEqual(payloads(back.messages).sort(), ["x", "y"]);
      for (const m of back.messages) {
        await dl.queue.nack({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken, deadLetter: true });
      }
      assert.equal((await dl.queue.purgeDead({ queue: q })).purged, 2n);
      assert.equal((await dl.queue.stats({ queue: q })).dead, 0n);
      assert.deepEqual(await badFields(dl.queue.redriveDead({ queue: q, messageIds: ["not-an-id"] })), ["message_ids[0]"]);
    });

    test("nack retry_after delays the retry; an expired lease is a failed delivery, fenced", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = queueName();
      await enqueue(dl, q, "later", { backoff: fixed(0) });
      const m = await leaseOne(dl, q);
      assert.ok(m);
      await dl.queue.nack({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken, retryAfter: millis(700) });
      const delayed = await dl.queue.stats({ queue: q });
      assert.deepEqual([delayed.delayed, delayed.waiting, delayed.retriedTotal], [1n, 0n, 1n]);
      const started = Date.now();
      const retried = await leaseOne(dl, q, 3000);
      const waited = Date.now() - started;
      assert.equal(retried?.attempt, 2);
      assert.ok(waited >= 500, `retried after ${waited} ms, asked 700`);

      // The lease runs out: delivered again, the old token refused.
      const short = await dl.queue.extendLease({
        queue: q,
        messageId: retried.messageId,
        leaseToken: retried.leaseToken,
        leaseDuration: millis(200),
      });
      assert.ok(short.leaseExpiresAt && timestampMs(short.leaseExpiresAt) - Date.now() <= 300);
      assert.equal(await leaseOne(dl, q, 0), undefined, "still leased");
      await sleep(400);
      const third = await leaseOne(dl, q, 2000);
      assert.deepEqual([third?.messageId, third?.attempt], [retried.messageId, 3]);
      const lost = await rejects(dl.queue.ack({ queue: q, messageId: retried.messageId, leaseToken: retried.leaseToken }));
      assert.equal(lost.code, Code.FailedPrecondition);
      assert.match(lost.rawMessage, /lease lost/);
      const ext = await rejects(
        dl.queue.extendLease({ queue: q, messageId: retried.messageId, leaseToken: retried.leaseToken, leaseDuration: seconds(5) }),
      );
      assert.equal(ext.code, Code.FailedPrecondition);
      const nackLost = await rejects(dl.queue.nack({ queue: q, messageId: retried.messageId, leaseToken: retried.leaseToken }));
      assert.equal(nackLost.code, Code.FailedPrecondition);
      await dl.queue.ack({ queue: q, messageId: third.messageId, leaseToken: third.leaseToken });
      assert.equal((await dl.queue.stats({ queue: q })).ackedTotal, 1n);
    });

    test("a lease that runs out is seen by Stats as no longer leased", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = queueName();
      await enqueue(dl, q, "dropped", { backoff: fixed(60_000) });
      const m = await leaseOne(dl, q, 0, 150);
      assert.ok(m);
      await sleep(400);
      const s = await dl.queue.stats({ queue: q });
      assert.deepEqual(
        [s.leased, s.delayed + s.waiting],
        [0n, 1n],
        "the lease ran out 250 ms ago and nobody holds it: the message awaits its retry, it is not leased",
      );
      // Whoever leases next sees the expiry, and Stats agrees then.
      assert.equal(await leaseOne(dl, q, 0), undefined, "its retry is a minute away");
      const after = await dl.queue.stats({ queue: q });
      assert.deepEqual([after.leased, after.delayed, after.retriedTotal], [0n, 1n, 1n]);
    });

    test("extendLease keeps a message; bad lease references are INVALID_ARGUMENT", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = queueName();
      await enqueue(dl, q, "long job");
      const m = await leaseOne(dl, q, 0, 300);
      assert.ok(m?.leaseExpiresAt);
      const extended = await dl.queue.extendLease({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken, leaseDuration: seconds(10) });
      assert.ok(extended.leaseExpiresAt);
      const left = timestampMs(extended.leaseExpiresAt) - Date.now();
      assert.ok(left > 9000 && left <= 11_000, `extended lease left ${left} ms`);
      assert.ok(timestampMs(extended.leaseExpiresAt) > timestampMs(m.leaseExpiresAt));
      await sleep(500);
      assert.equal(await leaseOne(dl, q, 0), undefined, "the extended lease still holds it");
      assert.equal((await dl.queue.stats({ queue: q })).leased, 1n);
      await dl.queue.ack({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken });

      assert.deepEqual(
        await badFields(dl.queue.extendLease({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken, leaseDuration: millis(10) })),
        ["lease_duration"],
      );
      assert.deepEqual(
        await badFields(dl.queue.extendLease({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken, leaseDuration: { seconds: 13n * 3600n, nanos: 0 } })),
        ["lease_duration"],
      );
      assert.deepEqual(await badFields(dl.queue.ack({ queue: q, messageId: "abc", leaseToken: "" })), ["message_id", "lease_token"]);
      assert.deepEqual(await badFields(dl.queue.nack({ queue: "bad queue", messageId: m.messageId, leaseToken: m.leaseToken })), ["queue"]);
      assert.deepEqual(
        await badFields(dl.queue.nack({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken, retryAfter: { seconds: 31n * 86400n, nanos: 0 } })),
        ["retry_after"],
      );
    });

    test("cancel removes a message that is not leased", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = queueName();
      const a = await enqueue(dl, q, "a");
      const b = await enqueue(dl, q, "b", { delay: seconds(60) });
      const c = await enqueue(dl, q, "c");
      assert.equal((await dl.queue.cancel({ queue: q, messageId: a.messageId })).cancelled, true);
      assert.equal((await dl.queue.cancel({ queue: q, messageId: a.messageId })).cancelled, false, "already gone");
      assert.equal((await dl.queue.cancel({ queue: q, messageId: b.messageId })).cancelled, true, "a delayed message");
      assert.equal((await dl.queue.cancel({ queue: q, messageId: "424242" })).cancelled, false);
      const m = await leaseOne(dl, q, 0);
      assert.equal(m?.messageId, c.messageId, "the cancelled ones are not delivered");
      assert.equal((await dl.queue.cancel({ queue: q, messageId: c.messageId })).cancelled, false, "a leased message stays");
      const s = await dl.queue.stats({ queue: q });
      assert.deepEqual([s.waiting, s.delayed, s.leased], [0n, 0n, 1n]);
      await dl.queue.ack({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken });
    });

    test("cancel with a bad message id names the request's field, message_id", async (t) => {
      if (skip(t)) return;
      const dl = client();
      // CancelRequest has `message_id` (no `message_ids`).
      assert.deepEqual(await badFields(dl.queue.cancel({ queue: queueName(), messageId: "x1" })), ["message_id"]);
    });

    test("delay and not_before hold a message back; expire_at drops it", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = queueName();
      const started = Date.now();
      await enqueue(dl, q, "delayed", { delay: millis(600) });
      const s = await dl.queue.stats({ queue: q });
      assert.deepEqual([s.delayed, s.waiting], [1n, 0n]);
      assert.equal(await leaseOne(dl, q, 0), undefined, "not due yet");
      const m = await leaseOne(dl, q, 3000);
      assert.equal(dec(m?.payload), "delayed");
      assert.ok(Date.now() - started >= 550, `delivered after ${Date.now() - started} ms`);
      await dl.queue.ack({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken });

      const at = Date.now() + 600;
      await enqueue(dl, q, "at", { notBefore: timestampFromMs(at) });
      assert.equal(await leaseOne(dl, q, 0), undefined);
      const n = await leaseOne(dl, q, 3000);
      assert.equal(dec(n?.payload), "at");
      assert.ok(Date.now() >= at - 50);
      await dl.queue.ack({ queue: q, messageId: n.messageId, leaseToken: n.leaseToken });

      await enqueue(dl, q, "stale", { expireAt: timestampFromMs(Date.now() + 150) });
      await sleep(300);
      assert.equal(await leaseOne(dl, q, 0), undefined, "expired before it was delivered");
      const after = await dl.queue.stats({ queue: q });
      assert.deepEqual([after.expiredTotal, after.waiting], [1n, 0n]);

      assert.deepEqual(await badFields(enqueue(dl, q, "x", { delay: { seconds: 31n * 86400n, nanos: 0 } })), ["message.delay"]);
      assert.deepEqual(
        await badFields(enqueue(dl, q, "x", { notBefore: timestampFromMs(Date.now() + 31 * 86_400_000) })),
        ["message.not_before"],
      );
    });

    test("dedup_id answers the first message's id within the window", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = queueName();
      const first = await enqueue(dl, q, "one", { dedupId: "order-1" });
      const dup = await enqueue(dl, q, "two", { dedupId: "order-1" });
      assert.deepEqual([dup.messageId, dup.deduplicated], [first.messageId, true]);
      const elsewhere = await enqueue(dl, queueName(), "one", { dedupId: "order-1" });
      assert.equal(elsewhere.deduplicated, false, "dedup ids are per queue");
      const s = await dl.queue.stats({ queue: q });
      assert.deepEqual([s.waiting, s.enqueuedTotal], [1n, 1n]);
      const m = await leaseOne(dl, q, 0);
      assert.equal(dec(m?.payload), "one");
      await dl.queue.ack({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken });
      const afterAck = await enqueue(dl, q, "three", { dedupId: "order-1" });
      assert.deepEqual([afterAck.messageId, afterAck.deduplicated], [first.messageId, true], "still within the window");

      const brief = await enqueue(dl, q, "brief", { dedupId: "order-2", dedupWindow: millis(300) });
      assert.equal((await enqueue(dl, q, "brief", { dedupId: "order-2" })).messageId, brief.messageId);
      await sleep(450);
      const later = await enqueue(dl, q, "brief again", { dedupId: "order-2" });
      assert.equal(later.deduplicated, false, "the window passed");
      assert.notEqual(later.messageId, brief.messageId);
      assert.deepEqual(
        await badFields(enqueue(dl, q, "x", { dedupId: "d", dedupWindow: { seconds: 8n * 86400n, nanos: 0 } })),
        ["message.dedup_window"],
      );
    });

    test("priorities go first, FIFO within one; a group leases one at a time, in order", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = queueName();
      await enqueue(dl, q, "low-1");
      await enqueue(dl, q, "high-1", { priority: 9 });
      await enqueue(dl, q, "mid", { priority: 5 });
      await enqueue(dl, q, "high-2", { priority: 9 });
      await enqueue(dl, q, "low-2");
      const all = await dl.queue.lease({ queue: q, maxMessages: 10 });
      assert.deepEqual(payloads(all.messages), ["high-1", "high-2", "mid", "low-1", "low-2"]);
      assert.deepEqual(all.messages.map((m) => m.priority), [9, 9, 5, 0, 0]);
      for (const m of all.messages) await dl.queue.ack({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken });

      const g = queueName();
      await enqueue(dl, g, "g1", { groupKey: "user-7", backoff: fixed(0) });
      await enqueue(dl, g, "g2", { groupKey: "user-7" });
      await enqueue(dl, g, "free");
      const first = await dl.queue.lease({ queue: g, maxMessages: 10 });
      assert.deepEqual(payloads(first.messages), ["g1", "free"], "one message of a group at a time");
      assert.equal(first.messages[0].groupKey, "user-7");
      const s = await dl.queue.stats({ queue: g });
      assert.deepEqual([s.waiting, s.leased], [1n, 2n], "the one behind its group waits");
      // A retried message stays its group's active one: g2 waits for it.
      const [g1] = first.messages;
      await dl.queue.nack({ queue: g, messageId: g1.messageId, leaseToken: g1.leaseToken, retryAfter: millis(0) });
      const retried = await dl.queue.lease({ queue: g, maxMessages: 10, wait: millis(1000) });
      assert.deepEqual(payloads(retried.messages), ["g1"]);
      assert.equal(retried.messages[0].attempt, 2);
      await dl.queue.ack({ queue: g, messageId: retried.messages[0].messageId, leaseToken: retried.messages[0].leaseToken });
      const next = await dl.queue.lease({ queue: g, maxMessages: 10 });
      assert.deepEqual(payloads(next.messages), ["g2"]);

      assert.deepEqual(await badFields(enqueue(dl, q, "x", { priority: 10 })), ["message.priority"]);
    });

    test("enqueueBatch answers in order, dedup included; bad messages are named", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = queueName();
      const { results } = await dl.queue.enqueueBatch({
        queue: q,
        messages: [
          { payload: enc("b0"), dedupId: "same" },
          { payload: enc("b1"), priority: 3 },
          { payload: enc("b2"), dedupId: "same" },
          { payload: enc("b3"), delay: seconds(60) },
        ],
      });
      assert.equal(results.length, 4);
      assert.deepEqual(results.map((r) => r.deduplicated), [false, false, true, false]);
      assert.equal(results[2].messageId, results[0].messageId);
      assert.equal(new Set(results.map((r) => r.messageId)).size, 3);
      const s = await dl.queue.stats({ queue: q });
      assert.deepEqual([s.waiting, s.delayed, s.enqueuedTotal], [2n, 1n, 3n]);
      const leased = await dl.queue.lease({ queue: q, maxMessages: 10 });
      assert.deepEqual(payloads(leased.messages), ["b1", "b0"]);
      assert.deepEqual(leased.messages.map((m) => m.messageId), [results[1].messageId, results[0].messageId]);

      const bad = await badFields(
        dl.queue.enqueueBatch({
          queue: q,
          messages: [{ payload: enc("ok") }, { payload: enc("x"), priority: 42 }, { headers: { "bad name": "v" } }],
        }),
      );
      assert.deepEqual(bad, ["messages[1].priority", "messages[2].headers"]);
      assert.deepEqual(await badFields(dl.queue.enqueueBatch({ queue: q, messages: [] })), ["messages"]);
      const tooMany = Array.from({ length: 101 }, (_, i) => ({ payload: enc(String(i)) }));
      assert.deepEqual(await badFields(dl.queue.enqueueBatch({ queue: q, messages: tooMany })), ["messages"]);
      assert.equal((await dl.queue.stats({ queue: q })).enqueuedTotal, 3n, "a refused batch enqueues nothing");
    });

    test("pause stops deliveries (enqueues continue); resume restarts them and wakes a long poll", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = queueName();
      await dl.queue.pause({ queue: q });
      assert.equal((await dl.queue.stats({ queue: q })).paused, true);
      const sent = await enqueue(dl, q, "held");
      assert.equal(await leaseOne(dl, q, 300), undefined, "a paused queue delivers nothing");
      const s = await dl.queue.stats({ queue: q });
      assert.deepEqual([s.paused, s.waiting], [true, 1n]);

      const started = Date.now();
      const polling = leaseOne(dl, q, 4000);
      await sleep(300);
      await dl.queue.resume({ queue: q });
      const m = await polling;
      assert.equal(m?.messageId, sent.messageId);
      assert.ok(Date.now() - started < 3000, "the resume woke the long poll");
      assert.equal((await dl.queue.stats({ queue: q })).paused, false);
      await dl.queue.ack({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken });
      await dl.queue.resume({ queue: q }); // resuming a running queue is fine
      assert.deepEqual(await badFields(dl.queue.pause({ queue: "" })), ["queue"]);
      assert.deepEqual(await badFields(dl.queue.resume({ queue: "x".repeat(129) })), ["queue"]);
    });

    test("lease waits for a message; its bounds are checked", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = queueName();
      const started = Date.now();
      assert.equal(await leaseOne(dl, q, 300), undefined);
      assert.ok(Date.now() - started >= 250, "the long poll waited");
      const polling = leaseOne(dl, q, 4000);
      await sleep(200);
      await enqueue(dl, q, "woken");
      const m = await polling;
      assert.equal(dec(m?.payload), "woken");
      assert.ok(Date.now() - started < 3000);
      assert.deepEqual(await badFields(dl.queue.lease({ queue: q, maxMessages: 101 })), ["max_messages"]);
      assert.deepEqual(await badFields(dl.queue.lease({ queue: q, wait: seconds(31) })), ["wait"]);
      assert.deepEqual(await badFields(dl.queue.lease({ queue: q, leaseDuration: millis(50) })), ["lease_duration"]);
      assert.deepEqual(await badFields(dl.queue.enqueue({ queue: q })), ["message"]);
      assert.deepEqual(await badFields(dl.queue.enqueue({ queue: "no spaces", message: { maxAttempts: 101 } })), [
        "queue",
        "message.max_attempts",
      ]);
    });

    test("schedules: upsert, list, a tick enqueues from the template, delete", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = queueName();
      const id = unique("ts-sched");
      const upserted = await dl.queue.upsertSchedule({
        queue: q,
        schedule: {
          id,
          cron: "* * * * * *",
          template: { payload: enc("tick"), headers: { kind: "report" }, priority: 4, maxAttempts: 3 },
        },
      });
      const sch = upserted.schedule;
      assert.ok(sch?.nextRun);
      assert.deepEqual([sch.id, sch.cron, sch.timeZone], [id, "* * * * * *", ""]);
      const dueIn = timestampMs(sch.nextRun) - Date.now();
      assert.ok(dueIn > -1000 && dueIn <= 1500, `next run in ${dueIn} ms`);
      assert.deepEqual([dec(sch.template?.payload), sch.template?.headers, sch.template?.priority, sch.template?.maxAttempts], [
        "tick",
        { kind: "report" },
        4,
        3,
      ]);

      const daily = await dl.queue.upsertSchedule({
        queue: q,
        schedule: { id: "daily", cron: "0 9 * * *", timeZone: "Europe/Paris", template: { payload: enc("daily") } },
      });
      const at = timestampDate(daily.schedule?.nextRun ?? timestampFromMs(0));
      assert.ok(at.getTime() > Date.now() && at.getTime() <= Date.now() + 86_400_000 + 3_600_000);
      assert.equal(at.getUTCMinutes(), 0);
      assert.ok([7, 8].includes(at.getUTCHours()), `09:00 in Paris is ${at.toISOString()}`);

      const listed = await dl.queue.listSchedules({ queue: q });
      assert.deepEqual(listed.schedules.map((s) => s.id).sort(), [id, "daily"].sort());
      assert.equal(listed.schedules.find((s) => s.id === "daily")?.timeZone, "Europe/Paris");

      const m = await leaseOne(dl, q, 4000);
      assert.ok(m, "a tick enqueued a message");
      assert.deepEqual([dec(m.payload), m.priority, m.maxAttempts, m.headers.kind, m.headers["schedule-id"]], [
        "tick",
        4,
        3,
        "report",
        id,
      ]);
      assert.match(m.headers["schedule-tick"] ?? "", /^\d+$/);
      await dl.queue.ack({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken });

      // Upsert replaces the definition.
      await dl.queue.upsertSchedule({ queue: q, schedule: { id, cron: "0 0 1 1 *", template: { payload: enc("yearly") } } });
      const replaced = (await dl.queue.listSchedules({ queue: q })).schedules.find((s) => s.id === id);
      assert.deepEqual([replaced?.cron, dec(replaced?.template?.payload)], ["0 0 1 1 *", "yearly"]);

      assert.equal((await dl.queue.deleteSchedule({ queue: q, id })).deleted, true);
      assert.equal((await dl.queue.deleteSchedule({ queue: q, id })).deleted, false);
      assert.equal((await dl.queue.deleteSchedule({ queue: q, id: "daily" })).deleted, true);
      assert.deepEqual((await dl.queue.listSchedules({ queue: q })).schedules, []);
      // No more ticks: drain what may have fired meanwhile, then nothing comes.
      while (await leaseOne(dl, q, 0));
      assert.equal(await leaseOne(dl, q, 1500), undefined, "a deleted schedule does not fire");

      assert.deepEqual(
        await badFields(dl.queue.upsertSchedule({ queue: q, schedule: { id: "s", cron: "nope", template: { payload: enc("x") } } })),
        ["schedule.cron"],
      );
      assert.deepEqual(
        await badFields(dl.queue.upsertSchedule({ queue: q, schedule: { id: "s", cron: "* * * * *", timeZone: "Mars/Base", template: {} } })),
        ["schedule.time_zone"],
      );
      assert.deepEqual(await badFields(dl.queue.upsertSchedule({ queue: q, schedule: { id: "s", cron: "* * * * *" } })), [
        "schedule.template",
      ]);
      assert.deepEqual(
        await badFields(dl.queue.upsertSchedule({ queue: q, schedule: { id: "s", cron: "* * * * *", template: { dedupId: "x" } } })),
        ["schedule.template.dedup_id"],
      );
      assert.deepEqual(
        await badFields(
          dl.queue.upsertSchedule({ queue: q, schedule: { id: "s", cron: "* * * * *", template: { notBefore: timestampFromMs(Date.now()) } } }),
        ),
        ["schedule.template.not_before"],
      );
      assert.deepEqual(await badFields(dl.queue.upsertSchedule({ queue: q })), ["schedule"]);
      assert.deepEqual(await badFields(dl.queue.deleteSchedule({ queue: q, id: "bad id" })), ["id"]);
      assert.deepEqual(await badFields(dl.queue.listSchedules({ queue: "" })), ["queue"]);
    });

    test("consume streams messages against credits; acked like leased ones", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = queueName();
      for (const p of ["c1", "c2", "c3"]) await enqueue(dl, q, p);
      const requests = outbox<MessageInitShape<typeof ConsumeRequestSchema>>();
      const abort = new AbortController();
      const stream = reader<ConsumeResponse>(dl.queue.consume(requests, { signal: abort.signal }));
      requests.push({ kind: { case: "start", value: { queue: q, credits: 2, leaseDuration: seconds(20) } } });

      const got: Message[] = [];
      for (let i = 0; i < 2; i++) {
        const r = await stream.next();
        assert.ok(r?.message, `delivery ${i} (${stream.error})`);
        got.push(r.message);
      }
      assert.deepEqual(payloads(got), ["c1", "c2"]);
      for (const m of got) {
        assert.equal(m.attempt, 1);
        const left = timestampMs(m.leaseExpiresAt ?? timestampFromMs(0)) - Date.now();
        assert.ok(left > 15_000 && left <= 21_000, `stream lease left ${left} ms`);
      }
      assert.equal(await stream.next(800), undefined, "no credit left: the third waits");
      const s = await dl.queue.stats({ queue: q });
      assert.deepEqual([s.waiting, s.leased], [1n, 2n]);

      requests.push({ kind: { case: "credit", value: 2 } });
      const third = await stream.next();
      assert.equal(dec(third?.message?.payload), "c3");
      // One credit left: a message enqueued now is streamed at once.
      const late = await enqueue(dl, q, "c4");
      const fourth = await stream.next();
      assert.equal(fourth?.message?.messageId, late.messageId);
      for (const m of [...got, third?.message, fourth?.message]) {
        assert.ok(m);
        await dl.queue.ack({ queue: q, messageId: m.messageId, leaseToken: m.leaseToken });
      }
      const done = await dl.queue.stats({ queue: q });
      assert.deepEqual([done.waiting, done.leased, done.ackedTotal], [0n, 0n, 4n]);
      await enqueue(dl, q, "c5");
      assert.equal(await stream.next(600), undefined, "credits used up");
      abort.abort();
      await stream.done;
      assert.ok(stream.error instanceof ConnectError);
      assert.equal(stream.error.code, Code.Canceled);
      const left = await leaseOne(dl, q, 0);
      assert.equal(dec(left?.payload), "c5", "a message not streamed stays in the queue");
    });

    test("consume: a consumer's message arriving while a lease is in flight loses no delivery", async (t) => {
      if (skip(t)) return;
      const dl = client();
      // Start, then at once the consumer's half-close: the stream leases
      // the one message, sends it, and ends (no credit left, no more
      // requests). Each message may be delivered once (max_attempts 1), so
      // a delivery leased but never sent would die unseen.
      for (let trial = 0; trial < 40; trial++) {
        const q = queueName();
        const sent = await enqueue(dl, q, `m${trial}`, { maxAttempts: 1 });
        const requests = outbox<MessageInitShape<typeof ConsumeRequestSchema>>();
        requests.push({ kind: { case: "start", value: { queue: q, credits: 1, leaseDuration: millis(300) } } });
        requests.close();
        const stream = reader<ConsumeResponse>(dl.queue.consume(requests, { timeoutMs: 2000 }));
        const got = await stream.next(2500);
        await stream.done;
        if (got?.message?.messageId !== sent.messageId) {
          await sleep(400);
          const s = await dl.queue.stats({ queue: q });
          const [dead] = (await dl.queue.listDead({ queue: q })).messages;
          assert.fail(
            `trial ${trial}: the message was never streamed (stream error: ${stream.error}); ` +
              `then stats dead=${s.dead}, dead reason ${JSON.stringify(dead?.reason)} at attempt ${dead?.message?.attempt}`,
          );
        }
        assert.equal(stream.error, undefined, `trial ${trial}: ${stream.error}`);
        assert.ok(stream.ended, "no credit left and the consumer is done: the stream ends");
        await dl.queue.ack({ queue: q, messageId: got.message.messageId, leaseToken: got.message.leaseToken });
      }
    });

    test("consume refuses a stream that does not begin with Start, and bad credits", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const q = queueName();
      const open = async (...first: MessageInitShape<typeof ConsumeRequestSchema>[]) => {
        const requests = outbox<MessageInitShape<typeof ConsumeRequestSchema>>();
        for (const r of first) requests.push(r);
        const stream = reader<ConsumeResponse>(dl.queue.consume(requests, { timeoutMs: 5000 }));
        const r = await stream.next(3000);
        requests.close();
        await stream.done;
        assert.equal(r, undefined);
        assert.ok(stream.error instanceof ConnectError, `expected an error, got ${stream.error}`);
        return stream.error;
      };
      const notStart = await open({ kind: { case: "credit", value: 1 } });
      assert.equal(notStart.code, Code.InvalidArgument);
      assert.deepEqual(fieldViolations(notStart).map((v) => v.field), ["start"]);
      const badQueue = await open({ kind: { case: "start", value: { queue: "bad queue", credits: 1 } } });
      assert.deepEqual(fieldViolations(badQueue).map((v) => v.field), ["start.queue"]);
      const tooMany = await open({ kind: { case: "start", value: { queue: q, credits: 10_001 } } });
      assert.equal(tooMany.code, Code.InvalidArgument);
      assert.deepEqual(fieldViolations(tooMany).map((v) => v.field), ["credit"]);
      const again = await open(
        { kind: { case: "start", value: { queue: q, credits: 0 } } },
        { kind: { case: "start", value: { queue: q, credits: 1 } } },
      );
      assert.deepEqual(fieldViolations(again).map((v) => v.field), ["kind"]);
      const shortLease = await open({ kind: { case: "start", value: { queue: q, credits: 1, leaseDuration: millis(10) } } });
      assert.deepEqual(fieldViolations(shortLease).map((v) => v.field), ["start.lease_duration"]);
    });
  });
}
