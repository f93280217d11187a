/**
 * Buffered event tracking and simple reads, on `AnalyticsService` (the
 * Python client's `client.analytics.tracker()`, `series`, `count_unique`
 * and `top_values`):
 *
 * ```ts
 * const tracker = dl.analytics.tracker({ flushEvery: "1s", maxBatch: 500 });
 * tracker.track("signals", { dims: { exchange: "kraken" } });           // a count of 1
 * tracker.track("orders", { value: 3, dims: { exchange: "kraken", side: "buy" } });
 * tracker.track("latency_ms", { sample: 12.5, dims: { exchange: "kraken" } });
 * tracker.track("commands", { uniqueId: "user:42", top: { command: "/price" } });
 * await tracker.close();                                               // sends what is left
 *
 * const bySide = await dl.analytics.series("orders", { since: "1h", groupBy: ["side"] });
 * bySide.map((s) => [s.dimensions.side, s.count]);
 * await dl.analytics.countUnique("commands", { since: "1d" });         // distinct uniqueIds
 * await dl.analytics.topValues("commands", "command", { k: 5 });       // [{ value: "/price", count: 7 }, ...]
 * ```
 *
 * A {@link Tracker} never waits for the network: `track()` checks its
 * arguments (`TypeError` / `RangeError` at once, so one bad event cannot
 * spoil a batch), appends the event to an in-memory buffer and returns. The
 * buffer is sent with `Track`, at most `maxBatch` events a call, every
 * `flushEvery` (an unref'd timer: it does not keep Node running) and as
 * soon as `maxBatch` events are waiting; `await tracker.flush()` sends it
 * now, `await tracker.close()` (or `await using`) sends what is left and
 * stops the timer. Close it before the process exits: events still
 * buffered then are lost.
 *
 * Nothing of a failed send reaches the caller of `track()`: it is counted,
 * and `onError(err, lost)` hears of it. `dropped` counts events refused
 * because `maxBuffer` events were waiting (or the tracker was closed),
 * `failed` the events of `Track` calls that failed (not sent again:
 * `Track` is not idempotent, and the client already retried what was safe
 * to retry), `rejected` events the service refused as invalid (the rest of
 * their batch is sent again without them), `errors` the failed calls and
 * `lastError` the last of their errors.
 *
 * Events carry no time unless given one (`time`, a `Date` at most
 * `analytics.max_event_age` old): the service stamps them when their batch
 * arrives, at most `flushEvery` later. Reads take `since` (a `Date`, or a
 * duration before `until`: `"1h"`, ms) and `until` (a `Date`; default now);
 * their answers are plain values (numbers, times as ISO strings).
 */
import { Code, ConnectError, type CallOptions, type Client } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate, timestampFromMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { AnalyticsService, EventSchema, QueryResponse } from "./gen/datalayer/analytics/v1/analytics_pb.js";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb.js";
import { durationToMs, show, type DurationLike } from "./durations.js";

/** The typed Connect client of AnalyticsService, as `dl.analytics` holds it. */
export type AnalyticsServiceClient = Client<typeof AnalyticsService>;

/** `dl.analytics`: the AnalyticsService client plus the tracker and the reads. */
export type AnalyticsClient = AnalyticsServiceClient & AnalyticsHelpers;

type EventInit = MessageInitShape<typeof EventSchema>;

// The service's own bounds that no setting changes (analytics/grpc/parse.rs).
const NAME = /^[A-Za-z0-9_.:-]{1,128}$/;
const MAX_LABEL_BYTES = 64;
const MAX_COUNT = 1_000_000_000;
const MAX_SAMPLE = 1e15;
/** Rust's `char::is_control`: the Unicode category Cc. */
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
/** The largest `analytics.max_batch` the service allows. */
const MAX_BATCH = 100_000;
const BAD_EVENT = /^events\[(\d+)\]/;
const BATCH_CAP = /at most (\d+) per call/;

