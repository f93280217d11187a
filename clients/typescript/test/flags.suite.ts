// FlagService through the TypeScript client, against the real binary on the
// in-process memory store: every RPC, the Watch stream included.
import assert from "node:assert/strict";
import { describe, test, type TestContext } from "node:test";
import { Code, ConnectError, fieldViolations } from "@datalayer/client";
// From the package's own module: other packages export the same names.
import { ChangeType, State, type WatchResponse } from "@datalayer/client/gen/datalayer/flags/v1/flags_pb";
import { type Stack, unique } from "./harness.js";

export const SERVICE = "datalayer.flags.v1.FlagService";

const BOOL_FLAG = {
  state: "ENABLED",
  variants: { on: true, off: false },
  defaultVariant: "off",
  targeting: { if: [{ "==": [{ var: "email" }, "a@b.c"] }, "on", null] },
};
const FRACTIONAL_FLAG = {
  state: "ENABLED",
  variants: { a: "a", b: "b" },
  defaultVariant: "a",
  targeting: { fractional: [{ var: "targetingKey" }, ["a", 50], ["b", 50]] },
};
const BOOL = JSON.stringify(BOOL_FLAG);
const FRACTIONAL = JSON.stringify(FRACTIONAL_FLAG);
const DOCUMENT = {
  flags: {
    "staff-only": {
      state: "ENABLED",
      variants: { on: true, off: false },
      defaultVariant: "off",
      targeting: { if: [{ $ref: "isStaff" }, "on", "off"] },
    },
    colour: { state: "ENABLED", variants: { red: "red", blue: "blue" }, defaultVariant: "red" },
  },
  metadata: { team: "growth" },
  $evaluators: { isStaff: { ends_with: [{ var: "email" }, "@corp.com"] } },
};

const flagSet = () => unique("ts/flags");

async function rejects(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ConnectError, `expected a ConnectError, got ${e}`);
    return e;
  }
  assert.fail("expected the call to fail");
}

