// AnalyticsService through the TypeScript client, against the real binary
// (on Redis and on the memory store): every RPC (Track, Query with filters
// and groupBy, Unique, Top of a top label and of a dimension, ListMetrics),
// bad input named field by field, the reads (`series`, `countUnique`,
// `topValues`), and the buffered tracker (`dl.analytics.tracker()`): what it
// tracks is there after a flush or a close, `maxBatch` flushes on its own,
// the buffer is bounded, a refused event does not take its batch with it,
// an unreachable service is counted, never thrown, and its timer does not
// keep Node running.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { after, before, describe, test, type TestContext } from "node:test";
import { timestampDate, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  Tracker,
  createClient,
  fieldViolations,
  type AnalyticsServiceClient,
  type DatalayerClient,
  type QueryResponse,
} from "@datalayer/client";
import { Stack, freePort, sleep, unique, waitFor } from "./harness.js";

export const SERVICE = "datalayer.analytics.v1.AnalyticsService";
const here = path.dirname(fileURLToPath(import.meta.url));
const HOUR = 3_600_000;

const metricName = (prefix = "ts.an") => unique(prefix);

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
  return fieldViolations(err)
    .map((v) => v.field)
    .sort();
}

/** Each series' count over the range, by its value of `dimension`. */
function totals(answer: QueryResponse, dimension?: string): Record<string, number> {
  return Object.fromEntries(
    answer.series.map((s) => [dimension ? s.dimensions[dimension] : "", s.points.reduce((n, p) => n + Number(p.count), 0)]),
  );
}

/** The last hour of `metric`, a point a minute. */
function query(dl: DatalayerClient, metric: string, more: { groupBy?: string[]; filters?: { dimension: string; values: string[] }[] } = {}) {
  return dl.analytics.query({ metric, resolution: "1m", from: timestampFromMs(Date.now() - HOUR), ...more });
}

async function total(dl: DatalayerClient, metric: string): Promise<number> {
  return Object.values(totals(await query(dl, metric))).reduce((a, b) => a + b, 0);
}

