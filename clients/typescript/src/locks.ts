/**
 * Locks with fencing tokens and leader election, on StateService's
 * `acquireLock` / `renewLock` / `releaseLock`. Reached as `dl.state.lock(...)`,
 * `dl.state.withLock(...)` and `dl.state.leader(...)`:
 *
 * ```ts
 * await using lease = await dl.state.lock("trader-leader", { ttl: "10s", wait: "5s" });
 * await trade({ fencingToken: lease.fencingToken, signal: lease.signal });
 * // released when the scope ends; throws LockNotAcquiredError if not held within 5 s
 *
 * for await (const term of dl.state.leader("trader", { ttl: "10s", signal })) {
 *   await leadUntil(term.signal); // aborted when leadership is lost
 * }
 * ```
 *
 * A {@link Lease} renews itself in the background (an unref'd `setInterval`,
 * every `renewEvery`, default `ttl / 3`) and is *lost* when a renewal is
 * refused (FAILED_PRECONDITION "lock lost": it expired, or someone holding
 * its lease id released it) or when its time runs out before a renewal got
 * through (the service may have handed the lock to someone else by then).
 * That time is counted on this side from before each successful call was
 * sent, so `lease.lost` turns true no later than the service frees the lock.
 * When lost: `lease.signal` is aborted (with a {@link LockLostError}) and
 * `onLost` runs, once.
 *
 * What a lease does *not* do: stop this process from acting after it was
 * lost. A holder that was paused (GC, a stopped VM, a slow network) can act
 * on a lock it no longer holds before it notices. The fencing token is the
 * protection: it strictly increases with every acquisition, so a system the
 * holder writes to can refuse a write carrying a smaller token than one it
 * has seen. Only systems that check the token are protected.
 *
 * Durations (`ttl`, `wait`, `renewEvery`) are strings such as `"10s"`,
 * `"500ms"`, `"1m"`, `"1h30m"` (units `ns`, `us`, `ms`, `s`, `m`, `h`), or
 * numbers of **milliseconds** (as `setTimeout` and this client's `timeoutMs`).
 */
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { durationFromMs, durationMs } from "@bufbuild/protobuf/wkt";
import type { AcquireLockResponse, StateService } from "./gen/datalayer/state/v1/state_pb.js";

/** A duration: `"10s"`, `"500ms"`, `"1m"`, ... or a number of milliseconds. */
export type DurationLike = string | number;

/** The typed Connect client of StateService, as `dl.state` holds it. */
export type StateServiceClient = Client<typeof StateService>;

/** `dl.state`: the StateService client plus the lock helpers. */
export type StateClient = StateServiceClient & StateLocks;

/** A waiting acquisition asks the service to wait at most this long per call
 * (the service bounds one call's wait by `state.max_lock_wait`, 30 s by
 * default) and calls again until its own `wait` is over. */
export const WAIT_PER_CALL_MS = 2000;
/** After a failed renewal, the next try comes at least this soon. */
const MIN_RETRY_MS = 50;
const CAMPAIGN_BACKOFF_MS = [100, 2000] as const;