export interface TrackOptions {
  /** A count (a whole number, 1 to 1e9, or a bigint; default 1). */
  value?: number | bigint;
  /** One sample instead of a count: the count grows by 1, the sum by it, min and max take it in. Finite, within ±1e15. */
  sample?: number;
  /** The event's dimensions (`{ exchange: "kraken" }`): each distinct combination is a series. */
  dims?: Record<string, string>;
  /** Counted in the metric's unique count (a user id for daily active users). */
  uniqueId?: string;
  /** Labels counted only in the metric's top lists, not in its series (for many distinct values). */
  top?: Record<string, string>;
  /** When it happened (default: when its batch arrives); at most `analytics.max_event_age` old. */
  time?: Date;
}

const TRACK_OPTIONS = new Set(["value", "sample", "dims", "uniqueId", "top", "time"]);

export interface TrackerOptions {
  /** How often the buffer is sent (default `"1s"`): `"500ms"`, `"1m"` or ms. */
  flushEvery?: DurationLike;
  /** Most events a `Track` call carries, and how many waiting events trigger one (default 500; the service takes at most its `analytics.max_batch`, 1000 by default). */
  maxBatch?: number;
  /** Most events waiting; past it `track()` drops them (default 10000). */
  maxBuffer?: number;
  /** The deadline of each `Track` call (default: the client's). */
  timeoutMs?: number;
  /** Hears of each failed `Track` call, with how many of its events were lost. Never throws into the tracker. */
  onError?: (error: ConnectError, lost: number) => void;
}

export interface RangeOptions {
  /** The range's start: a `Date`, or a duration before `until` (`"1h"`, ms). Default: a day before `until`. */
  since?: Date | DurationLike;
  /** The range's end (default: now). */
  until?: Date;
  /** `"1m"`, `"1h"`, `"1d"` (the service's resolutions); default: the finest that fits. */
  resolution?: string;
  signal?: AbortSignal;
  /** The deadline of the call (default: the client's). */
  timeoutMs?: number;
}

export interface SeriesOptions extends RangeOptions {
  /** Only events whose dimensions match: `{ side: "buy", exchange: ["kraken", "bybit"] }` (ANDed across dimensions, ORed within one). */
  where?: Record<string, string | string[]>;
  /** Series summed by these dimensions (default: one series of everything matching). */
  groupBy?: string[];
}

export interface TopValuesOptions extends RangeOptions {
  /** How many (default 10; at most the service's `analytics.top_size`, 100 by default). */
  k?: number;
}

/** One bucket of a series. */
export interface MetricPoint {
  /** The bucket's start, ISO 8601. */
  time: string;
  count: number;
  /** Of the samples and counts. */
  sum: number;
  /** Of the samples (0 when the bucket holds none). */
  min: number;
  max: number;
}

/** One group of a read: its values of `groupBy` (`"__other__"` for folded events), one point per bucket (zeros where nothing was tracked), and its totals. */
export interface MetricSeries {
  dimensions: Record<string, string>;
  points: MetricPoint[];
  /** The events over the range. */
  count: number;
  /** The sum over the range. */
  sum: number;
}

export interface TopValue {
  value: string;
  count: number;
}

export interface AnalyticsHelpers {
  /** A buffered {@link Tracker} on this client (see the module). */
  tracker(options?: TrackerOptions): Tracker;
  /** `metric`'s series over the range, filtered by `where`, grouped by `groupBy`. */
  series(metric: string, options?: SeriesOptions): Promise<MetricSeries[]>;
  /** About how many distinct `uniqueId`s `metric` saw over the range (HyperLogLog: a standard error of 0.81%). */
  countUnique(metric: string, options?: RangeOptions): Promise<number>;
  /** The `k` most counted values of `metric`'s top label `dimension` (or, without a top list by that name, of that dimension), most first. */
  topValues(metric: string, dimension: string, options?: TopValuesOptions): Promise<TopValue[]>;
}

