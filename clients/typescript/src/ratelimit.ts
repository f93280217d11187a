/**
 * Rate limiters made once and used per caller id, on `RateLimitService`
 * (the Python client's `client.ratelimit.sliding_window(...)` family):
 *
 * ```ts
 * const limiter = dl.ratelimit.slidingWindow(10, "10s");   // 10 per rolling 10 s
 * const r = await limiter.limit("user:42");                 // spends 1 unit if it fits
 * if (!r.success) return res.status(429).set("Retry-After", String(Math.ceil(r.retryAfterMs! / 1000))).end();
 *
 * const login = dl.ratelimit.policy("auth");                // ratelimit.policies.auth of the server
 * await login.blockUntilReady("ip:203.0.113.7", "5s");      // waits up to 5 s for room
 *
 * const tokens = dl.ratelimit.gcra(10_000, "1m", { prefix: "tokens" });
 * await tokens.report("user:42", used);                     // usage known afterwards; may overdraw
 * const r = await tokens.reserve("user:42", 4000);          // an estimate first...
 * await tokens.settle("user:42", r.reservation, used);      // ...then the real cost: the rest comes back
 *
 * const perMinute = dl.ratelimit.gcra(10, "1m", { prefix: "minute" });
 * const perDay = dl.ratelimit.gcra(1000, "1d", { prefix: "day" });
 * const all = await dl.ratelimit.limitAll("user:42", [perMinute, perDay]); // both spend, or neither
 * ```
 *
 * A limiter only describes the limit (nothing is sent when it is made):
 * every call is one `Check`, `Report` or `Reset` (`limitAll`: one
 * `CheckBatch`), atomic on the service, so one limiter may serve any number
 * of concurrent requests and processes. Being over the limit is an answer
 * (`success: false`), not an exception.
 * Arguments are checked before anything is sent (`TypeError` for a wrong
 * type, `RangeError` for a bad value: a malformed duration, a negative or
 * fractional count, an empty id).
 *
 * State is kept per id, per scope (each policy, or *inline*) and per
 * algorithm: two inline limiters of the same algorithm with different
 * numbers share an id's state. Give each a `prefix`
 * (`slidingWindow(100, "1h", { prefix: "hourly" })`) to keep them apart.
 */
import type { CallOptions, Client } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  FailMode,
  Reason,
  type CheckBatchResponse,
  type CheckRequestSchema,
  type CheckResponse,
  type LimitSchema,
  type RateLimitService,
  type ReportResponse,
  SettleResult as SettleResultCode,
  type SettleResponse,
} from "./gen/datalayer/ratelimit/v1/ratelimit_pb.js";
import { count, durationInit, durationToMs, msOf, nonEmpty, show, sleepMs, type DurationLike } from "./durations.js";

/** The typed Connect client of RateLimitService, as `dl.ratelimit` holds it. */
export type RateLimitServiceClient = Client<typeof RateLimitService>;

/** `dl.ratelimit`: the RateLimitService client plus the limiter factories. */
export type RateLimitClient = RateLimitServiceClient & RateLimiters;

/** Why a check answered as it did (`ratelimit.v1.Reason`, lower-cased, as the Python client). */
export type LimitReason =
  | "within_limit"
  | "over_limit"
  | "cost_exceeds_limit"
  | "fail_open"
  | "batch_rejected"
  | "shadow_over_limit"
  | "unspecified";

const REASONS: Record<number, LimitReason> = {
  [Reason.WITHIN_LIMIT]: "within_limit",
  [Reason.OVER_LIMIT]: "over_limit",
  [Reason.COST_EXCEEDS_LIMIT]: "cost_exceeds_limit",
  [Reason.FAIL_OPEN]: "fail_open",
  [Reason.BATCH_REJECTED]: "batch_rejected",
  [Reason.SHADOW_OVER_LIMIT]: "shadow_over_limit",
};

/**
 * The answer of one check: plain numbers, JSON-serialisable as it is.
 */
