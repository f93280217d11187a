// LeaderboardService through the TypeScript client, against the real binary:
// every RPC (board definitions, Submit with each operator, ordering and
// tie-breaks, keyset pages of Top, AroundOwner, Records, Rank, DeleteRecord,
// periods of a resetting board, idempotent retries, bad input) and the
// WatchTop stream.
import assert from "node:assert/strict";
import { describe, test, type TestContext } from "node:test";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, fieldViolations, type DatalayerClient } from "@datalayer/client";
// From the package's own module: `Record` is a name of TypeScript's too.
import {
  Operator,
  SortOrder,
  TieBreak,
  type LeaderboardSchema,
  type Record as BoardRecord,
  type SubmitRequestSchema,
  type WatchTopResponse,
} from "@datalayer/client/gen/datalayer/leaderboard/v1/leaderboard_pb";
import { type Stack, sleep, unique } from "./harness.js";

export const SERVICE = "datalayer.leaderboard.v1.LeaderboardService";

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array | undefined) => new TextDecoder().decode(b ?? new Uint8Array());
const boardId = () => unique("ts.lb");
/** The bound of scores and subscores: 2^53 − 1. */
const LIMIT = 9007199254740991n;
const owners = (records: BoardRecord[]) => records.map((r) => r.ownerId);
const ranked = (records: BoardRecord[]) => records.map((r) => [r.ownerId, r.score, r.rank]);

async function rejects(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ConnectError, `expected a ConnectError, got ${e}`);
    return e;
  }
  assert.fail("expected the call to fail");
}

async function code(p: Promise<unknown>): Promise<Code> {
  return (await rejects(p)).code;
}

