// `dl.queue.add` (src/enqueuer.ts) against the real binary: messages added
// in one turn go as one EnqueueBatch and each caller gets its own answer, in
// order; a bad message is only its caller's error; a queue that fills part
// way refuses only the messages past that point (a binary of its own with
// queue.max_messages = 5, whose calls count as well).
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test, type TestContext } from "node:test";
import type { Interceptor } from "@connectrpc/connect";
import { Code, ConnectError, fieldViolations, type DatalayerClient } from "@datalayer/client";
import { Stack, unique } from "./harness.js";

const SERVICE = "datalayer.queue.v1.QueueService";
const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array | undefined) => new TextDecoder().decode(b ?? new Uint8Array());

/** A client of `stack` that counts its calls by method name. */
function counted(stack: Stack): { dl: DatalayerClient; calls: Map<string, number> } {
  const calls = new Map<string, number>();
  const count: Interceptor = (next) => (req) => {
    calls.set(req.method.name, (calls.get(req.method.name) ?? 0) + 1);
    return next(req);
  };
  return { dl: stack.client({ interceptors: [count] }), calls };
}

async function drain(dl: DatalayerClient, queue: string, n: number): Promise<string[]> {
  const payloads: string[] = [];
  while (payloads.length < n) {
    const { messages } = await dl.queue.lease({ queue, maxMessages: 100 });
    if (messages.length === 0) break;
    for (const m of messages) {
      payloads.push(dec(m.payload));
      await dl.queue.ack({ queue, messageId: m.messageId, leaseToken: m.leaseToken });
    }
  }
  return payloads;
}

async function rejection(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    return ConnectError.from(e);
  }
  assert.fail("expected a rejection");
}

export function enqueuerSuite(stack: () => Stack, store = "redis") {
  describe(`dl.queue.add (${store})`, () => {
    const skip = (t: TestContext) => {
      if (!stack().serves(SERVICE)) {
        t.skip(`${SERVICE} is not served`);
        return true;
      }
      return false;
    };

    test("adds of one turn are one EnqueueBatch, answered each in order", async (t) => {
      if (skip(t)) return;
      const { dl, calls } = counted(stack());
      const q = unique("ts.add");
      const sent = await Promise.all(Array.from({ length: 150 }, (_, i) => dl.queue.add(q, { payload: enc(`job-${i}`) })));
      assert.equal(new Set(sent.map((r) => r.messageId)).size, 150, "an id each");
      assert.ok(sent.every((r) => r.messageId !== "" && !r.deduplicated && !r.queueFull));
      assert.deepEqual(Object.fromEntries(calls), { EnqueueBatch: 2 }, "150 adds: batches of 100 and 50");
      const order = Array.from({ length: 150 }, (_, i) => `job-${i}`);
      assert.deepEqual(await drain(dl, q, 150), order, "FIFO in add order");

      // A dedup id seen before answers the first message's id; one add alone
      // in its turn is a unary Enqueue.
      const [first, again] = await Promise.all([
        dl.queue.add(q, { payload: enc("a"), dedupId: "same" }),
        dl.queue.add(q, { payload: enc("b"), dedupId: "same" }),
      ]);
      assert.equal(again.messageId, first.messageId);
      assert.equal(again.deduplicated, true);
      await dl.queue.add(q, { payload: enc("alone") });
      assert.equal(calls.get("Enqueue"), 1);
      assert.equal(calls.get("EnqueueBatch"), 3);
    });

    test("a bad message is its own caller's INVALID_ARGUMENT; the others go in", async (t) => {
      if (skip(t)) return;
      const { dl, calls } = counted(stack());
      const q = unique("ts.add");
      const adds = [
        dl.queue.add(q, { payload: enc("good-1") }),
        dl.queue.add(q, { payload: enc("bad"), priority: 1_000 }),
        dl.queue.add(q, { payload: enc("good-2") }),
      ];
      const [good1, bad, good2] = await Promise.allSettled(adds);
      assert.equal(good1.status, "fulfilled");
      assert.equal(good2.status, "fulfilled");
      assert.equal(bad.status, "rejected");
      const err = ConnectError.from(bad.reason);
      assert.equal(err.code, Code.InvalidArgument);
      assert.deepEqual(fieldViolations(err).map((v) => v.field), ["message.priority"]);
      assert.equal(calls.get("EnqueueBatch"), 1, "refused as a whole");
      assert.equal(calls.get("Enqueue"), 3, "then each alone");
      assert.deepEqual(await drain(dl, q, 2), ["good-1", "good-2"]);
    });

    test("a bad queue name rejects every add of the batch", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const errors = await Promise.all([1, 2].map((i) => rejection(dl.queue.add("bad queue", { payload: enc(`${i}`) }))));
      for (const e of errors) assert.deepEqual(fieldViolations(e).map((v) => v.field), ["queue"]);
    });
  });
}

/** A service of its own whose queues hold at most 5 messages. */
export function enqueuerFullSuite(called: () => Set<string>) {
  describe("dl.queue.add on a queue that fills (queue.max_messages = 5)", () => {
    const dir = mkdtempSync(path.join(tmpdir(), "datalayer-ts-add-"));
    let small: Stack | undefined;
    before(async () => {
      const config = path.join(dir, "queue.yaml");
      writeFileSync(config, "queue:\n  max_messages: 5\n");
      small = await Stack.start({ config, called: called() });
    });
    after(async () => {
      await small?.stop();
      rmSync(dir, { recursive: true, force: true });
    });

    test("only the adds past the point where it filled are RESOURCE_EXHAUSTED", async () => {
      assert.ok(small);
      const dl = small.client();
      const q = unique("ts.full");
      await dl.queue.add(q, { payload: enc("0") });
      const results = await Promise.allSettled(Array.from({ length: 7 }, (_, i) => dl.queue.add(q, { payload: enc(`${i + 1}`) })));
      assert.deepEqual(
        results.map((r) => r.status),
        ["fulfilled", "fulfilled", "fulfilled", "fulfilled", "rejected", "rejected", "rejected"],
      );
      for (const r of results.slice(4)) {
        assert.equal(r.status, "rejected");
        const e = ConnectError.from(r.reason);
        assert.equal(e.code, Code.ResourceExhausted);
        assert.match(e.rawMessage, /is full/);
      }
      assert.deepEqual(await drain(dl, q, 5), ["0", "1", "2", "3", "4"]);
    });
  });
}
