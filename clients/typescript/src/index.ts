// The public types use Node's (node:http2's TLS options, AbortSignal,
// Symbol.asyncDispose). This directive, kept in dist/index.d.ts by
// preserve="true", loads @types/node (a dependency) for consumers, so their
// tsconfig needs no "types": ["node"] (TypeScript 6+ loads no @types
// package by itself).
/// <reference types="node" preserve="true" />
/**
 * TypeScript client of the datalayer gRPC service, over
 * `@connectrpc/connect-node`'s gRPC transport.
 *
 * ```ts
 * import { createClient } from "@datalayer/client";
 * const dl = createClient({ baseUrl: "http://localhost:50051" });
 * const answer = await dl.ratelimit.check({ key: "user:42", limitSource: { case: "policy", value: "auth" } });
 * ```
 *
 * Each service of `proto/datalayer` is a property (`ratelimit`, `cache`,
 * `sessions`, `flags`) holding a typed Connect client; errors are
 * `ConnectError`s whose rich details are read with
 * `err.findDetails(BadRequestSchema)` or the helpers `fieldViolations(err)` /
 * `retryAfterMs(err)`.
 *
 * Unary calls are retried only when a retry cannot repeat a write (see
 * {@link retryable}): an UNAVAILABLE that carries `google.rpc.RetryInfo`
 * (waiting at least its `retryDelay`), or one whose request never left this
 * client (the connection was refused). An UNAVAILABLE without RetryInfo
 * means the outcome is unknown (the write may have been applied) and is
 * thrown at once, as is DEADLINE_EXCEEDED and every other code.
 *
 * A server-streaming method (`flags.watch`) is the Connect client's own: it
 * returns an `AsyncIterable` of the answers, with no default deadline and no
 * retries (`{ timeoutMs }` bounds the whole stream, `{ signal }` ends it);
 * its errors are thrown while iterating, as the same `ConnectError`s:
 *
 * ```ts
 * for await (const change of dl.flags.watch({ flagSet: "flags/app.json" }, { signal })) { ... }
 * ```
 *
 * `dl.state` also has lock helpers with fencing tokens and leader election
 * (`./locks.ts`): `await using lease = await dl.state.lock("trader-leader",
 * { ttl: "10s", wait: "5s" })`, `dl.state.withLock(...)`, `dl.state.leader(...)`.
 *
 * `dl.queue` has worker helpers on the Consume stream (`./worker.ts`):
 * `await dl.queue.work("analyses", handler, { concurrency: 10, signal })`
 * (ack when the handler resolves, nack when it throws) and
 * `for await (const msg of dl.queue.consume("analyses", { concurrency: 10 }))`
 * (`msg.ack()` / `msg.nack(err)`); `await dl.queue.add("analyses", { payload })`
 * enqueues one message, batched with the others added in the same turn
 * (`./enqueuer.ts`). A push queue's deliveries are checked
 * with `verifySignature(body, header, keys, url)` (`./push.ts`).
 *
 * Upstash-style helpers (`./ratelimit.ts`, `./cache.ts`, `./sessions.ts`),
 * answering plain JSON-serialisable values:
 * `const limiter = dl.ratelimit.slidingWindow(10, "10s")` (or `fixedWindow`,
 * `tokenBucket`, `gcra`, `policy("auth")`), then `await limiter.limit(id)` ->
 * `{ success, limit, remaining, resetAt, retryAfterMs, reason }`,
 * `limiter.blockUntilReady(id, "5s")`, `limiter.remaining(id)`,
 * `limiter.report(id, cost)` (usage known afterwards, may overdraw) ->
 * `{ limit, remaining, resetAt, resetAfterMs, overdrawn }`,
 * `limiter.reset(id)`, `dl.ratelimit.limitAll(id, [perMinute, perDay])`
 * (every limiter spends, or none) -> `{ success, results, retryAfterMs }`; `dl.cache.getOrSet(key, compute, { ttl: "5m" })`
 * (one caller computes, on GetOrLease), `dl.cache.setJson` / `getJson<T>`;
 * `dl.sessions.validate(token)` -> the session or `undefined`.
 *
 * `dl.analytics` has a buffered tracker (`./analytics.ts`) whose `track()`
 * never waits for the network: `const tracker = dl.analytics.tracker({
 * flushEvery: "1s", maxBatch: 500 })`, `tracker.track("signals", { dims: {
 * exchange: "kraken" } })`, `await tracker.flush()`, `await tracker.close()`;
 * and reads over a `since` / `until` range: `dl.analytics.series(metric, {
 * since: "1h", groupBy: ["exchange"] })`, `countUnique`, `topValues`.
 */