/** The fields a request was refused for: INVALID_ARGUMENT with a BadRequest. */
async function badFields(p: Promise<unknown>): Promise<string[]> {
  const err = await rejects(p);
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

type Board = Omit<Exclude<MessageInitShape<typeof LeaderboardSchema>, { $typeName: string }>, "id">;
type Submission = Omit<Exclude<MessageInitShape<typeof SubmitRequestSchema>, { $typeName: string }>, "leaderboardId">;

export function leaderboardSuite(stack: () => Stack, store = "redis") {
  describe(`${SERVICE} (${store})`, () => {
    const skip = (t: TestContext) => {
      if (!stack().serves(SERVICE)) {
        t.skip(`${SERVICE} is not served`);
        return true;
      }
      return false;
    };
    const client = (): DatalayerClient => stack().client();
    /** Creates a board with a unique id; answers the id. */
    const create = async (dl: DatalayerClient, board: Board = {}) => {
      const id = boardId();
      const created = await dl.leaderboard.createLeaderboard({ leaderboard: { id, ...board } });
      assert.equal(created.leaderboard?.id, id);
      return id;
    };
    const submit = (dl: DatalayerClient, id: string, ownerId: string, score: bigint, more: Submission = {}) =>
      dl.leaderboard.submit({ leaderboardId: id, ownerId, score, ...more });
    const top = async (dl: DatalayerClient, id: string, limit = 100, periodId = "") =>
      (await dl.leaderboard.top({ leaderboardId: id, limit, periodId })).records;

    test("create, get, update, list and delete boards; ALREADY_EXISTS; fixed fields stay fixed", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const id = boardId();
      const before = Date.now();
      const plain = (await dl.leaderboard.createLeaderboard({ leaderboard: { id } })).leaderboard;
      assert.ok(plain?.createTime);
      assert.deepEqual(
        [plain.sortOrder, plain.operator, plain.tieBreak, plain.resetCron, plain.keepPeriods, plain.decrementFloor],
        [SortOrder.DESCENDING, Operator.BEST, TieBreak.EARLIEST, "", 0, 0n],
        "the defaults are filled in",
      );
      assert.ok(Math.abs(timestampMs(plain.createTime) - before) < 10_000);
      const dup = await rejects(dl.leaderboard.createLeaderboard({ leaderboard: { id, sortOrder: SortOrder.ASCENDING } }));
      assert.equal(dup.code, Code.AlreadyExists);

      const weeklyId = boardId();
      const weekly = {
        id: weeklyId,
        sortOrder: SortOrder.ASCENDING,
        operator: Operator.INCREMENT,
        tieBreak: TieBreak.OWNER_ID,
        resetCron: "0 0 * * MON",
        timeZone: "Europe/Paris",
        keepPeriods: 4,
        decrementFloor: -10n,
        metadata: enc('{"title":"weekly"}'),
      };
      const made = (await dl.leaderboard.createLeaderboard({ leaderboard: weekly })).leaderboard;
      assert.deepEqual(
        [made?.sortOrder, made?.operator, made?.tieBreak, made?.resetCron, made?.timeZone, made?.keepPeriods, made?.decrementFloor, dec(made?.metadata)],
        [SortOrder.ASCENDING, Operator.INCREMENT, TieBreak.OWNER_ID, "0 0 * * MON", "Europe/Paris", 4, -10n, '{"title":"weekly"}'],
      );
      const got = await dl.leaderboard.getLeaderboard({ id: weeklyId });
      assert.deepEqual(got.leaderboard, made);
      const p = got.currentPeriod;
      assert.ok(p?.startTime && p.endTime, "a resetting board's period has an end");
      const [start, end] = [timestampMs(p.startTime), timestampMs(p.endTime)];
      assert.ok(start <= Date.now() && Date.now() < end);
      assert.ok(Math.abs(end - start - 7 * 86_400_000) <= 3_600_000, `a week: ${end - start} ms`);
      assert.equal(p.id, String(start));
      assert.equal(p.owners, 0n);
      const forever = (await dl.leaderboard.getLeaderboard({ id })).currentPeriod;
      assert.deepEqual([forever?.id, forever?.endTime, forever?.owners], ["0", undefined, 0n]);

      // Metadata, schedule and retention may change; order, operator and tie-break may not.
      const updated = (
        await dl.leaderboard.updateLeaderboard({
          leaderboard: { id: weeklyId, resetCron: "0 0 * * *", timeZone: "UTC", keepPeriods: 6, metadata: enc("v2") },
        })
      ).leaderboard;
      assert.deepEqual(
        [updated?.sortOrder, updated?.operator, updated?.tieBreak, updated?.resetCron, updated?.keepPeriods, dec(updated?.metadata)],
        [SortOrder.ASCENDING, Operator.INCREMENT, TieBreak.OWNER_ID, "0 0 * * *", 6, "v2"],
        "unspecified fixed fields keep their values",
      );
      assert.deepEqual(updated?.createTime, made?.createTime);
      const daily = (await dl.leaderboard.getLeaderboard({ id: weeklyId })).currentPeriod;
      assert.ok(daily?.startTime && daily.endTime);
      assert.equal(timestampMs(daily.endTime) - timestampMs(daily.startTime), 86_400_000);
      const refuse = (change: Board) => badFields(dl.leaderboard.updateLeaderboard({ leaderboard: { ...weekly, ...change } }));
      assert.deepEqual(await refuse({ sortOrder: SortOrder.DESCENDING }), ["leaderboard.sort_order"]);
      assert.deepEqual(await refuse({ operator: Operator.BEST }), ["leaderboard.operator"]);
      assert.deepEqual(await refuse({ tieBreak: TieBreak.LATEST }), ["leaderboard.tie_break"]);
      assert.deepEqual(await refuse({ resetCron: "", timeZone: "" }), ["leaderboard.reset_cron"]);
      assert.deepEqual(await badFields(dl.leaderboard.updateLeaderboard({ leaderboard: { id, resetCron: "0 * * * *" } })), [
        "leaderboard.reset_cron",
      ]);
      assert.equal(await code(dl.leaderboard.updateLeaderboard({ leaderboard: { id: boardId() } })), Code.NotFound);

      // Listed in id order, page by page.
      const listed: string[] = [];
      let pageToken = "";
      for (let pages = 0; ; pages++) {
        assert.ok(pages < 1000);
        const page = await dl.leaderboard.listLeaderboards({ pageSize: 7, pageToken });
        assert.ok(page.leaderboards.length <= 7);
        listed.push(...page.leaderboards.map((b) => b.id));
        if (!page.nextPageToken) break;
        assert.equal(page.nextPageToken, page.leaderboards.at(-1)?.id);
        pageToken = page.nextPageToken;
      }
      assert.ok(listed.includes(id) && listed.includes(weeklyId));
      assert.deepEqual(listed, [...listed].sort(), "in id order");
      assert.equal(new Set(listed).size, listed.length, "no board twice");
      const fromMine = await dl.leaderboard.listLeaderboards({ pageSize: 1000, pageToken: id });
      assert.ok(fromMine.leaderboards.every((b) => b.id > id), "a page starts after its token");
      assert.deepEqual(await badFields(dl.leaderboard.listLeaderboards({ pageSize: 1001 })), ["page_size"]);

      // Deleted with its records; created again, it starts empty.
      await submit(dl, id, "amy", 5n);
      assert.equal((await dl.leaderboard.deleteLeaderboard({ id })).deleted, true);
      assert.equal((await dl.leaderboard.deleteLeaderboard({ id })).deleted, false);
      assert.equal(await code(dl.leaderboard.getLeaderboard({ id })), Code.NotFound);
      assert.equal(await code(top(dl, id)), Code.NotFound);
      const after = await dl.leaderboard.listLeaderboards({ pageSize: 1000, pageToken: listed[listed.indexOf(id) - 1] ?? "" });
      assert.ok(!after.leaderboards.some((b) => b.id === id), "a deleted board is not listed");
      await dl.leaderboard.createLeaderboard({ leaderboard: { id } });
      assert.deepEqual(await top(dl, id), [], "a board created again starts empty");
      assert.equal((await dl.leaderboard.rank({ leaderboardId: id, ownerId: "amy" })).found, false);
      await dl.leaderboard.deleteLeaderboard({ id });
      await dl.leaderboard.deleteLeaderboard({ id: weeklyId });
    });

    test("submit applies the board's operator (or the one given) and answers ranks before and after", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const best = await create(dl);
      const first = await submit(dl, best, "amy", 10n, { metadata: enc("m1") });
      assert.deepEqual(
        [first.record?.ownerId, first.record?.score, first.record?.rank, first.record?.submissions, first.previousRank, first.improved, first.periodId, first.replayed],
        ["amy", 10n, 1n, 1n, 0n, true, "0", false],
      );
      assert.equal(dec(first.record?.metadata), "m1");
      assert.ok(first.record?.updateTime && Math.abs(timestampMs(first.record.updateTime) - Date.now()) < 10_000);
      const bob = await submit(dl, best, "bob", 20n);
      assert.deepEqual([bob.record?.rank, bob.previousRank], [1n, 0n]);
      const worse = await submit(dl, best, "amy", 5n, { metadata: enc("m2") });
      assert.deepEqual(
        [worse.record?.score, worse.record?.rank, worse.previousRank, worse.improved, worse.record?.submissions, dec(worse.record?.metadata)],
        [10n, 2n, 2n, false, 2n, "m1"],
        "best keeps the better record, and its metadata",
      );
      const sub = await submit(dl, best, "amy", 10n, { subscore: 3n });
      assert.deepEqual([sub.record?.score, sub.record?.subscore, sub.improved, dec(sub.record?.metadata)], [10n, 3n, true, "m1"]);
      const passed = await submit(dl, best, "amy", 30n, { metadata: enc("m3") });
      assert.deepEqual([passed.record?.rank, passed.previousRank, passed.improved, dec(passed.record?.metadata)], [1n, 2n, true, "m3"]);
      const set = await submit(dl, best, "amy", 1n, { operator: Operator.SET });
      assert.deepEqual([set.record?.score, set.record?.subscore, set.record?.rank, set.previousRank, set.improved], [1n, 0n, 2n, 1n, true]);
      const same = await submit(dl, best, "amy", 1n, { operator: Operator.SET });
      assert.deepEqual([same.improved, same.record?.submissions], [false, 6n], "set to the same score changes nothing");
      assert.deepEqual(ranked(await top(dl, best)), [
        ["bob", 20n, 1n],
        ["amy", 1n, 2n],
      ]);

      const sum = await create(dl, { operator: Operator.INCREMENT });
      await submit(dl, sum, "amy", 5n, { subscore: 1n });
      const added = await submit(dl, sum, "amy", 7n, { subscore: 1n });
      assert.deepEqual([added.record?.score, added.record?.subscore, added.improved, added.record?.submissions], [12n, 2n, true, 2n]);
      const less = await submit(dl, sum, "amy", -2n);
      assert.equal(less.record?.score, 10n, "increments may be negative");
      const dec1 = await submit(dl, sum, "amy", 3n, { operator: Operator.DECREMENT });
      assert.equal(dec1.record?.score, 7n);
      const dec2 = await submit(dl, sum, "amy", 100n, { operator: Operator.DECREMENT });
      assert.equal(dec2.record?.score, 0n, "decrement floors at the board's decrement_floor (0)");

      const floor = await create(dl, { operator: Operator.DECREMENT, decrementFloor: -3n });
      assert.equal((await submit(dl, floor, "amy", 1n)).record?.score, -1n, "from no record: 0 − 1");
      const floored = await submit(dl, floor, "amy", 5n);
      assert.deepEqual([floored.record?.score, floored.improved], [-3n, true]);
      const atFloor = await submit(dl, floor, "amy", 5n);
      assert.deepEqual([atFloor.record?.score, atFloor.improved, atFloor.record?.submissions], [-3n, false, 3n]);

      const laps = await create(dl, { sortOrder: SortOrder.ASCENDING });
      await submit(dl, laps, "amy", 50n);
      assert.equal((await submit(dl, laps, "amy", 40n)).improved, true, "lower is better on an ascending board");
      const slower = await submit(dl, laps, "amy", 45n);
      assert.deepEqual([slower.improved, slower.record?.score], [false, 40n]);
      for (const id of [best, sum, floor, laps]) await dl.leaderboard.deleteLeaderboard({ id });
    });

    test("ranks order by (score, subscore); ties break as the board says", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const write = async (id: string) => {
        await submit(dl, id, "zed", 5n);
        await submit(dl, id, "amy", 5n);
        await submit(dl, id, "bob", 7n);
        await submit(dl, id, "cat", 5n, { subscore: 1n });
        await submit(dl, id, "neg", -3n);
      };
      const order = async (board: Board) => {
        const id = await create(dl, board);
        await write(id);
        const records = await top(dl, id);
        assert.deepEqual(records.map((r) => r.rank), [1n, 2n, 3n, 4n, 5n]);
        await dl.leaderboard.deleteLeaderboard({ id });
        return owners(records);
      };
      assert.deepEqual(await order({}), ["bob", "cat", "zed", "amy", "neg"], "earliest first by default");
      assert.deepEqual(await order({ tieBreak: TieBreak.LATEST }), ["bob", "cat", "amy", "zed", "neg"]);
      assert.deepEqual(await order({ tieBreak: TieBreak.OWNER_ID }), ["bob", "cat", "amy", "zed", "neg"]);
      assert.deepEqual(await order({ sortOrder: SortOrder.ASCENDING }), ["neg", "zed", "amy", "cat", "bob"]);
      assert.deepEqual(await order({ sortOrder: SortOrder.ASCENDING, tieBreak: TieBreak.OWNER_ID }), ["neg", "amy", "zed", "cat", "bob"]);

      // A tie is broken by who reached the score, not who wrote first.
      const id = await create(dl);
      await submit(dl, id, "early", 1n);
      await submit(dl, id, "late", 9n);
      await submit(dl, id, "early", 9n);
      assert.deepEqual(owners(await top(dl, id)), ["late", "early"]);
      // Exact at the bound: 2^53 − 1 and 2^53 − 2 are told apart.
      await submit(dl, id, "max", LIMIT);
      await submit(dl, id, "almost", LIMIT - 1n);
      await submit(dl, id, "min", -LIMIT);
      assert.deepEqual(ranked(await top(dl, id)), [
        ["max", LIMIT, 1n],
        ["almost", LIMIT - 1n, 2n],
        ["late", 9n, 3n],
        ["early", 9n, 4n],
        ["min", -LIMIT, 5n],
      ]);
      await dl.leaderboard.deleteLeaderboard({ id });
    });

    test("top pages by keyset cursor: changes behind the cursor skip and repeat no one", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const id = await create(dl, { operator: Operator.SET });
      const all = ["o0", "o1", "o2", "o3", "o4", "o5", "o6"];
      for (const [i, o] of all.entries()) await submit(dl, id, o, BigInt(70 - 10 * i));
      const page1 = await dl.leaderboard.top({ leaderboardId: id, limit: 3 });
      assert.deepEqual(ranked(page1.records), [
        ["o0", 70n, 1n],
        ["o1", 60n, 2n],
        ["o2", 50n, 3n],
      ]);
      assert.notEqual(page1.nextCursor, "");
      assert.equal(page1.periodId, "0");
      // Behind the cursor: one passes another, a newcomer arrives.
      await submit(dl, id, "o2", 80n);
      await submit(dl, id, "new", 65n);
      const page2 = await dl.leaderboard.top({ leaderboardId: id, limit: 3, cursor: page1.nextCursor });
      assert.deepEqual(ranked(page2.records), [
        ["o3", 40n, 5n],
        ["o4", 30n, 6n],
        ["o5", 20n, 7n],
      ]);
      const page3 = await dl.leaderboard.top({ leaderboardId: id, limit: 3, cursor: page2.nextCursor });
      assert.deepEqual(ranked(page3.records), [["o6", 10n, 8n]]);
      assert.equal(page3.nextCursor, "", "no record follows");
      const exact = await dl.leaderboard.top({ leaderboardId: id, limit: 8 });
      assert.equal(exact.records.length, 8);
      assert.equal(exact.nextCursor, "", "a page that ends on the last record has no cursor");
      assert.deepEqual(owners((await dl.leaderboard.top({ leaderboardId: id })).records).length, 8, "limit 0: 10");
      assert.deepEqual(await badFields(dl.leaderboard.top({ leaderboardId: id, cursor: "zz" })), ["cursor"]);
      assert.deepEqual(await badFields(dl.leaderboard.top({ leaderboardId: id, limit: 1001 })), ["limit"]);
      await dl.leaderboard.deleteLeaderboard({ id });
    });

    test("aroundOwner, records, rank and deleteRecord", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const id = await create(dl);
      for (const [o, s] of [["a", 50n], ["b", 40n], ["c", 30n], ["d", 20n], ["e", 10n]] as const) {
        await submit(dl, id, o, s, { metadata: enc(`meta-${o}`) });
      }
      const around = (ownerId: string, above: number, below: number) =>
        dl.leaderboard.aroundOwner({ leaderboardId: id, ownerId, above, below });
      const mid = await around("c", 1, 1);
      assert.deepEqual([mid.found, mid.periodId], [true, "0"]);
      assert.deepEqual(ranked(mid.records), [
        ["b", 40n, 2n],
        ["c", 30n, 3n],
        ["d", 20n, 4n],
      ]);
      assert.deepEqual(ranked((await around("a", 2, 1)).records), [
        ["a", 50n, 1n],
        ["b", 40n, 2n],
      ]);
      assert.deepEqual(owners((await around("e", 1, 5)).records), ["d", "e"]);
      assert.deepEqual(owners((await around("c", 0, 0)).records), ["c"]);
      const nobody = await around("nobody", 2, 2);
      assert.deepEqual([nobody.found, nobody.records], [false, []]);

      const recs = await dl.leaderboard.records({ leaderboardId: id, ownerIds: ["e", "nobody", "a"] });
      assert.deepEqual(ranked(recs.records), [
        ["e", 10n, 5n],
        ["a", 50n, 1n],
      ]);
      assert.deepEqual(recs.records.map((r) => dec(r.metadata)), ["meta-e", "meta-a"]);
      assert.equal(recs.periodId, "0");

      const c = await dl.leaderboard.rank({ leaderboardId: id, ownerId: "c" });
      assert.deepEqual([c.found, c.record?.rank, c.record?.score, c.owners, c.periodId], [true, 3n, 30n, 5n, "0"]);
      const missing = await dl.leaderboard.rank({ leaderboardId: id, ownerId: "nobody" });
      assert.deepEqual([missing.found, missing.record, missing.owners], [false, undefined, 5n]);

      assert.equal((await dl.leaderboard.deleteRecord({ leaderboardId: id, ownerId: "b" })).deleted, true);
      assert.equal((await dl.leaderboard.deleteRecord({ leaderboardId: id, ownerId: "b" })).deleted, false);
      const after = await dl.leaderboard.rank({ leaderboardId: id, ownerId: "c" });
      assert.deepEqual([after.record?.rank, after.owners], [2n, 4n]);
      assert.deepEqual(owners(await top(dl, id)), ["a", "c", "d", "e"]);
      assert.equal((await dl.leaderboard.rank({ leaderboardId: id, ownerId: "b" })).found, false);
      const back = await submit(dl, id, "b", 1n);
      assert.deepEqual([back.previousRank, back.record?.rank, back.record?.submissions], [0n, 5n, 1n], "a deleted record starts over");

      assert.deepEqual(await badFields(dl.leaderboard.records({ leaderboardId: id, ownerIds: [] })), ["owner_ids"]);
      assert.deepEqual(await badFields(dl.leaderboard.records({ leaderboardId: id, ownerIds: ["a", ""] })), ["owner_ids[1]"]);
      assert.deepEqual(await badFields(around("c", 1001, 0)), ["above"]);
      assert.deepEqual(await badFields(around("", 1, 1)), ["owner_id"]);
      assert.deepEqual(await badFields(dl.leaderboard.rank({ leaderboardId: id, ownerId: "a", periodId: "abc" })), ["period_id"]);
      assert.deepEqual(await badFields(dl.leaderboard.deleteRecord({ leaderboardId: "", ownerId: "" })), ["leaderboard_id", "owner_id"]);
      await dl.leaderboard.deleteLeaderboard({ id });
    });

    test("listPeriods: a resetting board starts a period per tick; past periods stay readable", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const id = await create(dl, { resetCron: "* * * * * *", keepPeriods: 1 });
      /** Submits mid-period (150 to 650 ms after a tick), in a later period than `after`. */
      const submitMidPeriod = async (owner: string, score: bigint, after = "") => {
        const earliest = after ? Number(after) + 1000 : 0;
        for (;;) {
          const now = Date.now();
          const ms = now % 1000;
          if (now >= earliest && ms >= 150 && ms <= 650) break;
          await sleep(Math.max(earliest - now, ms < 150 ? 150 - ms : 1150 - ms));
        }
        const r = await submit(dl, id, owner, score);
        assert.notEqual(r.periodId, after, "a new period started on the tick");
        return r;
      };
      const p1 = (await submitMidPeriod("amy", 10n)).periodId;
      assert.match(p1, /^\d+$/);
      assert.equal(Number(p1) % 1000, 0, "a period starts on its tick");
      const p2 = (await submitMidPeriod("bob", 20n, p1)).periodId;
      assert.ok(Number(p2) > Number(p1));
      const periods = (await dl.leaderboard.listPeriods({ leaderboardId: id })).periods;
      assert.deepEqual(
        periods.map((p) => [p.id, p.owners]),
        [
          [p2, 1n],
          [p1, 1n],
        ],
        "newest first",
      );
      for (const p of periods) {
        assert.ok(p.startTime && p.endTime);
        assert.deepEqual([String(timestampMs(p.startTime)), timestampMs(p.endTime) - timestampMs(p.startTime)], [p.id, 1000]);
      }
      assert.deepEqual(owners(await top(dl, id, 10, p1)), ["amy"], "a past period is read by its id");
      assert.deepEqual(owners((await dl.leaderboard.top({ leaderboardId: id, periodId: p2 })).records), ["bob"]);
      const past = await dl.leaderboard.rank({ leaderboardId: id, ownerId: "amy", periodId: p1 });
      assert.deepEqual([past.found, past.record?.score, past.periodId], [true, 10n, p1]);

      // keep_periods 1: the current period and one past one are listed.
      const p3 = (await submitMidPeriod("cat", 30n, p2)).periodId;
      const kept = (await dl.leaderboard.listPeriods({ leaderboardId: id })).periods;
      assert.deepEqual(kept.map((p) => p.id), [p3, p2]);
      const current = (await dl.leaderboard.getLeaderboard({ id })).currentPeriod;
      if (current?.id === p3) {
        assert.deepEqual(owners(await top(dl, id)), ["cat"]);
        assert.equal((await dl.leaderboard.rank({ leaderboardId: id, ownerId: "bob" })).found, false, "bob scored last period");
      }
      assert.equal(await code(dl.leaderboard.listPeriods({ leaderboardId: boardId() })), Code.NotFound);
      await dl.leaderboard.deleteLeaderboard({ id });

      const forever = await create(dl);
      await submit(dl, forever, "amy", 1n);
      await submit(dl, forever, "bob", 2n);
      const one = (await dl.leaderboard.listPeriods({ leaderboardId: forever })).periods;
      assert.deepEqual(one.map((p) => [p.id, p.owners, p.endTime]), [["0", 2n, undefined]]);
      await dl.leaderboard.deleteLeaderboard({ id: forever });
    });

    test("watchTop: the top at once, again at a change of the top N, NOT_FOUND when the board is deleted", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const id = await create(dl);
      const abort = new AbortController();
      const watch = reader<WatchTopResponse>(dl.leaderboard.watchTop({ leaderboardId: id, limit: 2 }, { signal: abort.signal }));
      try {
        const first = await watch.next();
        assert.ok(first, `no first answer (${watch.error})`);
        assert.deepEqual([first.records, first.periodId], [[], "0"]);
        await submit(dl, id, "amy", 7n);
        assert.deepEqual(ranked((await watch.next())?.records ?? []), [["amy", 7n, 1n]]);
        await submit(dl, id, "bob", 9n);
        assert.deepEqual(ranked((await watch.next())?.records ?? []), [
          ["bob", 9n, 1n],
          ["amy", 7n, 2n],
        ]);
        await submit(dl, id, "cat", 8n);
        assert.deepEqual(owners((await watch.next())?.records ?? []), ["bob", "cat"]);

        assert.equal((await dl.leaderboard.deleteLeaderboard({ id })).deleted, true);
        assert.equal(await watch.next(), undefined);
        await watch.done;
        assert.ok(watch.error instanceof ConnectError, `the stream ended with ${watch.error}`);
        assert.equal(watch.error.code, Code.NotFound);
      } finally {
        abort.abort();
        await watch.done;
      }

      const open = async (leaderboardId: string, limit: number) => {
        const stream = reader<WatchTopResponse>(dl.leaderboard.watchTop({ leaderboardId, limit }, { timeoutMs: 5000 }));
        assert.equal(await stream.next(), undefined);
        await stream.done;
        assert.ok(stream.error instanceof ConnectError, `expected an error, got ${stream.error}`);
        return stream.error;
      };
      assert.equal((await open(id, 2)).code, Code.NotFound, "a missing board");
      const tooMany = await open(boardId(), 101);
      assert.equal(tooMany.code, Code.InvalidArgument);
      assert.deepEqual(fieldViolations(tooMany).map((v) => v.field), ["limit"]);
    });

    test("watchTop sends nothing while only records outside the top N change", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const id = await create(dl);
      await submit(dl, id, "amy", 9n);
      await submit(dl, id, "bob", 7n);
      const abort = new AbortController();
      const watch = reader<WatchTopResponse>(dl.leaderboard.watchTop({ leaderboardId: id, limit: 2 }, { signal: abort.signal }));
      try {
        assert.deepEqual(owners((await watch.next())?.records ?? []), ["amy", "bob"]);
        // A third owner, then a fourth, then both gone: the top 2 never changes.
        await submit(dl, id, "cat", 1n);
        const third = await watch.next(800);
        assert.equal(third, undefined, `a third owner below the top 2 was sent: ${third && ranked(third.records).join(" ")}`);
        await submit(dl, id, "dan", 0n);
        assert.equal(await watch.next(800), undefined);
        await dl.leaderboard.deleteRecord({ leaderboardId: id, ownerId: "cat" });
        await dl.leaderboard.deleteRecord({ leaderboardId: id, ownerId: "dan" });
        assert.equal(await watch.next(800), undefined, "records below the top 2 deleted: nothing to send");
        await submit(dl, id, "bob", 10n);
        assert.deepEqual(ranked((await watch.next())?.records ?? []), [
          ["bob", 10n, 1n],
          ["amy", 9n, 2n],
        ]);
      } finally {
        abort.abort();
        await watch.done;
        await dl.leaderboard.deleteLeaderboard({ id });
      }
    });

    test("idempotency_key: a retried submit is applied once and answered again", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const id = await create(dl, { operator: Operator.INCREMENT });
      const first = await submit(dl, id, "amy", 5n, { idempotencyKey: "k1" });
      assert.deepEqual([first.record?.score, first.replayed], [5n, false]);
      const retry = await submit(dl, id, "amy", 5n, { idempotencyKey: "k1" });
      assert.deepEqual(
        [retry.replayed, retry.record?.score, retry.record?.submissions, retry.record?.rank, retry.improved, retry.periodId],
        [true, 5n, 1n, 1n, true, first.periodId],
      );
      const changed = await submit(dl, id, "amy", 100n, { idempotencyKey: "k1" });
      assert.deepEqual([changed.replayed, changed.record?.score], [true, 5n], "the first answer, whatever the retry says");
      const rank = await dl.leaderboard.rank({ leaderboardId: id, ownerId: "amy" });
      assert.deepEqual([rank.record?.score, rank.record?.submissions], [5n, 1n], "applied once");
      const other = await submit(dl, id, "amy", 5n, { idempotencyKey: "k2" });
      assert.deepEqual([other.replayed, other.record?.score], [false, 10n]);
      const otherOwner = await submit(dl, id, "bob", 5n, { idempotencyKey: "k1" });
      assert.deepEqual([otherOwner.replayed, otherOwner.record?.score], [false, 5n], "keys are per owner");
      const noKey = await submit(dl, id, "amy", 1n);
      const noKeyAgain = await submit(dl, id, "amy", 1n);
      assert.deepEqual([noKey.replayed, noKeyAgain.replayed, noKeyAgain.record?.score], [false, false, 12n]);
      await dl.leaderboard.deleteLeaderboard({ id });
    });

    test("bad input is INVALID_ARGUMENT naming each field; missing boards NOT_FOUND; the score bound holds", async (t) => {
      if (skip(t)) return;
      const dl = client();
      const make = (leaderboard: Board & { id?: string }) => badFields(dl.leaderboard.createLeaderboard({ leaderboard: { id: boardId(), ...leaderboard } }));
      assert.deepEqual(await badFields(dl.leaderboard.createLeaderboard({})), ["leaderboard"]);
      assert.deepEqual(await make({ id: "no spaces" }), ["leaderboard.id"]);
      assert.deepEqual(await make({ id: "", keepPeriods: 101 }), ["leaderboard.id", "leaderboard.keep_periods"]);
      assert.deepEqual(await make({ resetCron: "nope" }), ["leaderboard.reset_cron"]);
      assert.deepEqual(await make({ resetCron: "0 0 * * *", timeZone: "Mars/Base" }), ["leaderboard.time_zone"]);
      assert.deepEqual(await make({ timeZone: "UTC" }), ["leaderboard.time_zone"]);
      assert.deepEqual(await make({ sortOrder: 7 as SortOrder }), ["leaderboard.sort_order"]);
      assert.deepEqual(await make({ metadata: new Uint8Array(2049) }), ["leaderboard.metadata"]);
      assert.deepEqual(await make({ decrementFloor: LIMIT + 1n }), ["leaderboard.decrement_floor"]);

      const id = await create(dl, { operator: Operator.INCREMENT });
      const sub = (more: Submission & { leaderboardId?: string }) => dl.leaderboard.submit({ leaderboardId: id, ownerId: "amy", ...more });
      assert.deepEqual(await badFields(sub({ score: LIMIT + 1n })), ["score"]);
      assert.deepEqual(await badFields(sub({ subscore: -LIMIT - 1n })), ["subscore"]);
      assert.deepEqual(await badFields(sub({ ownerId: "" })), ["owner_id"]);
      assert.deepEqual(await badFields(sub({ ownerId: "x".repeat(129) })), ["owner_id"]);
      assert.deepEqual(await badFields(sub({ operator: 9 as Operator })), ["operator"]);
      assert.deepEqual(await badFields(sub({ metadata: new Uint8Array(2049) })), ["metadata"]);
      assert.deepEqual(await badFields(sub({ idempotencyKey: "k".repeat(129) })), ["idempotency_key"]);
      assert.deepEqual(await badFields(sub({ leaderboardId: "", score: LIMIT + 1n })), ["leaderboard_id", "score"]);
      assert.deepEqual(await badFields(dl.leaderboard.getLeaderboard({ id: "" })), ["id"]);
      assert.deepEqual(await badFields(dl.leaderboard.deleteLeaderboard({ id: "a b" })), ["id"]);
      assert.deepEqual(await badFields(dl.leaderboard.listPeriods({ leaderboardId: "" })), ["leaderboard_id"]);

      // A result past ±(2^53 − 1) is refused, and the record stays exact.
      await sub({ score: LIMIT - 1n });
      assert.equal((await sub({ score: 1n })).record?.score, LIMIT);
      const over = await rejects(sub({ score: 1n }));
      assert.equal(over.code, Code.FailedPrecondition);
      const kept = await dl.leaderboard.rank({ leaderboardId: id, ownerId: "amy" });
      assert.deepEqual([kept.record?.score, kept.record?.submissions], [LIMIT, 2n], "nothing was written");

      const gone = boardId();
      for (const call of [
        () => dl.leaderboard.submit({ leaderboardId: gone, ownerId: "amy", score: 1n }),
        () => dl.leaderboard.top({ leaderboardId: gone }),
        () => dl.leaderboard.aroundOwner({ leaderboardId: gone, ownerId: "amy" }),
        () => dl.leaderboard.records({ leaderboardId: gone, ownerIds: ["amy"] }),
        () => dl.leaderboard.rank({ leaderboardId: gone, ownerId: "amy" }),
        () => dl.leaderboard.deleteRecord({ leaderboardId: gone, ownerId: "amy" }),
        () => dl.leaderboard.getLeaderboard({ id: gone }),
      ]) {
        assert.equal(await code(call()), Code.NotFound);
      }
      await dl.leaderboard.deleteLeaderboard({ id });
    });
  });
}