/** MurmurHash3, x86, 32 bits (the hash FractionalBucket documents). */
function murmur3(data: Uint8Array, seed = 0): number {
  const c1 = 0xcc9e2d51;
  const c2 = 0x1b873593;
  const scramble = (k: number) => {
    const m = Math.imul(k, c1);
    return Math.imul((m << 15) | (m >>> 17), c2);
  };
  let h = seed;
  const body = data.length - (data.length % 4);
  for (let i = 0; i < body; i += 4) {
    h ^= scramble(data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24));
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  let k = 0;
  for (let i = data.length - 1; i >= body; i--) k = (k << 8) | data[i];
  if (data.length > body) h ^= scramble(k);
  h ^= data.length;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** The canonical CBOR encoding of a short (< 24 bytes) text string. */
function cborText(s: string): Uint8Array {
  const raw = new TextEncoder().encode(s);
  assert.ok(raw.length < 24);
  return Uint8Array.from([0x60 + raw.length, ...raw]);
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
    drain() {
      items.length = 0;
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

export function flagsSuite(stack: () => Stack) {
  describe(SERVICE, () => {
    const skip = (t: TestContext) => {
      if (!stack().serves(SERVICE)) {
        t.skip(`${SERVICE} is not served`);
        return true;
      }
      return false;
    };

    test("put then get round-trips the definition and version", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const fs = flagSet();
      const put = await dl.flags.put({ flagSet: fs, key: "new-checkout", definition: BOOL });
      assert.equal(put.written, true);
      assert.ok(put.version > 0n);
      const { flag } = await dl.flags.get({ flagSet: fs, key: "new-checkout" });
      assert.deepEqual([flag?.flagSet, flag?.key, flag?.version], [fs, "new-checkout", put.version]);
      assert.deepEqual(JSON.parse(flag?.definition ?? ""), BOOL_FLAG);
      assert.equal((await rejects(dl.flags.get({ flagSet: fs, key: "missing" }))).code, Code.NotFound);
    });

    test("expectedVersion is compare-and-set; 0 means must not exist", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const fs = flagSet();
      const key = "cas";
      const created = await dl.flags.put({ flagSet: fs, key, definition: BOOL, expectedVersion: 0n });
      assert.equal(created.written, true);
      const again = await dl.flags.put({ flagSet: fs, key, definition: FRACTIONAL, expectedVersion: 0n });
      assert.deepEqual([again.written, again.version], [false, created.version]);
      const stale = await dl.flags.put({ flagSet: fs, key, definition: FRACTIONAL, expectedVersion: created.version + 100n });
      assert.deepEqual([stale.written, stale.version], [false, created.version]);
      const unchanged = (await dl.flags.get({ flagSet: fs, key })).flag;
      assert.equal(unchanged?.version, created.version);
      assert.deepEqual(JSON.parse(unchanged?.definition ?? ""), BOOL_FLAG);
      const fresh = await dl.flags.put({ flagSet: fs, key, definition: FRACTIONAL, expectedVersion: created.version });
      assert.equal(fresh.written, true);
      assert.ok(fresh.version > created.version);
      assert.equal((await dl.flags.delete({ flagSet: fs, key, expectedVersion: created.version })).deleted, false);
      assert.equal((await dl.flags.delete({ flagSet: fs, key, expectedVersion: fresh.version })).deleted, true);
      assert.equal((await dl.flags.delete({ flagSet: fs, key })).deleted, false);
    });

    test("patch is a JSON merge patch that changes only what it names", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const fs = flagSet();
      const key = "patched";
      const put = await dl.flags.put({
        flagSet: fs,
        key,
        definition: JSON.stringify({ ...BOOL_FLAG, metadata: { owner: "team-a", ticket: "T-1" } }),
      });
      const patched = await dl.flags.patch({
        flagSet: fs,
        key,
        mergePatch: JSON.stringify({ defaultVariant: "on", metadata: { owner: null, team: "b" } }),
        expectedVersion: put.version,
      });
      const want = { ...BOOL_FLAG, defaultVariant: "on", metadata: { ticket: "T-1", team: "b" } };
      assert.equal(patched.written, true);
      assert.deepEqual(JSON.parse(patched.flag?.definition ?? ""), want);
      assert.deepEqual(JSON.parse((await dl.flags.get({ flagSet: fs, key })).flag?.definition ?? ""), want);
      const stale = await dl.flags.patch({ flagSet: fs, key, mergePatch: '{"defaultVariant":"off"}', expectedVersion: put.version });
      assert.equal(stale.written, false);
      assert.equal(stale.flag?.version, patched.flag?.version);
      const err = await rejects(dl.flags.patch({ flagSet: fs, key, mergePatch: "{not json" }));
      assert.equal(err.code, Code.InvalidArgument);
      assert.deepEqual(fieldViolations(err).map((v) => v.field), ["merge_patch"]);
    });

    test("setState(DISABLED) is the kill switch; explain says DISABLED", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const fs = flagSet();
      const key = "kill-me";
      await dl.flags.put({ flagSet: fs, key, definition: BOOL });
      const before = await dl.flags.explain({ flagSet: fs, key, context: { email: "a@b.c" } });
      assert.deepEqual([before.reason, before.variant, before.value], ["TARGETING_MATCH", "on", "true"]);
      const disabled = await dl.flags.setState({ flagSet: fs, key, state: State.DISABLED });
      assert.equal(disabled.written, true);
      assert.equal(JSON.parse(disabled.flag?.definition ?? "").state, "DISABLED");
      const explained = await dl.flags.explain({ flagSet: fs, key, context: { email: "a@b.c" } });
      assert.deepEqual([explained.reason, explained.value, explained.error], ["DISABLED", "null", ""]);
      const enabled = await dl.flags.setState({ flagSet: fs, key, state: State.ENABLED, expectedVersion: disabled.flag?.version });
      assert.equal(enabled.written, true);
      assert.deepEqual(JSON.parse(enabled.flag?.definition ?? ""), BOOL_FLAG);
      const err = await rejects(dl.flags.setState({ flagSet: fs, key, state: State.UNSPECIFIED }));
      assert.deepEqual(fieldViolations(err).map((v) => v.field), ["state"]);
    });

    test("list pages with pageSize and nextPageToken, in key order", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const fs = flagSet();
      for (const key of ["e", "a", "d", "b", "c"]) await dl.flags.put({ flagSet: fs, key, definition: BOOL });
      const pages: string[][] = [];
      let pageToken = "";
      do {
        const page = await dl.flags.list({ flagSet: fs, pageSize: 2, pageToken });
        pages.push(page.flags.map((f) => f.key));
        pageToken = page.nextPageToken;
        assert.ok(pages.length < 10, "list never reached its last page");
      } while (pageToken);
      assert.deepEqual(pages, [["a", "b"], ["c", "d"], ["e"]]);
      const all = await dl.flags.list({ flagSet: fs });
      assert.deepEqual([all.flags.length, all.nextPageToken], [5, ""]);
    });

    test("import a document with $evaluators, then export it back", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const fs = flagSet();
      const imported = await dl.flags.import({ flagSet: fs, document: JSON.stringify(DOCUMENT) });
      assert.deepEqual([...imported.changed].sort(), ["colour", "staff-only"]);
      const exported = await dl.flags.export({ flagSet: fs });
      assert.deepEqual(JSON.parse(exported.document), DOCUMENT);
      assert.equal(exported.version, imported.version);
      const staff = await dl.flags.explain({ flagSet: fs, key: "staff-only", context: { email: "eve@corp.com" } });
      assert.deepEqual([staff.reason, staff.variant], ["TARGETING_MATCH", "on"]);
      const smaller = { ...DOCUMENT, flags: { colour: DOCUMENT.flags.colour } };
      const replaced = await dl.flags.import({ flagSet: fs, document: JSON.stringify(smaller), replace: true });
      assert.ok(replaced.changed.includes("staff-only"));
      assert.deepEqual(JSON.parse((await dl.flags.export({ flagSet: fs })).document), smaller);
      assert.equal((await rejects(dl.flags.export({ flagSet: flagSet() }))).code, Code.NotFound);
    });

    test("validate reports a problem path and dry-runs sample contexts", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const document = JSON.stringify({ flags: { bad: { ...BOOL_FLAG, targeting: { nosuchop: [1] } }, good: BOOL_FLAG } });
      const answer = await dl.flags.validate({ document, contexts: [{ email: "a@b.c" }, {}] });
      assert.deepEqual(answer.problems.map((p) => p.path), ["document.flags.bad.targeting"]);
      const runs = new Map(answer.results.map((r) => [`${r.key}#${r.context}`, r]));
      assert.deepEqual([...runs.keys()].sort(), ["bad#0", "bad#1", "good#0", "good#1"]);
      const hit = runs.get("good#0");
      const miss = runs.get("good#1");
      assert.deepEqual([hit?.value, hit?.variant, hit?.reason], ["true", "on", "TARGETING_MATCH"]);
      assert.deepEqual([miss?.value, miss?.variant, miss?.reason], ["false", "off", "DEFAULT"]);
      assert.equal(runs.get("bad#0")?.reason, "ERROR");
      const ok = await dl.flags.validate({ document: JSON.stringify(DOCUMENT) });
      assert.deepEqual(ok.problems, []);
    });

    test("explain reports the matched rule and the fractional bucket", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const fs = flagSet();
      await dl.flags.put({ flagSet: fs, key: "gate", definition: BOOL });
      await dl.flags.put({ flagSet: fs, key: "split", definition: FRACTIONAL });
      const hit = await dl.flags.explain({ flagSet: fs, key: "gate", context: { email: "a@b.c" } });
      assert.equal(hit.matched, "targeting.if[0] held");
      assert.equal(hit.evaluatedContext?.email, "a@b.c");
      const miss = await dl.flags.explain({ flagSet: fs, key: "gate", context: { email: "x@y.z" } });
      assert.match(miss.matched, /no condition held/);
      assert.deepEqual([miss.variant, miss.value], ["off", "false"]);
      const variants = new Set<string>();
      for (let i = 0; i < 20; i++) {
        const who = `user-${i}`;
        const out = await dl.flags.explain({ flagSet: fs, key: "split", context: { targetingKey: who } });
        assert.equal(out.fractional.length, 1);
        const [b] = out.fractional;
        assert.equal(b.bucketBy, JSON.stringify(who));
        assert.equal(b.totalWeight, 100n);
        assert.equal(b.hash, murmur3(cborText(who)));
        assert.equal(b.bucket, (BigInt(b.hash) * b.totalWeight) >> 32n);
        assert.equal(b.variant, b.bucket < 50n ? "a" : "b");
        assert.equal(out.variant, b.variant);
        variants.add(out.variant);
      }
      assert.deepEqual([...variants].sort(), ["a", "b"]);
    });

    test("listAudit lists changes newest first with before and after", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const fs = flagSet();
      const key = "audited";
      await dl.flags.put({ flagSet: fs, key, definition: BOOL });
      await dl.flags.patch({ flagSet: fs, key, mergePatch: '{"defaultVariant":"on"}' });
      await dl.flags.setState({ flagSet: fs, key, state: State.DISABLED });
      await dl.flags.delete({ flagSet: fs, key });
      const { entries } = await dl.flags.listAudit({ flagSet: fs });
      assert.deepEqual(entries.map((e) => e.action), ["delete", "set_state", "patch", "put"]);
      const versions = entries.map((e) => e.version);
      assert.deepEqual(versions, [...versions].sort((a, b) => (a > b ? -1 : a < b ? 1 : 0)));
      const [del, setState, patch, put] = entries;
      assert.equal(put.before, "");
      assert.deepEqual(JSON.parse(put.after), BOOL_FLAG);
      assert.deepEqual(JSON.parse(patch.before), BOOL_FLAG);
      assert.deepEqual(JSON.parse(patch.after), { ...BOOL_FLAG, defaultVariant: "on" });
      assert.equal(JSON.parse(setState.after).state, "DISABLED");
      assert.deepEqual(JSON.parse(del.before), JSON.parse(setState.after));
      assert.equal(del.after, "");
      const page1 = await dl.flags.listAudit({ flagSet: fs, limit: 3 });
      assert.deepEqual(page1.entries.map((e) => e.id), entries.slice(0, 3).map((e) => e.id));
      const page2 = await dl.flags.listAudit({ flagSet: fs, limit: 3, before: page1.nextBefore });
      assert.deepEqual([page2.entries.map((e) => e.id), page2.nextBefore], [[put.id], ""]);
    });

    test("listFlagSets counts the flags of each set", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const fs = flagSet();
      await dl.flags.import({ flagSet: fs, document: JSON.stringify(DOCUMENT) });
      const put = await dl.flags.put({ flagSet: fs, key: "third", definition: BOOL });
      const info = (await dl.flags.listFlagSets({})).flagSets.find((s) => s.name === fs);
      assert.deepEqual([info?.flags, info?.version], [3, put.version]);
    });

    test("watch yields WRITE, UPDATE and DELETE after writes made by other calls", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const fs = flagSet();
      const abort = new AbortController();
      const changes = reader<WatchResponse>(dl.flags.watch({ flagSet: fs }, { signal: abort.signal }));
      // Live once a change made now reaches it (each write must change the flag).
      let first: WatchResponse | undefined;
      for (let n = 0; !first && n < 50; n++) {
        await dl.flags.put({ flagSet: fs, key: "sentinel", definition: JSON.stringify({ ...FRACTIONAL_FLAG, metadata: { n } }) });
        first = await changes.next(200);
      }
      assert.equal(first?.key, "sentinel", `watch never yielded (${changes.error})`);
      while (await changes.next(200));

      await dl.flags.put({ flagSet: flagSet(), key: "elsewhere", definition: BOOL });
      const created = await dl.flags.put({ flagSet: fs, key: "watched", definition: BOOL });
      const write = await changes.next();
      assert.deepEqual([write?.flagSet, write?.key, write?.type, write?.version], [fs, "watched", ChangeType.WRITE, created.version]);
      const updated = await dl.flags.put({ flagSet: fs, key: "watched", definition: FRACTIONAL });
      const update = await changes.next();
      assert.deepEqual([update?.key, update?.type, update?.version], ["watched", ChangeType.UPDATE, updated.version]);
      await dl.flags.delete({ flagSet: fs, key: "watched" });
      const del = await changes.next();
      assert.deepEqual([del?.key, del?.type], ["watched", ChangeType.DELETE]);

      abort.abort();
      await changes.done;
      assert.ok(changes.error instanceof ConnectError);
      assert.equal(changes.error.code, Code.Canceled);
    });

    test("a bad watch request fails as a unary call does", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const changes = reader(dl.flags.watch({ flagSet: "bad\u0001name" }));
      await changes.done;
      const err = changes.error;
      assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${err}`);
      assert.equal(err.code, Code.InvalidArgument);
      assert.deepEqual(fieldViolations(err).map((v) => v.field), ["flag_set"]);
    });

    test("an empty key is InvalidArgument with a field violation", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const err = await rejects(dl.flags.put({ flagSet: flagSet(), key: "", definition: BOOL }));
      assert.equal(err.code, Code.InvalidArgument);
      assert.deepEqual(fieldViolations(err).map((v) => v.field), ["key"]);
      const rule = await rejects(
        dl.flags.put({ flagSet: flagSet(), key: "k", definition: JSON.stringify({ ...BOOL_FLAG, targeting: { nosuchop: [1] } }) }),
      );
      assert.deepEqual(fieldViolations(rule).map((v) => v.field), ["definition.targeting"]);
    });
  });
}