const UNITS: Record<string, number> = { ns: 1e-6, us: 1e-3, "µs": 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const PART = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/y;

/**
 * A duration in milliseconds: a number (milliseconds), or a string of one or
 * more `<number><unit>` parts (`"10s"`, `"500ms"`, `"1m30s"`). Strings
 * without a unit, negative and non-finite values are refused (`RangeError`);
 * `Infinity` is accepted where `allowInfinite` (a wait without limit).
 */
export function parseDurationMs(value: DurationLike, what = "duration", allowInfinite = false): number {
  let ms: number;
  if (typeof value === "number") {
    ms = value;
  } else if (typeof value === "string") {
    const text = value.trim();
    ms = 0;
    PART.lastIndex = 0;
    let pos = 0;
    for (let m = PART.exec(text); m; m = PART.exec(text)) {
      ms += Number(m[1]) * UNITS[m[2]];
      pos = PART.lastIndex;
    }
    if (pos !== text.length || text.length === 0) {
      throw new RangeError(`${what} must be a duration such as "10s", "500ms" or "1m", got ${JSON.stringify(value)}`);
    }
  } else {
    throw new TypeError(`${what} must be a string such as "10s" or a number of milliseconds, got ${String(value)}`);
  }
  if (Number.isNaN(ms) || ms < 0 || (!Number.isFinite(ms) && !allowInfinite)) {
    throw new RangeError(`${what} must be a finite, non-negative duration, got ${String(value)}`);
  }
  return ms;
}

/** A lock helper could not give or keep a lease; `lockName` is the lock's. */
export class LockError extends Error {
  constructor(
    message: string,
    readonly lockName: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** The lock stayed held by another lease for the whole `wait`. `retryAfterMs`:
 * time until that lease ends, as the service said (it may be renewed). */
export class LockNotAcquiredError extends LockError {
  constructor(
    message: string,
    lockName: string,
    readonly retryAfterMs: number | undefined,
  ) {
    super(message, lockName);
  }
}

/** The lease no longer holds (or may no longer hold) the lock: a renewal was
 * refused ("lock lost") or its time ran out first. Stop acting as the holder. */
export class LockLostError extends LockError {
  constructor(
    message: string,
    lockName: string,
    readonly fencingToken: bigint,
  ) {
    super(message, lockName);
  }
}

export interface LockOptions {
  /** How long the lease holds without a renewal, e.g. `"10s"`. */
  ttl: DurationLike;
  /** How long to wait while another lease holds it (default 0: try once;
   * `Infinity`: without limit); past it, {@link LockNotAcquiredError}. */
  wait?: DurationLike;
  /** The renewal interval (default `ttl / 3`). */
  renewEvery?: DurationLike;
  /** Called once when the lease is lost (after `lease.signal` aborts). */
  onLost?: (lease: Lease, error: LockLostError) => void;
  /** Gives up waiting for the lock (the call rejects with the abort). */
  signal?: AbortSignal;
}

export interface LeaderOptions {
  /** How long a term's lease holds without a renewal, e.g. `"10s"`. */
  ttl: DurationLike;
  /** The renewal interval (default `ttl / 3`). */
  renewEvery?: DurationLike;
  /** Called once when a term's lease is lost. */
  onLost?: (lease: Lease, error: LockLostError) => void;
  /** Ends the campaign: the iteration ends (releasing the current term at
   * the next step of the loop). */
  signal?: AbortSignal;
}

/** The lock helpers of `dl.state`. */
export interface StateLocks {
  /**
   * Takes lock `name`: a renewing {@link Lease}, to release (or
   * `await using lease = await dl.state.lock(...)`). Rejects with
   * {@link LockNotAcquiredError} when another lease held it for all of `wait`.
   */
  lock(name: string, options: LockOptions): Promise<Lease>;
  /** Runs `fn` holding lock `name`, then releases it (also when `fn` throws). */
  withLock<T>(name: string, options: LockOptions, fn: (lease: Lease) => Promise<T> | T): Promise<T>;
  /**
   * Leader election on lock `name`: this process's terms as leader, one
   * {@link Lease} each.
   *
   * ```ts
   * for await (const term of dl.state.leader("trader", { ttl: "10s", signal })) {
   *   await leadUntil(term.signal); // return when it aborts: leadership is lost
   * }
   * ```
   *
   * Each step waits, without limit, until this process holds the lock; it
   * leads until the term is lost (`term.signal` aborts, `term.lost`,
   * `term.check()`). Leadership is not taken from the loop's body: it must
   * watch the term and return when it is lost; the loop then releases the
   * term (if still held) and campaigns again, so returning early hands
   * leadership over. `break` (or `return`, or a throw) releases the current
   * term; `signal` ends a campaign. UNAVAILABLE / DEADLINE_EXCEEDED while
   * campaigning are retried with backoff; other errors are thrown.
   */
  leader(name: string, options: LeaderOptions): AsyncGenerator<Lease, void, undefined>;
}

const now = () => performance.now();

interface Resolved {
  name: string;
  ttlMs: number;
  waitMs: number;
  renewEveryMs: number;
  callTimeoutMs: number;
}

function resolve(
  name: string,
  options: LockOptions | LeaderOptions,
  wait: DurationLike | undefined,
  callTimeoutMs: number,
): Resolved {
  if (typeof name !== "string" || name.length === 0) {
    throw new TypeError(`a lock name must be a non-empty string, got ${String(name)}`);
  }
  const ttlMs = parseDurationMs(options.ttl, "ttl");
  if (ttlMs <= 0) throw new RangeError(`ttl must be positive, got ${String(options.ttl)}`);
  const renewEveryMs = options.renewEvery === undefined ? ttlMs / 3 : parseDurationMs(options.renewEvery, "renewEvery");
  if (renewEveryMs <= 0) throw new RangeError(`renewEvery must be positive, got ${String(options.renewEvery)}`);
  return { name, ttlMs, waitMs: parseDurationMs(wait ?? 0, "wait", true), renewEveryMs, callTimeoutMs };
}

const lostMessage = (name: string, why: string) => `lock ${name} lost: ${why}; stop acting as its holder`;
const RAN_OUT = "the lease ran out before it could be renewed";

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((done) => {
    const timer = setTimeout(finish, ms);
    function finish() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", finish);
      done();
    }
    signal?.addEventListener("abort", finish, { once: true });
  });
}

/** Set by Lease's static block: takes a lock (see {@link StateLocks.lock}). */
let acquireLease: (
  state: StateServiceClient,
  opts: Resolved,
  onLost: LockOptions["onLost"],
  signal?: AbortSignal,
) => Promise<Lease>;

/**
 * A held lock, renewed in the background until it is released (or
 * disposed: `await using`) or lost. Made by `dl.state.lock(...)`.
 */
export class Lease implements AsyncDisposable {
  /** The lock's name. */
  readonly name: string;
  /** The secret that renews and releases this lease. */
  readonly leaseId: string;
  /** Strictly greater than every earlier acquisition's token of this lock:
   * send it with every write the lock guards. */
  readonly fencingToken: bigint;

  readonly #state: StateServiceClient;
  readonly #opts: Resolved;
  readonly #controller = new AbortController();
  #onLost: LockOptions["onLost"];
  #expiresAt: number;
  #lost = false;
  #released = false;
  #reason: string | undefined;
  #interval: ReturnType<typeof setInterval> | undefined;
  #expiry: ReturnType<typeof setTimeout> | undefined;
  #retry: ReturnType<typeof setTimeout> | undefined;
  #inFlight: Promise<void> | undefined;

  private constructor(state: StateServiceClient, opts: Resolved, answer: AcquireLockResponse, sentAt: number) {
    this.#state = state;
    this.#opts = opts;
    this.name = opts.name;
    this.leaseId = answer.leaseId;
    this.fencingToken = answer.fencingToken;
    // Conservative: the service started the lease after the call was sent.
    this.#expiresAt = sentAt + opts.ttlMs;
  }

  static {
    acquireLease = async (state, opts, onLost, signal) => {
      for (;;) {
        const started = now();
        const { answer, sentAt } = await acquireAnswer(state, opts, signal);
        const lease = new Lease(state, opts, answer, sentAt);
        if (now() - sentAt > opts.ttlMs / 3) {
          // The call waited: when the service took the lock during it is
          // unknown, so renew now to know how long the lease holds.
          try {
            await lease.#renew(false);
          } catch (e) {
            if (e instanceof LockLostError) {
              opts = { ...opts, waitMs: Math.max(0, opts.waitMs - (now() - started)) };
              continue;
            }
            // Transient: the background renewals try again while it holds.
          }
        }
        lease.#onLost = onLost;
        lease.#start();
        return lease;
      }
    };
  }

  /** Aborted (with a {@link LockLostError}) when the lease is lost. Not
   * aborted by {@link release}. */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** True once the lease is (or may be) lost; not set by {@link release}. */
  get lost(): boolean {
    return this.#lost || (!this.#released && now() >= this.#expiresAt);
  }

  /** True once {@link release} (or disposal) ran. */
  get released(): boolean {
    return this.#released;
  }

  /** Milliseconds the lease surely holds without another renewal; 0 once lost. */
  get expiresInMs(): number {
    return this.lost || this.#released ? 0 : Math.max(0, this.#expiresAt - now());
  }

  /** Why the lease was lost, or undefined. */
  get lostReason(): string | undefined {
    return this.lost ? (this.#reason ?? lostMessage(this.name, RAN_OUT)) : undefined;
  }

  /** Throws {@link LockLostError} if the lease is lost or was released; call
   * it before each action the lock guards. */
  check(): void {
    if (this.#released) {
      throw new LockLostError(lostMessage(this.name, "this lease was released"), this.name, this.fencingToken);
    }
    if (this.lost) throw this.#lostError();
  }

  /** Renews now (the background renewals do it on their own). Rejects with
   * {@link LockLostError} if lost; other errors are thrown as they are and
   * the lease stays held until its time runs out. */
  async renew(): Promise<void> {
    this.check();
    await this.#renew(true);
  }

  /** Stops renewing and releases the lock: true if this lease still held it,
   * false if it was lost (or already released). Call errors are thrown (the
   * lock then frees when its TTL ends). */
  async release(): Promise<boolean> {
    if (this.#released) return false;
    this.#released = true;
    this.#stopTimers();
    await this.#inFlight?.catch(() => undefined);
    const { released } = await this.#state.releaseLock(
      { name: this.name, leaseId: this.leaseId },
      { timeoutMs: this.#opts.callTimeoutMs },
    );
    return released;
  }

  /** `await using`: releases, ignoring a failed release (the TTL frees it). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.release().catch(() => undefined);
  }

  #lostError(): LockLostError {
    return new LockLostError(this.#reason ?? lostMessage(this.name, RAN_OUT), this.name, this.fencingToken);
  }

  #start(): void {
    this.#interval = setInterval(() => this.#tick(), this.#opts.renewEveryMs);
    this.#interval.unref();
    this.#armExpiry();
  }

  #stopTimers(): void {
    clearInterval(this.#interval);
    clearTimeout(this.#expiry);
    clearTimeout(this.#retry);
    this.#interval = this.#expiry = this.#retry = undefined;
  }

  #armExpiry(): void {
    clearTimeout(this.#expiry);
    if (this.#lost || this.#released) return;
    this.#expiry = setTimeout(() => {
      if (now() < this.#expiresAt) this.#armExpiry();
      else this.#markLost(lostMessage(this.name, "the lease ran out before a renewal got through"));
    }, Math.max(0, this.#expiresAt - now()));
    this.#expiry.unref();
  }

  #tick(): void {
    if (this.#lost || this.#released || this.#inFlight) return;
    clearTimeout(this.#retry);
    this.#inFlight = this.#renew(true)
      .catch((e: unknown) => {
        if (e instanceof LockLostError || this.#lost || this.#released) return;
        // Transient (UNAVAILABLE, DEADLINE_EXCEEDED, ...): try again soon,
        // while the lease still holds.
        const left = this.#expiresAt - now();
        const delay = Math.min(this.#opts.renewEveryMs, Math.max(MIN_RETRY_MS, left / 4));
        this.#retry = setTimeout(() => this.#tick(), delay);
        this.#retry.unref();
      })
      .finally(() => {
        this.#inFlight = undefined;
      });
  }

  /** One renewLock. `bounded`: only while the lease surely holds (and within
   * that time); else (right after a waiting acquisition) whatever the local
   * estimate says. */
  async #renew(bounded: boolean): Promise<void> {
    const sent = now();
    const left = this.#expiresAt - sent;
    if (bounded && left <= 0) {
      this.#markLost(lostMessage(this.name, RAN_OUT));
      throw this.#lostError();
    }
    let token: bigint;
    try {
      ({ fencingToken: token } = await this.#state.renewLock(
        { name: this.name, leaseId: this.leaseId, ttl: durationFromMs(Math.round(this.#opts.ttlMs)) },
        { timeoutMs: bounded ? Math.max(1, Math.min(left, this.#opts.callTimeoutMs)) : this.#opts.callTimeoutMs },
      ));
    } catch (e) {
      const err = ConnectError.from(e);
      if (err.code === Code.FailedPrecondition) {
        this.#markLost(lostMessage(this.name, `the service refused the renewal (${err.rawMessage})`));
        throw this.#lostError();
      }
      throw err;
    }
    if (token !== this.fencingToken) {
      const why = `the service renewed fencing token ${token}, not ours (${this.fencingToken})`;
      this.#markLost(lostMessage(this.name, why));
      throw this.#lostError();
    }
    if (!this.#lost && !this.#released) {
      this.#expiresAt = Math.max(this.#expiresAt, sent + this.#opts.ttlMs);
      this.#armExpiry();
    }
  }

  #markLost(reason: string): void {
    if (this.#lost || this.#released) return;
    this.#lost = true;
    this.#reason = reason;
    this.#stopTimers();
    const error = this.#lostError();
    this.#controller.abort(error);
    if (this.#onLost) {
      try {
        this.#onLost(this, error);
      } catch (e) {
        process.emitWarning(`onLost of lock ${this.name} threw: ${String(e)}`);
      }
    }
  }

  toString(): string {
    const state = this.#released ? "released" : this.lost ? "lost" : "held";
    return `Lease(${this.name}, fencingToken=${this.fencingToken}, ${state})`;
  }
}

/** acquireLock until acquired or `wait` passes: the answer and when the
 * successful call was sent. */
async function acquireAnswer(
  state: StateServiceClient,
  opts: Resolved,
  signal?: AbortSignal,
): Promise<{ answer: AcquireLockResponse; sentAt: number }> {
  const deadline = opts.waitMs === Infinity ? undefined : now() + opts.waitMs;
  for (;;) {
    signal?.throwIfAborted();
    const left = deadline === undefined ? WAIT_PER_CALL_MS : Math.max(0, deadline - now());
    const wait = Math.floor(Math.min(left, WAIT_PER_CALL_MS));
    const sentAt = now();
    const answer = await state.acquireLock(
      {
        name: opts.name,
        ttl: durationFromMs(Math.round(opts.ttlMs)),
        wait: wait > 0 ? durationFromMs(wait) : undefined,
      },
      { timeoutMs: wait + opts.callTimeoutMs, signal },
    );
    if (answer.acquired) return { answer, sentAt };
    if (deadline !== undefined && now() >= deadline) {
      const retryAfterMs = answer.retryAfter ? durationMs(answer.retryAfter) : undefined;
      const waited = opts.waitMs > 0 ? `within ${opts.waitMs} ms` : "without waiting";
      const hint = retryAfterMs === undefined ? "" : `; the current lease ends in ${retryAfterMs} ms unless renewed`;
      const message = `lock ${opts.name} not acquired ${waited}: another lease holds it${hint}`;
      throw new LockNotAcquiredError(message, opts.name, retryAfterMs);
    }
  }
}

function transient(e: unknown): boolean {
  return e instanceof ConnectError && (e.code === Code.Unavailable || e.code === Code.DeadlineExceeded);
}

/** The lock helpers over a StateService client; `callTimeoutMs` is the
 * deadline a lock call gets on top of its wait (the client's default). */
export function stateLocks(state: StateServiceClient, callTimeoutMs = 5000): StateLocks {
  const timeout = callTimeoutMs > 0 ? callTimeoutMs : 5000;
  const lock = (name: string, options: LockOptions) =>
    acquireLease(state, resolve(name, options, options.wait, timeout), options.onLost, options.signal);
  return {
    lock,
    async withLock<T>(name: string, options: LockOptions, fn: (lease: Lease) => Promise<T> | T): Promise<T> {
      const lease = await lock(name, options);
      try {
        return await fn(lease);
      } finally {
        await lease[Symbol.asyncDispose]();
      }
    },
    async *leader(name: string, options: LeaderOptions): AsyncGenerator<Lease, void, undefined> {
      const opts = resolve(name, options, Infinity, timeout);
      const { signal } = options;
      let backoff: number = CAMPAIGN_BACKOFF_MS[0];
      while (!signal?.aborted) {
        let lease: Lease;
        try {
          lease = await acquireLease(state, opts, options.onLost, signal);
        } catch (e) {
          if (signal?.aborted) return;
          if (!transient(e)) throw e;
          await sleep(backoff, signal);
          backoff = Math.min(backoff * 2, CAMPAIGN_BACKOFF_MS[1]);
          continue;
        }
        backoff = CAMPAIGN_BACKOFF_MS[0];
        try {
          yield lease;
        } finally {
          await lease[Symbol.asyncDispose]();
        }
      }
    },
  };
}
