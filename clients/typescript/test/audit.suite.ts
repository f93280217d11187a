// AuditService through the TypeScript client, against the real binary:
// every administrative call (here: rate-limit resets) lands in the
// caller's tenant's audit log, stored asynchronously, so the tests poll.
import assert from "node:assert/strict";
import { describe, test, type TestContext } from "node:test";
import { Code, ConnectError, fieldViolations, type AuditEvent, type DatalayerClient } from "@datalayer/client";
import { type Stack, unique, waitFor } from "./harness.js";

export const SERVICE = "datalayer.audit.v1.AuditService";
export const RESET = "datalayer.ratelimit.v1.RateLimitService/Reset";

export async function reset(dl: DatalayerClient, key: string): Promise<void> {
  await dl.ratelimit.reset({
    key,
    limitSource: { case: "limit", value: { algorithm: { case: "gcra", value: { limit: 1n, period: { seconds: 60n } } } } },
  });
}

/** The events among the newest 100 whose target is `target`. */
export async function audited(dl: DatalayerClient, target: string): Promise<AuditEvent[]> {
  const { events } = await dl.audit.list({ limit: 100 });
  return events.filter((e) => e.target === target);
}

/** The events of `target`, once there are any (they are stored asynchronously). */
export async function auditedSoon(dl: DatalayerClient, target: string): Promise<AuditEvent[]> {
  return waitFor(async () => {
    const found = await audited(dl, target);
    return found.length > 0 ? found : undefined;
  });
}

export function auditSuite(stack: () => Stack) {
  describe(SERVICE, () => {
    const skip = (t: TestContext) => {
      if (!stack().serves(SERVICE)) {
        t.skip(`${SERVICE} is not served`);
        return true;
      }
      return false;
    };

    test("a reset is audited with who, what and the outcome", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const key = unique("ts:audit");
      const before = Date.now();
      await reset(dl, key);
      const [event, ...more] = await auditedSoon(dl, key);
      assert.equal(more.length, 0);
      assert.equal(event.method, RESET);
      assert.ok(event.method.endsWith("/Reset"));
      assert.equal(event.principal, "anonymous", "auth.required is false here");
      assert.equal(event.outcome, "OK");
      assert.ok(event.id);
      const at = Number(event.time?.seconds ?? 0n) * 1000;
      assert.ok(at >= before - 5000 && at <= Date.now() + 5000, `event time ${at}`);
    });

    test("pages go from the newest to the oldest by cursor", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const keys = [0, 1, 2].map((i) => unique(`ts:audit-page${i}`));
      for (const key of keys) await reset(dl, key);
      await auditedSoon(dl, keys[0]);
      await auditedSoon(dl, keys[2]);
      const seen: AuditEvent[] = [];
      let cursor = "";
      while (seen.length < 3) {
        const page = await dl.audit.list({ limit: 1, cursor });
        assert.equal(page.events.length, 1);
        assert.ok(page.nextCursor, "older events remain");
        seen.push(...page.events);
        cursor = page.nextCursor;
      }
      assert.deepEqual(
        seen.map((e) => e.target),
        [...keys].reverse(),
      );
      assert.equal(new Set(seen.map((e) => e.id)).size, 3);
    });

    test("a bad cursor names the field", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const err = await dl.audit.list({ cursor: "not a cursor" }).then(
        () => assert.fail("expected INVALID_ARGUMENT"),
        (e: unknown) => ConnectError.from(e),
      );
      assert.equal(err.code, Code.InvalidArgument);
      assert.deepEqual(
        fieldViolations(err).map((v) => v.field),
        ["cursor"],
      );
    });
  });
}
