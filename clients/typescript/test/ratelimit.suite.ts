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

    test("a store that does not answer a write: UNAVAILABLE without RetryInfo, not retried (it was applied)", async (t) => {
      if (skip(t)) return;
      let attempts = 0;
      const dl = stack().client({ retries: 3, interceptors: [(next) => (req) => (attempts++, next(req))] });
      const key = unique("ts:down");
      const limitSource = { case: "limit" as const, value: gcra(5, 60) };
      await dl.ratelimit.check({ key: unique("ts:warm"), limitSource });
      // A stopped Redis takes the command into its socket buffer and runs it
      // when it resumes. The service gives up at redis.command_timeout
      // (250 ms, shorter than the 1 s deadline) and, Check being a write
      // whose outcome is unknown, answers UNAVAILABLE without RetryInfo:
      // the client must not repeat it.
      stack().redis.pause();
      attempts = 0;
      try {
        const started = Date.now();
        const err = await rejects(dl.ratelimit.check({ key, limitSource }, { timeoutMs: 1000 }));
        const took = Date.now() - started;
        assert.equal(err.code, Code.Unavailable, String(err));
        assert.equal(retryAfterMs(err), undefined, "an unknown outcome promises no safe retry");
        assert.match(err.rawMessage, /may have been applied/);
        assert.equal(attempts, 1, "not retried");
        assert.ok(took >= 200 && took < 900, `answered at redis.command_timeout, took ${took} ms`);
      } finally {
        stack().redis.resume();
      }
      await stack().waitServing();
      // The unanswered check was applied once when Redis resumed: one unit
      // spent, not one per retry.
      const after = await dl.ratelimit.check({ key, limitSource });
      assert.equal(after.remaining, 3n, "5 - the unanswered check - this one");
    });

    test("UNAVAILABLE with RetryInfo (a store that refuses connections) is retried until the store is back", async (t) => {
      if (skip(t)) return;
      const limitSource = { case: "limit" as const, value: gcra(5, 60) };
      await stack().client().ratelimit.check({ key: unique("ts:warm"), limitSource });
      await stack().redis.kill();
      let restarted: Promise<void> | undefined;
      try {
        // The first command on each of the service's Redis connections after
        // the kill fails as "broken pipe", which the service reports as a
        // write that may have been applied (no RetryInfo); once it has found
        // them dead, connecting is refused, nothing was sent, and UNAVAILABLE
        // carries RetryInfo. Wait for that.
        const probe = stack().client({ retries: 0 });
        let refused: ConnectError | undefined;
        for (let i = 0; i < 50 && !refused; i++) {
          const err = await rejects(probe.ratelimit.check({ key: unique("ts:probe"), limitSource }));
          assert.equal(err.code, Code.Unavailable, String(err));
          if (retryAfterMs(err) !== undefined) refused = err;
          else await sleep(20);
        }
        assert.ok(refused, "the service reports the refused store with RetryInfo");
        assert.equal(retryAfterMs(refused), 250);

        let attempts = 0;
        const failed: ConnectError[] = [];
        const dl = stack().client({
          retries: 20,
          timeoutMs: 15_000,
          interceptors: [
            (next) => async (req) => {
              attempts++;
              try {
                return await next(req);
              } catch (e) {
                failed.push(ConnectError.from(e));
                throw e;
              }
            },
          ],
        });
        restarted = sleep(600).then(() => stack().redis.start());
        const started = Date.now();
        const answer = await dl.ratelimit.check({ key: unique("ts:retry"), limitSource });
        assert.equal(answer.allowed, true);
        assert.ok(Date.now() - started >= 500, "answered before Redis was back");
        assert.ok(attempts >= 2, `attempts: ${attempts}`);
        for (const e of failed) assert.equal(retryAfterMs(e), 250, `every retried failure carried RetryInfo: ${e.message}`);
      } finally {
        await (restarted ?? stack().redis.start());
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
