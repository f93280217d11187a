// The hand-written layer on its own (no datalayer binary): bearer token,
// the retry rule (UNAVAILABLE only with RetryInfo, waiting at least its
// delay, or when the request never left the client; never an UNAVAILABLE
// without RetryInfo, whose outcome is unknown, nor DEADLINE_EXCEEDED),
// backoff bounds; unary calls answered as Connect's own gRPC transport
// answers them. A plain node:http2 server plays the gRPC server.
import assert from "node:assert/strict";
import { once } from "node:events";
import * as http2 from "node:http2";
import * as net from "node:net";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import * as zlib from "node:zlib";
import { create, toBinary } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { createClient as createConnectClient } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import {
  CheckResponseSchema,
  Code,
  ConnectError,
  RetryInfoSchema,
  backoffMs,
  RateLimitService,
  createClient,
  neverSent,
  retryAfterMs,
  retryable,
} from "@datalayer/client";
import { StatusSchema } from "@datalayer/client/gen/google/rpc/status_pb";

let server: http2.Http2Server;
let baseUrl = "";
/** The next `failures` calls fail, as `failure` says. */
let failures = 0;
/** `retry`: UNAVAILABLE with RetryInfo (100 ms); `unknown`: UNAVAILABLE
 * without it (a write that may have been applied); `deadline`:
 * DEADLINE_EXCEEDED. */
let failure: "retry" | "unknown" | "deadline" = "retry";
const seen: http2.IncomingHttpHeaders[] = [];

function base64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("base64").replace(/=+$/, "");
}

/** Trailers-only failure headers for the current `failure`. */
function failureHeaders(): http2.OutgoingHttpHeaders {
  const head = { ":status": 200, "content-type": "application/grpc" };
  if (failure === "deadline") {
    return { ...head, "grpc-status": String(Code.DeadlineExceeded), "grpc-message": "deadline" };
  }
  if (failure === "unknown") {
    const message = "store: the store did not answer; the write may have been applied";
    const status = create(StatusSchema, { code: Code.Unavailable, message });
    return {
      ...head,
      "grpc-status": String(Code.Unavailable),
      "grpc-message": encodeURIComponent(message),
      "grpc-status-details-bin": base64(toBinary(StatusSchema, status)),
    };
  }
  const detail = anyPack(RetryInfoSchema, create(RetryInfoSchema, { retryDelay: create(DurationSchema, { nanos: 100_000_000 }) }));
  const status = create(StatusSchema, { code: Code.Unavailable, message: "store down", details: [detail] });
  return {
    ...head,
    "grpc-status": String(Code.Unavailable),
    "grpc-message": "store down",
    "grpc-status-details-bin": base64(toBinary(StatusSchema, status)),
  };
}

function frame(bytes: Uint8Array): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(bytes.length, 1);
  return Buffer.concat([head, Buffer.from(bytes)]);
}

