// The hand-written layer on its own (no datalayer binary): bearer token,
// RetryInfo-honouring retries, backoff bounds. A plain node:http2 server
// plays the gRPC server.
import assert from "node:assert/strict";
import { once } from "node:events";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { CheckResponseSchema, Code, ConnectError, RetryInfoSchema, backoffMs, createClient, retryAfterMs } from "@datalayer/client";
import { StatusSchema } from "@datalayer/client/gen/google/rpc/status_pb";

let server: http2.Http2Server;
let baseUrl = "";
let failures = 0;
const seen: http2.IncomingHttpHeaders[] = [];

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
        const detail = anyPack(RetryInfoSchema, create(RetryInfoSchema, { retryDelay: create(DurationSchema, { nanos: 100_000_000 }) }));
        const status = create(StatusSchema, { code: Code.Unavailable, message: "store down", details: [detail] });
        stream.respond(
          {
            ":status": 200,
            "content-type": "application/grpc",
            "grpc-status": String(Code.Unavailable),
            "grpc-message": "store down",
            "grpc-status-details-bin": Buffer.from(toBinary(StatusSchema, status)).toString("base64").replace(/=+$/, ""),
          },
          { endStream: true },
        );
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

