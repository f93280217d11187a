/**
 * Worker helpers on QueueService's `Consume` stream, reached as
 * `dl.queue.work(...)` and `dl.queue.consume(queue, ...)`:
 *
 * ```ts
 * // A handler per message, at most 10 at once: acked when it resolves,
 * // nacked (with the error's message as the reason) when it throws.
 * const stop = new AbortController();
 * process.once("SIGTERM", () => stop.abort());
 * const summary = await dl.queue.work("analyses", async (msg) => {
 *   await analyse(msg.payload, { signal: msg.signal });
 * }, { concurrency: 10, signal: stop.signal });
 *
 * // Or a loop: settle each delivery yourself.
 * for await (const msg of dl.queue.consume("analyses", { concurrency: 10, signal })) {
 *   try { await analyse(msg.payload); await msg.ack(); }
 *   catch (e) { await msg.nack(e); }
 * }
 * ```
 *
 * Both hold at most `concurrency` messages leased and not yet settled: the
 * stream starts with that many credits, and each ack or nack, once the
 * service answered it, gives one back. So a slow handler is never sent more
 * than it can take, and nothing is prefetched past `concurrency`.
 *
 * Acks go on the stream itself (`ack` requests, each answered on the stream
 * as `acked`, and giving its credit back at the service): no unary call per
 * message. An ack the service refused rejects as the unary `Ack` would
 * (FAILED_PRECONDITION "lease lost": the message is another consumer's now).
 * When the stream breaks with acks unanswered, those are sent again with the
 * unary `Ack` (acks of one lease are idempotent). An ack made while there
 * is no stream (the helper stopped, or the stream is being reopened) is a
 * unary `Ack`. Nacks and `extend` are unary calls.
 *
 * The stream asks for its messages uncompressed (with `createClient`'s
 * transport): a deflate and an inflate per small message cost more CPU, on
 * both sides, than the rest of a job's trip. (The service sends streams
 * plain anyway unless `server.compress_streams` is set; older services
 * gzipped every message of a stream that accepted gzip.)
 *
 * Delivery is at least once: a message whose handler neither acked nor
 * nacked it before its lease ran out (or whose ack failed) is delivered
 * again, as attempt `n + 1`; past its `max_attempts` it goes to the dead
 * letters. A nack's reason is the error's message (control characters
 * replaced by spaces, cut to 1024 bytes), kept with a dead message.
 *
 * The stream is reopened (after 100 ms, doubling to 5 s) when it breaks
 * with UNAVAILABLE, CANCELED, ABORTED or DEADLINE_EXCEEDED that this side
 * did not cause, e.g. while the service restarts; `onError` hears of each
 * break. Any other error (a bad queue name, a denied key) ends the helper:
 * `work()` rejects with it once its handlers finished, the loop throws it.
 *
 * Stopping (the `signal` aborts, or the loop is left) cancels the stream at
 * once; handlers already running finish and settle their messages, and
 * `work()` then resolves. A message the service was sending at that moment
 * (or one received but not yet handed out) is nacked at once, so it is
 * delivered again without waiting for its lease; its attempt counts.
 */
import { Code, ConnectError, createContextValues, type Client } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampDate } from "@bufbuild/protobuf/wkt";
import type {
  ConsumeRequestSchema,
  ConsumeResponse_Acked,
  Message,
  QueueService,
} from "./gen/datalayer/queue/v1/queue_pb.js";
import { parseDurationMs, type DurationLike } from "./locks.js";
import { UNCOMPRESSED_ANSWERS } from "./transport.js";

/** The typed Connect client of QueueService, as Connect makes it. */
export type QueueServiceClient = Client<typeof QueueService>;

/** `dl.queue`: the QueueService client plus the worker helpers. */
export type QueueClient = QueueServiceClient & QueueWorkers;

type ConsumeRequestInit = MessageInitShape<typeof ConsumeRequestSchema>;