// ------------------------------------------------------------------ arguments

function metricName(value: unknown): string {
  if (typeof value !== "string") throw new TypeError(`a metric name must be a string, got ${show(value)}`);
  if (!NAME.test(value)) throw new RangeError(`a metric name must be 1 to 128 characters of [A-Za-z0-9_.:-], got ${show(value)}`);
  return value;
}

function label(value: unknown, what: string): string {
  if (typeof value !== "string") throw new TypeError(`${what} names must be strings, got ${show(value)}`);
  if (!NAME.test(value) || value.length > MAX_LABEL_BYTES) {
    throw new RangeError(`${what} names must be 1 to ${MAX_LABEL_BYTES} characters of [A-Za-z0-9_.:-], got ${show(value)}`);
  }
  return value;
}

function text(value: unknown, what: string, empty = false): string {
  if (typeof value !== "string") throw new TypeError(`${what} must be a string, got ${show(value)}`);
  if (!value && !empty) throw new RangeError(`${what} must not be empty`);
  if (CONTROL.test(value)) throw new RangeError(`${what} must not hold control characters, got ${show(value)}`);
  return value;
}

function labels(value: unknown, what: string): Record<string, string> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new TypeError(`${what} must be an object of names to strings, got ${show(value)}`);
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) out[label(k, what)] = text(v, `${what} value ${JSON.stringify(k)}`);
  return out;
}

function date(value: unknown, what: string): Date {
  if (!(value instanceof Date)) throw new TypeError(`${what} must be a Date, got ${show(value)}`);
  if (Number.isNaN(value.getTime())) throw new RangeError(`${what} is an invalid Date`);
  return value;
}

function countOf(value: unknown): bigint {
  if (typeof value === "bigint") {
    if (value < 1n || value > BigInt(MAX_COUNT)) throw new RangeError(`value must be 1 to ${MAX_COUNT}, got ${show(value)}`);
    return value;
  }
  if (typeof value !== "number") throw new TypeError(`value must be a number (a count), got ${show(value)}`);
  if (!Number.isInteger(value) || value < 1 || value > MAX_COUNT) {
    const hint = Number.isFinite(value) && !Number.isInteger(value) ? "; for a measurement use sample" : "";
    throw new RangeError(`value must be a whole number, 1 to ${MAX_COUNT}, got ${value}${hint}`);
  }
  return BigInt(value);
}

