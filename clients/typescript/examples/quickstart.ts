import { create } from "@bufbuild/protobuf";
import {
  BadRequestSchema,
  Code,
  ConnectError,
  LeaseStatus,
  LimitSchema,
  createClient,
  retryAfterMs,
} from "@datalayer/client";

const dl = createClient({
  baseUrl: process.env.DATALAYER_URL ?? "http://localhost:50051",
  timeoutMs: 2000, // per call, retries included
  retries: 3, // of UNAVAILABLE that carries RetryInfo (safe to repeat), with backoff
});

// Rate limit: 10 calls per minute for user:42 (GCRA).
const tenAMinute = create(LimitSchema, {
  algorithm: { case: "gcra", value: { limit: 10n, period: { seconds: 60n } } },
});
const answer = await dl.ratelimit.check({
  key: "user:42",
  limitSource: { case: "limit", value: tenAMinute },
});
console.log(`allowed=${answer.allowed} remaining=${answer.remaining}`);

// Cache get-or-set: one caller computes a missing value, the others wait.
async function getOrSet(key: string, compute: () => Promise<Uint8Array>): Promise<Uint8Array> {
  for (;;) {
    const got = await dl.cache.getOrLease({ key });
    if (got.status === LeaseStatus.HIT || got.status === LeaseStatus.STALE) {
      return got.entry!.value;
    }
    if (got.status === LeaseStatus.LEASED) {
      const value = await compute();
      await dl.cache.set({ key, value, ttl: { seconds: 300n }, leaseToken: got.leaseToken });
      return value;
    }
    const waitMs = Number(got.retryAfter?.seconds ?? 0n) * 1000 + (got.retryAfter?.nanos ?? 0) / 1e6;
    await new Promise((resolve) => setTimeout(resolve, waitMs)); // WAIT
  }
}

async function computeReport(): Promise<Uint8Array> {
  console.log("computing the report");
  return new TextEncoder().encode("42 trades today");
}

const decoder = new TextDecoder();
console.log(decoder.decode(await getOrSet("report:today", computeReport)));
console.log(decoder.decode(await getOrSet("report:today", computeReport))); // a hit

// Errors are ConnectErrors carrying the service's google.rpc details.
try {
  await dl.ratelimit.check({ key: "", limitSource: { case: "limit", value: tenAMinute } });
} catch (e) {
  const err = ConnectError.from(e);
  if (err.code === Code.InvalidArgument) {
    for (const badRequest of err.findDetails(BadRequestSchema)) {
      for (const v of badRequest.fieldViolations) {
        console.log(`bad request: ${v.field}: ${v.description}`);
      }
    }
  } else if (err.code === Code.Unavailable) {
    console.log(`store down, retry in ${retryAfterMs(err)} ms`);
  } else {
    throw err;
  }
}

dl.close();