before(async () => {
  server = http2.createServer();
  server.on("stream", (stream, headers) => {
    seen.push(headers);
    stream.on("data", () => {});
    stream.on("end", () => {
      if (failures > 0) {
        failures--;
        stream.respond(failureHeaders(), { endStream: true });
        return;
      }
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      stream.end(frame(toBinary(CheckResponseSchema, create(CheckResponseSchema, { allowed: true, remaining: 7n }))));
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(() => {
  server.close();
});

test("the token is sent as authorization: Bearer", async () => {
  const dl = createClient({ baseUrl, token: "s3cret" });
  try {
    const answer = await dl.ratelimit.check({ key: "k" });
    assert.equal(answer.remaining, 7n);
    assert.equal(seen.at(-1)?.["authorization"], "Bearer s3cret");
    assert.equal(seen.at(-1)?.[":path"], "/datalayer.ratelimit.v1.RateLimitService/Check");
  } finally {
    dl.close();
  }
});

test("no token, no authorization header; bare host:port works", async () => {
  const dl = createClient({ baseUrl: baseUrl.replace("http://", "") });
  try {
    await dl.ratelimit.check({ key: "k" });
    assert.equal(seen.at(-1)?.["authorization"], undefined);
  } finally {
    dl.close();
  }
});

test("UNAVAILABLE is retried no sooner than RetryInfo says", async () => {
  failures = 2;
  const before = seen.length;
  const dl = createClient({ baseUrl, retries: 3 });
  try {
    const started = Date.now();
    const answer = await dl.ratelimit.check({ key: "k" });
    assert.equal(answer.allowed, true);
    assert.equal(seen.length - before, 3);
    assert.ok(Date.now() - started >= 200, "two waits of at least 100 ms");
  } finally {
    dl.close();
  }
});

test("retries give up with the last error and its details", async () => {
  failures = 5;
  const dl = createClient({ baseUrl, retries: 1 });
  try {
    await assert.rejects(dl.ratelimit.check({ key: "k" }), (e: unknown) => {
      assert.ok(e instanceof ConnectError);
      assert.equal(e.code, Code.Unavailable);
      assert.equal(retryAfterMs(e), 100);
      return true;
    });
    assert.equal(failures, 3);
  } finally {
    failures = 0;
    dl.close();
  }
});

test("backoff grows, is capped and adds RetryInfo", () => {
  const opts = { initialBackoffMs: 100, maxBackoffMs: 300 };
  for (const [attempt, cap] of [[0, 100], [1, 200], [2, 300], [5, 300]]) {
    for (let i = 0; i < 50; i++) {
      const d = backoffMs(attempt, undefined, opts);
      assert.ok(d >= 0 && d <= cap, `${attempt}: ${d}`);
    }
  }
  for (let i = 0; i < 50; i++) {
    const d = backoffMs(3, 250, opts);
    assert.ok(d >= 250 && d <= 550);
  }
});


test("UNAVAILABLE without RetryInfo (outcome unknown) is thrown at once, not retried", async () => {
  failures = 3;
  failure = "unknown";
  const before = seen.length;
  const dl = createClient({ baseUrl, retries: 3 });
  try {
    await assert.rejects(dl.ratelimit.check({ key: "k" }), (e: unknown) => {
      assert.ok(e instanceof ConnectError);
      assert.equal(e.code, Code.Unavailable);
      assert.equal(retryAfterMs(e), undefined);
      assert.match(e.rawMessage, /may have been applied/);
      return true;
    });
    assert.equal(seen.length - before, 1, "one attempt");
    assert.equal(failures, 2);
  } finally {
    failures = 0;
    failure = "retry";
    dl.close();
  }
});

test("DEADLINE_EXCEEDED is never retried", async () => {
  failures = 3;
  failure = "deadline";
  const before = seen.length;
  const dl = createClient({ baseUrl, retries: 3 });
  try {
    await assert.rejects(dl.ratelimit.check({ key: "k" }), (e: unknown) => {
      assert.ok(e instanceof ConnectError);
      assert.equal(e.code, Code.DeadlineExceeded);
      return true;
    });
    assert.equal(seen.length - before, 1, "one attempt");
  } finally {
    failures = 0;
    failure = "retry";
    dl.close();
  }
});

test("a refused connection (the request never left the client) is retried", async () => {
  // Nothing listens on the port at first: the connection is refused, so no
  // request byte was sent and a retry repeats nothing.
  const probe = net.createServer();
  probe.listen(0, "127.0.0.1");
  await once(probe, "listening");
  const { port } = probe.address() as AddressInfo;
  probe.close();
  await once(probe, "close");
  let attempts = 0;
  const refusedErrors: ConnectError[] = [];
  const dl = createClient({
    baseUrl: `http://127.0.0.1:${port}`,
    retries: 20,
    initialBackoffMs: 40,
    maxBackoffMs: 100,
    timeoutMs: 5000,
    interceptors: [
      (next) => async (req) => {
        attempts++;
        try {
          return await next(req);
        } catch (e) {
          refusedErrors.push(ConnectError.from(e));
          throw e;
        }
      },
    ],
  });
  const late = http2.createServer();
  late.on("stream", (stream) => {
    stream.on("data", () => {});
    stream.on("end", () => {
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      stream.end(frame(toBinary(CheckResponseSchema, create(CheckResponseSchema, { allowed: true, remaining: 3n }))));
    });
  });
  const listening = new Promise<void>((resolve) => setTimeout(() => late.listen(port, "127.0.0.1", resolve), 300));
  try {
    const answer = await dl.ratelimit.check({ key: "k" });
    assert.equal(answer.remaining, 3n);
    assert.ok(attempts >= 2, `attempts: ${attempts}`);
    assert.ok(refusedErrors.length >= 1);
    for (const e of refusedErrors) {
      assert.equal(e.code, Code.Unavailable, e.message);
      assert.ok(neverSent(e), `never sent: ${e.message}`);
      assert.ok(retryable(e));
    }
  } finally {
    await listening;
    dl.close();
    late.close();
  }
});

test("the retry rule: only UNAVAILABLE with RetryInfo, or never sent", () => {
  const retryInfo = { desc: RetryInfoSchema, value: { retryDelay: { seconds: 0n, nanos: 250_000_000 } } };
  const noDelay = { desc: RetryInfoSchema, value: {} };
  const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED", syscall: "connect" });
  const reset = Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET", syscall: "read" });
  const cases: [string, ConnectError, boolean][] = [
    ["UNAVAILABLE with RetryInfo", new ConnectError("down", Code.Unavailable, undefined, [retryInfo]), true],
    ["UNAVAILABLE with a RetryInfo without delay", new ConnectError("down", Code.Unavailable, undefined, [noDelay]), true],
    ["UNAVAILABLE without RetryInfo: outcome unknown", new ConnectError("may have been applied", Code.Unavailable), false],
    ["UNAVAILABLE: connection refused", new ConnectError("refused", Code.Unavailable, undefined, undefined, refused), true],
    [
      "UNAVAILABLE wrapping a refusal",
      new ConnectError("x", Code.Unavailable, undefined, undefined, new ConnectError("refused", Code.Unavailable, undefined, undefined, refused)),
      true,
    ],
    ["UNAVAILABLE: connection reset (maybe sent)", new ConnectError("reset", Code.Unavailable, undefined, undefined, reset), false],
    ["UNAVAILABLE: refused stream (sent)", new ConnectError("http/2 stream closed with error code REFUSED_STREAM (0x7)", Code.Unavailable), false],
    ["DEADLINE_EXCEEDED, even with RetryInfo", new ConnectError("late", Code.DeadlineExceeded, undefined, [retryInfo]), false],
    ["DEADLINE_EXCEEDED: connection refused", new ConnectError("late", Code.DeadlineExceeded, undefined, undefined, refused), false],
    ["RESOURCE_EXHAUSTED with RetryInfo (a quota)", new ConnectError("quota", Code.ResourceExhausted, undefined, [retryInfo]), false],
    ["ABORTED", new ConnectError("aborted", Code.Aborted, undefined, undefined, refused), false],
    ["INTERNAL", new ConnectError("bug", Code.Internal), false],
  ];
  for (const [name, err, expected] of cases) {
    assert.equal(retryable(err), expected, name);
  }
  const answered = new ConnectError("refused", Code.Unavailable, new Headers({ "x-from": "server" }), undefined, refused);
  assert.equal(neverSent(answered), false, "an error with response metadata came from the server");
  assert.equal(retryAfterMs(new ConnectError("down", Code.Unavailable, undefined, [retryInfo])), 250);
});

// The unary path of createClient (src/transport.ts) against Connect's own
// gRPC transport, on the same scripted answers: the same results, codes,
// messages, details and metadata, and the same request headers.
test("unary calls answer as Connect's gRPC transport does, answer by answer", async () => {
  const answer = toBinary(CheckResponseSchema, create(CheckResponseSchema, { allowed: true, remaining: 5n }));
  const heads: http2.IncomingHttpHeaders[] = [];
  const grpc = { ":status": 200, "content-type": "application/grpc" };
  const retry = anyPack(RetryInfoSchema, create(RetryInfoSchema, { retryDelay: create(DurationSchema, { seconds: 1n }) }));
  const details = base64(toBinary(StatusSchema, create(StatusSchema, { code: Code.ResourceExhausted, message: "slow down ✋", details: [retry] })));
  const scripted = http2.createServer();
  scripted.on("stream", (stream, headers) => {
    heads.push(headers);
    stream.on("error", () => {}); // the resets the scenarios make, on this side
    stream.on("data", () => {});
    stream.on("end", () => {
      const withTrailers = (trailers: http2.OutgoingHttpHeaders, ...bodies: Buffer[]) => {
        stream.respond({ ...grpc, "x-head": "h" }, { waitForTrailers: true });
        stream.on("wantTrailers", () => stream.sendTrailers(trailers));
        for (const b of bodies.slice(0, -1)) stream.write(b);
        stream.end(bodies.at(-1));
      };
      switch (headers["x-scenario"]) {
        case "ok":
          return withTrailers({ "grpc-status": "0", "x-trail": "t" }, frame(answer));
        case "gzip": {
          const zipped = zlib.gzipSync(answer);
          const head = Buffer.alloc(5);
          head[0] = 1;
          head.writeUInt32BE(zipped.length, 1);
          stream.respond({ ...grpc, "grpc-encoding": "gzip" }, { waitForTrailers: true });
          stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
          return stream.end(Buffer.concat([head, zipped]));
        }
        case "trailers-only":
          return stream.respond(
            { ...grpc, "grpc-status": String(Code.ResourceExhausted), "grpc-message": encodeURIComponent("slow down ✋"), "grpc-status-details-bin": details, "x-meta": "m" },
            { endStream: true },
          );
        case "error-in-trailers":
          return withTrailers({ "grpc-status": String(Code.NotFound), "grpc-message": "no such key", "x-trail": "t" }, Buffer.alloc(0));
        case "http-503":
          return stream.respond({ ":status": 503, "content-type": "text/plain" }, { endStream: true });
        case "content-type":
          return stream.respond({ ":status": 200, "content-type": "text/html" }, { endStream: true });
        case "two-messages":
          return withTrailers({ "grpc-status": "0" }, frame(answer), frame(answer));
        case "no-message":
          return withTrailers({ "grpc-status": "0" }, Buffer.alloc(0));
        case "no-status":
          return withTrailers({ "x-other": "1" }, frame(answer));
        case "refused":
          return stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
        case "silent":
          return; // never answers: the deadline or the signal ends it
      }
    });
  });
  scripted.listen(0, "127.0.0.1");
  await once(scripted, "listening");
  const url = `http://127.0.0.1:${(scripted.address() as AddressInfo).port}`;
  const ours = createClient({ baseUrl: url, retries: 0, timeoutMs: 0 });
  const theirSession = new Http2SessionManager(url);
  const theirs = createConnectClient(RateLimitService, createGrpcTransport({ baseUrl: url, sessionManager: theirSession }));
  type Outcome = { ok: unknown } | { code: Code; message: string; details: unknown[]; metadata: [string, string][] };
  const outcome = async (call: () => Promise<{ remaining: bigint }>): Promise<Outcome> => {
    try {
      return { ok: (await call()).remaining };
    } catch (e) {
      const err = ConnectError.from(e);
      const metadata = [...err.metadata.entries()].filter(([k]) => k.startsWith("x-") || k.startsWith("grpc-status"));
      return { code: err.code, message: err.rawMessage, details: err.findDetails(RetryInfoSchema), metadata: metadata.sort() };
    }
  };
  const expected: Record<string, Code> = {
    "trailers-only": Code.ResourceExhausted,
    "error-in-trailers": Code.NotFound,
    "http-503": Code.Unavailable,
    "content-type": Code.Unknown,
    "two-messages": Code.Unimplemented,
    "no-message": Code.Unimplemented,
    "no-status": Code.Internal,
    refused: Code.Internal, // Node reports the reset as a stream error first, in both
  };
  try {
    for (const scenario of ["ok", "gzip", "trailers-only", "error-in-trailers", "http-503", "content-type", "two-messages", "no-message", "no-status", "refused"]) {
      const headers = { "x-scenario": scenario };
      const a = await outcome(() => ours.ratelimit.check({ key: "k" }, { headers }));
      const b = await outcome(() => theirs.check({ key: "k" }, { headers }));
      assert.deepEqual(a, b, scenario);
      if (scenario === "ok" || scenario === "gzip") assert.deepEqual(a, { ok: 5n }, scenario);
      else assert.equal((a as { code: Code }).code, expected[scenario], `${scenario}: ${JSON.stringify(a, (_, v) => (typeof v === "bigint" ? String(v) : v))}`);
    }
    const trailersOnly = await outcome(() => ours.ratelimit.check({ key: "k" }, { headers: { "x-scenario": "trailers-only" } }));
    assert.deepEqual(trailersOnly, {
      code: Code.ResourceExhausted,
      message: "slow down ✋",
      details: [create(RetryInfoSchema, { retryDelay: create(DurationSchema, { seconds: 1n }) })],
      metadata: [
        ["grpc-status", String(Code.ResourceExhausted)],
        ["grpc-status-details-bin", details],
        ["x-meta", "m"],
      ],
    });
    const [h1, h2] = heads.slice(-3, -1); // the two "refused" requests
    for (const k of ["content-type", "te", "grpc-accept-encoding", ":method", ":path", ":scheme"]) {
      assert.equal(h1[k], h2[k], k);
    }
    assert.match(String(h1["user-agent"]), /^connect-es\/2/);

    // The deadline and the caller's signal end a call the same way.
    const silent = { "x-scenario": "silent" };
    const late = [
      await outcome(() => ours.ratelimit.check({ key: "k" }, { headers: silent, timeoutMs: 150 })),
      await outcome(() => theirs.check({ key: "k" }, { headers: silent, timeoutMs: 150 })),
    ];
    assert.deepEqual(late[0], late[1]);
    assert.equal((late[0] as { code: Code }).code, Code.DeadlineExceeded);
    assert.equal(heads.at(-1)?.["grpc-timeout"], heads.at(-2)?.["grpc-timeout"]);
    const cancelled = [];
    for (const call of [
      (signal: AbortSignal) => ours.ratelimit.check({ key: "k" }, { headers: silent, signal }),
      (signal: AbortSignal) => theirs.check({ key: "k" }, { headers: silent, signal }),
    ]) {
      const abort = new AbortController();
      setTimeout(() => abort.abort(), 100);
      cancelled.push(await outcome(() => call(abort.signal)));
    }
    assert.deepEqual(cancelled[0], cancelled[1]);
    assert.equal((cancelled[0] as { code: Code }).code, Code.Canceled);
  } finally {
    ours.close();
    theirSession.abort();
    scripted.close();
  }
});