/** Most credits a consumer may hold (the service's bound). */
export const MAX_CONCURRENCY = 10_000;
/** Longest nack reason the service keeps, in bytes. */
export const MAX_REASON_BYTES = 1024;
const RECONNECT_BACKOFF_MS = [100, 5000] as const;
const STOPPED_REASON = "the consumer stopped before handling it";

export interface ConsumeOptions {
  /** Most messages leased and not yet acked or nacked at once (default 10, as the Python client; at most 10000). */
  concurrency?: number;
  /** The lease of each message streamed (default: the message's own, or `queue.default_lease`). */
  leaseDuration?: DurationLike;
  /** Stops the helper: `work()` resolves once its running handlers finished; the loop ends. */
  signal?: AbortSignal;
  /** Hears of each break of the stream before it is reopened and, for
   * `work()`, of each ack or nack that failed (that message is delivered again). */
  onError?: (error: ConnectError, delivery?: Delivery) => void;
}

export type WorkOptions = ConsumeOptions;

/** What `work()` did, when it resolves. */
export interface WorkSummary {
  /** Handlers that resolved, their messages acked. */
  acked: number;
  /** Handlers that threw, their messages nacked (to be retried, or dead)... */
  nacked: number;
  /** ...of which went to the dead letters (their last attempt). */
  deadLettered: number;
  /** Acks and nacks that failed (those messages come back when their lease ends). */
  failed: number;
}

export interface NackOptions {
  /** Try again after this long (default: the message's backoff). */
  retryAfter?: DurationLike;
  /** Send it to the dead letters now. */
  deadLetter?: boolean;
}

/** A handler of `work()`: resolving acks the message, throwing nacks it. */
export type DeliveryHandler = (delivery: Delivery) => unknown | Promise<unknown>;

/** The helpers on `dl.queue`. */
export interface QueueWorkers {
  /**
   * Runs `handler` for each message of `queue`, at most `concurrency` at
   * once; acks a message when its handler resolves, nacks it (reason: the
   * error's message) when it throws. Resolves, with what it did, when
   * `signal` aborts and the running handlers finished; rejects when the
   * stream fails for good (after the running handlers finished).
   */
  work(queue: string, handler: DeliveryHandler, options?: WorkOptions): Promise<WorkSummary>;
  /**
   * The messages of `queue` as they are ready, at most `concurrency` of them
   * not yet settled: ack or nack each (`msg.ack()`, `msg.nack(err)`), or no
   * more come. Ends when `signal` aborts; leaving the loop stops it too.
   * (`dl.queue.consume(requests, options)`, with an iterable of requests,
   * is the raw bidi stream.)
   */
  consume(queue: string, options?: ConsumeOptions): AsyncIterable<Delivery>;
}

/**
 * A nack reason the service accepts: the error's message (or the value as a
 * string), control characters replaced by spaces, at most 1024 bytes of
 * UTF-8 (cut on a character boundary).
 */
export function nackReason(reason: unknown): string {
  let text: string;
  if (reason instanceof Error) text = reason.message || reason.name;
  else if (reason === undefined || reason === null) text = "";
  else text = String(reason);
  text = text.replace(/\p{Cc}+/gu, " ").trim();
  const bytes = Buffer.from(text, "utf8");
  if (bytes.length <= MAX_REASON_BYTES) return text;
  let end = MAX_REASON_BYTES;
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--; // not inside a character
  return bytes.subarray(0, end).toString("utf8");
}

/** The request side of a Consume stream. */
class Requests implements AsyncIterable<ConsumeRequestInit> {
  private items: ConsumeRequestInit[] = [];
  private wake: (() => void) | undefined;
  private closed = false;

  push(item: ConsumeRequestInit) {
    if (this.closed) return;
    this.items.push(item);
    this.wake?.();
  }

