// The hand-written helpers that need no binary: verifySignature (push
// deliveries' `datalayer-signature`, signed here as
// src/services/queue/push/sign.rs signs it), parseSigningKeys, the
// worker's nack reasons, and the worker's acks on a scripted Consume stream
// (answered, refused, or left unanswered by a break: sent again unary).
// The service's own signatures are verified end to end in push.suite.ts.
import assert from "node:assert/strict";
import { createHash, createHmac } from "node:crypto";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  SignatureError,
  bodyHash,
  nackReason,
  parseSigningKeys,
  queueWorkers,
  verifySignature,
  type QueueServiceClient,
  type SignatureErrorReason,
} from "@datalayer/client";
import {
  ConsumeResponseSchema,
  type ConsumeRequest,
  type ConsumeResponse,
} from "@datalayer/client/gen/datalayer/queue/v1/queue_pb";

const CURRENT = "current-key-0123456789";
const NEXT = "next-key-0123456789ab";
const OTHER = "other-key-0123456789ab";
const URL = "http://127.0.0.1:8080/hooks/analyses?tenant=a";
const BODY = new Uint8Array([0, 1, 2, 250, 255, 10, 13]);
const IAT = 1_700_000_000;
const at = (s: number) => new Date(s * 1000);

const b64 = (data: string | Buffer) => Buffer.from(data).toString("base64url");

/** A token as the service makes it (serde keeps the field order). */
function sign(
  key: string,
  {
    url = URL,
    body = BODY as Uint8Array | string,
    id = "42",
    iat = IAT,
    header = '{"alg":"HS256","typ":"JWT"}',
    claims = undefined as object | undefined,
  } = {},
): string {
  const c = claims ?? {
    iss: "datalayer",
    sub: url,
    iat,
    nbf: iat,
    exp: iat + 300,
    jti: id,
    body: createHash("sha256").update(body).digest("base64url"),
  };
  const signed = `${b64(header)}.${b64(JSON.stringify(c))}`;
  return `${signed}.${createHmac("sha256", key).update(signed).digest("base64url")}`;
}

function refused(reason: SignatureErrorReason, f: () => unknown): SignatureError {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof SignatureError, `expected a SignatureError, got ${e}`);
    assert.ok(e instanceof Error);
    assert.equal(e.name, "SignatureError");
    assert.equal(e.reason, reason, e.message);
    return e;
  }
  assert.fail(`expected a SignatureError (${reason})`);
}

