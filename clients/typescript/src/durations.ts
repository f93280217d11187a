/**
 * Durations of the rate-limit, cache and session helpers (`./ratelimit.ts`,
 * `./cache.ts`): a string of one or more `<number><unit>` parts, spaces
 * allowed (`"10s"`, `"1 m"`, `"500ms"`, `"1m30s"`, `"1.5s"`; units `ns`,
 * `us`, `ms`, `s`, `m`, `h`, `d`), or a number of **milliseconds** (as in
 * Upstash's clients, `setTimeout` and the lock helpers).
 *
 * Checked before anything is sent: a value of another type is a
 * `TypeError`; a malformed string, a string without a unit (`"10"`: seconds
 * or milliseconds?), a negative, `NaN` or infinite number, or more than
 * `google.protobuf.Duration` holds, a `RangeError`.
 */
import type { DurationLike } from "./locks.js";

export type { DurationLike };

const UNIT_MS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  "µs": 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};
// "ms" before "m" and "s", so that "10ms" is not "10m" then "s".
const PART = /\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|µs|ms|s|m|h|d)\s*/y;
/** google.protobuf.Duration's range, in ms. */
const MAX_MS = 315_576_000_000 * 1000;

/**
 * `value` in milliseconds (a float: `"250us"` is `0.25`). `what` names the
 * argument in the error. `positive`: zero is refused too.
 */
export function durationToMs(value: DurationLike, what = "duration", positive = false): number {
  let ms: number;
  if (typeof value === "number") {
    if (!Number.isFinite(value) || value < 0) {
      throw new RangeError(`${what} must be a finite, non-negative number of milliseconds, got ${value}`);
    }
    ms = value;
  } else if (typeof value === "string") {
    const text = value.trim();
    ms = 0;
    let pos = 0;
    PART.lastIndex = 0;
    for (let m = PART.exec(text); m; m = PART.exec(text)) {
      ms += Number(m[1]) * UNIT_MS[m[2]];
      pos = PART.lastIndex;
    }
    if (text.length === 0 || pos !== text.length) {
      const hint = text !== "" && !Number.isNaN(Number(text)) ? " (add a unit: a bare number is ambiguous)" : "";
      throw new RangeError(
        `${what} must be a duration such as "10s", "1 m", "500ms" or "2h" (units ns, us, ms, s, m, h, d), ` +
          `or a number of milliseconds, got ${JSON.stringify(value)}${hint}`,
      );
    }
  } else {
    throw new TypeError(
      `${what} must be a duration such as "10s" or a number of milliseconds, got ${value === null ? "null" : typeof value}`,
    );
  }
  if (ms > MAX_MS) throw new RangeError(`${what} is too long, got ${JSON.stringify(value)}`);
  if (positive && ms === 0) throw new RangeError(`${what} must be longer than zero, got ${JSON.stringify(value)}`);
  return ms;
}

/** A `google.protobuf.Duration` init of `ms` milliseconds (exact to the nanosecond). */
export function durationInit(ms: number): { seconds: bigint; nanos: number } {
  const totalNs = BigInt(Math.round(ms * 1e6));
  return { seconds: totalNs / 1_000_000_000n, nanos: Number(totalNs % 1_000_000_000n) };
}

/** A `google.protobuf.Duration` in milliseconds (0 when absent). */
export function msOf(d: { seconds: bigint; nanos: number } | undefined): number {
  return d ? Number(d.seconds) * 1000 + d.nanos / 1e6 : 0;
}

/** A string naming `value` in an error message. */
export function show(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "bigint") return `${value}n`;
  return String(value);
}

/** A whole number of units at least `min`: `TypeError` for a non-number, `RangeError` otherwise. */
export function count(value: unknown, what: string, min: number): number {
  if (typeof value !== "number") throw new TypeError(`${what} must be a number, got ${show(value)}`);
  if (!Number.isSafeInteger(value) || value < min) {
    throw new RangeError(`${what} must be a whole number of at least ${min}, got ${show(value)}`);
  }
  return value;
}

/** A non-empty string: `TypeError` for a non-string, `RangeError` for `""`. */
export function nonEmpty(value: unknown, what: string): string {
  if (typeof value !== "string") throw new TypeError(`${what} must be a string, got ${show(value)}`);
  if (value.length === 0) throw new RangeError(`${what} must not be empty`);
  return value;
}

export const sleepMs = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
