// StateService through the TypeScript client, against the real binary (run
// once on Redis and once on the memory store): every RPC (documents with
// CAS, merge patch, JSON pointer reads, keyset pages, the Watch stream,
// bounded counters, fenced locks), then the lock helpers (`dl.state.lock`,
// `withLock`, `leader`).
import assert from "node:assert/strict";
import { describe, test, type TestContext } from "node:test";
import {
  Code,
  ConnectError,
  Lease,
  LockLostError,
  LockNotAcquiredError,
  fieldViolations,
  parseDurationMs,
  type DatalayerClient,
} from "@datalayer/client";
import { durationMs } from "@bufbuild/protobuf/wkt";
// From the package's own module: other packages export the same names.
import { ChangeType, type WatchResponse } from "@datalayer/client/gen/datalayer/state/v1/state_pb";
import { type Stack, sleep, unique } from "./harness.js";

export const SERVICE = "datalayer.state.v1.StateService";
const JSON_TYPE = "application/json";

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);
const json = (b: Uint8Array | undefined): unknown => JSON.parse(dec(b ?? new Uint8Array()));
const collection = () => unique("ts.state").replaceAll(":", "-");
const lockName = () => unique("ts-lock");
const seconds = (s: number) => ({ seconds: BigInt(s), nanos: 0 });
const millis = (ms: number) => ({ seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 });

async function rejects(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ConnectError, `expected a ConnectError, got ${e}`);
    return e;
  }
  assert.fail("expected the call to fail");
}