describe("verifySignature", () => {
  const keys = [CURRENT, NEXT];
  const now = { now: at(IAT + 1) };

  test("a signature of the current key holds: the claims", () => {
    const claims = verifySignature(BODY, sign(CURRENT), keys, URL, now);
    assert.deepEqual(claims, {
      iss: "datalayer",
      sub: URL,
      iat: IAT,
      nbf: IAT,
      exp: IAT + 300,
      jti: "42",
      body: bodyHash(BODY),
    });
    // Keys as bytes, a Buffer body, a string body (UTF-8), the header as Node gives it.
    const bytes = keys.map((k) => new TextEncoder().encode(k));
    assert.equal(verifySignature(Buffer.from(BODY), [sign(CURRENT)], bytes, URL, now).jti, "42");
    const json = '{"ok":"é"}';
    assert.equal(verifySignature(json, sign(CURRENT, { body: json }), keys, URL, now).jti, "42");
    assert.equal(verifySignature(new TextEncoder().encode(json), sign(CURRENT, { body: json }), keys, URL, now).jti, "42");
  });

  test("the next key holds too (rotation), whatever the order of the keys", () => {
    const token = sign(NEXT);
    assert.equal(verifySignature(BODY, token, [CURRENT, NEXT], URL, now).jti, "42");
    assert.equal(verifySignature(BODY, token, [NEXT, CURRENT], URL, now).jti, "42");
    assert.equal(verifySignature(BODY, token, [NEXT], URL, now).jti, "42");
    refused("unknown_key", () => verifySignature(BODY, token, [CURRENT], URL, now));
  });

  test("malformed: no header, not three parts, bad encoding, not JSON, missing claims, another issuer", () => {
    const good = sign(CURRENT);
    const [h, c, s] = good.split(".");
    for (const header of [undefined, null, "", [], [good, good], "abc", `${h}.${c}`, `${h}.${c}.${s}.x`]) {
      refused("malformed", () => verifySignature(BODY, header as string | undefined, keys, URL, now));
    }
    refused("malformed", () => verifySignature(BODY, `${h}.${c}.${s}!`, keys, URL, now)); // not base64url
    refused("malformed", () => verifySignature(BODY, `${h}=.${c}.${s}`, keys, URL, now));
    refused("malformed", () => verifySignature(BODY, `${b64("not json")}.${c}.${s}`, keys, URL, now));
    refused("malformed", () => verifySignature(BODY, `${b64("[1]")}.${c}.${s}`, keys, URL, now));
    // Signed with a known key, but the claims are not datalayer's.
    const claims = { iss: "datalayer", sub: URL, iat: IAT, nbf: IAT, exp: IAT + 300, jti: "42", body: bodyHash(BODY) };
    refused("malformed", () => verifySignature(BODY, sign(CURRENT, { claims: { ...claims, exp: "later" } }), keys, URL, now));
    refused("malformed", () => verifySignature(BODY, sign(CURRENT, { claims: { ...claims, jti: 42 } }), keys, URL, now));
    const { body: _, ...noBody } = claims;
    refused("malformed", () => verifySignature(BODY, sign(CURRENT, { claims: noBody }), keys, URL, now));
    const other = refused("malformed", () =>
      verifySignature(BODY, sign(CURRENT, { claims: { ...claims, iss: "someone" } }), keys, URL, now),
    );
    assert.match(other.message, /someone/);
    // Claims that are not JSON, under a valid HMAC.
    const signed = `${h}.${b64("{")}`;
    const token = `${signed}.${createHmac("sha256", CURRENT).update(signed).digest("base64url")}`;
    refused("malformed", () => verifySignature(BODY, token, keys, URL, now));
    // Leading/trailing spaces of a header value are no harm.
    assert.equal(verifySignature(BODY, ` ${good} `, keys, URL, now).jti, "42");
  });

  test("algorithm: anything but HS256 is refused before any key is tried", () => {
    for (const header of ['{"alg":"none","typ":"JWT"}', '{"alg":"HS512","typ":"JWT"}', '{"alg":"hs256"}', '{"typ":"JWT"}']) {
      const e = refused("algorithm", () => verifySignature(BODY, sign(CURRENT, { header }), keys, URL, now));
      assert.match(e.message, /not HS256/);
    }
    // alg "none" with no signature at all.
    const [, c] = sign(CURRENT).split(".");
    refused("algorithm", () => verifySignature(BODY, `${b64('{"alg":"none"}')}.${c}.`, keys, URL, now));
  });

  test("unknown_key: another key, a tampered claim, a cut or empty signature", () => {
    refused("unknown_key", () => verifySignature(BODY, sign(OTHER), keys, URL, now));
    const [h, c, s] = sign(CURRENT).split(".");
    // The claims say another URL, but the HMAC covers them.
    const forged = JSON.parse(Buffer.from(c, "base64url").toString());
    forged.sub = "http://evil.example/";
    refused("unknown_key", () => verifySignature(BODY, `${h}.${b64(JSON.stringify(forged))}.${s}`, keys, "http://evil.example/", now));
    refused("unknown_key", () => verifySignature(BODY, `${h}.${c}.${s.slice(0, -4)}`, keys, URL, now));
    refused("unknown_key", () => verifySignature(BODY, `${h}.${c}.`, keys, URL, now));
  });

  test("url: signed for another URL (exact: a trailing slash or another query differs)", () => {
    const token = sign(CURRENT);
    for (const url of ["http://127.0.0.1:8080/hooks/other", `${URL}&x=1`, "http://127.0.0.1:8080/hooks/analyses", "HTTP://127.0.0.1:8080/hooks/analyses?tenant=a"]) {
      refused("url", () => verifySignature(BODY, token, keys, url, now));
    }
    const bare = sign(CURRENT, { url: "http://127.0.0.1:8080" });
    assert.ok(verifySignature(BODY, bare, keys, "http://127.0.0.1:8080", now));
    refused("url", () => verifySignature(BODY, bare, keys, "http://127.0.0.1:8080/", now));
  });

  test("body: a changed, longer, shorter or empty body", () => {
    const token = sign(CURRENT);
    for (const body of [new Uint8Array([0, 1, 2, 250, 255, 10, 12]), new Uint8Array([...BODY, 0]), BODY.subarray(1), new Uint8Array(), ""]) {
      refused("body", () => verifySignature(body, token, keys, URL, now));
    }
    assert.ok(verifySignature("", sign(CURRENT, { body: "" }), keys, URL, now));
  });

  test("not_yet_valid and expired, with the leeway (default 30 s)", () => {
    const token = sign(CURRENT);
    assert.ok(verifySignature(BODY, token, keys, URL, { now: at(IAT - 30) }));
    refused("not_yet_valid", () => verifySignature(BODY, token, keys, URL, { now: at(IAT - 31) }));
    refused("not_yet_valid", () => verifySignature(BODY, token, keys, URL, { now: at(IAT - 1), leewaySeconds: 0 }));
    assert.ok(verifySignature(BODY, token, keys, URL, { now: at(IAT), leewaySeconds: 0 }));
    assert.ok(verifySignature(BODY, token, keys, URL, { now: at(IAT + 300), leewaySeconds: 0 }));
    refused("expired", () => verifySignature(BODY, token, keys, URL, { now: at(IAT + 301), leewaySeconds: 0 }));
    assert.ok(verifySignature(BODY, token, keys, URL, { now: at(IAT + 330) }));
    const e = refused("expired", () => verifySignature(BODY, token, keys, URL, { now: at(IAT + 331) }));
    assert.match(e.message, /expired at 2023-11-14T22:18:20.000Z/);
    assert.ok(verifySignature(BODY, token, keys, URL, { now: at(IAT + 400), leewaySeconds: 100 }));
    // Without `now`: the clock (a fresh token holds, an old one has expired).
    const fresh = sign(CURRENT, { iat: Math.floor(Date.now() / 1000) });
    assert.ok(verifySignature(BODY, fresh, keys, URL));
    refused("expired", () => verifySignature(BODY, token, keys, URL));
  });

  test("checks run in order: a bad key is reported before a bad URL, a bad URL before a bad body", () => {
    refused("unknown_key", () => verifySignature("x", sign(OTHER), keys, "http://else/", { now: at(0) }));
    refused("url", () => verifySignature("x", sign(CURRENT), keys, "http://else/", { now: at(0) }));
    refused("body", () => verifySignature("x", sign(CURRENT), keys, URL, { now: at(0) }));
    refused("not_yet_valid", () => verifySignature(BODY, sign(CURRENT), keys, URL, { now: at(0) }));
  });

  test("a misconfiguration is a TypeError or RangeError, not a SignatureError", () => {
    const token = sign(CURRENT);
    assert.throws(() => verifySignature(BODY, token, [], URL, now), TypeError);
    assert.throws(() => verifySignature(BODY, token, [CURRENT, "short"], URL, now), /signing key 2 is 5 bytes/);
    assert.throws(() => verifySignature(BODY, token, keys, URL, { now: new Date(NaN) }), RangeError);
    assert.throws(() => verifySignature(BODY, token, keys, URL, { ...now, leewaySeconds: -1 }), RangeError);
  });

  test("parseSigningKeys reads a key file as the service does", () => {
    assert.deepEqual(parseSigningKeys(`# rotated 2024-05\n  ${CURRENT}  \r\n\n${NEXT}\n`), [CURRENT, NEXT]);
    assert.deepEqual(parseSigningKeys(""), []);
  });
});

