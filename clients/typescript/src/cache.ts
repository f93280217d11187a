/**
 * JSON values and compute-once reads, on `CacheService` (the Python
 * client's `get_or_set` / `set_json` / `get_json`):
 *
 * ```ts
 * const report = await dl.cache.getOrSet("report:today", buildReport, { ttl: "5m", staleTtl: "1h", tags: ["reports"] });
 * await dl.cache.setJson("user:42", { name: "Ada" }, { ttl: "10m" });   // or setJson(key, value, "10m")
 * await dl.cache.getJson<{ name: string }>("user:42");                 // { name: "Ada" }; undefined when missing
 * ```
 *
 * Values are stored as compact JSON (content type `application/json`):
 * what comes back is what `JSON.parse` makes of `JSON.stringify(value)` (a
 * `Date` comes back as its ISO string, `NaN` as `null`), for the caller that
 * computed the value as for every other. A value `JSON.stringify` cannot
 * write (`undefined`, a function, a `bigint`, a cycle) is a `TypeError`
 * before anything is sent.
 *
 * `getOrSet` rides on `GetOrLease`, so that of concurrent callers missing
 * the same key (in this process or any other) exactly one computes:
 *
 * - a fresh value (`HIT`) is returned;
 * - the caller given the lease (`LEASED`) calls `compute()`, stores the
 *   result with the lease token and returns it. The store refuses that write
 *   (the value is then returned unstored) if a `Delete`, an
 *   `InvalidateTags` of one of its tags or any other write came in
 *   meanwhile, so a value computed from old data never lands late;
 * - while someone else holds the lease, a value past its `ttl` but within
 *   its `staleTtl` is returned at once (`STALE`: stale-while-revalidate);
 * - with nothing to serve (`WAIT`) the caller polls as the service says
 *   until the value is there or the lease is free, for at most `wait`
 *   (default: the lease's lifetime, 10 s). Past it, it calls `compute()`
 *   itself and returns that value without storing it.
 *
 * If `compute()` (or storing its value) throws on a miss, the lease is given
 * back (a `Delete` of the key, which held nothing) so that a waiting caller
 * takes over at once, and the error is thrown. On a stale hit the lease is
 * left to expire (the stale value keeps being served meanwhile).
 *
 * `ttl` may be left out only when the service has `cache.default_ttl`;
 * otherwise the write is refused with INVALID_ARGUMENT.
 */
import type { CallOptions, Client } from "@connectrpc/connect";
import { LeaseStatus, type CacheEntry, type CacheService, type GetOrLeaseResponse } from "./gen/datalayer/cache/v1/cache_pb.js";
import { durationInit, durationToMs, msOf, nonEmpty, show, sleepMs, type DurationLike } from "./durations.js";

/** The typed Connect client of CacheService, as `dl.cache` holds it. */
export type CacheServiceClient = Client<typeof CacheService>;

/** `dl.cache`: the CacheService client plus the JSON helpers. */
export type CacheClient = CacheServiceClient & CacheHelpers;

/** The content type of the values the helpers write. */
export const JSON_CONTENT_TYPE = "application/json";
/** The service's default lease lifetime (`cache.default_lease_ttl`): the default `wait` of `getOrSet`. */
const DEFAULT_WAIT_MS = 10_000;
/** The shortest poll of a waiting `getOrSet`. */
const MIN_POLL_MS = 10;

export interface CacheCallOptions {
  /** Ends the call (and a waiting `getOrSet`) with the abort. */
  signal?: AbortSignal;
  /** The deadline of each call (default: the client's). */
  timeoutMs?: number;
}

export interface JsonWriteOptions extends CacheCallOptions {
  /** Fresh period (`"10m"`, ms). Left out: the service's `cache.default_ttl`. */
  ttl?: DurationLike;
  /** Extra period after `ttl` during which the value is served as stale. */
  staleTtl?: DurationLike;
  /** Tags for `invalidateTags` (at most 16). */
  tags?: string[];
}

export interface GetOrSetOptions extends JsonWriteOptions {
  /** How long the computing caller holds the lease (default: `cache.default_lease_ttl`, 10 s); longer than `compute()` takes. */
  leaseTtl?: DurationLike;
  /** How long a caller waits for someone else's value before computing it itself (default: `leaseTtl`, or 10 s). */
  wait?: DurationLike;
}

export interface CacheHelpers {
  /** The JSON value of `key`, fresh or stale; `undefined` when there is none. A stored non-JSON value is a `SyntaxError`. */
  getJson<T = unknown>(key: string, options?: CacheCallOptions): Promise<T | undefined>;
  /** Stores `value` as JSON under `key` (options, or the `ttl` alone); resolves to the entry's new version. */
  setJson(key: string, value: unknown, options?: DurationLike | JsonWriteOptions): Promise<number>;
  /** The JSON value of `key`, computed by `compute()` and stored by exactly one of the callers that miss it at once (see the module). */
  getOrSet<T>(key: string, compute: () => T | Promise<T>, options?: DurationLike | GetOrSetOptions): Promise<T>;
}