  close() {
    this.closed = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ConsumeRequestInit> {
    for (;;) {
      while (this.items.length > 0) yield this.items.shift() as ConsumeRequestInit;
      if (this.closed) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** Errors of a stream that break it without saying anything of the request. */
const TRANSIENT = new Set([Code.Unavailable, Code.Canceled, Code.Aborted, Code.DeadlineExceeded]);

/** An ack sent on a stream, waiting for its `acked` answer. */
interface PendingAck {
  delivery: Delivery;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/** One open Consume stream: its request side and its acks not yet answered. */
interface OpenStream {
  requests: Requests;
  /** By message id. One at a time per id: a second ack of the same id goes unary. */
  acks: Map<string, PendingAck>;
}

/**
 * One queue's Consume stream (reopened after a transient break), keeping
 * `held + credits granted ≤ concurrency`. Internal: made by the helpers.
 * @internal
 */
export class Feed {
  /** Delivered and not yet settled. */
  private held = 0;
  private current: OpenStream | undefined;
  private readonly stopper = new AbortController();
  private readonly givenBack: Promise<void>[] = [];
  readonly counts = { acked: 0, nacked: 0, deadLettered: 0 };

  constructor(
    readonly client: QueueServiceClient,
    private readonly rawConsume: QueueServiceClient["consume"],
    readonly queue: string,
    private readonly concurrency: number,
    private readonly leaseMs: number | undefined,
    private readonly onError: ConsumeOptions["onError"],
    private readonly deliver: (delivery: Delivery) => void,
    signal: AbortSignal | undefined,
  ) {
    if (signal?.aborted) this.stopper.abort();
    else signal?.addEventListener("abort", () => this.stop(), { once: true });
  }

  /** Aborted when the helper stops. */
  get signal(): AbortSignal {
    return this.stopper.signal;
  }

  get stopped(): boolean {
    return this.stopper.signal.aborted;
  }

  stop() {
    this.stopper.abort();
  }

  /**
   * A delivery was acked or nacked (or that failed): one more credit. An
   * ack answered on the current stream gave its credit back at the service
   * already (`creditBack` false); any other settlement sends one.
   */
  release(creditBack = true) {
    this.held--;
    if (creditBack && !this.stopped) this.current?.requests.push({ kind: { case: "credit", value: 1 } });
  }

  /**
   * Acks `delivery`: on the open stream (answered there as `acked`), else,
   * or when the stream breaks before answering, with the unary `Ack`.
   * Releases its credit either way, once answered; rejects as `Ack` would.
   */
  ack(delivery: Delivery): Promise<void> {
    const stream = this.current;
    const id = delivery.id;
    if (stream === undefined || this.stopped || stream.acks.has(id)) return this.unaryAck(delivery);
    return new Promise<void>((resolve, reject) => {
      stream.acks.set(id, { delivery, resolve, reject });
      stream.requests.push({ kind: { case: "ack", value: { messageId: id, leaseToken: delivery.message.leaseToken } } });
    });
  }

  private async unaryAck(delivery: Delivery): Promise<void> {
    try {
      await this.client.ack({ queue: this.queue, messageId: delivery.id, leaseToken: delivery.message.leaseToken });
    } finally {
      this.release();
    }
  }

  /** The answer to an ack sent on `stream`. */
  private answered(stream: OpenStream, acked: ConsumeResponse_Acked) {
    const pending = stream.acks.get(acked.messageId);
    if (!pending) return; // not one of ours (or answered twice): nothing waits for it
    stream.acks.delete(acked.messageId);
    this.release(false);
    if (acked.ok) pending.resolve();
    else pending.reject(new ConnectError(acked.error || `ack of message ${acked.messageId} failed`, (acked.code || Code.Unknown) as Code));
  }

  /** The stream broke (or ended) with these acks unanswered: each is sent
   * again with the unary `Ack`, which also settles its credit. */
  private reack(stream: OpenStream) {
    const pending = [...stream.acks.values()];
    stream.acks.clear();
    for (const p of pending) this.unaryAck(p.delivery).then(p.resolve, p.reject);
  }

  report(error: unknown, delivery?: Delivery) {
    try {
      this.onError?.(ConnectError.from(error), delivery);
    } catch {
      // A failing onError must not stop the helper.
    }
  }

  /** Streams until stopped (resolves) or a lasting error (rejects), once
   * the messages that arrived after the stop are back in the queue. */
  async run(): Promise<void> {
    try {
      await this.stream();
    } finally {
      await Promise.all(this.givenBack);
    }
  }

  private async stream(): Promise<void> {
    let backoff: number = RECONNECT_BACKOFF_MS[0];
    while (!this.stopped) {
      const requests = new Requests();
      const open: OpenStream = { requests, acks: new Map() };
      const call = new AbortController();
      const cancel = () => call.abort();
      this.stopper.signal.addEventListener("abort", cancel, { once: true });
      this.current = open;
      requests.push({
        kind: {
          case: "start",
          value: {
            queue: this.queue,
            credits: this.concurrency - this.held,
            leaseDuration: this.leaseMs === undefined ? undefined : durationFromMs(this.leaseMs),
          },
        },
      });
      try {
        const options = { signal: call.signal, contextValues: createContextValues().set(UNCOMPRESSED_ANSWERS, true) };
        for await (const answer of this.rawConsume(requests, options)) {
          backoff = RECONNECT_BACKOFF_MS[0];
          if (answer.acked) {
            this.answered(open, answer.acked);
            continue;
          }
          if (!answer.message) continue;
          this.held++;
          const delivery = new Delivery(this, answer.message);
          if (this.stopped) {
            this.givenBack.push(delivery.nack(STOPPED_REASON, { retryAfter: 0 }).then(() => {}, (e) => this.report(e, delivery)));
          } else {
            this.deliver(delivery);
          }
        }
        if (this.stopped) return;
        // The service ended the stream (it shuts down): open another.
      } catch (e) {
        if (this.stopped) return;
        const err = ConnectError.from(e);
        if (!TRANSIENT.has(err.code)) throw err;
        this.report(err);
      } finally {
        this.current = undefined;
        requests.close();
        this.stopper.signal.removeEventListener("abort", cancel);
        call.abort();
        this.reack(open);
      }
      await sleep(backoff * (0.5 + Math.random() / 2), this.stopper.signal);
      backoff = Math.min(backoff * 2, RECONNECT_BACKOFF_MS[1]);
    }
  }
}

/** A message streamed to this consumer, leased until it is acked or nacked. */
export class Delivery {
  #feed: Feed;
  #settled = false;

  constructor(
    feed: Feed,
    /** The message as the service sent it (`leaseToken` included). */
    readonly message: Message,
  ) {
    this.#feed = feed;
  }

  /** The queue it came from. */
  get queue(): string {
    return this.#feed.queue;
  }
  get id(): string {
    return this.message.messageId;
  }
  get payload(): Uint8Array {
    return this.message.payload;
  }
  get headers(): { [key: string]: string } {
    return this.message.headers;
  }
  /** 1 for the first delivery. */
  get attempt(): number {
    return this.message.attempt;
  }
  get maxAttempts(): number {
    return this.message.maxAttempts;
  }
  /** When the lease runs out, unless extended. */
  get leaseExpiresAt(): Date | undefined {
    return this.message.leaseExpiresAt && timestampDate(this.message.leaseExpiresAt);
  }
  /** Aborted when the helper stops (the handler may give up early). */
  get signal(): AbortSignal {
    return this.#feed.signal;
  }
  /** Whether `ack` or `nack` was called. */
  get settled(): boolean {
    return this.#settled;
  }

  #claim(what: string) {
    if (this.#settled) throw new Error(`message ${this.id} of ${this.queue} was already acked or nacked (${what})`);
    this.#settled = true;
  }

  async #settle<T>(what: string, call: () => Promise<T>): Promise<T> {
    this.#claim(what);
    try {
      return await call();
    } finally {
      this.#feed.release();
    }
  }

  /**
   * Completes the message, on the helper's Consume stream while one is
   * open (else with the unary `Ack`). FAILED_PRECONDITION "lease lost" if
   * its lease ran out first.
   */
  async ack(): Promise<void> {
    this.#claim("ack");
    await this.#feed.ack(this);
    this.#feed.counts.acked++;
  }

  /**
   * Gives the message back: retried after its backoff (or `retryAfter`), or
   * dead-lettered on its last attempt or with `deadLetter`. `reason` (an
   * error, or text) is kept with a dead message. Answers whether it is dead.
   */
  nack(reason?: unknown, options: NackOptions = {}): Promise<boolean> {
    return this.#settle("nack", async () => {
      const { dead } = await this.#feed.client.nack({
        queue: this.queue,
        messageId: this.id,
        leaseToken: this.message.leaseToken,
        reason: nackReason(reason),
        retryAfter:
          options.retryAfter === undefined ? undefined : durationFromMs(parseDurationMs(options.retryAfter, "retryAfter")),
        deadLetter: options.deadLetter ?? false,
      });
      this.#feed.counts.nacked++;
      if (dead) this.#feed.counts.deadLettered++;
      return dead;
    });
  }