async function rejectsWith<E extends Error>(p: Promise<unknown>, kind: new (...args: never[]) => E): Promise<E> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof kind, `expected a ${kind.name}, got ${e}`);
    return e;
  }
  assert.fail(`expected a ${kind.name}`);
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
    get pending() {
      return items.length;
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

export function stateSuite(stack: () => Stack, store = "redis") {
  describe(`${SERVICE} (${store})`, () => {
    const skip = (t: TestContext) => {
      if (!stack().serves(SERVICE)) {
        t.skip(`${SERVICE} is not served`);
        return true;
      }
      return false;
    };
    const client = (): DatalayerClient => stack().client();

    test("put/get/delete with expectedVersion are compare-and-set", async (t) => {
      if (skip(t)) return;
      const s = client().state;
      const c = collection();
      const first = await s.put({ collection: c, key: "k", value: enc("one"), contentType: "text/plain" });
      assert.ok(first.written && first.version > 0n);

      const refused = await s.put({ collection: c, key: "k", value: enc("two"), expectedVersion: 0n });
      assert.deepEqual([refused.written, refused.version], [false, first.version]);
      const got = await s.get({ collection: c, key: "k" });
      assert.ok(got.found);
      assert.deepEqual(
        [dec(got.document?.value ?? new Uint8Array()), got.document?.contentType, got.document?.version, got.document?.ttl],
        ["one", "text/plain", first.version, undefined],
      );

      const stale = await s.put({ collection: c, key: "k", value: enc("two"), expectedVersion: first.version + 1000n });
      assert.deepEqual([stale.written, stale.version], [false, first.version]);
      const second = await s.put({ collection: c, key: "k", value: enc("two"), expectedVersion: first.version });
      assert.ok(second.written && second.version > first.version);

      assert.equal((await s.delete({ collection: c, key: "k", expectedVersion: first.version })).deleted, false);
      assert.equal((await s.get({ collection: c, key: "k" })).found, true);
      assert.equal((await s.delete({ collection: c, key: "k", expectedVersion: second.version })).deleted, true);
      assert.equal((await s.get({ collection: c, key: "k" })).found, false);
      assert.equal((await s.delete({ collection: c, key: "k" })).deleted, false);
      const again = await s.put({ collection: c, key: "k", value: enc("three"), expectedVersion: 0n });
      assert.ok(again.written && again.version > second.version, "versions grow across a delete");

      await s.put({ collection: c, key: "brief", value: enc("x"), ttl: seconds(30) });
      const ttl = (await s.get({ collection: c, key: "brief" })).document?.ttl;
      assert.ok(ttl && durationMs(ttl) > 25_000 && durationMs(ttl) <= 30_000);
    });

    test("getMany answers in the order asked", async (t) => {
      if (skip(t)) return;
      const s = client().state;
      const c = collection();
      const a = await s.put({ collection: c, key: "a", value: enc("A") });
      const b = await s.put({ collection: c, key: "b", value: enc("B") });
      const { documents } = await s.getMany({ collection: c, keys: ["b", "missing", "a"] });
      assert.deepEqual(
        documents.map((d) => [d.found, d.document?.key, d.document ? dec(d.document.value) : undefined, d.document?.version]),
        [
          [true, "b", "B", b.version],
          [false, undefined, undefined, undefined],
          [true, "a", "A", a.version],
        ],
      );
    });

    test("patch is a JSON merge patch: create, NOT_FOUND without it, CAS", async (t) => {
      if (skip(t)) return;
      const s = client().state;
      const c = collection();
      const missing = await rejects(s.patch({ collection: c, key: "cfg", mergePatch: enc('{"a":1}') }));
      assert.equal(missing.code, Code.NotFound);
      assert.equal((await s.get({ collection: c, key: "cfg" })).found, false);

      const firstPatch = enc('{"a":1,"gone":null,"o":{"x":1}}');
      const created = await s.patch({ collection: c, key: "cfg", mergePatch: firstPatch, create: true });
      assert.ok(created.written);
      assert.equal(created.document?.contentType, JSON_TYPE);
      assert.deepEqual(json(created.document?.value), { a: 1, o: { x: 1 } });
      const merged = await s.patch({ collection: c, key: "cfg", mergePatch: enc('{"o":{"y":2,"x":null},"a":[1,2]}') });
      assert.ok(merged.written && (merged.document?.version ?? 0n) > (created.document?.version ?? 0n));
      assert.deepEqual(json(merged.document?.value), { a: [1, 2], o: { y: 2 } });

      const old = created.document?.version;
      const stale = await s.patch({ collection: c, key: "cfg", mergePatch: enc('{"a":0}'), expectedVersion: old });
      assert.equal(stale.written, false);
      assert.equal(stale.document?.version, merged.document?.version);
      assert.deepEqual(json((await s.get({ collection: c, key: "cfg" })).document?.value), { a: [1, 2], o: { y: 2 } });

      await s.put({ collection: c, key: "text", value: enc("plain"), contentType: "text/plain" });
      assert.equal((await rejects(s.patch({ collection: c, key: "text", mergePatch: enc("{}") }))).code, Code.FailedPrecondition);
      const bad = await rejects(s.patch({ collection: c, key: "cfg", mergePatch: enc("{nope") }));
      assert.deepEqual(fieldViolations(bad).map((v) => v.field), ["merge_patch"]);
    });

    test("get with a jsonPointer answers that part", async (t) => {
      if (skip(t)) return;
      const s = client().state;
      const c = collection();
      const value = { settings: { tz: "UTC", "a/b": 1 }, list: [10, 20] };
      const put = await s.put({ collection: c, key: "u", value: enc(JSON.stringify(value)), contentType: JSON_TYPE });
      const at = (jsonPointer: string) => s.get({ collection: c, key: "u", jsonPointer });
      const tz = await at("/settings/tz");
      assert.ok(tz.found);
      assert.deepEqual([json(tz.document?.value), tz.document?.contentType, tz.document?.version], ["UTC", JSON_TYPE, put.version]);
      assert.equal(json((await at("/list/1")).document?.value), 20);
      assert.equal(json((await at("/settings/a~1b")).document?.value), 1);
      assert.equal((await at("/settings/nope")).found, false);
      const bad = await rejects(at("settings"));
      assert.deepEqual(fieldViolations(bad).map((v) => v.field), ["json_pointer"]);
    });

    test("list pages by keyset cursor (prefix, limit, withValues); count", async (t) => {
      if (skip(t)) return;
      const s = client().state;
      const c = collection();
      const keys = Array.from({ length: 7 }, (_, i) => `a:${String(i).padStart(2, "0")}`);
      const versions = new Map<string, bigint>();
      for (const k of keys) versions.set(k, (await s.put({ collection: c, key: k, value: enc(k) })).version);
      await s.put({ collection: c, key: "b:00", value: enc("other") });
      assert.equal((await s.count({ collection: c })).count, 8n);

      const page1 = await s.list({ collection: c, prefix: "a:", limit: 3 });
      assert.deepEqual([page1.keys, page1.nextCursor, page1.documents.length], [keys.slice(0, 3), keys[2], 0]);
      // Changes before the cursor do not shift the next page.
      await s.delete({ collection: c, key: keys[0] });
      await s.put({ collection: c, key: "a:00x", value: enc("late") });
      const page2 = await s.list({ collection: c, prefix: "a:", cursor: page1.nextCursor, limit: 3, withValues: true });
      assert.deepEqual([page2.keys, page2.nextCursor], [keys.slice(3, 6), keys[5]]);
      assert.deepEqual(
        page2.documents.map((d) => [d.key, dec(d.value), d.version]),
        keys.slice(3, 6).map((k) => [k, k, versions.get(k)]),
      );
      const page3 = await s.list({ collection: c, prefix: "a:", cursor: page2.nextCursor, limit: 3 });
      assert.deepEqual([page3.keys, page3.nextCursor], [keys.slice(6), ""]);
      const all = await s.list({ collection: c });
      assert.deepEqual(all.keys, [...keys.slice(1), "a:00x", "b:00"].sort());
      assert.equal((await s.count({ collection: collection() })).count, 0n);
    });

    test("watch streams put, patch and delete in order, with versions", async (t) => {
      if (skip(t)) return;
      const s = client().state;
      const c = collection();
      const abort = new AbortController();
      const changes = reader<WatchResponse>(s.watch({ collection: c, prefix: "w:" }, { signal: abort.signal }));
      let first: WatchResponse | undefined;
      for (let n = 0; !first && n < 50; n++) {
        await s.put({ collection: c, key: "w:sentinel", value: enc(String(n)) });
        first = await changes.next(300);
      }
      assert.equal(first?.key, "w:sentinel", `watch never yielded (${changes.error})`);
      while (await changes.next(300));

      const put = await s.put({ collection: c, key: "w:doc", value: enc('{"n":1}'), contentType: JSON_TYPE });
      await s.put({ collection: c, key: "elsewhere", value: enc("not watched") });
      const patched = await s.patch({ collection: c, key: "w:doc", mergePatch: enc('{"m":2}') });
      assert.equal((await s.put({ collection: c, key: "w:doc", value: enc("x"), expectedVersion: 0n })).written, false);
      assert.equal((await s.delete({ collection: c, key: "w:doc" })).deleted, true);
      const got: (WatchResponse | undefined)[] = [];
      for (let i = 0; i < 3; i++) got.push(await changes.next());
      assert.deepEqual(
        got.map((g) => [g?.key, g?.type, g?.version]),
        [
          ["w:doc", ChangeType.PUT, put.version],
          ["w:doc", ChangeType.PATCH, patched.document?.version],
          ["w:doc", ChangeType.DELETE, 0n],
        ],
      );
      assert.equal(await changes.next(300), undefined, "a change outside the prefix or a refused write was streamed");
      abort.abort();
      await changes.done;
      assert.ok(changes.error instanceof ConnectError);
      assert.equal(changes.error.code, Code.Canceled);
    });

    test("increment within min/max; getCounters", async (t) => {
      if (skip(t)) return;
      const s = client().state;
      const c = collection();
      const five = await s.increment({ collection: c, key: "n", delta: 5n });
      assert.deepEqual([five.applied, five.value], [true, 5n]);
      const below = await s.increment({ collection: c, key: "n", delta: -10n, min: 0n });
      assert.deepEqual([below.applied, below.value], [false, 5n]);
      const above = await s.increment({ collection: c, key: "n", delta: 10n, max: 12n });
      assert.deepEqual([above.applied, above.value], [false, 5n]);
      const up = await s.increment({ collection: c, key: "n", delta: 7n, min: 0n, max: 12n });
      assert.deepEqual([up.applied, up.value], [true, 12n]);
      await s.increment({ collection: c, key: "m", delta: -3n });
      assert.deepEqual((await s.getCounters({ collection: c, keys: ["n", "missing", "m"] })).values, [12n, 0n, -3n]);
      const bad = await rejects(s.increment({ collection: c, key: "n", delta: 1n, min: 5n, max: 1n }));
      assert.deepEqual(fieldViolations(bad).map((v) => v.field), ["max"]);
    });

    test("lock RPCs: fencing tokens grow, renew, release, lost lease", async (t) => {
      if (skip(t)) return;
      const s = client().state;
      const name = lockName();
      const a = await s.acquireLock({ name, ttl: seconds(5) });
      assert.ok(a.acquired && /^[0-9a-f]{32}$/.test(a.leaseId) && a.fencingToken > 0n);
      const held = await s.acquireLock({ name, ttl: seconds(5) });
      assert.deepEqual([held.acquired, held.leaseId, held.fencingToken], [false, "", 0n]);
      assert.ok(held.retryAfter && durationMs(held.retryAfter) > 4000 && durationMs(held.retryAfter) <= 5000);
      assert.equal((await s.renewLock({ name, leaseId: a.leaseId, ttl: seconds(5) })).fencingToken, a.fencingToken);
      assert.equal((await s.releaseLock({ name, leaseId: a.leaseId })).released, true);
      assert.equal((await s.releaseLock({ name, leaseId: a.leaseId })).released, false);

      const b = await s.acquireLock({ name, ttl: millis(300) });
      assert.ok(b.acquired && b.fencingToken > a.fencingToken);
      const lost = await rejects(s.renewLock({ name, leaseId: a.leaseId, ttl: seconds(5) }));
      assert.equal(lost.code, Code.FailedPrecondition);
      assert.match(lost.rawMessage, /lock lost/);
      const started = Date.now();
      const c = await s.acquireLock({ name, ttl: seconds(5), wait: seconds(3) });
      assert.ok(c.acquired && c.fencingToken > b.fencingToken);
      assert.ok(Date.now() - started > 100 && Date.now() - started < 2500);
      assert.equal((await s.releaseLock({ name, leaseId: c.leaseId })).released, true);
    });

    test("parseDurationMs", () => {
      assert.equal(parseDurationMs("10s"), 10_000);
      assert.equal(parseDurationMs("500ms"), 500);
      assert.equal(parseDurationMs("1m"), 60_000);
      assert.equal(parseDurationMs("1h30m"), 5_400_000);
      assert.equal(parseDurationMs(" 1.5s "), 1500);
      assert.equal(parseDurationMs(250), 250);
      assert.equal(parseDurationMs(Infinity, "wait", true), Infinity);
      for (const bad of ["", "10", "10 s", "10x", "-1s", "1s2"]) assert.throws(() => parseDurationMs(bad), RangeError, bad);
      assert.throws(() => parseDurationMs(-1), RangeError);
      assert.throws(() => parseDurationMs(Infinity), RangeError);
    });

    test("lock(): renews past its TTL, fences, releases on dispose", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const other = client();
      const name = lockName();
      let kept: Lease | undefined;
      {
        await using lease = await dl.state.lock(name, { ttl: "600ms", wait: "1s" });
        kept = lease;
        assert.ok(lease instanceof Lease && lease.fencingToken > 0n && !lease.lost && !lease.signal.aborted);
        await sleep(1500); // past the TTL twice over: the background renewals keep it
        assert.ok(!lease.lost && lease.expiresInMs > 0);
        lease.check();
        assert.equal((await other.state.acquireLock({ name, ttl: seconds(1) })).acquired, false);
        const refused = await rejectsWith(other.state.lock(name, { ttl: "1s" }), LockNotAcquiredError);
        assert.equal(refused.lockName, name);
        assert.ok(refused.retryAfterMs !== undefined && refused.retryAfterMs > 0 && refused.retryAfterMs <= 600);
      }
      assert.ok(kept.released && !kept.lost && !kept.signal.aborted);
      assert.throws(() => kept?.check(), LockLostError);
      const after = await other.state.withLock(name, { ttl: "1s" }, (l) => l.fencingToken);
      assert.ok(after > kept.fencingToken, "released at the end of the scope, then fenced higher");
    });

    test("lock(): waits, then LockNotAcquiredError", async (t) => {
      if (skip(t)) return;
      const s = client().state;
      const name = lockName();
      await s.withLock(name, { ttl: "5s" }, async () => {
        const started = Date.now();
        const err = await rejectsWith(s.lock(name, { ttl: "5s", wait: "500ms" }), LockNotAcquiredError);
        assert.match(err.message, /not acquired within/);
        assert.ok(Date.now() - started >= 450 && Date.now() - started < 3000);
      });
      const first = await s.acquireLock({ name, ttl: millis(400) });
      const started = Date.now();
      const waited = await s.withLock(name, { ttl: "2s", wait: "5s" }, (lease) => lease.fencingToken);
      assert.ok(waited > first.fencingToken && Date.now() - started > 200);
    });

    test("a lease released from under it is lost: signal, onLost, check", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const other = client();
      const name = lockName();
      const lost: [Lease, LockLostError][] = [];
      await using lease = await dl.state.lock(name, { ttl: "3s", renewEvery: "200ms", onLost: (l, e) => lost.push([l, e]) });
      const aborted = new Promise<unknown>((resolve) => lease.signal.addEventListener("abort", () => resolve(lease.signal.reason)));
      assert.equal((await other.state.releaseLock({ name, leaseId: lease.leaseId })).released, true);
      const taken = await other.state.acquireLock({ name, ttl: seconds(5) });
      assert.ok(taken.acquired && taken.fencingToken > lease.fencingToken);
      const reason = await Promise.race([aborted, sleep(3000).then(() => "timeout")]);
      assert.ok(reason instanceof LockLostError, `signal not aborted with a LockLostError: ${String(reason)}`);
      assert.match(reason.message, /lock lost/);
      assert.equal(reason.fencingToken, lease.fencingToken);
      assert.ok(lease.lost && lease.signal.aborted);
      assert.equal(lost.length, 1);
      assert.equal(lost[0][0], lease);
      assert.throws(() => lease.check(), LockLostError);
      await rejectsWith(lease.renew(), LockLostError);
      assert.equal(await lease.release(), false, "nothing left to release");
      // The new holder's lease is untouched.
      const renewed = await other.state.renewLock({ name, leaseId: taken.leaseId, ttl: seconds(1) });
      assert.equal(renewed.fencingToken, taken.fencingToken);
    });

    test("a lease whose renewals come too late is lost", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const name = lockName();
      let called = 0;
      await using lease = await dl.state.lock(name, { ttl: "400ms", renewEvery: "5s", onLost: () => called++ });
      assert.ok(!lease.lost);
      await new Promise((resolve) => lease.signal.addEventListener("abort", resolve));
      assert.ok(lease.lost && lease.expiresInMs === 0 && called === 1);
      assert.match(lease.lostReason ?? "", /ran out/);
      const after = await client().state.withLock(name, { ttl: "1s", wait: "2s" }, (l) => l.fencingToken);
      assert.ok(after > lease.fencingToken);
    });

    test("leader(): terms follow each other; break releases; signal ends a campaign", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const other = client();
      const name = lockName();
      const tokens: bigint[] = [];
      let last: Lease | undefined;
      for await (const term of dl.state.leader(name, { ttl: "1s", renewEvery: "100ms" })) {
        tokens.push(term.fencingToken);
        last = term;
        if (tokens.length === 1) {
          assert.equal((await other.state.acquireLock({ name, ttl: seconds(1) })).acquired, false);
          // Leadership is taken away: the term's signal says so.
          assert.equal((await other.state.releaseLock({ name, leaseId: term.leaseId })).released, true);
          await new Promise((resolve) => term.signal.addEventListener("abort", resolve));
          assert.ok(term.lost);
          continue; // campaign again
        }
        if (tokens.length === 2) continue; // hand over early: released, not lost
        break;
      }
      assert.equal(tokens.length, 3);
      assert.ok(tokens[0] < tokens[1] && tokens[1] < tokens[2], `tokens ${tokens}`);
      assert.ok(last?.released);
      const free = await other.state.acquireLock({ name, ttl: seconds(5) });
      assert.ok(free.acquired, "break released the term");

      // A follower waits while the lock is held; its signal ends the campaign.
      const abort = new AbortController();
      const follower = (async () => {
        for await (const term of dl.state.leader(name, { ttl: "1s", signal: abort.signal })) {
          return term.fencingToken;
        }
        return undefined;
      })();
      await sleep(300);
      abort.abort();
      assert.equal(await follower, undefined);
      assert.equal((await other.state.releaseLock({ name, leaseId: free.leaseId })).released, true);
    });
  });
}
