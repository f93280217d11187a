// CacheService through the TypeScript client, against the real binary.
import assert from "node:assert/strict";
import { describe, test, type TestContext } from "node:test";
import { Code, ConnectError, LeaseStatus, SetOutcome, fieldViolations } from "@datalayer/client";
import { type Stack, unique } from "./harness.js";

export const SERVICE = "datalayer.cache.v1.CacheService";
const minute = { seconds: 60n };
const bytes = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array | undefined) => new TextDecoder().decode(b);

export function cacheSuite(stack: () => Stack) {
  describe(SERVICE, () => {
    const skip = (t: TestContext) => {
      if (!stack().serves(SERVICE)) {
        t.skip(`${SERVICE} is not served`);
        return true;
      }
      return false;
    };

    test("set, get, delete", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const key = unique("ts:cache");
      assert.equal((await dl.cache.get({ key })).found, false);
      const stored = await dl.cache.set({ key, value: bytes("v1"), contentType: "text/plain", ttl: minute, tags: ["t"] });
      assert.equal(stored.stored, true);
      assert.equal(stored.outcome, SetOutcome.STORED);
      const got = await dl.cache.get({ key });
      assert.equal(got.found, true);
      assert.equal(text(got.entry?.value), "v1");
      assert.equal(got.entry?.contentType, "text/plain");
      assert.equal(got.entry?.version, stored.version);
      assert.deepEqual(got.entry?.tags, ["t"]);
      const mismatch = await dl.cache.set({ key, value: bytes("v2"), ttl: minute, expectedVersion: stored.version + 1000n });
      assert.equal(mismatch.outcome, SetOutcome.VERSION_MISMATCH);
      assert.equal((await dl.cache.delete({ key })).deleted, true);
      assert.equal((await dl.cache.delete({ key })).deleted, false);
    });

    test("setMany and getMany answer in order", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const [a, b, none] = [unique("ts:many:a"), unique("ts:many:b"), unique("ts:many:none")];
      const { results } = await dl.cache.setMany({
        entries: [
          { key: a, value: bytes("A"), ttl: minute },
          { key: b, value: bytes("B"), ttl: minute },
        ],
      });
      assert.deepEqual(results.map((r) => r.stored), [true, true]);
      const { entries } = await dl.cache.getMany({ keys: [b, none, a] });
      assert.deepEqual(entries.map((e) => [e.found, e.found ? text(e.entry?.value) : ""]), [
        [true, "B"],
        [false, ""],
        [true, "A"],
      ]);
    });

    test("invalidateTags deletes every tagged entry", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const tag = unique("ts:tag");
      const keys = [unique("ts:tagged"), unique("ts:tagged"), unique("ts:tagged")];
      for (const key of keys) await dl.cache.set({ key, value: bytes("x"), ttl: minute, tags: [tag] });
      assert.equal((await dl.cache.invalidateTags({ tags: [tag] })).invalidated, 3n);
      const { entries } = await dl.cache.getMany({ keys });
      assert.ok(entries.every((e) => !e.found));
    });

    test("getOrLease grants one lease; set with it; then a hit", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const key = unique("ts:lease");
      const first = await dl.cache.getOrLease({ key, leaseTtl: { seconds: 5n } });
      assert.equal(first.status, LeaseStatus.LEASED);
      assert.ok(first.leaseToken);
      const second = await dl.cache.getOrLease({ key });
      assert.equal(second.status, LeaseStatus.WAIT);
      assert.ok(second.retryAfter);
      const stored = await dl.cache.set({ key, value: bytes("computed"), ttl: minute, leaseToken: first.leaseToken });
      assert.equal(stored.stored, true);
      const hit = await dl.cache.getOrLease({ key });
      assert.equal(hit.status, LeaseStatus.HIT);
      assert.equal(text(hit.entry?.value), "computed");
    });

    test("an empty key is a field violation", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      try {
        await dl.cache.get({ key: "" });
        assert.fail("expected INVALID_ARGUMENT");
      } catch (e) {
        assert.ok(e instanceof ConnectError);
        assert.equal(e.code, Code.InvalidArgument);
        assert.deepEqual(fieldViolations(e).map((v) => v.field), ["key"]);
      }
    });
  });
}