function encode(value: unknown): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (e) {
    throw new TypeError(`the cache helpers store JSON: ${(e as Error).message}`, { cause: e });
  }
  if (text === undefined) throw new TypeError(`the cache helpers store JSON: ${show(value)} has no JSON form`);
  return text;
}

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

function decode(key: string, entry: CacheEntry | undefined): unknown {
  const text = fromUtf8.decode(entry?.value ?? new Uint8Array());
  try {
    return JSON.parse(text);
  } catch (e) {
    const kind = entry?.contentType ? ` (${entry.contentType})` : "";
    throw new SyntaxError(`cache entry ${JSON.stringify(key)}${kind} is not JSON: ${(e as Error).message}`, { cause: e });
  }
}

function callOptions(options: CacheCallOptions): CallOptions {
  const out: CallOptions = {};
  if (options.signal) out.signal = options.signal;
  if (options.timeoutMs !== undefined) out.timeoutMs = options.timeoutMs;
  return out;
}

function optionsOf<O extends JsonWriteOptions>(options: DurationLike | O | undefined): O {
  if (options === undefined) return {} as O;
  if (typeof options === "string" || typeof options === "number") return { ttl: options } as O;
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`options must be a ttl ("10m", ms) or an object, got ${show(options)}`);
  }
  return options;
}

/** A validated write: everything checked before the first call. */
function writeOf(options: JsonWriteOptions) {
  const tags = options.tags ?? [];
  if (!Array.isArray(tags)) throw new TypeError(`tags must be an array of strings, got ${show(tags)}`);
  for (const t of tags) if (typeof t !== "string") throw new TypeError(`tags must be strings, got ${show(t)}`);
  return {
    contentType: JSON_CONTENT_TYPE,
    tags: [...tags],
    ...(options.ttl === undefined ? {} : { ttl: durationInit(durationToMs(options.ttl, "ttl", true)) }),
    ...(options.staleTtl === undefined ? {} : { staleTtl: durationInit(durationToMs(options.staleTtl, "staleTtl")) }),
  };
}

/** The JSON helpers on `rpc` (what `dl.cache` adds to the generated client). */
export function cacheHelpers(rpc: CacheServiceClient): CacheHelpers {
  async function giveBack(key: string, call: CallOptions) {
    try {
      await rpc.delete({ key }, call);
    } catch {
      // the lease then expires on its own
    }
  }

  return {
    async getJson<T>(key: string, options: CacheCallOptions = {}) {
      nonEmpty(key, "a cache key");
      const answer = await rpc.get({ key }, callOptions(options));
      return answer.found ? (decode(key, answer.entry) as T) : undefined;
    },

    async setJson(key, value, options) {
      nonEmpty(key, "a cache key");
      const opts = optionsOf<JsonWriteOptions>(options);
      const write = writeOf(opts);
      const data = utf8.encode(encode(value));
      const answer = await rpc.set({ key, value: data, ...write }, callOptions(opts));
      return Number(answer.version);
    },

    async getOrSet<T>(key: string, compute: () => T | Promise<T>, options?: DurationLike | GetOrSetOptions): Promise<T> {
      nonEmpty(key, "a cache key");
      if (typeof compute !== "function") throw new TypeError(`compute must be a function, got ${show(compute)}`);
      const opts = optionsOf<GetOrSetOptions>(options);
      const write = writeOf(opts);
      const leaseMs = opts.leaseTtl === undefined ? undefined : durationToMs(opts.leaseTtl, "leaseTtl", true);
      const waitMs = opts.wait !== undefined ? durationToMs(opts.wait, "wait") : (leaseMs ?? DEFAULT_WAIT_MS);
      const call = callOptions(opts);
      const request = { key, ...(leaseMs === undefined ? {} : { leaseTtl: durationInit(leaseMs) }) };
      const deadline = Date.now() + waitMs;
      for (;;) {
        const answer: GetOrLeaseResponse = await rpc.getOrLease(request, call);
        if (answer.status === LeaseStatus.HIT || answer.status === LeaseStatus.STALE) {
          return decode(key, answer.entry) as T;
        }
        if (answer.status === LeaseStatus.LEASED) {
          let data: string;
          try {
            data = encode(await compute());
            await rpc.set({ key, value: utf8.encode(data), leaseToken: answer.leaseToken, ...write }, call);
          } catch (e) {
            if (!answer.entry) await giveBack(key, call);
            throw e;
          }
          return JSON.parse(data) as T;
        }
        const left = deadline - Date.now();
        if (left <= 0) return JSON.parse(encode(await compute())) as T;
        await sleepMs(Math.min(Math.max(msOf(answer.retryAfter), MIN_POLL_MS), left), opts.signal);
      }
    },
  };
}

/** Adds the JSON helpers to `dl.cache`'s client (in place). */
export function withCacheHelpers(rpc: CacheServiceClient): CacheClient {
  return Object.assign(rpc, cacheHelpers(rpc));
}