  /** Sets the lease's time left to `leaseDuration`; answers the new expiry. */
  async extend(leaseDuration: DurationLike): Promise<Date> {
    if (this.#settled) throw new Error(`message ${this.id} of ${this.queue} was already acked or nacked (extend)`);
    const answer = await this.#feed.client.extendLease({
      queue: this.queue,
      messageId: this.id,
      leaseToken: this.message.leaseToken,
      leaseDuration: durationFromMs(parseDurationMs(leaseDuration, "leaseDuration")),
    });
    return answer.leaseExpiresAt ? timestampDate(answer.leaseExpiresAt) : new Date(NaN);
  }
}

/**
 * The loop of `dl.queue.consume(queue, ...)`: deliveries as they arrive.
 * Written by hand (not an async generator) so that `return()` ends a
 * `next()` that is waiting.
 */
class Deliveries implements AsyncIterableIterator<Delivery> {
  private feed: Feed | undefined;
  private running: Promise<void> | undefined;
  private readonly buffer: Delivery[] = [];
  private readonly waiting: { resolve: (r: IteratorResult<Delivery, undefined>) => void; reject: (e: unknown) => void }[] = [];
  private failure: { error: unknown } | undefined;
  private ended = false;
  private finishing: Promise<void> | undefined;

  constructor(private readonly make: (deliver: (d: Delivery) => void) => Feed) {}