import { Code, ConnectError, createClient as createConnectClient } from "@connectrpc/connect";
import type { CallOptions, Client, Interceptor, Transport } from "@connectrpc/connect";
import { Http2SessionManager } from "@connectrpc/connect-node";
import type { DescService } from "@bufbuild/protobuf";
import type { SecureClientSessionOptions } from "node:http2";
import { BadRequestSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { services } from "./gen/services.js";
import { stateLocks, type StateLocks } from "./locks.js";
import { withQueueWorkers, type QueueWorkers } from "./worker.js";
import { queueAdder, type QueueAdder } from "./enqueuer.js";
import { withRateLimiters, type RateLimiters } from "./ratelimit.js";
import { withCacheHelpers, type CacheHelpers } from "./cache.js";
import { withSessionHelpers, type SessionHelpers } from "./sessions.js";
import { withAnalyticsHelpers, type AnalyticsHelpers } from "./analytics.js";
import { createTransport } from "./transport.js";

export * from "./gen/services.js";
export {
  BadRequestSchema,
  RetryInfoSchema,
  ErrorInfoSchema,
  DebugInfoSchema,
  QuotaFailureSchema,
  PreconditionFailureSchema,
  ResourceInfoSchema,
  RequestInfoSchema,
  HelpSchema,
  LocalizedMessageSchema,
} from "./gen/google/rpc/error_details_pb.js";
export type { BadRequest, BadRequest_FieldViolation, RetryInfo } from "./gen/google/rpc/error_details_pb.js";
export {
  Lease,
  LockError,
  LockLostError,
  LockNotAcquiredError,
  WAIT_PER_CALL_MS,
  parseDurationMs,
  stateLocks,
} from "./locks.js";
export type { DurationLike, LeaderOptions, LockOptions, StateClient, StateLocks, StateServiceClient } from "./locks.js";
export {
  DEFAULT_LEEWAY_S,
  MIN_SIGNING_KEY_BYTES,
  SIGNATURE_HEADER,
  SIGNATURE_VALID_FOR_S,
  SignatureError,
  bodyHash,
  parseSigningKeys,
  verifySignature,
} from "./push.js";
export type { SignatureClaims, SignatureErrorReason, VerifyOptions } from "./push.js";
export { MAX_ADD_BATCH, queueAdder, type MessageSpecInit, type QueueAdder } from "./enqueuer.js";
export { Delivery, MAX_CONCURRENCY, MAX_REASON_BYTES, nackReason, queueWorkers, withQueueWorkers } from "./worker.js";
export type {
  ConsumeOptions,
  DeliveryHandler,
  NackOptions,
  QueueClient,
  QueueServiceClient,
  QueueWorkers,
  WorkOptions,
  WorkSummary,
} from "./worker.js";
export { RateLimiter, limitAllResult, limitResult, rateLimiters, reportResult, withRateLimiters } from "./ratelimit.js";
export type {
  LimitAllResult,
  LimitOptions,
  LimitReason,
  LimitResult,
  LimiterOptions,
  RateLimitClient,
  RateLimitServiceClient,
  RateLimiters,
  ReportResult,
  ReserveResult,
  SettleOutcome,
  SettleResult,
} from "./ratelimit.js";
export { JSON_CONTENT_TYPE, cacheHelpers, withCacheHelpers } from "./cache.js";
export type { CacheCallOptions, CacheClient, CacheHelpers, CacheServiceClient, GetOrSetOptions, JsonWriteOptions } from "./cache.js";
export { sessionHelpers, sessionInfo, withSessionHelpers } from "./sessions.js";
export type { SessionClient, SessionHelpers, SessionInfo, SessionServiceClient, ValidateOptions } from "./sessions.js";
export { Tracker, analyticsHelpers, withAnalyticsHelpers } from "./analytics.js";
export type {
  AnalyticsClient,
  AnalyticsHelpers,
  AnalyticsServiceClient,
  MetricPoint,
  MetricSeries,
  RangeOptions,
  SeriesOptions,
  TopValue,
  TopValuesOptions,
  TrackOptions,
  TrackerOptions,
} from "./analytics.js";
export { durationToMs } from "./durations.js";
export { Code, ConnectError } from "@connectrpc/connect";
export type { CallOptions, Interceptor } from "@connectrpc/connect";

/** Default deadline of a call, covering its retries. */
export const DEFAULT_TIMEOUT_MS = 5000;

export interface RetryOptions {
  /**
   * Retries after the first attempt of a call that may be retried safely
   * (see {@link retryable}: UNAVAILABLE with RetryInfo, or a request that
   * never left the client). Default 3; 0 disables.
   */
  retries?: number;
  /** First backoff cap in ms (default 50), doubled per attempt... */
  initialBackoffMs?: number;
  /** ...up to this cap (default 2000). */
  maxBackoffMs?: number;
  /** Growth of the cap per attempt (default 2). */
  multiplier?: number;
}

export interface ClientOptions extends RetryOptions {
  /**
   * `http://host:port` (plaintext HTTP/2) or `https://host:port` (TLS). A bare
   * `host:port` uses TLS when `tls` is set, plaintext otherwise.
   */
  baseUrl: string;
  /** An API key (or other bearer token), sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /**
   * Default deadline of a unary call in ms, covering its retries (default
   * 5000); server streams have none.
   * A call's own `{ timeoutMs }` overrides it. 0 or a negative value: no
   * client deadline (the service applies `server.default_timeout`).
   */
  timeoutMs?: number;
  /**
   * Use TLS (verified against Node's CA roots by default); an object gives
   * Node's TLS options: `{ ca }` (PEM CA to verify the server with),
   * `{ cert, key }` (PEM client certificate and private key, for mTLS).
   * Implied by an `https://` `baseUrl`; refused with an `http://` one.
   */
  tls?: boolean | SecureClientSessionOptions;
  /** More Connect interceptors, run inside the token interceptor. */
  interceptors?: Interceptor[];
}

type Services = typeof services;

/** Hand-written helpers added to a service's client (`dl.state.lock(...)`, `dl.queue.work(...)`). */
type Helpers = {
  state: StateLocks;
  queue: QueueWorkers & QueueAdder;
  ratelimit: RateLimiters;
  cache: CacheHelpers;
  sessions: SessionHelpers;
  analytics: AnalyticsHelpers;
};
type ServiceClient<K extends keyof Services> = K extends keyof Helpers ? Client<Services[K]> & Helpers[K] : Client<Services[K]>;

/** One typed Connect client per service (`dl.state` with its lock helpers, `dl.queue` with its worker helpers), plus `close()`. */
export type DatalayerClient = { readonly [K in keyof Services]: ServiceClient<K> } & {
  /** The underlying transport, for `createClient(Service, transport)` from Connect. */
  readonly transport: Transport;
  /** Closes the HTTP/2 connection; calls after it fail. */
  close(): void;
};

function normalizeBaseUrl(baseUrl: string, tls: ClientOptions["tls"]): string {
  if (/^http:\/\//.test(baseUrl) && tls) {
    throw new TypeError(`${baseUrl} is plaintext (http://) but tls options were given: use https://`);
  }
  if (/^https?:\/\//.test(baseUrl)) return baseUrl;
  return `${tls ? "https" : "http"}://${baseUrl}`;
}

/** Added to the error of a plaintext connection the server closed before answering. */
export const TLS_HINT =
  " (the server closed the connection before answering; if it serves TLS, use an https:// baseUrl or the tls option)";

/**
 * A TLS-only server closes a plaintext connection during its handshake.
 * Node reports that, before any answer, as a stream CANCELed by the client
 * (the connection closed before the server's HTTP/2 settings), which
 * Connect calls CANCELED, or as ECONNRESET, which Connect calls ABORTED.
 * On a plaintext connection, unless the caller cancelled, either is
 * UNAVAILABLE (as gRPC's own clients say), with a hint at TLS.
 */
function explain(err: ConnectError, plaintext: boolean, signal: AbortSignal | undefined): ConnectError {
  if (!plaintext || signal?.aborted || [...err.metadata.keys()].length > 0) return err;
  const closed = err.code === Code.Canceled && /stream closed with error code CANCEL/.test(err.rawMessage);
  const reset = err.code === Code.Aborted && (err.cause as { code?: unknown } | undefined)?.code === "ECONNRESET";
  if (!closed && !reset) return err;
  return new ConnectError(err.rawMessage + TLS_HINT, Code.Unavailable, undefined, undefined, err);
}

/**
 * Node error codes of a connection that was never made (refused, or a host
 * name that did not resolve): nothing of the request was sent.
 */
const NEVER_CONNECTED = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN"]);

/**
 * Whether the request of a failed call demonstrably never left this client:
 * the connection it waited for was refused (or its host did not resolve), so
 * no request byte was written. Connect reports that as UNAVAILABLE with the
 * Node error as its cause. Anything else (a reset or closed connection, a
 * refused stream, a timeout) may come after the request went out.
 */
export function neverSent(err: unknown): boolean {
  const e = ConnectError.from(err);
  if (e.code !== Code.Unavailable || [...e.metadata.keys()].length > 0) return false;
  const seen = new Set<unknown>();
  for (let cause: unknown = e.cause; cause instanceof Error && !seen.has(cause); cause = cause.cause) {
    seen.add(cause);
    const code = (cause as { code?: unknown }).code;
    if (typeof code === "string" && NEVER_CONNECTED.has(code)) return true;
  }
  return false;
}

/**
 * Whether a failed call may be retried without risking a repeated write.
 * Only UNAVAILABLE qualifies, and only when the service attached
 * `google.rpc.RetryInfo` (it does so only when a retry cannot repeat a
 * write) or when the request never left the client ({@link neverSent}). An
 * UNAVAILABLE without RetryInfo means the outcome is unknown: not retried.
 * DEADLINE_EXCEEDED (the call may have run) and every other code: never.
 */
export function retryable(err: unknown): boolean {
  const e = ConnectError.from(err);
  if (e.code !== Code.Unavailable) return false;
  return e.findDetails(RetryInfoSchema).length > 0 || neverSent(e);
}

/** The wait before retry number `attempt` (0-based), in ms. */
export function backoffMs(attempt: number, retryAfter: number | undefined, opts: RetryOptions = {}): number {
  const initial = opts.initialBackoffMs ?? 50;
  const max = opts.maxBackoffMs ?? 2000;
  const multiplier = opts.multiplier ?? 2;
  const cap = Math.min(max, initial * multiplier ** attempt);
  return (retryAfter ?? 0) + Math.random() * cap;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(ConnectError.from(signal.reason));
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(ConnectError.from(signal?.reason));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });

/**
 * Wraps every unary method of a Connect client: a default deadline covering
 * all attempts, and retries of what {@link retryable} allows (UNAVAILABLE
 * with RetryInfo, or never sent) with exponential backoff and full jitter,
 * never sooner than the error's `google.rpc.RetryInfo` (no other code is
 * retried: UNAVAILABLE without RetryInfo, DEADLINE_EXCEEDED, and
 * RESOURCE_EXHAUSTED from a quota are thrown at once, the latter with its
 * `retryAfterMs(err)`). A retry that would pass the deadline is not
 * made: the last error is thrown. Streaming
 * methods are passed through as Connect made them (a long-lived stream such
 * as a Watch must not get the unary default deadline); Connect already throws
 * their errors as `ConnectError`s, with the same details as unary errors.
 */
function withRetries<S extends DescService>(
  service: S,
  client: Client<S>,
  opts: ClientOptions,
  plaintext: boolean,
): Client<S> {
  const retries = opts.retries ?? 3;
  const defaultTimeout = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const wrapped: Record<string, unknown> = {};
  const raw = client as unknown as Record<string, (req: unknown, options?: CallOptions) => Promise<unknown>>;
  for (const method of service.methods) {
    const call = raw[method.localName];
    if (method.methodKind !== "unary") {
      wrapped[method.localName] = call;
      continue;
    }
    wrapped[method.localName] = async (request: unknown, options: CallOptions = {}) => {
      const budget = options.timeoutMs ?? defaultTimeout;
      const deadline = budget > 0 ? Date.now() + budget : undefined;
      for (let attempt = 0; ; attempt++) {
        const remaining = deadline === undefined ? undefined : deadline - Date.now();
        if (remaining !== undefined && remaining <= 0) {
          throw new ConnectError("deadline exceeded before the call could be retried", Code.DeadlineExceeded);
        }
        try {
          return await call(request, { ...options, timeoutMs: remaining });
        } catch (e) {
          const err = explain(ConnectError.from(e), plaintext, options.signal);
          if (attempt >= retries || !retryable(err)) throw err;
          const delay = backoffMs(attempt, retryAfterMs(err), opts);
          if (deadline !== undefined && Date.now() + delay >= deadline) throw err;
          await sleep(delay, options.signal);
        }
      }
    };
  }
  return wrapped as Client<S>;
}

/** Creates a client with one typed property per service (`ratelimit`, `cache`, ...). */
export function createClient(options: ClientOptions): DatalayerClient {
  const baseUrl = normalizeBaseUrl(options.baseUrl, options.tls);
  const nodeOptions = typeof options.tls === "object" ? options.tls : {};
  const sessionManager = new Http2SessionManager(baseUrl, { idleConnectionTimeoutMs: 60_000 }, nodeOptions);
  const interceptors: Interceptor[] = [];
  if (options.token) {
    const value = `Bearer ${options.token}`;
    interceptors.push((next) => (req) => {
      req.header.set("authorization", value);
      return next(req);
    });
  }
  interceptors.push(...(options.interceptors ?? []));
  // Connect's gRPC transport for streams; unary calls on a shorter path over
  // the same HTTP/2 session (./transport.ts), with the same errors.
  const transport = createTransport({ baseUrl, sessionManager, interceptors });
  const clients = Object.fromEntries(
    Object.entries(services).map(([name, service]) => [
      name,
      withRetries(service, createConnectClient(service, transport), options, baseUrl.startsWith("http:")),
    ]),
  );
  const typed = clients as { [K in keyof Services]: Client<Services[K]> };
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  return {
    ...typed,
    state: Object.assign(typed.state, stateLocks(typed.state, timeoutMs)),
    queue: Object.assign(withQueueWorkers(typed.queue), queueAdder(typed.queue)),
    ratelimit: withRateLimiters(typed.ratelimit),
    cache: withCacheHelpers(typed.cache),
    sessions: withSessionHelpers(typed.sessions),
    analytics: withAnalyticsHelpers(typed.analytics),
    transport,
    close: () => sessionManager.abort(),
  };
}

/** The `google.rpc.BadRequest` field violations of an error (empty if none). */
export function fieldViolations(err: unknown): { field: string; description: string }[] {
  return ConnectError.from(err)
    .findDetails(BadRequestSchema)
    .flatMap((d) => d.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
}

/** The `google.rpc.RetryInfo` delay of an error in ms, or undefined. */
export function retryAfterMs(err: unknown): number | undefined {
  const [info] = ConnectError.from(err).findDetails(RetryInfoSchema);
  if (!info?.retryDelay) return undefined;
  return Number(info.retryDelay.seconds) * 1000 + info.retryDelay.nanos / 1e6;
}