describe("nackReason", () => {
  test("the error's message, control characters replaced, at most 1024 bytes on a character boundary", () => {
    assert.equal(nackReason(new Error("boom")), "boom");
    assert.equal(nackReason(new TypeError("")), "TypeError");
    assert.equal(nackReason("line 1\nline 2\r\n\tend\u0000"), "line 1 line 2 end");
    assert.equal(nackReason(42), "42");
    assert.equal(nackReason(undefined), "");
    const long = nackReason("é".repeat(600)); // 1200 bytes
    assert.equal(Buffer.byteLength(long), 1024);
    assert.equal(long, "é".repeat(512));
    const odd = nackReason(`a${"é".repeat(600)}`);
    assert.equal(Buffer.byteLength(odd), 1023);
    assert.ok(!odd.includes("\uFFFD"));
  });
});

/** A queue of values, read as they come. */
function channel<T>() {
  const items: T[] = [];
  let wake: (() => void) | undefined;
  return {
    push(item: T) {
      items.push(item);
      wake?.();
    },
    async next(): Promise<T> {
      while (items.length === 0) await new Promise<void>((resolve) => (wake = resolve));
      return items.shift() as T;
    },
  };
}

describe("worker acks on the Consume stream (a scripted stream, no binary)", () => {
  test("acks go on the stream, no credit messages; a refused ack rejects; a break re-acks the unanswered ones unary", async () => {
    type Init = Pick<ConsumeRequest, "kind">;
    const streams: Init["kind"][][] = []; // each stream's requests, as read
    const unary: string[] = [];
    const message = (id: string) =>
      create(ConsumeResponseSchema, { message: { messageId: id, leaseToken: `1-${id}`, attempt: 1, maxAttempts: 3, payload: new Uint8Array([1]) } });
    const fake = {
      consume(requests: AsyncIterable<Init>, options?: { signal?: AbortSignal }): AsyncIterable<ConsumeResponse> {
        const seen: Init["kind"][] = [];
        streams.push(seen);
        const first = streams.length === 1;
        const out = channel<ConsumeResponse | Error>();
        options?.signal?.addEventListener("abort", () => out.push(new ConnectError("canceled", Code.Canceled)));
        void (async () => {
          const acks = new Set<string>();
          for await (const r of requests) {
            seen.push(r.kind);
            if (!first || r.kind.case !== "ack") continue;
            const id = r.kind.value.messageId ?? "";
            acks.add(id);
            if (id === "m1") out.push(create(ConsumeResponseSchema, { acked: { messageId: id, ok: true } }));
            if (id === "m2") {
              out.push(
                create(ConsumeResponseSchema, { acked: { messageId: id, ok: false, code: Code.FailedPrecondition, error: "lease lost" } }),
              );
            }
            // m3 is never answered: the stream breaks once all three came.
            if (acks.size === 3) out.push(new ConnectError("the service went away", Code.Unavailable));
          }
        })();
        return (async function* () {
          if (first) for (const id of ["m1", "m2", "m3"]) yield message(id);
          for (;;) {
            const next = await out.next();
            if (next instanceof Error) throw next;
            yield next;
          }
        })();
      },
      async ack(req: { messageId: string; leaseToken: string }) {
        assert.equal(req.leaseToken, `1-${req.messageId}`);
        unary.push(req.messageId);
        return {};
      },
    };
    const errors: [ConnectError, string | undefined][] = [];
    const stop = new AbortController();
    const handled: string[] = [];
    const done = queueWorkers(fake as unknown as QueueServiceClient).work(
      "q",
      (d) => {
        handled.push(d.id);
      },
      { concurrency: 3, signal: stop.signal, onError: (e, d) => errors.push([e, d?.id]) },
    );
    // The break, then the stream reopened with all three credits back.
    for (let i = 0; i < 100 && streams.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
    for (let i = 0; i < 100 && streams[1]?.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    stop.abort();
    const summary = await done;
    assert.deepEqual(handled.sort(), ["m1", "m2", "m3"]);
    assert.deepEqual(summary, { acked: 2, nacked: 0, deadLettered: 0, failed: 1 });
    assert.deepEqual(unary, ["m3"], "only the ack the break left unanswered was sent again, unary");
    const [s1, s2] = streams;
    assert.deepEqual(s1[0], { case: "start", value: { queue: "q", credits: 3, leaseDuration: undefined } });
    assert.deepEqual(s1.slice(1).map((k) => k.case), ["ack", "ack", "ack"], "no credit messages: each ack gives its credit back");
    assert.deepEqual(s2?.[0], { case: "start", value: { queue: "q", credits: 3, leaseDuration: undefined } });
    const codes = errors.map(([e, id]) => [e.code, id]);
    assert.deepEqual(codes, [
      [Code.FailedPrecondition, "m2"],
      [Code.Unavailable, undefined],
    ]);
    assert.match(errors[0][0].message, /lease lost/);
  });
});