/** The event `track()` buffers: every argument checked. */
function eventOf(metric: string, options: TrackOptions): EventInit {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`track options must be an object ({ value, sample, dims, uniqueId, top, time }), got ${show(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (!TRACK_OPTIONS.has(key)) {
      throw new TypeError(`unknown track option ${JSON.stringify(key)} (dimensions go in dims: { ${key}: ... })`);
    }
  }
  const event: EventInit = { metric: metricName(metric) };
  if (options.dims !== undefined) event.dimensions = labels(options.dims, "dimension");
  if (options.sample !== undefined) {
    if (options.value !== undefined) throw new TypeError("give value (a count) or sample, not both");
    const s = options.sample;
    if (typeof s !== "number") throw new TypeError(`sample must be a number, got ${show(s)}`);
    if (!Number.isFinite(s) || Math.abs(s) > MAX_SAMPLE) throw new RangeError(`sample must be a finite number within ±1e15, got ${s}`);
    event.value = { case: "sample", value: s };
  } else if (options.value !== undefined) {
    const n = countOf(options.value);
    if (n !== 1n) event.value = { case: "count", value: n };
  }
  if (options.uniqueId !== undefined) event.uniqueId = text(options.uniqueId, "uniqueId", true);
  if (options.top !== undefined) event.top = labels(options.top, "top");
  if (options.time !== undefined) event.time = timestampFromDate(date(options.time, "time"));
  return event;
}

function positiveInt(value: unknown, what: string, max: number): number {
  if (typeof value !== "number") throw new TypeError(`${what} must be a number, got ${show(value)}`);
  if (!Number.isSafeInteger(value) || value < 1 || value > max) {
    throw new RangeError(`${what} must be a whole number, 1 to ${max}, got ${show(value)}`);
  }
  return value;
}

function range(options: RangeOptions): { from?: Timestamp; to?: Timestamp; resolution: string } {
  const until = options.until === undefined ? undefined : date(options.until, "until");
  const out: { from?: Timestamp; to?: Timestamp; resolution: string } = {
    resolution: options.resolution === undefined ? "" : text(options.resolution, "resolution", true),
  };
  if (options.since instanceof Date) out.from = timestampFromDate(date(options.since, "since"));
  else if (options.since !== undefined) {
    const ms = durationToMs(options.since, "since");
    out.from = timestampFromMs(Math.round((until ?? new Date()).getTime() - ms));
  }
  if (until !== undefined) out.to = timestampFromDate(until);
  return out;
}

function callOptions(options: RangeOptions): CallOptions {
  const out: CallOptions = {};
  if (options.signal) out.signal = options.signal;
  if (options.timeoutMs !== undefined) out.timeoutMs = options.timeoutMs;
  return out;
}

function where(value: SeriesOptions["where"]) {
  if (value === undefined) return [];
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new TypeError(`where must be an object of dimensions to values, got ${show(value)}`);
  }
  return Object.entries(value).map(([dimension, values]) => ({
    dimension: label(dimension, "where"),
    values: (Array.isArray(values) ? values : [values]).map((v) => text(v, `where.${dimension}`)),
  }));
}

function groupBy(value: unknown): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new TypeError(`groupBy must be an array of dimension names, got ${show(value)}`);
  return value.map((d) => label(d, "groupBy"));
}

function seriesOf(answer: QueryResponse): MetricSeries[] {
  return answer.series.map((s) => {
    const points = s.points.map((p) => ({
      time: p.time ? timestampDate(p.time).toISOString() : "",
      count: Number(p.count),
      sum: p.sum,
      min: p.min,
      max: p.max,
    }));
    return {
      dimensions: { ...s.dimensions },
      points,
      count: points.reduce((n, p) => n + p.count, 0),
      sum: points.reduce((n, p) => n + p.sum, 0),
    };
  });
}

// -------------------------------------------------------------------- tracker

/**
 * Buffers events and sends them with `Track` in batches (see the module);
 * made by `dl.analytics.tracker(options)`.
 */
export class Tracker {
  readonly #rpc: AnalyticsServiceClient;
  readonly #maxBatch: number;
  readonly #maxBuffer: number;
  readonly #call: CallOptions;
  readonly #onError: TrackerOptions["onError"];
  readonly #timer: NodeJS.Timeout;
  #events: EventInit[] = [];
  /** Set from the service's answer when its analytics.max_batch is smaller. */
  #cap: number;
  /** Sends run one after another, in order. */
  #chain: Promise<unknown> = Promise.resolve();
  #tickQueued = false;
  #fullQueued = false;
  #closing: Promise<boolean> | undefined;
  #sent = 0;
  #folded = 0;
  #dropped = 0;
  #rejected = 0;
  #failed = 0;
  #errors = 0;
  #lastError: ConnectError | undefined;

  constructor(rpc: AnalyticsServiceClient, options: TrackerOptions = {}) {
    if (typeof options !== "object" || options === null) throw new TypeError(`tracker options must be an object, got ${show(options)}`);
    const everyMs = durationToMs(options.flushEvery ?? "1s", "flushEvery", true);
    this.#maxBatch = positiveInt(options.maxBatch ?? 500, "maxBatch", MAX_BATCH);
    this.#maxBuffer = positiveInt(options.maxBuffer ?? 10_000, "maxBuffer", Number.MAX_SAFE_INTEGER);
    if (this.#maxBuffer < this.#maxBatch) {
      throw new RangeError(`maxBuffer (${this.#maxBuffer}) must be at least maxBatch (${this.#maxBatch})`);
    }
    if (options.onError !== undefined && typeof options.onError !== "function") {
      throw new TypeError(`onError must be a function, got ${show(options.onError)}`);
    }
    this.#call = options.timeoutMs === undefined ? {} : { timeoutMs: positiveInt(options.timeoutMs, "timeoutMs", 2 ** 31 - 1) };
    this.#rpc = rpc;
    this.#cap = this.#maxBatch;
    this.#onError = options.onError;
    // setInterval takes at most 2^31 - 1 ms.
    this.#timer = setInterval(() => this.#tick(), Math.min(Math.max(1, everyMs), 2 ** 31 - 1));
    this.#timer.unref();
  }

  /**
   * Buffers one event of `metric` without waiting for anything: a count of
   * `value` (default 1) or one `sample`, with its `dims`, `uniqueId`,
   * `top` labels and `time`. Bad arguments throw `TypeError` / `RangeError`
   * at once. True when the event was buffered, false when it was dropped
   * (`maxBuffer` events are waiting, or the tracker is closed; counted in
   * {@link dropped}).
   */
  track(metric: string, options: TrackOptions = {}): boolean {
    const event = eventOf(metric, options);
    if (this.#closing || this.#events.length >= this.#maxBuffer) {
      this.#dropped++;
      return false;
    }
    this.#events.push(event);
    if (this.#events.length >= this.#cap && !this.#fullQueued) {
      this.#fullQueued = true;
      void this.#serial(() => {
        this.#fullQueued = false;
        return this.#sendFull();
      }).catch(() => undefined);
    }
    return true;
  }

  /** Sends the events buffered when it runs; resolves to true when the service accepted every one. Never rejects: failures are counted. */
  flush(): Promise<boolean> {
    return this.#serial(() => this.#sendAll());
  }

  /** Stops taking events and the timer, then sends what is left; resolves to true when the service accepted it all. */
  close(): Promise<boolean> {
    if (!this.#closing) {
      clearInterval(this.#timer);
      this.#closing = this.#serial(() => this.#sendAll());
    }
    return this.#closing;
  }

  /** `await using tracker = dl.analytics.tracker()`: closes it. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Events buffered, not sent yet. */
  get pending(): number {
    return this.#events.length;
  }
  /** Events the service accepted. */
  get sent(): number {
    return this.#sent;
  }
  /** Of them, events counted in their metric's `__other__` series (its combinations were full). */
  get folded(): number {
    return this.#folded;
  }
  /** Events `track()` refused: the buffer was full, or the tracker closed. */
  get dropped(): number {
    return this.#dropped;
  }
  /** Events the service refused as invalid (the rest of their batch was sent again). */
  get rejected(): number {
    return this.#rejected;
  }
  /** Events lost with a `Track` call that failed. */
  get failed(): number {
    return this.#failed;
  }
  /** `Track` calls that failed. */
  get errors(): number {
    return this.#errors;
  }
  /** The error of the last `Track` call that failed. */
  get lastError(): ConnectError | undefined {
    return this.#lastError;
  }
  get closed(): boolean {
    return this.#closing !== undefined;
  }

  #serial<T>(job: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(job);
    this.#chain = run.catch(() => undefined);
    return run;
  }

  #tick(): void {
    if (this.#tickQueued || this.#closing) return;
    this.#tickQueued = true;
    void this.#serial(() => {
      this.#tickQueued = false;
      return this.#sendAll();
    }).catch(() => undefined);
  }

  #take(n: number): EventInit[] {
    return this.#events.splice(0, Math.min(n, this.#cap));
  }

  async #sendAll(): Promise<boolean> {
    let ok = true;
    for (let left = this.#events.length; left > 0; ) {
      const batch = this.#take(left);
      if (batch.length === 0) break;
      left -= batch.length;
      ok = (await this.#send(batch)) && ok;
    }
    return ok;
  }

  async #sendFull(): Promise<void> {
    while (this.#events.length >= this.#cap) await this.#send(this.#take(this.#cap));
  }

  /** Sends one batch; true when all of it was accepted. */
  async #send(batch: EventInit[]): Promise<boolean> {
    let err: ConnectError;
    try {
      const answer = await this.#rpc.track({ events: batch }, this.#call);
      this.#sent += answer.accepted;
      this.#folded += answer.folded;
      return true;
    } catch (e) {
      err = ConnectError.from(e);
    }
    const { again, rejected } = this.#refused(batch, err);
    this.#errors++;
    this.#lastError = err;
    this.#rejected += rejected;
    const lost = again.length === 0 ? batch.length - rejected : 0;
    this.#failed += lost;
    try {
      this.#onError?.(err, lost + rejected);
    } catch {
      // a listener's own failure is not the tracker's
    }
    let ok = again.length > 0 && rejected === 0;
    for (const b of again) ok = (await this.#send(b)) && ok;
    return ok;
  }

  /** What to send again after a refusal: the batch without the events the
   * service named as invalid, or the batch in smaller ones when it is
   * larger than the service takes. */
  #refused(batch: EventInit[], err: ConnectError): { again: EventInit[][]; rejected: number } {
    const none = { again: [], rejected: 0 };
    if (err.code !== Code.InvalidArgument) return none;
    const violations = err.findDetails(BadRequestSchema).flatMap((d) => d.fieldViolations);
    if (violations.length === 0) return none;
    const whole = violations.filter((v) => v.field === "events");
    if (whole.length > 0 && batch.length > 1) {
      const said = whole.map((v) => BATCH_CAP.exec(v.description)).find((m) => m !== null);
      const n = said ? Number(said[1]) : 0;
      const size = n > 0 && n < batch.length ? n : Math.max(1, Math.floor(batch.length / 2));
      this.#cap = Math.min(this.#cap, size);
      const again: EventInit[][] = [];
      for (let i = 0; i < batch.length; i += size) again.push(batch.slice(i, i + size));
      return { again, rejected: 0 };
    }
    const bad = new Set<number>();
    for (const v of violations) {
      const m = BAD_EVENT.exec(v.field);
      if (!m || Number(m[1]) >= batch.length) return none;
      bad.add(Number(m[1]));
    }
    const keep = batch.filter((_, i) => !bad.has(i));
    return { again: keep.length > 0 ? [keep] : [], rejected: batch.length - keep.length };
  }
}

