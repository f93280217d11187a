// The Upstash-style helpers (src/ratelimit.ts, src/cache.ts, src/sessions.ts)
// against the real binary: limiters made once and used per id, getOrSet on
// GetOrLease, JSON values, session validation. Run on both stacks.
import assert from "node:assert/strict";
import { describe, test, type TestContext } from "node:test";
import {
  Code,
  ConnectError,
  durationToMs,
  type DatalayerClient,
  type LimitAllResult,
  type LimitResult,
  type RateLimiter,
  type ReportResult,
  type ReserveResult,
  type SettleResult,
} from "@datalayer/client";
import { POLICIES, type Stack, sleep, unique } from "./harness.js";

const RATELIMIT = "datalayer.ratelimit.v1.RateLimitService";
const CACHE = "datalayer.cache.v1.CacheService";
const SESSIONS = "datalayer.session.v1.SessionService";

/** Plain values only (no bigint, no message or Date objects): JSON.stringify takes it, and a round trip gives it back. */
function assertPlain(value: unknown) {
  const walk = (v: unknown): void => {
    assert.notEqual(typeof v, "bigint", "no bigint in a helper's answer");
    if (v && typeof v === "object") {
      const proto = Object.getPrototypeOf(v);
      assert.ok(proto === Object.prototype || proto === Array.prototype, "plain objects and arrays only");
      Object.values(v).forEach(walk);
    }
  };
  walk(value);
  // JSON drops undefined properties (at any depth): so does the expectation.
  const defined = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(defined)
      : v && typeof v === "object"
        ? Object.fromEntries(Object.entries(v).filter(([, x]) => x !== undefined).map(([k, x]) => [k, defined(x)]))
        : v;
  assert.deepEqual(JSON.parse(JSON.stringify(value)), defined(value));
}

async function rejectsWith(p: Promise<unknown>, code: Code): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ConnectError, `expected a ConnectError, got ${e}`);
    assert.equal(e.code, code, String(e));
    return e;
  }
  assert.fail("expected the call to fail");
}