export interface LimitResult {
  /** The cost fitted and was spent (always true for a `cost: 0` look, and for reason `"fail_open"` or `"shadow_over_limit"`, which spend nothing). */
  success: boolean;
  /** The limit that applied: units per window / period, or the bucket's capacity. */
  limit: number;
  /** Units left right after this check. */
  remaining: number;
  /** When the id is back to its full budget, in Unix ms (`Date.now()` of this side when the answer came, plus `resetAfterMs`; Upstash's `reset`). */
  resetAt: number;
  /** Time until the full budget is back, in ms, as the service said. */
  resetAfterMs: number;
  /** When refused: ms until the same cost would fit. `undefined` when allowed (but for `"shadow_over_limit"`), and when the cost can never fit (`"cost_exceeds_limit"`). */
  retryAfterMs: number | undefined;
  /**
   * `"within_limit"`, `"over_limit"`, `"cost_exceeds_limit"`, `"fail_open"` (the store was unreachable and the
   * limit fails open), `"batch_rejected"` (`limitAll`: this limit had room, but another of the call did not, so
   * none spent) or `"shadow_over_limit"` (a policy in shadow mode, `shadow_mode = true`, would have refused:
   * allowed, nothing spent; `remaining` and `retryAfterMs` say what the limit would have answered).
   */
  reason: LimitReason;
}

/** The answer of {@link RateLimiter.report}: plain numbers, JSON-serialisable as it is. */
export interface ReportResult {
  /** The limit that applied. */
  limit: number;
  /** Units left after the report (0 when overdrawn). */
  remaining: number;
  /** When the id is back to its full budget, in Unix ms (this side's clock plus `resetAfterMs`). */
  resetAt: number;
  /** Time until the full budget is back, in ms, as the service said. */
  resetAfterMs: number;
  /** The cost did not fit: it was spent all the same, so checks are refused until the budget refills (their `retryAfterMs` says when). */
  overdrawn: boolean;
}

/** The answer of {@link RateLimiter.reserve}: a {@link LimitResult} and, when it spent, the reservation to settle. */
export interface ReserveResult extends LimitResult {
  /** Pass it to {@link RateLimiter.settle} with the real cost; `""` when nothing was spent (refused, or failed open). */
  reservation: string;
}

/** How a settle went (`ratelimit.v1.SettleResult`, lower-cased). */
export type SettleOutcome = "settled" | "already_settled" | "expired" | "unspecified";

const SETTLED: Record<number, SettleOutcome> = {
  [SettleResultCode.SETTLED]: "settled",
  [SettleResultCode.ALREADY_SETTLED]: "already_settled",
  [SettleResultCode.EXPIRED]: "expired",
};

/** The answer of {@link RateLimiter.settle}: as {@link ReportResult}, after settling, with the outcome. */
export interface SettleResult extends ReportResult {
  /**
   * `"settled"` (now: the unused units came back, or those above the reservation were spent), `"already_settled"`
   * (nothing changed) or `"expired"` (the reservation no longer counted: nothing came back; units above it were
   * still spent).
   */
  outcome: SettleOutcome;
}

/** The answer of {@link RateLimiters.limitAll}: plain values, JSON-serialisable as it is. */
export interface LimitAllResult {
  /** Every limit had room, and each spent the cost; when false, none spent anything. */
  success: boolean;
  /**
   * One result per limiter, in the order given. When refused, the limits without room answer as alone
   * (`"over_limit"` with their `retryAfterMs`, or `"cost_exceeds_limit"`), those with room `"batch_rejected"`
   * (`success: false`, `remaining` unchanged, no `retryAfterMs`).
   */
  results: LimitResult[];
  /** When refused: ms until every limit that had no room would fit the cost again (the largest `retryAfterMs`); `undefined` when allowed, and when a cost can never fit. */
  retryAfterMs: number | undefined;
}

export interface LimiterOptions {
  /** While the store is unreachable, checks succeed with reason `"fail_open"` (default: they throw UNAVAILABLE). Inline limits only: a policy has its own. */
  failOpen?: boolean;
  /** Ids become `"<prefix>:<id>"`, to keep limiters of the same algorithm apart. */
  prefix?: string;
}

export interface LimitOptions {
  /** Units to spend (default 1); 0 only looks. A whole number. */
  cost?: number;
  /** Ends the wait of `blockUntilReady` (and the call in flight) with the abort. */
  signal?: AbortSignal;
  /** The deadline of each call (default: the client's). */
  timeoutMs?: number;
}

/** `blockUntilReady` sleeps this much past the service's `retryAfter`, which is exact on the store's clock. */
const RETRY_MARGIN_MS = 2;

type LimitInit = MessageInitShape<typeof LimitSchema>;
type CheckInit = MessageInitShape<typeof CheckRequestSchema>;
type Source = { case: "limit"; value: LimitInit } | { case: "policy"; value: string };