  [Symbol.asyncIterator]() {
    return this;
  }

  private start(): Feed {
    if (this.feed) return this.feed;
    const feed = this.make((d) => {
      const w = this.waiting.shift();
      if (w) w.resolve({ value: d, done: false });
      else this.buffer.push(d);
    });
    this.feed = feed;
    feed.signal.addEventListener("abort", () => void this.finish(), { once: true });
    this.running = feed.run().then(
      () => this.finish(),
      (e: unknown) => {
        this.failure = { error: e };
        return this.finish();
      },
    );
    return feed;
  }

  /** Ends the loop (once): waiting next() calls get the failure (once) or
   * done; deliveries received but never handed out go back to the queue. */
  private finish(): Promise<void> {
    this.finishing ??= this.close();
    return this.finishing;
  }

  private async close(): Promise<void> {
    this.ended = true;
    this.feed?.stop();
    for (const w of this.waiting.splice(0)) {
      if (this.failure) {
        w.reject(this.failure.error);
        this.failure = undefined;
      } else {
        w.resolve({ value: undefined, done: true });
      }
    }
    const feed = this.feed;
    if (!feed) return;
    await Promise.all(
      this.buffer.splice(0).map((d) => d.nack(STOPPED_REASON, { retryAfter: 0 }).then(() => {}, (e) => feed.report(e, d))),
    );
  }

