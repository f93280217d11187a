// RateLimitService through the TypeScript client, against the real binary.
import assert from "node:assert/strict";
import { describe, test, type TestContext } from "node:test";
import { create } from "@bufbuild/protobuf";
import { createClient as createConnectClient } from "@connectrpc/connect";
import {
  BadRequestSchema,
  Code,
  ConnectError,
  LimitSchema,
  RateLimitService,
  Reason,
  fieldViolations,
  retryAfterMs,
} from "@datalayer/client";
import { type Stack, sleep, unique } from "./harness.js";

export const SERVICE = "datalayer.ratelimit.v1.RateLimitService";

const gcra = (limit: number, seconds: number) =>
  create(LimitSchema, { algorithm: { case: "gcra", value: { limit: BigInt(limit), period: { seconds: BigInt(seconds) } } } });

async function rejects(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ConnectError, `expected a ConnectError, got ${e}`);
    return e;
  }
  assert.fail("expected the call to fail");
}

export function rateLimitSuite(stack: () => Stack) {
  describe(SERVICE, () => {
    const skip = (t: TestContext) => {
      if (!stack().serves(SERVICE)) {
        t.skip(`${SERVICE} is not served`);
        return true;
      }
      return false;
    };

    test("check spends and rejects", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const key = unique("ts:check");
      const limit = gcra(2, 60);
      const first = await dl.ratelimit.check({ key, limitSource: { case: "limit", value: limit } });
      assert.equal(first.allowed, true);
      assert.equal(first.reason, Reason.WITHIN_LIMIT);
      assert.deepEqual([first.limit, first.remaining], [2n, 1n]);
      await dl.ratelimit.check({ key, limitSource: { case: "limit", value: limit } });
      const third = await dl.ratelimit.check({ key, limitSource: { case: "limit", value: limit } });
      assert.equal(third.allowed, false);
      assert.equal(third.reason, Reason.OVER_LIMIT);
      assert.ok(third.retryAfter && (third.retryAfter.seconds > 0n || third.retryAfter.nanos > 0));
    });

    test("checkBatch answers in order", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const key = unique("ts:batch");
      const limit = { case: "limit" as const, value: gcra(1, 60) };
      const { results } = await dl.ratelimit.checkBatch({
        checks: [{ key, limitSource: limit }, { key, limitSource: limit }, { key: key + ":other", limitSource: limit, cost: 0n }],
      });
      assert.deepEqual(results.map((r) => r.allowed), [true, false, true]);
      assert.equal(results[2].remaining, 1n);
    });

    test("reset forgets the key", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const key = unique("ts:reset");
      const limitSource = { case: "limit" as const, value: gcra(1, 3600) };
      assert.equal((await dl.ratelimit.check({ key, limitSource })).allowed, true);
      assert.equal((await dl.ratelimit.check({ key, limitSource })).allowed, false);
      await dl.ratelimit.reset({ key, limitSource });
      assert.equal((await dl.ratelimit.check({ key, limitSource })).allowed, true);
    });

    test("bad input is INVALID_ARGUMENT with BadRequest field violations", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const err = await rejects(dl.ratelimit.check({ key: "", limitSource: { case: "limit", value: gcra(10, 60) } }));
      assert.equal(err.code, Code.InvalidArgument);
      const [badRequest] = err.findDetails(BadRequestSchema);
      assert.ok(badRequest, "a google.rpc.BadRequest detail");
      assert.deepEqual(
        badRequest.fieldViolations.map((v) => [v.field, v.description]),
        [["key", "must not be empty"]],
      );
      assert.deepEqual(fieldViolations(err), [{ field: "key", description: "must not be empty" }]);
    });

    test("a batch violation names the nested field", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const err = await rejects(
        dl.ratelimit.checkBatch({
          checks: [
            { key: "ok", limitSource: { case: "limit", value: gcra(1, 60) } },
            { key: "ok", limitSource: { case: "limit", value: { algorithm: { case: "gcra", value: { limit: 1n } } } } },
          ],
        }),
      );
      assert.ok(fieldViolations(err).some((v) => v.field.startsWith("checks[1].")), JSON.stringify(fieldViolations(err)));
    });

    test("a service that does not answer gives DEADLINE_EXCEEDED", async (t) => {
      if (skip(t)) return;
      const dl = stack().client({ retries: 0 });
      await dl.ratelimit.check({ key: unique("ts:warm"), limitSource: { case: "limit", value: gcra(5, 60) } });
      stack().pauseService();
      try {
        const started = Date.now();
        const err = await rejects(
          dl.ratelimit.check({ key: unique("ts:dl"), limitSource: { case: "limit", value: gcra(5, 60) } }, { timeoutMs: 300 }),
        );
        assert.equal(err.code, Code.DeadlineExceeded, String(err));
        const took = Date.now() - started;
        assert.ok(took >= 250 && took < 2000, `took ${took} ms`);
      } finally {
        stack().resumeService();
      }
    });

    test("a store that is down gives UNAVAILABLE with RetryInfo", async (t) => {
      if (skip(t)) return;
      const dl = stack().client({ retries: 3 });
      await dl.ratelimit.check({ key: unique("ts:warm"), limitSource: { case: "limit", value: gcra(5, 60) } });
      stack().redis.pause();
      try {
        const started = Date.now();
        // The service answers at 90% of the deadline; a retry would pass it.
        const err = await rejects(
          dl.ratelimit.check({ key: unique("ts:down"), limitSource: { case: "limit", value: gcra(5, 60) } }, { timeoutMs: 1000 }),
        );
        assert.equal(err.code, Code.Unavailable, String(err));
        assert.equal(retryAfterMs(err), 250);
        assert.ok(Date.now() - started < 1500);
      } finally {
        stack().redis.resume();
      }
      await stack().waitServing();
    });

    test("UNAVAILABLE is retried until the store is back", async (t) => {
      if (skip(t)) return;
      let attempts = 0;
      const dl = stack().client({
        retries: 20,
        timeoutMs: 15_000,
        interceptors: [(next) => (req) => (attempts++, next(req))],
      });
      await stack().redis.kill();
      const restarted = sleep(600).then(() => stack().redis.start());
      try {
        const started = Date.now();
        const answer = await dl.ratelimit.check({ key: unique("ts:retry"), limitSource: { case: "limit", value: gcra(5, 60) } });
        assert.equal(answer.allowed, true);
        assert.ok(Date.now() - started >= 500, "answered before Redis was back");
        assert.ok(attempts >= 2, `attempts: ${attempts}`);
      } finally {
        await restarted;
      }
      await stack().waitServing();
    });

    test("the generated service descriptor works with plain Connect", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const raw = createConnectClient(RateLimitService, dl.transport);
      const answer = await raw.check({ key: unique("ts:raw"), limitSource: { case: "limit", value: gcra(3, 60) } });
      assert.equal(answer.remaining, 2n);
    });
  });
}
