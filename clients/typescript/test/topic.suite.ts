// TopicService through the TypeScript client, against the real binary (run
// once on Redis and once on the memory store): every RPC (Publish,
// PublishBatch, the Subscribe server stream, Ack, GetTopicStats,
// DeleteTopic): replay from an id in order with payloads and headers,
// resuming after a disconnect with nothing missed or repeated, `latest` and
// `since`, fan-out to every subscriber, consumer groups with redelivery of
// what a member that left did not acknowledge, stats, deletion and bad
// input.
import assert from "node:assert/strict";
import { describe, test, type TestContext } from "node:test";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, fieldViolations, type DatalayerClient } from "@datalayer/client";
// From the package's own module: `Message` is a name of protobuf-es too.
import type { Message, SubscribeRequestSchema, SubscribeResponse } from "@datalayer/client/gen/datalayer/topic/v1/topic_pb";
import { type Stack, sleep, unique, waitFor } from "./harness.js";

export const SERVICE = "datalayer.topic.v1.TopicService";

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array | undefined) => new TextDecoder().decode(b ?? new Uint8Array());
const topicName = () => unique("ts.topic");
const millis = (ms: number) => ({ seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 });
/** The `<ms>-<seq>` of an id as numbers, to compare ids. */
const parts = (id: string): [bigint, bigint] => {
  const m = /^(\d+)-(\d+)$/.exec(id);
  assert.ok(m, `a message id: ${id}`);
  return [BigInt(m[1]), BigInt(m[2])];
};
const before = (a: string, b: string) => {
  const [x, y] = [parts(a), parts(b)];
  return x[0] < y[0] || (x[0] === y[0] && x[1] < y[1]);
};
const assertIncreasing = (ids: string[]) => {
  for (let i = 1; i < ids.length; i++) assert.ok(before(ids[i - 1], ids[i]), `ids in order: ${ids[i - 1]} < ${ids[i]}`);
};

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
function badFields(err: unknown): string[] {
  assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${err}`);
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

/** A subscription: its reader, the messages one by one, and how to leave. */
function subscribe(dl: DatalayerClient, request: MessageInitShape<typeof SubscribeRequestSchema>) {
  const abort = new AbortController();
  const events = reader<SubscribeResponse>(dl.topic.subscribe(request, { signal: abort.signal }));
  return {
    events,
    /** The next message event (failing on any other event), or undefined after `ms`. */
    async message(ms = 5000): Promise<Message | undefined> {
      const e = await events.next(ms);
      if (e === undefined) return undefined;
      if (e.event.case !== "message") assert.fail(`expected a message, got ${e.event.case}: ${JSON.stringify(e.event.value)}`);
      return e.event.value;
    },
    /** The next `n` messages, failing if they do not come within `ms` each. */
    async take(n: number, ms = 5000): Promise<Message[]> {
      const out: Message[] = [];
      while (out.length < n) {
        const m = await this.message(ms);
        assert.ok(m, `message ${out.length + 1} of ${n} never came (stream error: ${events.error})`);
        out.push(m);
      }
      return out;
    },
    /** Leaves (aborts the stream) and checks it ended as CANCELED. */
    async leave() {
      abort.abort();
      await events.done;
      assert.ok(events.error instanceof ConnectError, `expected a ConnectError, got ${events.error}`);
      assert.equal(events.error.code, Code.Canceled, String(events.error));
    },
  };
}

export function topicSuite(stack: () => Stack, store = "redis") {
  describe(`${SERVICE} (${store})`, () => {
    const skip = (t: TestContext) => {
      if (!stack().serves(SERVICE)) {
        t.skip(`${SERVICE} is not served`);
        return true;
      }
      return false;
    };
    const client = (): DatalayerClient => stack().client();
    /** Waits until the group `group` of `topic` has `consumers` members. */
    const members = (dl: DatalayerClient, topic: string, group: string, consumers: bigint) =>
      waitFor(async () => {
        const stats = await dl.topic.getTopicStats({ topic });
        return stats.groups.find((g) => g.name === group && g.consumers === consumers);
      });

    test("publish and publishBatch, then subscribe after 0-0: every message in order with payload and headers, then live", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const topic = topicName();
      const started = Date.now();
      const one = await dl.topic.publish({ topic, payload: enc("m0"), headers: { "content-type": "text/plain", "x.trace_id": "abc" } });
      assert.match(one.id, /^\d+-\d+$/);
      const batch = await dl.topic.publishBatch({
        topic,
        messages: [
          { payload: enc("m1"), headers: { n: "1" } },
          { payload: enc("m2") },
          { payload: new Uint8Array([0, 255, 1]), headers: { empty: "" } },
        ],
      });
      assert.equal(batch.ids.length, 3);
      const ids = [one.id, ...batch.ids];
      assertIncreasing(ids);

      const sub = subscribe(dl, { topic, from: { case: "afterId", value: "0-0" } });
      const other = subscribe(dl, { topic, from: { case: "afterId", value: "0-0" } });
      const got = await sub.take(4);
      assert.deepEqual(
        got.map((m) => [m.id, [...m.payload], m.headers, m.deliveryCount]),
        [
          [ids[0], [...enc("m0")], { "content-type": "text/plain", "x.trace_id": "abc" }, 0],
          [ids[1], [...enc("m1")], { n: "1" }, 0],
          [ids[2], [...enc("m2")], {}, 0],
          [ids[3], [0, 255, 1], { empty: "" }, 0],
        ],
      );
      for (const m of got) {
        assert.ok(m.publishTime, "a publish time");
        const at = timestampMs(m.publishTime);
        assert.equal(BigInt(at), parts(m.id)[0], "the publish time is the id's time");
        assert.ok(at >= started - 1000 && at <= Date.now() + 1000, `publish time ${at}`);
      }
      // Fan-out: every subscriber gets every message.
      assert.deepEqual((await other.take(4)).map((m) => m.id), ids);

      // Then live, in order, to both.
      const live = await dl.topic.publishBatch({ topic, messages: [{ payload: enc("m4") }, { payload: enc("m5") }] });
      const m6 = await dl.topic.publish({ topic, payload: enc("m6") });
      const liveIds = [...live.ids, m6.id];
      assertIncreasing([...ids, ...liveIds]);
      for (const s of [sub, other]) {
        const next = await s.take(3);
        assert.deepEqual(next.map((m) => [m.id, dec(m.payload)]), [
          [liveIds[0], "m4"],
          [liveIds[1], "m5"],
          [liveIds[2], "m6"],
        ]);
        assert.equal(await s.message(300), undefined, "nothing more");
      }
      await sub.leave();
      await other.leave();
    });

    test("a subscriber that disconnects resumes after its last id: nothing missed or repeated while publishing goes on", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const topic = topicName();
      const total = 60;
      const published: string[] = [];
      const publishing = (async () => {
        for (let i = 0; i < total; i++) {
          const { id } = await dl.topic.publish({ topic, payload: enc(`m${i}`), headers: { i: String(i) } });
          published.push(id);
          await sleep(5);
        }
      })();
      const seen: Message[] = [];
      let last = "0-0";
      // Three connections: leave after some messages, resume from the last
      // one handled (what was received but not handled is dropped).
      for (const upTo of [12, 35, total]) {
        const sub = subscribe(dl, { topic, from: { case: "afterId", value: last } });
        while (seen.length < upTo) {
          const m = await sub.message();
          assert.ok(m, `message ${seen.length} never came (stream error: ${sub.events.error})`);
          seen.push(m);
          last = m.id;
        }
        await sub.leave();
        await sleep(30);
      }
      await publishing;
      assert.deepEqual(
        seen.map((m) => m.id),
        published,
        "every message once, in order",
      );
      assert.deepEqual(
        seen.map((m) => [dec(m.payload), m.headers.i]),
        published.map((_, i) => [`m${i}`, String(i)]),
      );
      // Resuming after the very last id: nothing old comes, a new one does.
      const tail = subscribe(dl, { topic, from: { case: "afterId", value: last } });
      assert.equal(await tail.message(300), undefined, "nothing after the last id");
      const after = await dl.topic.publish({ topic, payload: enc("after") });
      assert.equal((await tail.message())?.id, after.id);
      await tail.leave();
    });

    test("latest (and no `from`) gets only what is published after subscribing", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const topic = topicName();
      const old = await dl.topic.publishBatch({ topic, messages: [{ payload: enc("old1") }, { payload: enc("old2") }] });
      for (const from of [{ case: "latest" as const, value: true }, undefined]) {
        const sub = subscribe(dl, from ? { topic, from } : { topic });
        // When the subscription is set up is not visible: publish sentinels
        // until one arrives. Those before it were published before it.
        let first: Message | undefined;
        const sentinels: string[] = [];
        for (let n = 0; !first && n < 50; n++) {
          sentinels.push((await dl.topic.publish({ topic, payload: enc(`sentinel${n}`) })).id);
          first = await sub.message(300);
        }
        assert.ok(first, `the subscription never yielded (${sub.events.error})`);
        assert.ok(sentinels.includes(first.id), `the first message is a sentinel, not ${dec(first.payload)}`);
        assert.ok(!old.ids.includes(first.id));
        // Every sentinel after the first one received, then the new one.
        const rest = sentinels.slice(sentinels.indexOf(first.id) + 1);
        const fresh = await dl.topic.publish({ topic, payload: enc("new") });
        const next = await sub.take(rest.length + 1);
        assert.deepEqual(next.map((m) => m.id), [...rest, fresh.id]);
        assert.equal(dec(next.at(-1)?.payload), "new");
        assert.equal(await sub.message(300), undefined, "nothing old is replayed");
        await sub.leave();
      }
    });

    test("since replays the messages published at or after a time", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const topic = topicName();
      const early = await dl.topic.publishBatch({ topic, messages: [{ payload: enc("a") }, { payload: enc("b") }] });
      await sleep(20);
      const late = await dl.topic.publishBatch({ topic, messages: [{ payload: enc("c") }, { payload: enc("d") }] });
      const [cMs] = parts(late.ids[0]);
      assert.ok(parts(early.ids[1])[0] < cMs, "20 ms apart");
      // At c's own millisecond: c is included, b (earlier) is not.
      const sub = subscribe(dl, { topic, from: { case: "since", value: timestampFromMs(Number(cMs)) } });
      const got = await sub.take(2);
      assert.deepEqual(got.map((m) => [m.id, dec(m.payload)]), [
        [late.ids[0], "c"],
        [late.ids[1], "d"],
      ]);
      assert.equal(await sub.message(300), undefined);
      const e = await dl.topic.publish({ topic, payload: enc("e") });
      assert.equal((await sub.message())?.id, e.id, "then live");
      await sub.leave();
      // A time before everything replays everything.
      const all = subscribe(dl, { topic, from: { case: "since", value: timestampFromMs(Number(parts(early.ids[0])[0]) - 1000) } });
      assert.deepEqual((await all.take(5)).map((m) => dec(m.payload)), ["a", "b", "c", "d", "e"]);
      await all.leave();
    });

    test("a consumer group: each message to one member; a member that leaves without acking has its messages redelivered to the other after ackTimeout", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const topic = topicName();
      const group = "workers";
      const ackTimeoutMs = 1000;
      const join = (consumer: string) =>
        subscribe(dl, { topic, group, consumer, from: { case: "afterId", value: "0-0" }, ackTimeout: millis(ackTimeoutMs) });

      // Work distribution: two members, six messages, each delivered once.
      let a = join("a");
      const b = join("b");
      await members(dl, topic, group, 2n);
      const sent = await dl.topic.publishBatch({ topic, messages: [0, 1, 2, 3, 4, 5].map((i) => ({ payload: enc(`w${i}`) })) });
      const byA: Message[] = [];
      const byB: Message[] = [];
      const deadline = Date.now() + 5000;
      while (byA.length + byB.length < 6 && Date.now() < deadline) {
        const [x, y] = await Promise.all([a.message(50), b.message(50)]);
        if (x) byA.push(x);
        if (y) byB.push(y);
      }
      const delivered = [...byA, ...byB];
      assert.deepEqual(
        delivered.map((m) => m.id).sort(),
        [...sent.ids].sort(),
        `each message to exactly one member (a: ${byA.length}, b: ${byB.length})`,
      );
      for (const m of delivered) assert.equal(m.deliveryCount, 1, `first delivery of ${m.id}`);
      // Any client acknowledges for the group; how many were pending.
      for (const mine of [byA, byB].filter((d) => d.length > 0)) {
        assert.equal((await dl.topic.ack({ topic, group, ids: mine.map((m) => m.id) })).acked, BigInt(mine.length));
      }
      assert.equal((await dl.topic.ack({ topic, group, ids: sent.ids })).acked, 0n, "acked already");
      const acked = await dl.topic.getTopicStats({ topic });
      assert.deepEqual(
        acked.groups.map((g) => [g.name, g.pending, g.consumers, g.lastDeliveredId]),
        [[group, 0n, 2n, sent.ids[5]]],
      );
      assert.equal(await a.message(200), undefined, "an acked message is not delivered again");
      assert.equal(await b.message(10), undefined);

      // b leaves; what is published now goes to a, which leaves without
      // acking: after ackTimeout the messages go to b, which joins again.
      await b.leave();
      await a.leave();
      a = join("a");
      const held = await dl.topic.publishBatch({ topic, messages: [{ payload: enc("h0") }, { payload: enc("h1") }, { payload: enc("h2") }] });
      const heldByA = await a.take(3);
      const deliveredAt = Date.now();
      assert.deepEqual(heldByA.map((m) => [m.id, dec(m.payload), m.deliveryCount]), [
        [held.ids[0], "h0", 1],
        [held.ids[1], "h1", 1],
        [held.ids[2], "h2", 1],
      ]);
      await a.leave();
      const pending = await dl.topic.getTopicStats({ topic });
      assert.equal(pending.groups[0]?.pending, 3n, "delivered to a, not acknowledged");

      const again = join("b");
      assert.equal(await again.message(300), undefined, "not before ackTimeout");
      const redelivered = await again.take(3, ackTimeoutMs + 3000);
      const waited = Date.now() - deliveredAt;
      assert.ok(waited >= ackTimeoutMs - 100, `redelivered after ${waited} ms, before ackTimeout ${ackTimeoutMs}`);
      assert.deepEqual(
        redelivered.map((m) => [m.id, dec(m.payload)]).sort(),
        heldByA.map((m) => [m.id, dec(m.payload)]).sort(),
      );
      for (const m of redelivered) assert.ok(m.deliveryCount >= 2, `delivery count of ${m.id}: ${m.deliveryCount}`);

      // A new message after the redeliveries is a first delivery.
      const fresh = await dl.topic.publish({ topic, payload: enc("f") });
      const f = await again.message();
      assert.deepEqual([f?.id, f?.deliveryCount], [fresh.id, 1]);
      const ackedAll = await dl.topic.ack({ topic, group, ids: [...held.ids, fresh.id, "1-1"] });
      assert.equal(ackedAll.acked, 4n, "three redelivered and one new; an unknown id counts nothing");
      assert.equal(await again.message(ackTimeoutMs + 300), undefined, "acknowledged: not delivered again");
      await again.leave();

      const stats = await dl.topic.getTopicStats({ topic });
      assert.deepEqual(
        [stats.exists, stats.length, stats.firstId, stats.lastId],
        [true, 10n, sent.ids[0], fresh.id],
      );
      assert.deepEqual(
        stats.groups.map((g) => [g.name, g.pending, g.consumers, g.lastDeliveredId]),
        [[group, 0n, 2n, fresh.id]],
      );
      assert.equal((await dl.topic.ack({ topic, group: "no-such-group", ids: [fresh.id] })).acked, 0n);
    });

    test("a group made without `from` starts after the newest message", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const topic = topicName();
      await dl.topic.publish({ topic, payload: enc("before the group") });
      const sub = subscribe(dl, { topic, group: "late", consumer: "only" });
      await members(dl, topic, "late", 1n);
      assert.equal(await sub.message(300), undefined, "nothing from before the group");
      const sent = await dl.topic.publish({ topic, payload: enc("for the group") });
      const m = await sub.message();
      assert.deepEqual([m?.id, dec(m?.payload), m?.deliveryCount], [sent.id, "for the group", 1]);
      assert.equal((await dl.topic.ack({ topic, group: "late", ids: [sent.id] })).acked, 1n);
      await sub.leave();
    });

    test("getTopicStats: length, ids, local subscribers; deleteTopic removes the topic and its groups", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const topic = topicName();
      const missing = await dl.topic.getTopicStats({ topic });
      assert.deepEqual(
        [missing.exists, missing.length, missing.firstId, missing.lastId, missing.groups, missing.localSubscribers],
        [false, 0n, "", "", [], 0n],
      );
      const { ids } = await dl.topic.publishBatch({ topic, messages: [1, 2, 3].map((i) => ({ payload: enc(`s${i}`) })) });
      const stats = await dl.topic.getTopicStats({ topic });
      assert.deepEqual(
        [stats.exists, stats.length, stats.firstId, stats.lastId, stats.groups, stats.localSubscribers],
        [true, 3n, ids[0], ids[2], [], 0n],
      );

      const sub = subscribe(dl, { topic, from: { case: "afterId", value: "0-0" } });
      await sub.take(3);
      assert.equal((await dl.topic.getTopicStats({ topic })).localSubscribers, 1n);
      const grouped = subscribe(dl, { topic, group: "g", from: { case: "afterId", value: "0-0" } });
      await grouped.take(1);
      await members(dl, topic, "g", 1n);
      await grouped.leave();
      await sub.leave();
      await waitFor(async () => (await dl.topic.getTopicStats({ topic })).localSubscribers === 0n);

      assert.equal((await dl.topic.deleteTopic({ topic })).deleted, true);
      const gone = await dl.topic.getTopicStats({ topic });
      assert.deepEqual([gone.exists, gone.length, gone.groups], [false, 0n, []]);
      assert.equal((await dl.topic.deleteTopic({ topic })).deleted, false, "nothing left to delete");
      assert.equal((await dl.topic.ack({ topic, group: "g", ids })).acked, 0n, "its groups are gone");
      const empty = subscribe(dl, { topic, from: { case: "afterId", value: "0-0" } });
      assert.equal(await empty.message(300), undefined, "its messages are gone");
      const reborn = await dl.topic.publish({ topic, payload: enc("again") });
      assert.deepEqual([(await empty.message())?.id], [reborn.id]);
      await empty.leave();
      assert.equal((await dl.topic.getTopicStats({ topic })).length, 1n);
      assert.equal((await dl.topic.deleteTopic({ topic })).deleted, true);
    });

    test("bad input is INVALID_ARGUMENT naming each field", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const topic = topicName();
      const refused = async (p: Promise<unknown>) => badFields(await rejects(p));
      /** The error a subscription ends with, before any event. */
      const refusedStream = async (request: MessageInitShape<typeof SubscribeRequestSchema>) => {
        const sub = subscribe(dl, request);
        assert.equal(await sub.events.next(3000), undefined);
        await sub.events.done;
        return badFields(sub.events.error);
      };
      const big = new Uint8Array(256 * 1024 + 1);

      assert.deepEqual(await refused(dl.topic.publish({ topic: "bad topic", payload: enc("x") })), ["topic"]);
      assert.deepEqual(await refused(dl.topic.publish({ topic, payload: big })), ["payload"]);
      assert.deepEqual(
        await refused(dl.topic.publishBatch({ topic, messages: [{ payload: big }, { payload: enc("ok") }] })),
        ["messages[0].payload"],
      );
      assert.deepEqual(
        await refused(dl.topic.publishBatch({ topic, messages: [{ payload: enc("ok") }, { payload: enc("x"), headers: { "": "v" } }] })),
        ["messages[1].headers"],
      );
      assert.deepEqual(await refused(dl.topic.publishBatch({ topic, messages: [] })), ["messages"]);
      assert.deepEqual(
        await refused(dl.topic.publishBatch({ topic, messages: Array.from({ length: 101 }, () => ({ payload: enc("x") })) })),
        ["messages"],
      );
      assert.deepEqual(await refusedStream({ topic, from: { case: "afterId", value: "nope" } }), ["after_id"]);
      assert.deepEqual(await refusedStream({ topic: "", from: { case: "afterId", value: "1-x" } }), ["topic", "after_id"]);
      assert.deepEqual(await refusedStream({ topic, from: { case: "since", value: { seconds: -1n, nanos: 0 } } }), ["since"]);
      assert.deepEqual(await refusedStream({ topic, group: "bad group" }), ["group"]);
      assert.deepEqual(await refusedStream({ topic, group: "g", consumer: "bad consumer" }), ["consumer"]);
      assert.deepEqual(await refusedStream({ topic, group: "g", ackTimeout: millis(10) }), ["ack_timeout"]);
      assert.deepEqual(await refused(dl.topic.ack({ topic, group: "g", ids: ["x"] })), ["ids[0]"]);
      assert.deepEqual(await refused(dl.topic.ack({ topic, group: "g", ids: ["1-1", "2-x"] })), ["ids[1]"]);
      assert.deepEqual(await refused(dl.topic.ack({ topic, group: "g", ids: [] })), ["ids"]);
      assert.deepEqual(await refused(dl.topic.ack({ topic, group: "", ids: ["1-1"] })), ["group"]);
      assert.deepEqual(await refused(dl.topic.getTopicStats({ topic: "" })), ["topic"]);
      assert.deepEqual(await refused(dl.topic.deleteTopic({ topic: "x".repeat(129) })), ["topic"]);
      // Nothing was published by the refused calls.
      assert.equal((await dl.topic.getTopicStats({ topic })).exists, false);
    });
  });
}
