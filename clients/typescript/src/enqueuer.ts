/**
 * `dl.queue.add(queue, message)`: enqueue one message, sent together with
 * the others added in the same turn of the event loop.
 *
 * ```ts
 * // 50 producers, one job each per call: one EnqueueBatch per turn.
 * const { messageId } = await dl.queue.add("analyses", { payload, maxAttempts: 5 });
 * ```
 *
 * A unary `Enqueue` costs a Node process far more CPU than the service
 * spends on it, so bots that enqueue one job per event pay for the call,
 * not the job. `add` queues the message and, once the current turn ends
 * (`setImmediate`), sends what is queued per queue as `EnqueueBatch`
 * calls of at most `MAX_ADD_BATCH` messages, with `allow_partial`: each
 * message gets its own answer, in order. One call per queue is in flight
 * at a time: later adds wait for it to answer and go together in the
 * next, so under load batches grow instead of calls multiplying, an add
 * waits at most about one call longer, and the messages of one client go
 * in in the order they were added (as FIFO as the queue: priorities,
 * delays and groups apply as usual). What each caller sees is what a
 * unary `Enqueue` of its message would have given:
 *
 * - its `{ messageId, deduplicated }`;
 * - RESOURCE_EXHAUSTED when the queue filled before its message (the
 *   messages before it are in, those after it are not);
 * - when the batch is refused as a whole for bad input (nothing of it was
 *   enqueued), each message is sent again alone, so one caller's bad
 *   message is only that caller's INVALID_ARGUMENT;
 * - any other failure (UNAVAILABLE, a deadline, a denied key) rejects
 *   every message of the batch with that error. As with a unary call, a
 *   message whose call failed mid-way may have been enqueued: give it a
 *   `dedupId` to make a retry safe.
 *
 * A message added alone in its turn goes as a unary `Enqueue`.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { EnqueueResponse, MessageSpecSchema } from "./gen/datalayer/queue/v1/queue_pb.js";
import type { QueueServiceClient } from "./worker.js";

/** Most messages per `EnqueueBatch` (the service's default `queue.max_batch`). */
export const MAX_ADD_BATCH = 100;

/** A message as `Enqueue` takes it. */
export type MessageSpecInit = MessageInitShape<typeof MessageSpecSchema>;

export interface QueueAdder {
  /**
   * Enqueues `message` on `queue`, batched with the other messages added in
   * this turn of the event loop; resolves as the unary `Enqueue` would.
   */
  add(queue: string, message: MessageSpecInit): Promise<EnqueueResponse>;
}

interface Pending {
  message: MessageSpecInit;
  resolve: (r: EnqueueResponse) => void;
  reject: (e: unknown) => void;
}

export function queueAdder(queue: QueueServiceClient, maxBatch = MAX_ADD_BATCH): QueueAdder {
  if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new RangeError(`maxBatch must be a positive integer, got ${maxBatch}`);
  const pending = new Map<string, Pending[]>();
  let scheduled = false;

  async function alone(name: string, p: Pending): Promise<void> {
    try {
      p.resolve(await queue.enqueue({ queue: name, message: p.message }));
    } catch (e) {
      p.reject(e);
    }
  }

  async function together(name: string, items: Pending[]): Promise<void> {
    if (items.length === 1) return alone(name, items[0]);
    let results: EnqueueResponse[];
    try {
      const answer = await queue.enqueueBatch({ queue: name, messages: items.map((p) => p.message), allowPartial: true });
      results = answer.results;
    } catch (e) {
      // Validation runs before anything is stored: nothing of the batch is
      // in, and alone each message gets its own answer (one after the
      // other, in order).
      if (ConnectError.from(e).code === Code.InvalidArgument) {
        for (const p of items) await alone(name, p);
      } else {
        for (const p of items) p.reject(e);
      }
      return;
    }
    if (results.length !== items.length) {
      const e = new ConnectError(`EnqueueBatch answered ${results.length} results for ${items.length} messages`, Code.Internal);
      for (const p of items) p.reject(e);
      return;
    }
    items.forEach((p, i) => {
      const r = results[i];
      if (r.queueFull) {
        p.reject(new ConnectError(`queue ${name} is full (queue.max_messages): this message was not enqueued`, Code.ResourceExhausted));
      } else {
        p.resolve(r);
      }
    });
  }

  /** Queues with a call in flight: one at a time keeps the adds in order. */
  const busy = new Set<string>();

  /** Sends the next batch queued for `name`, unless a call is in flight. */
  function send(name: string): void {
    const items = pending.get(name);
    if (!items || busy.has(name)) return;
    const batch = items.splice(0, maxBatch);
    if (items.length === 0) pending.delete(name);
    busy.add(name);
    void together(name, batch).finally(() => {
      busy.delete(name);
      send(name);
    });
  }

  function flush(): void {
    scheduled = false;
    for (const name of [...pending.keys()]) send(name);
  }

  return {
    add(name: string, message: MessageSpecInit): Promise<EnqueueResponse> {
      return new Promise((resolve, reject) => {
        let items = pending.get(name);
        if (!items) pending.set(name, (items = []));
        items.push({ message, resolve, reject });
        if (!scheduled) {
          scheduled = true;
          setImmediate(flush);
        }
      });
    },
  };
}