/** The answer of a `CheckResponse`, with this side's clock for `resetAt`. */
export function limitResult(answer: CheckResponse): LimitResult {
  const resetAfterMs = msOf(answer.resetAfter);
  return {
    success: answer.allowed,
    limit: Number(answer.limit),
    remaining: Number(answer.remaining),
    resetAt: Date.now() + resetAfterMs,
    resetAfterMs,
    retryAfterMs: answer.retryAfter ? msOf(answer.retryAfter) : undefined,
    reason: REASONS[answer.reason] ?? "unspecified",
  };
}

/** The answer of a `ReportResponse`, with this side's clock for `resetAt`. */
export function reportResult(answer: ReportResponse): ReportResult {
  const resetAfterMs = msOf(answer.resetAfter);
  return {
    limit: Number(answer.limit),
    remaining: Number(answer.remaining),
    resetAt: Date.now() + resetAfterMs,
    resetAfterMs,
    overdrawn: answer.overdrawn,
  };
}

/** The answer of an all-or-nothing `CheckBatchResponse`. */
export function limitAllResult(answer: CheckBatchResponse): LimitAllResult {
  const results = answer.results.map(limitResult);
  const success = results.every((r) => r.success);
  const waits = success ? [] : results.filter((r) => !r.success && r.reason !== "batch_rejected").map((r) => r.retryAfterMs);
  const retryAfterMs = waits.length > 0 && waits.every((w) => w !== undefined) ? Math.max(...(waits as number[])) : undefined;
  return { success, results, retryAfterMs };
}

/** The Check of `limiter` for `id` (set in RateLimiter's static block: it reads the limiter's private fields). */
let checkOf: (limiter: RateLimiter, id: string, cost: number) => CheckInit;

function costOf(options: LimitOptions): number {
  return options.cost === undefined ? 1 : count(options.cost, "cost", 0);
}

function callOptions(options: LimitOptions): CallOptions {
  const out: CallOptions = {};
  if (options.signal) out.signal = options.signal;
  if (options.timeoutMs !== undefined) out.timeoutMs = options.timeoutMs;
  return out;
}

/** A limit, applied per id; made by `dl.ratelimit.slidingWindow(...)` and its siblings. */
export class RateLimiter {
  readonly #rpc: RateLimitServiceClient;
  readonly #source: Source;
  readonly #prefix: string;
  /** What the limiter applies, e.g. `sliding_window(limit=10, window=10000ms)` or `policy("auth")`. */
  readonly description: string;