// ---------------------------------------------------------------------- reads

/** The tracker and the reads on `rpc` (what `dl.analytics` adds to the generated client). */
export function analyticsHelpers(rpc: AnalyticsServiceClient): AnalyticsHelpers {
  return {
    tracker(options = {}) {
      return new Tracker(rpc, options);
    },

    async series(metric, options = {}) {
      const request = {
        metric: metricName(metric),
        ...range(options),
        filters: where(options.where),
        groupBy: groupBy(options.groupBy),
      };
      return seriesOf(await rpc.query(request, callOptions(options)));
    },

    async countUnique(metric, options = {}) {
      const answer = await rpc.unique({ metric: metricName(metric), ...range(options) }, callOptions(options));
      return Number(answer.count);
    },

    async topValues(metric, dimension, options = {}) {
      const k = options.k === undefined ? 10 : positiveInt(options.k, "k", MAX_BATCH);
      const request = { metric: metricName(metric), dimension: label(dimension, "dimension"), k, ...range(options) };
      const answer = await rpc.top(request, callOptions(options));
      return answer.entries.map((e) => ({ value: e.value, count: Number(e.count) }));
    },
  };
}

/** Adds the tracker and the reads to `dl.analytics`'s client (in place). */
export function withAnalyticsHelpers(rpc: AnalyticsServiceClient): AnalyticsClient {
  return Object.assign(rpc, analyticsHelpers(rpc));
}