export function analyticsSuite(stack: () => Stack, label = "redis") {
  describe(`${SERVICE} (${label})`, () => {
    const skip = (t: TestContext) => {
      if (!stack().serves(SERVICE)) {
        t.skip(`${SERVICE} is not served`);
        return true;
      }
      return false;
    };

    // ---------------------------------------------------------------- RPCs

    test("Track, then Query: grouped, filtered, a point per minute", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const m = metricName();
      const answer = await dl.analytics.track({
        events: [
          { metric: m, dimensions: { exchange: "kraken", side: "buy" } },
          { metric: m, dimensions: { exchange: "kraken", side: "sell" }, value: { case: "count", value: 2n } },
          { metric: m, dimensions: { exchange: "binance", side: "buy" } },
        ],
      });
      assert.deepEqual([answer.accepted, answer.folded], [3, 0]);

      const all = await query(dl, m);
      assert.equal(all.resolution, "1m");
      assert.equal(all.series.length, 1);
      assert.deepEqual(all.series[0].dimensions, {});
      const points = all.series[0].points;
      assert.ok(points.length >= 60 && points.length <= 62, `${points.length} points`);
      assert.equal(points.reduce((n, p) => n + p.count, 0n), 4n);
      const starts = points.map((p) => timestampMs(p.time!));
      assert.ok(starts.every((s, i) => i === 0 || s - starts[i - 1] === 60_000), "a minute apart");
      assert.ok(Math.abs(starts[starts.length - 1] - Date.now()) < 120_000);

      assert.deepEqual(totals(await query(dl, m, { groupBy: ["exchange"] }), "exchange"), { kraken: 3, binance: 1 });
      const both = await query(dl, m, { groupBy: ["exchange", "side"] });
      assert.deepEqual(
        Object.fromEntries(both.series.map((s) => [`${s.dimensions.exchange}/${s.dimensions.side}`, s.points.reduce((n, p) => n + Number(p.count), 0)])),
        { "kraken/buy": 1, "kraken/sell": 2, "binance/buy": 1 },
      );
      const buys = await query(dl, m, { groupBy: ["exchange"], filters: [{ dimension: "side", values: ["buy"] }] });
      assert.deepEqual(totals(buys, "exchange"), { kraken: 1, binance: 1 });
      const none = await query(dl, m, { filters: [{ dimension: "side", values: ["hold"] }] });
      assert.deepEqual(totals(none), { "": 0 }, "no match: one series of zeros");
    });

    test("samples keep count, sum, min and max", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const m = metricName("ts.an.latency");
      await dl.analytics.track({ events: [12.5, -3, 40].map((v) => ({ metric: m, value: { case: "sample" as const, value: v } })) });
      const hit = (await query(dl, m)).series[0].points.filter((p) => p.count > 0n);
      assert.equal(hit.reduce((n, p) => n + Number(p.count), 0), 3);
      assert.equal(hit.reduce((n, p) => n + p.sum, 0), 49.5);
      assert.equal(Math.min(...hit.map((p) => p.min)), -3);
      assert.equal(Math.max(...hit.map((p) => p.max)), 40);
    });

    test("Unique counts distinct uniqueIds over the range", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const m = metricName("ts.an.dau");
      await dl.analytics.track({ events: ["u1", "u2", "u1", "u3", "u2", ""].map((uniqueId) => ({ metric: m, uniqueId })) });
      const answer = await dl.analytics.unique({ metric: m });
      assert.deepEqual([answer.count, answer.resolution], [3n, "1m"]);
      assert.equal(await total(dl, m), 6, "every event counted, with or without an id");
      const yesterday = await dl.analytics.unique({
        metric: m,
        resolution: "1h",
        from: timestampFromMs(Date.now() - 48 * HOUR),
        to: timestampFromMs(Date.now() - 24 * HOUR),
      });
      assert.equal(yesterday.count, 0n);
    });

    test("Top ranks a top label, or a dimension's series", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const m = metricName("ts.an.cmd");
      const events = (
        [
          ["amy", "price", 5],
          ["bob", "help", 2],
          ["cid", "price", 1],
          ["amy", "buy", 3],
        ] as const
      ).flatMap(([user, command, n]) => Array.from({ length: n }, () => ({ metric: m, dimensions: { command }, top: { user } })));
      await dl.analytics.track({ events });
      const users = await dl.analytics.top({ metric: m, dimension: "user", k: 2 });
      assert.equal(users.resolution, "1m");
      assert.deepEqual(users.entries.map((e) => [e.value, e.count]), [["amy", 8n], ["bob", 2n]]);
      const everyone = await dl.analytics.top({ metric: m, dimension: "user" });
      assert.deepEqual(everyone.entries.map((e) => [e.value, e.count]), [["amy", 8n], ["bob", 2n], ["cid", 1n]]);
      const commands = await dl.analytics.top({ metric: m, dimension: "command", k: 10 });
      assert.deepEqual(commands.entries.map((e) => [e.value, e.count]), [["price", 6n], ["buy", 3n], ["help", 2n]]);
      assert.deepEqual(totals(await query(dl, m, { groupBy: ["command"] }), "command"), { price: 6, buy: 3, help: 2 });
      assert.deepEqual((await dl.analytics.top({ metric: m, dimension: "nobody" })).entries, []);
    });

    test("ListMetrics lists each metric, in name order, with its resolutions", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const base = metricName("ts.an.list");
      const [b, a] = [`${base}-b`, `${base}-a`];
      const before = Date.now();
      await dl.analytics.track({
        events: [
          { metric: b, dimensions: { exchange: "kraken" } },
          { metric: b, dimensions: { exchange: "binance" } },
          { metric: b, dimensions: { exchange: "kraken" } },
          { metric: a },
        ],
      });
      const { metrics } = await dl.analytics.listMetrics({});
      const names = metrics.map((x) => x.name);
      assert.deepEqual(names, [...names].sort(), "name order");
      const mine = metrics.filter((x) => x.name.startsWith(base));
      assert.deepEqual(mine.map((x) => x.name), [a, b]);
      const [ma, mb] = mine;
      assert.deepEqual([mb.combinations, mb.foldedEvents, ma.combinations], [2n, 0n, 1n]);
      assert.deepEqual(
        mb.resolutions.map((r) => [r.name, r.bucketSeconds, r.retentionSeconds]),
        [
          ["1m", 60n, 48n * 3600n],
          ["1h", 3600n, 90n * 86400n],
          ["1d", 86400n, 730n * 86400n],
        ],
      );
      const tracked = timestampMs(mb.lastTracked!);
      assert.ok(tracked >= before - 5000 && tracked <= Date.now() + 5000, `lastTracked ${tracked}`);
    });

    test("bad input: INVALID_ARGUMENT naming each bad field; one bad event refuses the batch", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const m = metricName("ts.an.bad");
      const fields = await badFields(
        dl.analytics.track({
          events: [
            { metric: m },
            { metric: "bad metric" },
            { metric: m, value: { case: "count", value: 0n } },
            { metric: m, value: { case: "sample", value: Number.NaN } },
            { metric: m, time: timestampFromMs(Date.now() - 3 * HOUR) },
            { metric: m, dimensions: { exchange: "" } },
          ],
        }),
      );
      assert.deepEqual(fields, [
        "events[1].metric",
        "events[2].value.count",
        "events[3].value.sample",
        "events[4].time",
        "events[5].dimensions.exchange",
      ]);
      const listed = (await dl.analytics.listMetrics({})).metrics.map((x) => x.name);
      assert.ok(!listed.includes(m), "the good event of the batch was not recorded either");
      assert.deepEqual(await badFields(dl.analytics.track({ events: [] })), ["events"]);
      assert.deepEqual(await badFields(dl.analytics.query({ metric: m, resolution: "5m" })), ["resolution"]);
      assert.deepEqual(
        await badFields(dl.analytics.query({ metric: m, from: timestampFromMs(Date.now()), to: timestampFromMs(Date.now() - HOUR) })),
        ["from"],
      );
      assert.deepEqual(await badFields(dl.analytics.query({ metric: m, filters: [{ dimension: "side" }] })), ["filters[0].values"]);
      assert.deepEqual(await badFields(dl.analytics.unique({ metric: "" })), ["metric"]);
      assert.deepEqual(await badFields(dl.analytics.top({ metric: m, dimension: "user", k: 101 })), ["k"]);
      assert.deepEqual(await badFields(dl.analytics.top({ metric: m, dimension: "no spaces" })), ["dimension"]);
    });

    // --------------------------------------------------------------- reads

    test("series, countUnique and topValues: plain values over since/until", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const m = metricName("ts.an.reads");
      await dl.analytics.track({
        events: [
          { metric: m, dimensions: { exchange: "kraken", side: "buy" }, uniqueId: "u1", top: { user: "amy" } },
          { metric: m, dimensions: { exchange: "kraken", side: "sell" }, uniqueId: "u2", top: { user: "amy" } },
          { metric: m, dimensions: { exchange: "bybit", side: "buy" }, uniqueId: "u1", top: { user: "bob" } },
          { metric: m, dimensions: { exchange: "bybit", side: "buy" }, value: { case: "count", value: 4n }, top: { user: "cid" } },
        ],
      });
      const [whole, ...more] = await dl.analytics.series(m, { since: "1h" });
      assert.equal(more.length, 0);
      assert.deepEqual([whole.dimensions, whole.count, whole.sum], [{}, 7, 7]);
      assert.ok(whole.points.length >= 60 && whole.points.length <= 62);
      assert.equal(Date.parse(whole.points[1].time) - Date.parse(whole.points[0].time), 60_000);
      assert.deepEqual(JSON.parse(JSON.stringify(whole)), whole, "plain, JSON-serialisable");

      const grouped = await dl.analytics.series(m, { since: HOUR, groupBy: ["exchange"] });
      assert.deepEqual(Object.fromEntries(grouped.map((s) => [s.dimensions.exchange, s.count])), { bybit: 5, kraken: 2 });
      const sells = await dl.analytics.series(m, { since: "60m", where: { side: "sell" } });
      assert.deepEqual(sells.map((s) => s.count), [1]);
      const some = await dl.analytics.series(m, { where: { exchange: ["kraken", "bybit"], side: "buy" }, groupBy: ["exchange"] });
      assert.deepEqual(Object.fromEntries(some.map((s) => [s.dimensions.exchange, s.count])), { bybit: 5, kraken: 1 });
      const now = Date.now();
      const [hourly] = await dl.analytics.series(m, { since: new Date(now - 3 * HOUR), until: new Date(now + 60_000), resolution: "1h" });
      assert.equal(hourly.count, 7);
      assert.ok(hourly.points.length >= 3 && hourly.points.length <= 5);
      const [past] = await dl.analytics.series(m, { since: "1h", until: new Date(now - HOUR) });
      assert.equal(past.count, 0);

      assert.equal(await dl.analytics.countUnique(m), 2);
      assert.equal(await dl.analytics.countUnique(m, { since: "1h", resolution: "1m" }), 2);
      assert.equal(await dl.analytics.countUnique(m, { since: "1h", until: new Date(now - HOUR) }), 0);
      assert.deepEqual(await dl.analytics.topValues(m, "user", { k: 2 }), [
        { value: "cid", count: 4 },
        { value: "amy", count: 2 },
      ]);
      assert.deepEqual(await dl.analytics.topValues(m, "exchange", { since: "1h" }), [
        { value: "bybit", count: 5 },
        { value: "kraken", count: 2 },
      ]);
    });

    if (label !== "redis") return; // what follows does not depend on the store

    test("the reads check their arguments before sending anything", async () => {
      const dl = createClient({ baseUrl: `http://127.0.0.1:${await freePort()}`, retries: 0, timeoutMs: 500 });
      try {
        const a = dl.analytics;
        await assert.rejects(a.series(42 as unknown as string), TypeError);
        await assert.rejects(a.countUnique("bad metric"), RangeError);
        await assert.rejects(a.series("m", { since: "an hour" }), RangeError);
        await assert.rejects(a.series("m", { since: "10" }), /add a unit/);
        await assert.rejects(a.series("m", { until: "1h" as unknown as Date }), /until must be a Date/);
        await assert.rejects(a.series("m", { since: new Date(Number.NaN) }), RangeError);
        await assert.rejects(a.series("m", { groupBy: "exchange" as unknown as string[] }), /groupBy must be an array/);
        await assert.rejects(a.series("m", { where: { side: "" } }), /must not be empty/);
        await assert.rejects(a.topValues("m", "user", { k: 0 }), RangeError);
        await assert.rejects(a.topValues("m", "user", { k: 1.5 }), RangeError);
        await assert.rejects(a.topValues("m", "no spaces"), /dimension names/);
        // A valid read is sent: UNAVAILABLE, since nothing listens.
        const down = await rejects(a.countUnique("m"));
        assert.equal(down.code, Code.Unavailable);
      } finally {
        dl.close();
      }
    });

    // -------------------------------------------------------------- tracker

    test("tracker: what track() buffered is there after flush()", async () => {
      const dl = stack().client();
      const m = metricName("ts.an.tracker");
      const tracker = dl.analytics.tracker({ flushEvery: "1h" });
      try {
        assert.equal(tracker.track(m, { dims: { exchange: "kraken" } }), true);
        assert.equal(tracker.track(m, { value: 2, dims: { exchange: "kraken" } }), true);
        assert.equal(tracker.track(m, { dims: { exchange: "binance" }, uniqueId: "u1", top: { user: "amy" } }), true);
        assert.equal(tracker.track(m, { sample: 2.5, dims: { exchange: "binance" }, uniqueId: "u2", top: { user: "amy" } }), true);
        assert.equal(tracker.track(m, { value: 1n, time: new Date(Date.now() - 5 * 60_000), dims: { exchange: "bybit" } }), true);
        assert.equal(tracker.pending, 5);
        assert.equal(await total(dl, m), 0, "nothing sent before the flush");
        assert.equal(await tracker.flush(), true);
        assert.deepEqual([tracker.pending, tracker.sent, tracker.errors, tracker.dropped], [0, 5, 0, 0]);
        assert.deepEqual(totals(await query(dl, m, { groupBy: ["exchange"] }), "exchange"), { kraken: 3, binance: 2, bybit: 1 });
        const [binance] = await dl.analytics.series(m, { since: "1h", where: { exchange: "binance" } });
        assert.equal(binance.sum, 3.5, "1 (a count) + 2.5 (a sample)");
        assert.equal(await dl.analytics.countUnique(m), 2);
        assert.deepEqual(await dl.analytics.topValues(m, "user"), [{ value: "amy", count: 2 }]);
        const [bybit] = (await query(dl, m, { filters: [{ dimension: "exchange", values: ["bybit"] }] })).series;
        const [hit] = bybit.points.filter((p) => p.count > 0n);
        const age = Date.now() - timestampDate(hit.time!).getTime();
        assert.ok(age > 4 * 60_000 && age <= 6 * 60_000, `the explicit time landed ${age} ms back`);
        assert.equal(await tracker.flush(), true, "nothing to send is a success");
      } finally {
        await tracker.close();
      }
    });

    test("tracker: flushEvery sends on its own", async () => {
      const dl = stack().client();
      const m = metricName("ts.an.periodic");
      await using tracker = dl.analytics.tracker({ flushEvery: "100ms" });
      for (let i = 0; i < 3; i++) tracker.track(m, { dims: { exchange: "kraken" } });
      await waitFor(async () => tracker.sent === 3);
      assert.equal(await total(dl, m), 3);
      tracker.track(m);
      await waitFor(async () => (await total(dl, m)) === 4);
    });

    test("tracker: maxBatch waiting events trigger a flush; close() sends the rest", async () => {
      const dl = stack().client();
      const m = metricName("ts.an.batch");
      const tracker = dl.analytics.tracker({ flushEvery: "1h", maxBatch: 5 });
      for (let i = 0; i < 4; i++) tracker.track(m);
      await sleep(300);
      assert.deepEqual([tracker.pending, tracker.sent, await total(dl, m)], [4, 0, 0], "under maxBatch: waits for the timer");
      tracker.track(m); // the fifth
      await waitFor(async () => tracker.sent === 5);
      assert.equal(tracker.pending, 0);
      assert.equal(await total(dl, m), 5);
      for (let i = 0; i < 12; i++) tracker.track(m);
      await waitFor(async () => tracker.sent >= 15); // two more whole batches
      assert.deepEqual([tracker.sent, tracker.pending], [15, 2]);
      assert.equal(await total(dl, m), 15);
      assert.equal(await tracker.close(), true);
      assert.deepEqual([tracker.sent, tracker.pending, tracker.closed], [17, 0, true]);
      assert.equal(await total(dl, m), 17);
      assert.equal(tracker.track(m), false, "closed: dropped");
      assert.equal(tracker.dropped, 1);
      assert.equal(await tracker.close(), true);
      assert.equal(await total(dl, m), 17);
    });

    test("tracker: an unreachable service is counted and reported, never thrown", async () => {
      const dl = createClient({ baseUrl: `http://127.0.0.1:${await freePort()}`, retries: 0, timeoutMs: 500 });
      const heard: [Code, number][] = [];
      const tracker = dl.analytics.tracker({ flushEvery: "50ms", maxBatch: 10, onError: (e, lost) => heard.push([e.code, lost]) });
      try {
        const started = Date.now();
        for (let i = 0; i < 25; i++) assert.equal(tracker.track("ts.an.down", { dims: { exchange: "kraken" }, uniqueId: `u${i}` }), true);
        assert.ok(Date.now() - started < 100, "track() never waits for the network");
        await waitFor(async () => tracker.failed === 25, 10_000);
        assert.ok(tracker.errors >= 3, `${tracker.errors} failed calls`);
        assert.deepEqual([tracker.sent, tracker.dropped, tracker.lastError?.code], [0, 0, Code.Unavailable]);
        assert.equal(heard.reduce((n, [, lost]) => n + lost, 0), 25);
        assert.ok(heard.every(([code]) => code === Code.Unavailable));
        assert.equal(await tracker.flush(), true, "nothing left to send");
        tracker.track("ts.an.down");
        assert.equal(await tracker.flush(), false);
        assert.equal(tracker.failed, 26);
        assert.equal(await tracker.close(), true, "closed with nothing left");
      } finally {
        await tracker.close();
        dl.close();
      }
    });

    test("tracker: past maxBuffer, events are dropped and counted", async () => {
      let release!: () => void;
      const released = new Promise<void>((r) => (release = r));
      const calls: number[] = [];
      const slow = {
        async track(req: { events?: unknown[] }) {
          calls.push(req.events?.length ?? 0);
          await released;
          return { accepted: req.events?.length ?? 0, folded: 0 };
        },
      } as unknown as AnalyticsServiceClient;
      const tracker = new Tracker(slow, { flushEvery: "1h", maxBatch: 2, maxBuffer: 4 });
      tracker.track("m");
      tracker.track("m"); // maxBatch: sent, and the call hangs
      await waitFor(async () => calls.length === 1 && tracker.pending === 0);
      const results = Array.from({ length: 6 }, (_, i) => tracker.track("m", { value: i + 1 }));
      assert.deepEqual(results, [true, true, true, true, false, false]);
      assert.deepEqual([tracker.pending, tracker.dropped], [4, 2]);
      release();
      assert.equal(await tracker.close(), true);
      assert.deepEqual(calls, [2, 2, 2]);
      assert.deepEqual([tracker.sent, tracker.pending], [6, 0]);
    });

    test("tracker: a batch the service refuses an event of is sent again without it", async () => {
      const dl = stack().client();
      const m = metricName("ts.an.salvage");
      const tooOld = new Date(Date.now() - 3 * HOUR); // past analytics.max_event_age: only the service knows
      await using tracker = dl.analytics.tracker({ flushEvery: "1h" });
      tracker.track(m, { dims: { exchange: "kraken" } });
      tracker.track(m, { dims: { exchange: "kraken" }, time: tooOld });
      tracker.track(m, { dims: { exchange: "binance" } });
      tracker.track(m, { dims: { exchange: "bybit" }, time: tooOld });
      assert.equal(await tracker.flush(), false);
      assert.deepEqual([tracker.sent, tracker.rejected, tracker.failed, tracker.errors], [2, 2, 0, 1]);
      assert.equal(tracker.lastError?.code, Code.InvalidArgument);
      assert.deepEqual(fieldViolations(tracker.lastError).map((v) => v.field).sort(), ["events[1].time", "events[3].time"]);
      assert.deepEqual(totals(await query(dl, m, { groupBy: ["exchange"] }), "exchange"), { kraken: 1, binance: 1 });
    });

    describe("tracker: a service whose analytics.max_batch is 3", () => {
      const dir = mkdtempSync(path.join(tmpdir(), "datalayer-ts-analytics-"));
      let small: Stack | undefined;
      before(async () => {
        const config = path.join(dir, "analytics.yaml");
        writeFileSync(config, "analytics:\n  max_batch: 3\n");
        small = await Stack.start({ config, called: stack().called });
      });
      after(async () => {
        await small?.stop();
        rmSync(dir, { recursive: true, force: true });
      });

      test("a batch too large is split, and later ones are no larger", async () => {
        assert.ok(small);
        const dl = small.client();
        const m = metricName("ts.an.split");
        await using tracker = dl.analytics.tracker({ flushEvery: "1h", maxBatch: 10 });
        for (let i = 0; i < 7; i++) tracker.track(m);
        assert.equal(await tracker.flush(), true);
        assert.deepEqual([tracker.sent, tracker.errors, tracker.failed], [7, 1, 0]);
        assert.match(tracker.lastError?.message ?? "", /analytics\.max_batch/);
        for (let i = 0; i < 7; i++) tracker.track(m);
        assert.equal(await tracker.flush(), true);
        assert.deepEqual([tracker.sent, tracker.errors], [14, 1], "batches of 3 from then on");
        assert.equal(await total(dl, m), 14);
      });
    });

    test("tracker: track() checks its arguments at once", async () => {
      const dl = createClient({ baseUrl: `http://127.0.0.1:${await freePort()}`, retries: 0 });
      const t = dl.analytics.tracker({ flushEvery: "1h" });
      try {
        assert.throws(() => t.track(42 as unknown as string), /metric name must be a string/);
        assert.throws(() => t.track("m", { value: "1" as unknown as number }), TypeError);
        assert.throws(() => t.track("m", { value: 1.5 }), /use sample/);
        assert.throws(() => t.track("m", { value: 0 }), RangeError);
        assert.throws(() => t.track("m", { value: 0n }), RangeError);
        assert.throws(() => t.track("m", { sample: "1.5" as unknown as number }), /sample must be a number/);
        assert.throws(() => t.track("m", { sample: Number.POSITIVE_INFINITY }), /finite/);
        assert.throws(() => t.track("m", { value: 3, sample: 1 }), /not both/);
        assert.throws(() => t.track("bad metric"), RangeError);
        assert.throws(() => t.track("m", { dims: { exchange: 1 as unknown as string } }), /dimension value "exchange" must be a string/);
        assert.throws(() => t.track("m", { dims: { "no spaces": "x" } }), /dimension names/);
        assert.throws(() => t.track("m", { dims: { exchange: "a\nb" } }), /control characters/);
        assert.throws(() => t.track("m", { top: ["user"] as unknown as Record<string, string> }), /top must be an object/);
        assert.throws(() => t.track("m", { uniqueId: 42 as unknown as string }), /uniqueId must be a string/);
        assert.throws(() => t.track("m", { time: Date.now() as unknown as Date }), /time must be a Date/);
        assert.throws(() => t.track("m", { exchange: "kraken" } as unknown as { dims: Record<string, string> }), /dims/);
        assert.deepEqual([t.pending, t.dropped], [0, 0], "nothing bad was buffered");
        for (const bad of [{ flushEvery: "0s" }, { flushEvery: "soon" }, { maxBatch: 0 }, { maxBatch: 100, maxBuffer: 10 }, { timeoutMs: -1 }]) {
          assert.throws(() => dl.analytics.tracker(bad), RangeError, JSON.stringify(bad));
        }
        assert.throws(() => dl.analytics.tracker({ maxBatch: "10" as unknown as number }), TypeError);
      } finally {
        await t.close();
        dl.close();
      }
    });

    test("tracker: its timer does not keep Node running", async () => {
      // A script that makes a tracker, buffers an event and never closes it:
      // Node must still exit on its own (the event is lost, as documented).
      const script = [
        'import { createClient } from "@datalayer/client";',
        `const dl = createClient({ baseUrl: "http://127.0.0.1:${await freePort()}" });`,
        'const tracker = dl.analytics.tracker({ flushEvery: "1h" });',
        'tracker.track("ts.an.exit");',
        'console.log("pending", tracker.pending);',
      ].join("\n");
      const dir = mkdtempSync(path.join(here, "..", ".tmp-analytics-"));
      try {
        const file = path.join(dir, "exit.mts");
        writeFileSync(file, script);
        const started = Date.now();
        const { stdout } = await promisify(execFile)(process.execPath, ["--import", "tsx", file], {
          cwd: path.join(here, ".."),
          timeout: 20_000,
        });
        assert.equal(stdout.trim(), "pending 1");
        assert.ok(Date.now() - started < 20_000);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
}