  static {
    checkOf = (limiter, id, cost) => ({ key: limiter.key(id), cost: BigInt(cost), limitSource: limiter.#source });
  }

  constructor(rpc: RateLimitServiceClient, source: Source, prefix: string | undefined, description: string) {
    if (prefix !== undefined && typeof prefix !== "string") throw new TypeError(`prefix must be a string, got ${show(prefix)}`);
    this.#rpc = rpc;
    this.#source = source;
    this.#prefix = prefix ?? "";
    this.description = description + (prefix ? `, prefix=${JSON.stringify(prefix)}` : "");
  }

  /** The key `id` is limited under (`"<prefix>:<id>"` with a prefix). */
  key(id: string): string {
    nonEmpty(id, "a rate-limit id");
    return this.#prefix ? `${this.#prefix}:${id}` : id;
  }

  /** Spends `cost` units (default 1) of `id`'s budget if they fit; a refused check spends nothing. `cost: 0` only looks. */
  async limit(id: string, options: LimitOptions = {}): Promise<LimitResult> {
    const key = this.key(id);
    const cost = costOf(options);
    const answer = await this.#rpc.check({ key, cost: BigInt(cost), limitSource: this.#source }, callOptions(options));
    return limitResult(answer);
  }

  /**
   * {@link limit}, tried again after each refusal's `retryAfterMs` for as long
   * as the next try would still be within `timeout` (`"5s"` or ms). Resolves
   * to the first success, or to the last refusal: when the time is up, or at
   * once when the cost can never fit (reason `"cost_exceeds_limit"`).
   */
  async blockUntilReady(id: string, timeout: DurationLike, options: LimitOptions = {}): Promise<LimitResult> {
    const deadline = Date.now() + durationToMs(timeout, "timeout");
    this.key(id);
    costOf(options);
    for (;;) {
      const result = await this.limit(id, options);
      if (result.success || result.retryAfterMs === undefined) return result;
      if (Date.now() + result.retryAfterMs > deadline) return result;
      await sleepMs(Math.min(result.retryAfterMs + RETRY_MARGIN_MS, Math.max(0, deadline - Date.now())), options.signal);
    }
  }

  /** Units `id` could spend now, spending none (a `cost: 0` check). */
  async remaining(id: string, options: Omit<LimitOptions, "cost"> = {}): Promise<number> {
    return (await this.limit(id, { ...options, cost: 0 })).remaining;
  }

  /**
   * Records `cost` units (a whole number, at least 1) that `id` has already used, such as an LLM answer's tokens,
   * known only afterwards. They are spent whether or not they fit, so the budget may be overdrawn
   * (`overdrawn: true`; up to 100 times the limit per report): later checks are then refused until it has
   * refilled. Check first with the expected cost, or with `cost: 0` to only look.
   */
  async report(id: string, cost: number, options: Omit<LimitOptions, "cost"> = {}): Promise<ReportResult> {
    const key = this.key(id);
    const units = count(cost, "cost", 1);
    const answer = await this.#rpc.report({ key, cost: BigInt(units), limitSource: this.#source }, callOptions(options));
    return reportResult(answer);
  }

  /**
   * {@link limit} with an estimate (an LLM call's most tokens): when it spends, `reservation` is set; settle it
   * with the real cost afterwards ({@link settle}).
   */
  async reserve(id: string, cost: number, options: Omit<LimitOptions, "cost"> = {}): Promise<ReserveResult> {
    const key = this.key(id);
    const units = count(cost, "cost", 0);
    const answer = await this.#rpc.check({ key, cost: BigInt(units), limitSource: this.#source, reserve: true }, callOptions(options));
    return { ...limitResult(answer), reservation: answer.reservation };
  }

  /**
   * Ends a {@link reserve} with the `cost` actually used (a whole number, 0 or more): less gives the rest back
   * (never more than the reservation still holds back), more spends the difference whether or not it fits (as
   * {@link report}). Settling again changes nothing.
   */
  async settle(id: string, reservation: string, cost: number, options: Omit<LimitOptions, "cost"> = {}): Promise<SettleResult> {
    const key = this.key(id);
    nonEmpty(reservation, "a reservation");
    const units = count(cost, "cost", 0);
    const answer: SettleResponse = await this.#rpc.settle({ key, reservation, cost: BigInt(units), limitSource: this.#source }, callOptions(options));
    const resetAfterMs = msOf(answer.resetAfter);
    return {
      outcome: SETTLED[answer.result] ?? "unspecified",
      limit: Number(answer.limit),
      remaining: Number(answer.remaining),
      resetAt: Date.now() + resetAfterMs,
      resetAfterMs,
      overdrawn: answer.overdrawn,
    };
  }

  /** Forgets `id`'s state under this limit: its full budget is back. */
  async reset(id: string, options: Omit<LimitOptions, "cost"> = {}): Promise<void> {
    await this.#rpc.reset({ key: this.key(id), limitSource: this.#source }, callOptions(options));
  }
}

/** The limiter factories of `dl.ratelimit`. Durations are `"10s"`, `"1 m"`, `"500ms"` or a number of ms. */
export interface RateLimiters {
  /** At most `limit` per rolling `window`, estimated from the current and the previous fixed window. */
  slidingWindow(limit: number, window: DurationLike, options?: LimiterOptions): RateLimiter;
  /** At most `limit` per `window`, windows aligned to the store's clock. */
  fixedWindow(limit: number, window: DurationLike, options?: LimiterOptions): RateLimiter;
  /** A bucket of `capacity` tokens (full at first), refilled with `refillAmount` tokens every `refillInterval` (Upstash's `tokenBucket(refillRate, interval, maxTokens)` order). */
  tokenBucket(refillAmount: number, refillInterval: DurationLike, capacity: number, options?: LimiterOptions): RateLimiter;
  /** `limit` per `period`, evenly spaced, with bursts of up to `limit` (exact retry times). */
  gcra(limit: number, period: DurationLike, options?: LimiterOptions): RateLimiter;
  /** The limit configured as `ratelimit.policies.<name>` on the service; an unknown name is INVALID_ARGUMENT at the first call. */
  policy(name: string, options?: Omit<LimiterOptions, "failOpen">): RateLimiter;
  /**
   * Spends `cost` units (default 1) of `id`'s budget under every limiter of `limiters` (e.g. 10 per minute and
   * 1000 per day), or under none: one `CheckBatch` with `allOrNothing`, atomic on the service. `success` is true
   * when all had room; otherwise nothing was spent, and `results` (one per limiter, in order) say which had none.
   *
   * One id under several limiters always works, on Redis Cluster too (a key's states share its hash slot). The
   * limiters must differ: two inline limiters of one algorithm need different `prefix`es (the service refuses a
   * repeated key and limit with INVALID_ARGUMENT).
   */
  limitAll(id: string, limiters: readonly RateLimiter[], options?: LimitOptions): Promise<LimitAllResult>;
}

function failMode(options: LimiterOptions): FailMode {
  if (options.failOpen !== undefined && typeof options.failOpen !== "boolean") {
    throw new TypeError(`failOpen must be a boolean, got ${show(options.failOpen)}`);
  }
  return options.failOpen ? FailMode.OPEN : FailMode.CLOSED;
}

/** The limiter factories on `rpc` (what `dl.ratelimit` adds to the generated client). */
export function rateLimiters(rpc: RateLimitServiceClient): RateLimiters {
  const windowed =
    (algorithm: "slidingWindow" | "fixedWindow", label: string) =>
    (limit: number, window: DurationLike, options: LimiterOptions = {}) => {
      const n = count(limit, "limit", 1);
      const ms = durationToMs(window, "window", true);
      const value: LimitInit = { algorithm: { case: algorithm, value: { limit: BigInt(n), window: durationInit(ms) } }, failMode: failMode(options) };
      return new RateLimiter(rpc, { case: "limit", value }, options.prefix, `${label}(limit=${n}, window=${ms}ms)`);
    };
  return {
    slidingWindow: windowed("slidingWindow", "sliding_window"),
    fixedWindow: windowed("fixedWindow", "fixed_window"),
    tokenBucket(refillAmount, refillInterval, capacity, options = {}) {
      const refill = count(refillAmount, "refillAmount", 1);
      const ms = durationToMs(refillInterval, "refillInterval", true);
      const cap = count(capacity, "capacity", 1);
      if (refill > cap) throw new RangeError(`refillAmount (${refill}) must not exceed capacity (${cap})`);
      const value: LimitInit = {
        algorithm: {
          case: "tokenBucket",
          value: { capacity: BigInt(cap), refillAmount: BigInt(refill), refillInterval: durationInit(ms) },
        },
        failMode: failMode(options),
      };
      const what = `token_bucket(refill_amount=${refill}, refill_interval=${ms}ms, capacity=${cap})`;
      return new RateLimiter(rpc, { case: "limit", value }, options.prefix, what);
    },
    gcra(limit, period, options = {}) {
      const n = count(limit, "limit", 1);
      const ms = durationToMs(period, "period", true);
      const value: LimitInit = { algorithm: { case: "gcra", value: { limit: BigInt(n), period: durationInit(ms) } }, failMode: failMode(options) };
      return new RateLimiter(rpc, { case: "limit", value }, options.prefix, `gcra(limit=${n}, period=${ms}ms)`);
    },
    policy(name, options = {}) {
      nonEmpty(name, "a policy name");
      return new RateLimiter(rpc, { case: "policy", value: name }, options.prefix, `policy(${JSON.stringify(name)})`);
    },
    async limitAll(id, limiters, options = {}) {
      if (!Array.isArray(limiters)) throw new TypeError(`limiters must be an array of RateLimiter, got ${show(limiters)}`);
      if (limiters.length === 0) throw new RangeError("limitAll needs at least one limiter");
      for (const l of limiters) {
        if (!(l instanceof RateLimiter)) throw new TypeError(`limiters must be RateLimiter objects, got ${show(l)}`);
      }
      const cost = costOf(options);
      const checks = limiters.map((l) => checkOf(l, id, cost));
      const answer = await rpc.checkBatch({ checks, allOrNothing: true }, callOptions(options));
      return limitAllResult(answer);
    },
  };
}

/** Adds the limiter factories to `dl.ratelimit`'s client (in place). */
export function withRateLimiters(rpc: RateLimitServiceClient): RateLimitClient {
  return Object.assign(rpc, rateLimiters(rpc));
}