export function helpers2Suite(stack: () => Stack, label = "redis") {
  describe(`Upstash-style helpers (${label})`, () => {
    const skip = (t: TestContext, service: string) => {
      if (!stack().serves(service)) {
        t.skip(`${service} is not served`);
        return true;
      }
      return false;
    };

    describe("dl.ratelimit limiters", () => {
      test("each algorithm admits exactly N, then refuses with retryAfterMs > 0", async (t) => {
        if (skip(t, RATELIMIT)) return;
        const dl = stack().client();
        const limiters = {
          slidingWindow: dl.ratelimit.slidingWindow(3, "1 m"),
          fixedWindow: dl.ratelimit.fixedWindow(3, "1h"),
          gcra: dl.ratelimit.gcra(3, 60_000),
          tokenBucket: dl.ratelimit.tokenBucket(1, "1m", 3),
        };
        for (const [name, limiter] of Object.entries(limiters)) {
          const id = unique(`ts:h2:${name}`);
          const results: LimitResult[] = [];
          for (let i = 0; i < 4; i++) results.push(await limiter.limit(id));
          assert.deepEqual(
            results.map((r) => [r.success, r.remaining, r.reason]),
            [
              [true, 2, "within_limit"],
              [true, 1, "within_limit"],
              [true, 0, "within_limit"],
              [false, 0, "over_limit"],
            ],
            name,
          );
          const refused = results[3];
          assert.equal(refused.limit, 3, name);
          assert.equal(typeof refused.retryAfterMs, "number", name);
          assert.ok(refused.retryAfterMs! > 0 && refused.retryAfterMs! <= 3_600_000, `${name}: ${refused.retryAfterMs}`);
          assert.equal(results[0].retryAfterMs, undefined, `${name}: no retryAfterMs when allowed`);
          assert.ok(refused.resetAt > Date.now() - 1000 && refused.resetAt <= Date.now() + 3_600_000, `${name}: resetAt`);
          for (const r of results) assertPlain(r);
        }
      });

      test("a cost larger than the limit can never fit: refused without retryAfterMs", async (t) => {
        if (skip(t, RATELIMIT)) return;
        const dl = stack().client();
        const limiter = dl.ratelimit.fixedWindow(3, "1h");
        const r = await limiter.limit(unique("ts:h2:big"), { cost: 4 });
        assert.equal(r.success, false);
        assert.equal(r.reason, "cost_exceeds_limit");
        assert.equal(r.retryAfterMs, undefined);
        const started = Date.now();
        const blocked = await limiter.blockUntilReady(unique("ts:h2:big"), "5s", { cost: 4 });
        assert.equal(blocked.reason, "cost_exceeds_limit");
        assert.ok(Date.now() - started < 1000, "blockUntilReady gives up at once");
      });

      test("blockUntilReady waits for room, then succeeds; a short timeout answers the refusal", async (t) => {
        if (skip(t, RATELIMIT)) return;
        const dl = stack().client();
        const limiter = dl.ratelimit.gcra(2, "1s"); // one every 500 ms, bursts of 2
        const id = unique("ts:h2:block");
        assert.equal((await limiter.limit(id)).success, true);
        assert.equal((await limiter.limit(id)).success, true);
        const short = await limiter.blockUntilReady(id, "50ms");
        assert.equal(short.success, false, "no room within 50 ms");
        const started = Date.now();
        const r = await limiter.blockUntilReady(id, "3s");
        const took = Date.now() - started;
        assert.equal(r.success, true);
        assert.ok(took >= 200 && took < 2000, `waited ${took} ms`);
      });

      test("remaining() does not consume", async (t) => {
        if (skip(t, RATELIMIT)) return;
        const dl = stack().client();
        const limiter = dl.ratelimit.slidingWindow(5, "1h");
        const id = unique("ts:h2:remaining");
        assert.equal(await limiter.remaining(id), 5);
        assert.equal(await limiter.remaining(id), 5);
        assert.equal((await limiter.limit(id, { cost: 2 })).remaining, 3);
        assert.equal(await limiter.remaining(id), 3);
        assert.equal(await limiter.remaining(id), 3);
        const look = await limiter.limit(id, { cost: 0 });
        assert.deepEqual([look.success, look.remaining], [true, 3]);
      });

      test("reset() restores the full budget", async (t) => {
        if (skip(t, RATELIMIT)) return;
        const dl = stack().client();
        const limiter = dl.ratelimit.fixedWindow(2, "1h", { prefix: unique("ts:h2:p") });
        const id = "user:1";
        await limiter.limit(id);
        await limiter.limit(id);
        assert.equal((await limiter.limit(id)).success, false);
        await limiter.reset(id);
        assert.equal(await limiter.remaining(id), 2);
        assert.equal((await limiter.limit(id)).success, true);
      });

      test("a prefix keeps limiters of one algorithm apart", async (t) => {
        if (skip(t, RATELIMIT)) return;
        const dl = stack().client();
        const id = unique("ts:h2:prefix");
        const a = dl.ratelimit.fixedWindow(1, "1h", { prefix: "a" });
        const b = dl.ratelimit.fixedWindow(1, "1h", { prefix: "b" });
        assert.equal((await a.limit(id)).success, true);
        assert.equal((await a.limit(id)).success, false);
        assert.equal((await b.limit(id)).success, true);
        assert.equal(a.key(id), `a:${id}`);
      });

      test("policy() uses the limit configured on the service", async (t) => {
        if (skip(t, RATELIMIT)) return;
        const dl = stack().client();
        const auth = dl.ratelimit.policy("auth");
        const id = unique("ts:h2:policy");
        const { limit } = POLICIES.auth;
        for (let i = 0; i < limit; i++) {
          const r = await auth.limit(id);
          assert.deepEqual([r.success, r.limit, r.remaining], [true, limit, limit - 1 - i]);
        }
        const refused = await auth.limit(id);
        assert.equal(refused.success, false);
        assert.ok(refused.retryAfterMs! > 0);
        await auth.reset(id);
        assert.equal(await auth.remaining(id), limit);
        const err = await rejectsWith(dl.ratelimit.policy("no-such-policy").limit(id), Code.InvalidArgument);
        assert.match(err.rawMessage, /unknown policy/);
      });
      test("reserve() then settle() gives back the unused part once; more than reserved is spent", async (t) => {
        if (skip(t, RATELIMIT)) return;
        const dl = stack().client();
        const p = unique("ts:h2:reserve");
        for (const l of [
          dl.ratelimit.gcra(10, "1h", { prefix: p }),
          dl.ratelimit.fixedWindow(10, "1h", { prefix: p }),
          dl.ratelimit.tokenBucket(1, "1h", 10, { prefix: p }),
        ]) {
          const id = unique("ts:h2:reserve:id");
          const r: ReserveResult = await l.reserve(id, 8);
          assert.ok(r.success && r.reservation !== "" && r.remaining === 2, l.description);
          const s: SettleResult = await l.settle(id, r.reservation, 2);
          assert.deepEqual([s.outcome, s.remaining, s.overdrawn], ["settled", 8, false], l.description);
          assert.equal((await l.settle(id, r.reservation, 0)).outcome, "already_settled", l.description);
          const more = await l.reserve(id, 3);
          assert.equal((await l.settle(id, more.reservation, 20)).overdrawn, true, l.description);
          assert.equal((await l.limit(id)).success, false, l.description);
          for (const v of [r, s]) assertPlain(v);
        }
        const l = dl.ratelimit.gcra(10, "1h", { prefix: p });
        assert.equal((await l.reserve(unique("ts:h2:reserve:id"), 11)).reservation, "");
        const err = await rejectsWith(l.settle(unique("ts:h2:reserve:id"), "not-a-reservation", 1), Code.InvalidArgument);
        assert.match(err.rawMessage, /reservation/);
        await assert.rejects(l.settle("u", "", 1), RangeError);
      });
      test("report() overdraws; the next limit() is refused with retryAfterMs until it refills", async (t) => {
        if (skip(t, RATELIMIT)) return;
        const dl = stack().client();
        // 25 units against GCRA 10 per 10 s: the next check waits 16 s.
        const limiter = dl.ratelimit.gcra(10, "10s", { prefix: unique("ts:h2:report") });
        const id = unique("ts:h2:report:id");
        const fits: ReportResult = await limiter.report(unique("ts:h2:report:other"), 3);
        assert.deepEqual([fits.limit, fits.remaining, fits.overdrawn], [10, 7, false]);
        const over = await limiter.report(id, 25);
        assert.deepEqual([over.limit, over.remaining, over.overdrawn], [10, 0, true]);
        assert.ok(over.resetAfterMs > 24_000 && over.resetAfterMs <= 25_000, String(over.resetAfterMs));
        assert.ok(Math.abs(over.resetAt - (Date.now() + over.resetAfterMs)) < 1000);
        const refused = await limiter.limit(id);
        assert.deepEqual([refused.success, refused.reason, refused.remaining], [false, "over_limit", 0]);
        assert.ok(refused.retryAfterMs! > 15_000 && refused.retryAfterMs! <= 16_000, String(refused.retryAfterMs));
        for (const r of [fits, over, refused]) assertPlain(r);
        const err = await rejectsWith(limiter.report(id, 1001), Code.InvalidArgument); // more than 100 times the limit
        assert.match(err.rawMessage, /cost/);
        await limiter.reset(id);
        assert.equal(await limiter.remaining(id), 10);
        // Every algorithm may be overdrawn.
        for (const l of [dl.ratelimit.slidingWindow(5, "1m"), dl.ratelimit.fixedWindow(5, "1h"), dl.ratelimit.tokenBucket(1, "1h", 5)]) {
          const uid = unique("ts:h2:report:alg");
          const r = await l.report(uid, 12);
          assert.deepEqual([r.overdrawn, r.remaining, r.limit], [true, 0, 5], l.description);
          const next = await l.limit(uid);
          assert.equal(next.success, false, l.description);
          assert.ok(next.retryAfterMs! > 0, l.description);
        }
      });

      test("limitAll(): every limiter spends, or none (a 10 and a 2 on one id)", async (t) => {
        if (skip(t, RATELIMIT)) return;
        const dl = stack().client();
        const p = unique("ts:h2:all");
        const id = unique("ts:h2:all:id");
        const ten = dl.ratelimit.gcra(10, "1m", { prefix: `${p}:ten` });
        const two = dl.ratelimit.slidingWindow(2, "1m", { prefix: `${p}:two` });
        const results: LimitAllResult[] = [];
        for (let i = 0; i < 3; i++) results.push(await dl.ratelimit.limitAll(id, [ten, two]));
        assert.deepEqual(results.map((r) => r.success), [true, true, false]);
        assert.deepEqual(results[0].results.map((r) => [r.remaining, r.reason]), [[9, "within_limit"], [1, "within_limit"]]);
        assert.equal(results[0].retryAfterMs, undefined);
        const [held, full] = results[2].results;
        assert.deepEqual([held.success, held.reason, held.remaining, held.retryAfterMs], [false, "batch_rejected", 8, undefined]);
        assert.deepEqual([full.success, full.reason], [false, "over_limit"]);
        assert.ok(full.retryAfterMs! > 0);
        assert.equal(results[2].retryAfterMs, full.retryAfterMs);
        assert.equal(await ten.remaining(id), 8, "the 10-limit spent nothing on the refused call");
        for (const r of results) assertPlain(r);
        const never = await dl.ratelimit.limitAll(unique("ts:h2:all:id"), [ten, two], { cost: 3 });
        assert.deepEqual(never.results.map((r) => r.reason), ["batch_rejected", "cost_exceeds_limit"]);
        assert.equal(never.retryAfterMs, undefined);
        await rejectsWith(dl.ratelimit.limitAll(id, [ten, ten]), Code.InvalidArgument); // a repeated key and limit
      });

      test("a shadow-mode policy answers allowed with reason shadow_over_limit; limitAll goes on", async (t) => {
        if (skip(t, RATELIMIT)) return;
        const dl = stack().client();
        const shadow = dl.ratelimit.policy("shadow");
        const id = unique("ts:h2:shadow");
        const first = await shadow.limit(id);
        assert.deepEqual([first.success, first.reason, first.remaining], [true, "within_limit", 0]);
        const wouldRefuse = await shadow.limit(id);
        assert.deepEqual([wouldRefuse.success, wouldRefuse.reason, wouldRefuse.remaining], [true, "shadow_over_limit", 0]);
        assert.ok(wouldRefuse.retryAfterMs! > 0, "what the limit would have answered");
        const auth = dl.ratelimit.policy("auth");
        const both = await dl.ratelimit.limitAll(id, [shadow, auth]);
        assert.equal(both.success, true);
        assert.deepEqual(both.results.map((r) => r.reason), ["shadow_over_limit", "within_limit"]);
        assert.equal(await auth.remaining(id), POLICIES.auth.limit - 1);
      });
    });

    describe("dl.cache JSON helpers", () => {
      test("getOrSet with 20 concurrent callers computes once", async (t) => {
        if (skip(t, CACHE)) return;
        const dl = stack().client();
        const key = unique("ts:h2:gos");
        let computed = 0;
        const compute = async () => {
          computed++;
          await sleep(200);
          return { n: 42, at: "now", list: [1, 2, 3] };
        };
        const results = await Promise.all(
          Array.from({ length: 20 }, () => dl.cache.getOrSet(key, compute, { ttl: "1m", tags: [unique("ts:h2:tag")] })),
        );
        assert.equal(computed, 1, "compute called once");
        for (const r of results) assert.deepEqual(r, { n: 42, at: "now", list: [1, 2, 3] });
        assert.deepEqual(await dl.cache.getOrSet(key, compute, "1m"), { n: 42, at: "now", list: [1, 2, 3] });
        assert.equal(computed, 1, "a later call is a hit");
        const entry = await dl.cache.get({ key });
        assert.equal(entry.entry?.contentType, "application/json");
      });

      test("a compute that throws gives the lease back: the next caller computes", async (t) => {
        if (skip(t, CACHE)) return;
        const dl = stack().client();
        const key = unique("ts:h2:gos:fail");
        await assert.rejects(
          dl.cache.getOrSet(key, () => {
            throw new Error("boom");
          }, { ttl: "1m", leaseTtl: "30s" }),
          /boom/,
        );
        const started = Date.now();
        assert.equal(await dl.cache.getOrSet(key, () => "second", { ttl: "1m" }), "second");
        assert.ok(Date.now() - started < 2000, "did not wait for the lease to expire");
      });

      test("setJson / getJson round trip; undefined when missing", async (t) => {
        if (skip(t, CACHE)) return;
        const dl = stack().client();
        const key = unique("ts:h2:json");
        assert.equal(await dl.cache.getJson(key), undefined);
        const value = { name: "Ada", tags: ["x"], nested: { ok: true, n: 1.5 }, none: null };
        const version = await dl.cache.setJson(key, value, { ttl: "10m", tags: ["ts:h2"] });
        assert.equal(typeof version, "number");
        assert.ok(version > 0);
        const got = await dl.cache.getJson<typeof value>(key);
        assert.deepEqual(got, value);
        const v2 = await dl.cache.setJson(key, null, "10m");
        assert.notEqual(v2, version);
        assert.equal(await dl.cache.getJson(key), null, "a stored null is null, not undefined");
        await dl.cache.set({ key, value: new TextEncoder().encode("not json"), ttl: { seconds: 60n } });
        await assert.rejects(dl.cache.getJson(key), SyntaxError);
      });
    });

    describe("dl.sessions.validate", () => {
      test("a good token gives the session; unknown and malformed tokens give undefined", async (t) => {
        if (skip(t, SESSIONS)) return;
        const dl = stack().client();
        const userId = unique("ts:h2:user");
        const created = await dl.sessions.create({ userId, data: { theme: "dark" }, userAgent: "node-test" });
        const session = await dl.sessions.validate(created.token);
        assert.ok(session);
        assert.equal(session.userId, userId);
        assert.equal(session.sessionId, created.session?.sessionId);
        assert.deepEqual(session.data, { theme: "dark" });
        assert.equal(typeof session.version, "number");
        assert.ok(session.expiresAt && !Number.isNaN(Date.parse(session.expiresAt)), String(session.expiresAt));
        assertPlain(session);
        assert.deepEqual(JSON.parse(JSON.stringify(session)), session);
        const touched = await dl.sessions.validate(created.token, { touch: true });
        assert.equal(touched?.sessionId, session.sessionId);

        await dl.sessions.revoke({ token: created.token });
        assert.equal(await dl.sessions.validate(created.token), undefined, "revoked: unknown");
        assert.equal(await dl.sessions.validate("not-a-session-token"), undefined, "malformed");
        assert.equal(await dl.sessions.validate(created.token.slice(1)), undefined, "malformed (too short)");
        assert.equal(await dl.sessions.validate(""), undefined);
        assert.equal(await dl.sessions.validate(undefined), undefined);
      });
    });

    describe("bad inputs", () => {
      test("throw TypeError or RangeError before anything is sent", async (t) => {
        if (skip(t, RATELIMIT)) return;
        let calls = 0;
        const dl: DatalayerClient = stack().client({ interceptors: [(next) => (req) => (calls++, next(req))] });
        const rl = dl.ratelimit;
        assert.throws(() => rl.slidingWindow(10, "10"), RangeError, "a bare number string");
        assert.throws(() => rl.slidingWindow(10, "10 parsecs"), RangeError);
        assert.throws(() => rl.slidingWindow(10, ""), RangeError);
        assert.throws(() => rl.fixedWindow(10, -5), RangeError);
        assert.throws(() => rl.fixedWindow(10, 0), RangeError, "a window of zero");
        assert.throws(() => rl.gcra(10, Number.NaN), RangeError);
        assert.throws(() => rl.gcra(-1, "1s"), RangeError);
        assert.throws(() => rl.gcra(0, "1s"), RangeError);
        assert.throws(() => rl.gcra(1.5, "1s"), RangeError);
        assert.throws(() => rl.gcra("10" as unknown as number, "1s"), TypeError);
        assert.throws(() => rl.gcra(10, { s: 1 } as unknown as string), TypeError);
        assert.throws(() => rl.tokenBucket(5, "1s", 2), RangeError, "refill above capacity");
        assert.throws(() => rl.policy(""), RangeError);
        assert.throws(() => rl.policy(7 as unknown as string), TypeError);
        const limiter = rl.slidingWindow(10, "10s");
        await assert.rejects(limiter.limit("id", { cost: -1 }), RangeError);
        await assert.rejects(limiter.limit("id", { cost: 0.5 }), RangeError);
        await assert.rejects(limiter.limit(""), RangeError);
        await assert.rejects(limiter.limit(42 as unknown as string), TypeError);
        await assert.rejects(limiter.blockUntilReady("id", "soon"), RangeError);
        await assert.rejects(limiter.blockUntilReady("id", -1), RangeError);
        await assert.rejects(limiter.report("id", 0), RangeError);
        await assert.rejects(limiter.report("id", 2.5), RangeError);
        await assert.rejects(limiter.report("id", 10n as unknown as number), TypeError);
        await assert.rejects(limiter.report("", 1), RangeError);
        await assert.rejects(rl.limitAll("id", []), RangeError);
        await assert.rejects(rl.limitAll("id", limiter as unknown as RateLimiter[]), TypeError);
        await assert.rejects(rl.limitAll("id", [limiter, "gcra" as unknown as RateLimiter]), TypeError);
        await assert.rejects(rl.limitAll("id", [limiter], { cost: -1 }), RangeError);
        await assert.rejects(rl.limitAll("", [limiter]), RangeError);
        await assert.rejects(dl.cache.getOrSet("k", () => 1, { ttl: "-1s" }), RangeError);
        await assert.rejects(dl.cache.getOrSet("k", () => 1, { ttl: "1m", wait: "forever" }), RangeError);
        await assert.rejects(dl.cache.setJson("k", undefined, "1m"), TypeError);
        await assert.rejects(dl.cache.setJson("k", { n: 1n }, "1m"), TypeError);
        await assert.rejects(dl.cache.setJson("k", 1, { ttl: "1m", tags: "t" as unknown as string[] }), TypeError);
        await assert.rejects(dl.cache.getJson(""), RangeError);
        await assert.rejects(dl.sessions.validate(42 as unknown as string), TypeError);
        assert.equal(calls, 0, "nothing was sent");
      });

      test("durations: strings with units (spaces allowed) or milliseconds", () => {
        assert.equal(durationToMs("10s"), 10_000);
        assert.equal(durationToMs("1 m"), 60_000);
        assert.equal(durationToMs("1m30s"), 90_000);
        assert.equal(durationToMs("1.5s"), 1500);
        assert.equal(durationToMs("500ms"), 500);
        assert.equal(durationToMs("250us"), 0.25);
        assert.equal(durationToMs("2h"), 7_200_000);
        assert.equal(durationToMs("1d"), 86_400_000);
        assert.equal(durationToMs(1234), 1234);
        assert.throws(() => durationToMs("10"), /add a unit/);
        assert.throws(() => durationToMs(Infinity), RangeError);
      });
    });
  });
}