  next(): Promise<IteratorResult<Delivery, undefined>> {
    const feed = this.ended ? this.feed : this.start();
    if (feed && !this.ended && !feed.stopped) {
      const d = this.buffer.shift();
      if (d) return Promise.resolve({ value: d, done: false });
    }
    if (!feed || this.ended || feed.stopped) {
      if (this.failure) {
        const { error } = this.failure;
        this.failure = undefined;
        return Promise.reject(error);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  async return(): Promise<IteratorResult<Delivery, undefined>> {
    if (this.feed) {
      this.feed.stop();
      await this.finish();
      await this.running;
    } else {
      this.ended = true;
    }
    this.failure = undefined;
    return { value: undefined, done: true };
  }
}

function concurrencyOf(options: ConsumeOptions): number {
  const n = options.concurrency ?? 10;
  if (!Number.isInteger(n) || n < 1 || n > MAX_CONCURRENCY) {
    throw new RangeError(`concurrency must be an integer from 1 to ${MAX_CONCURRENCY}, got ${n}`);
  }
  return n;
}

function leaseMsOf(options: ConsumeOptions): number | undefined {
  return options.leaseDuration === undefined ? undefined : parseDurationMs(options.leaseDuration, "leaseDuration");
}

/** The helpers of `dl.queue`, over its client (`queue.consume` must be the raw bidi method). */
export function queueWorkers(queue: QueueServiceClient): QueueWorkers {
  const rawConsume = queue.consume;
  const feed = (name: string, options: ConsumeOptions, deliver: (d: Delivery) => void) =>
    new Feed(queue, rawConsume, name, concurrencyOf(options), leaseMsOf(options), options.onError, deliver, options.signal);

  async function work(name: string, handler: DeliveryHandler, options: WorkOptions = {}): Promise<WorkSummary> {
    let failed = 0;
    const running = new Set<Promise<void>>();
    const f = feed(name, options, (delivery) => {
      const run = (async () => {
        let threw = false;
        let error: unknown;
        try {
          await handler(delivery);
        } catch (e) {
          threw = true;
          error = e;
        }
        if (delivery.settled) return; // the handler settled it itself
        try {
          if (threw) await delivery.nack(error);
          else await delivery.ack();
        } catch (e) {
          failed++;
          f.report(e, delivery);
        }
      })();
      running.add(run);
      void run.finally(() => running.delete(run));
    });
    let failure: { error: unknown } | undefined;
    try {
      await f.run();
    } catch (e) {
      failure = { error: e };
    }
    f.stop();
    while (running.size > 0) await Promise.all(running);
    if (failure) throw failure.error;
    return { ...f.counts, failed };
  }

  return {
    work,
    consume(name: string, options: ConsumeOptions = {}): AsyncIterable<Delivery> {
      concurrencyOf(options);
      leaseMsOf(options);
      return {
        [Symbol.asyncIterator]: () =>
          new Deliveries((deliver) => feed(name, options, deliver)),
      };
    },
  };
}

/**
 * `queue` with the helpers attached: `consume(name: string, ...)` is the
 * loop, `consume(requests, ...)` still the raw bidi stream.
 */
export function withQueueWorkers(queue: QueueServiceClient): QueueClient {
  const rawConsume = queue.consume;
  const helpers = queueWorkers(queue);
  const consume = (first: unknown, options?: unknown) =>
    typeof first === "string"
      ? helpers.consume(first, options as ConsumeOptions | undefined)
      : rawConsume(first as AsyncIterable<ConsumeRequestInit>, options as Parameters<typeof rawConsume>[1]);
  return Object.assign(queue, { work: helpers.work, consume }) as unknown as QueueClient;
}
