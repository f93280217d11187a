// Push queues end to end: a binary of its own (configured with
// `queue.push.allowed_hosts` naming a real node:http receiver on 127.0.0.1
// and a `queue.push.signing_key_file` of two keys), SetDestination and
// GetDestination through the TypeScript client (recorded for the coverage
// check), the service's POSTs (a 500 retried, attempt headers, the message's
// and the destination's headers, callbacks) each verified with
// verifySignature against the exact URL and body, and clearing a
// destination (the queue is a pull queue again).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import {
  Code,
  ConnectError,
  SignatureError,
  bodyHash,
  fieldViolations,
  parseSigningKeys,
  verifySignature,
  type DatalayerClient,
  type SignatureErrorReason,
} from "@datalayer/client";
import { Stack, freePort, sleep, unique, waitFor } from "./harness.js";

const here = path.dirname(fileURLToPath(import.meta.url));

const SERVICE = "datalayer.queue.v1.QueueService";
const enc = (s: string) => new TextEncoder().encode(s);
const millis = (ms: number) => ({ seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 });
const fixed = (ms: number) => ({ kind: { case: "fixed" as const, value: millis(ms) } });
const b64 = (s: string) => Buffer.from(s).toString("base64url");

/** One request the receiver got. */
interface Received {
  path: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  at: number;
}

type Responder = (r: Received) => { status: number; body?: string };

/** A node:http server on 127.0.0.1 recording every request; `respond` answers by the request. */
class Receiver {
  readonly got: Received[] = [];
  respond: Responder = () => ({ status: 200 });
  private server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const r: Received = { path: req.url ?? "", headers: req.headers, body: Buffer.concat(chunks), at: Date.now() };
      this.got.push(r);
      let answer: { status: number; body?: string };
      try {
        answer = this.respond(r);
      } catch {
        answer = { status: 500 };
      }
      res.writeHead(answer.status, { "content-type": "text/plain" }).end(answer.body ?? "");
    });
  });

  async listen(): Promise<number> {
    this.server.listen(0, "127.0.0.1");
    await once(this.server, "listening");
    return (this.server.address() as AddressInfo).port;
  }

  close() {
    this.server.closeAllConnections();
    this.server.close();
  }

  /** The requests for queue `q` (the service's `datalayer-queue` header) at `path`. */
  of(q: string, pathname?: string): Received[] {
    return this.got.filter((r) => r.headers["datalayer-queue"] === q && (pathname === undefined || r.path === pathname));
  }
}

function refusedBecause(reason: SignatureErrorReason, f: () => unknown) {
  assert.throws(f, (e: unknown) => e instanceof SignatureError && e.reason === reason);
}

/**
 * `called`: the main stack's record of calls, so SetDestination and
 * GetDestination made here count for its coverage check.
 */
export function pushSuite(called: () => Set<string>, store: "redis" | "memory" = "redis") {
  describe(`${SERVICE} push delivery (${store})`, () => {
    const dir = mkdtempSync(path.join(tmpdir(), "datalayer-ts-push-"));
    const receiver = new Receiver();
    const keys = [randomBytes(24).toString("hex"), randomBytes(24).toString("hex")];
    let port = 0;
    /** Where examples/push-receiver.ts listens (allowed as well). */
    let examplePort = 0;
    let keyFile = "";
    let stack: Stack | undefined;
    let dl: DatalayerClient;
    const base = () => `http://127.0.0.1:${port}`;

    before(async () => {
      port = await receiver.listen();
      examplePort = await freePort();
      keyFile = path.join(dir, "push-keys");
      writeFileSync(keyFile, `# current, then next\n${keys[0]}\n${keys[1]}\n`);
      const config = path.join(dir, "push.yaml");
      writeFileSync(
        config,
        [
          "queue:",
          "  push:",
          `    allowed_hosts: ["127.0.0.1:${port}", "127.0.0.1:${examplePort}"]`,
          `    signing_key_file: ${JSON.stringify(keyFile)}`,
          "    poll_interval: 50ms",
          "",
        ].join("\n"),
      );
      assert.deepEqual(parseSigningKeys(`# current, then next\n${keys[0]}\n${keys[1]}\n`), keys);
      stack = await Stack.start({ store, config, called: called() });
      dl = stack.client();
    });

    after(async () => {
      await stack?.stop();
      receiver.close();
      rmSync(dir, { recursive: true, force: true });
    });

    test("a 500 is retried; each POST is signed for its exact URL and body; GetDestination reads it; clearing works", async () => {
      assert.ok(stack?.serves(SERVICE));
      const q = unique("ts.push");
      const url = `${base()}/hooks/analyses?queue=${encodeURIComponent(q)}`;
      let calls = 0;
      receiver.respond = (r) =>
        r.headers["datalayer-queue"] === q ? (++calls === 1 ? { status: 500, body: "not yet" } : { status: 200, body: "thanks" }) : { status: 404 };

      const set = await dl.queue.setDestination({
        queue: q,
        destination: { url, timeout: millis(2000), headers: { "x-from": "datalayer-test" } },
      });
      assert.ok(set.destination, "SetDestination answers the destination as stored");
      assert.equal(set.destination.url, url);
      assert.equal(set.destination.parallelism, 1, "default parallelism");
      assert.deepEqual(set.destination.timeout, { $typeName: "google.protobuf.Duration", seconds: 2n, nanos: 0 });
      assert.deepEqual(set.destination.headers, { "x-from": "datalayer-test" });
      const read = await dl.queue.getDestination({ queue: q });
      assert.equal(read.found, true);
      assert.deepEqual(read.destination, set.destination);

      // Bytes that are not UTF-8: the body is hashed byte for byte.
      const payload = new Uint8Array([...enc('{"job":1}'), 0, 0xff, 0xfe]);
      const sent = await dl.queue.enqueue({
        queue: q,
        message: { payload, headers: { "x-trace": "t-1" }, maxAttempts: 3, backoff: fixed(200) },
      });
      await waitFor(async () => receiver.of(q).length >= 2, 15_000);
      await sleep(500); // no third attempt after the 200
      const posts = receiver.of(q);
      assert.equal(posts.length, 2, "one failed attempt, one that succeeded");
      assert.deepEqual(
        posts.map((r) => r.headers["datalayer-attempt"]),
        ["1", "2"],
      );
      assert.ok(posts[1].at - posts[0].at >= 150, `retried after the backoff (${posts[1].at - posts[0].at} ms)`);
      for (const r of posts) {
        assert.equal(r.path, `/hooks/analyses?queue=${encodeURIComponent(q)}`);
        assert.equal(r.headers["datalayer-message-id"], sent.messageId);
        assert.equal(r.headers["datalayer-queue"], q);
        assert.equal(r.headers["x-trace"], "t-1", "the message's headers are sent");
        assert.equal(r.headers["x-from"], "datalayer-test", "the destination's headers are sent");
        assert.equal(r.headers["content-type"], "application/octet-stream");
        assert.deepEqual(new Uint8Array(r.body), payload);
        const header = r.headers["datalayer-signature"];
        const claims = verifySignature(r.body, header, keys, url);
        assert.equal(claims.iss, "datalayer");
        assert.equal(claims.sub, url);
        assert.equal(claims.jti, sent.messageId);
        assert.equal(claims.exp - claims.iat, 300);
        assert.equal(claims.nbf, claims.iat);
        assert.ok(Math.abs(claims.iat * 1000 - r.at) < 5000, "signed when sent");
        // The next key alone does not verify it (the current key signs)...
        refusedBecause("unknown_key", () => verifySignature(r.body, header, [keys[1]], url));
        // ...nor another body, nor another URL, nor the URL the request came to, rebuilt.
        refusedBecause("body", () => verifySignature(Buffer.concat([r.body, Buffer.from(" ")]), header, keys, url));
        refusedBecause("body", () => verifySignature(r.body.toString("utf8"), header, keys, url));
        refusedBecause("url", () => verifySignature(r.body, header, keys, `${base()}/hooks/other`));
        refusedBecause("url", () => verifySignature(r.body, header, keys, `${base()}/hooks/analyses`));
        // Later than five minutes (and the leeway): expired.
        refusedBecause("expired", () =>
          verifySignature(r.body, header, keys, url, { now: new Date((claims.exp + 31) * 1000) }),
        );
      }
      const stats = await waitFor(async () => {
        const s = await dl.queue.stats({ queue: q });
        return s.ackedTotal === 1n ? s : undefined;
      });
      assert.deepEqual([stats.waiting, stats.leased, stats.dead, stats.retriedTotal], [0n, 0n, 0n, 1n]);

      // Cleared: a pull queue again.
      const cleared = await dl.queue.setDestination({ queue: q });
      assert.equal(cleared.destination, undefined);
      const gone = await dl.queue.getDestination({ queue: q });
      assert.equal(gone.found, false);
      assert.equal(gone.destination, undefined);
      // An empty url clears too (and clearing again is no error).
      assert.equal((await dl.queue.setDestination({ queue: q, destination: { url: "" } })).destination, undefined);
      // Each replica's dispatcher notices at its next scan (queue.push.poll_interval,
      // 50 ms here): until then a message enqueued may still be pushed.
      await sleep(300);
      const pulled = await dl.queue.enqueue({ queue: q, message: { payload: enc("pull me") } });
      await sleep(600);
      assert.equal(receiver.of(q).length, 2, "nothing is pushed once the destination is cleared");
      const { messages } = await dl.queue.lease({ queue: q, wait: millis(2000) });
      assert.equal(messages[0]?.messageId, pulled.messageId);
      await dl.queue.ack({ queue: q, messageId: messages[0].messageId, leaseToken: messages[0].leaseToken });
    });

    test("callbacks are signed for their own URL: a success reports the answer, a last failure its error", async () => {
      const q = unique("ts.push.cb");
      // No path: the service POSTs to "/", but signs the URL as given.
      const url = base();
      const ok = `${base()}/callbacks/ok`;
      const failed = `${base()}/callbacks/failed`;
      receiver.respond = (r) => {
        if (r.headers["datalayer-queue"] !== q || r.path !== "/") return { status: 200 };
        return r.body.toString() === "fail" ? { status: 503, body: "down" } : { status: 201, body: "created" };
      };
      await dl.queue.setDestination({ queue: q, destination: { url, callbackUrl: ok, failureCallbackUrl: failed } });
      const good = await dl.queue.enqueue({ queue: q, message: { payload: enc("work") } });
      const bad = await dl.queue.enqueue({ queue: q, message: { payload: enc("fail"), maxAttempts: 1 } });
      await waitFor(async () => receiver.of(q, "/callbacks/ok").length >= 1 && receiver.of(q, "/callbacks/failed").length >= 1, 15_000);

      for (const r of receiver.of(q, "/")) {
        refusedBecause("url", () => verifySignature(r.body, r.headers["datalayer-signature"], keys, `${url}/`));
        assert.ok(verifySignature(r.body, r.headers["datalayer-signature"], keys, url));
      }
      const [success] = receiver.of(q, "/callbacks/ok");
      assert.equal(success.headers["content-type"], "application/json");
      const claims = verifySignature(success.body, success.headers["datalayer-signature"], keys, ok);
      assert.equal(claims.jti, good.messageId);
      refusedBecause("url", () => verifySignature(success.body, success.headers["datalayer-signature"], keys, url));
      assert.deepEqual(JSON.parse(success.body.toString()), {
        queue: q,
        message_id: good.messageId,
        attempt: 1,
        status: 201,
        body: Buffer.from("created").toString("base64"),
      });

      const [failure] = receiver.of(q, "/callbacks/failed");
      assert.equal(verifySignature(failure.body, failure.headers["datalayer-signature"], keys, failed).jti, bad.messageId);
      const report = JSON.parse(failure.body.toString());
      assert.equal(report.queue, q);
      assert.equal(report.message_id, bad.messageId);
      assert.equal(report.attempt, 1);
      assert.equal(report.error, "the destination answered HTTP 503");
      const dead = await dl.queue.listDead({ queue: q });
      assert.deepEqual(
        dead.messages.map((m) => [m.message?.messageId, m.reason]),
        [[bad.messageId, "the destination answered HTTP 503"]],
      );
      await dl.queue.setDestination({ queue: q });
    });

    test("SetDestination refuses a host not allowed, a non-HTTP URL and the service's own headers", async () => {
      const q = unique("ts.push.bad");
      const refused = async (destination: Parameters<DatalayerClient["queue"]["setDestination"]>[0]["destination"]) => {
        try {
          await dl.queue.setDestination({ queue: q, destination });
        } catch (e) {
          assert.ok(e instanceof ConnectError);
          assert.equal(e.code, Code.InvalidArgument, e.message);
          return fieldViolations(e).map((v) => v.field);
        }
        assert.fail("expected INVALID_ARGUMENT");
      };
      assert.deepEqual(await refused({ url: "http://example.com/hook" }), ["destination.url"]);
      assert.deepEqual(await refused({ url: `http://127.0.0.1:${port + 1}/hook` }), ["destination.url"]);
      assert.deepEqual(await refused({ url: `ftp://127.0.0.1:${port}/hook` }), ["destination.url"]);
      assert.deepEqual(
        await refused({ url: `${base()}/hook`, headers: { "datalayer-signature": "forged" } }),
        ["destination.headers"],
      );
      assert.equal((await dl.queue.getDestination({ queue: q })).found, false);
    });

    test("examples/push-receiver.ts verifies the service's POSTs and refuses forged ones", async () => {
      const q = unique("ts.push.example");
      const url = `http://127.0.0.1:${examplePort}/analyses`;
      const example = spawn(process.execPath, ["--import", "tsx", path.join(here, "../examples/push-receiver.ts")], {
        cwd: path.join(here, ".."),
        env: { ...process.env, SIGNING_KEY_FILE: keyFile, PUSH_URL: url, PORT: String(examplePort) },
        stdio: ["ignore", "pipe", "inherit"],
      });
      let out = "";
      example.stdout.on("data", (c: Buffer) => (out += c.toString()));
      try {
        await waitFor(async () => out.includes(`listening on ${examplePort}`), 20_000);
        await dl.queue.setDestination({ queue: q, destination: { url } });
        const sent = await dl.queue.enqueue({ queue: q, message: { payload: enc('{"job":1}') } });
        await waitFor(async () => (await dl.queue.stats({ queue: q })).ackedTotal === 1n, 15_000);
        assert.deepEqual(out.trim().split("\n").slice(1), [`message ${sent.messageId}, attempt 1: {"job":1}`]);

        const post = (headers: Record<string, string>) =>
          fetch(url, { method: "POST", headers, body: '{"job":2}' }).then(async (r) => [r.status, await r.text()]);
        assert.deepEqual(await post({}), [401, "malformed"]);
        // Well formed, for this URL and body, but signed with a key the receiver does not know.
        const now = Math.floor(Date.now() / 1000);
        const claims = { iss: "datalayer", sub: url, iat: now, nbf: now, exp: now + 300, jti: "999", body: bodyHash('{"job":2}') };
        const signed = `${b64('{"alg":"HS256","typ":"JWT"}')}.${b64(JSON.stringify(claims))}`;
        const forged = `${signed}.${createHmac("sha256", "not-the-key-0123456789").update(signed).digest("base64url")}`;
        assert.deepEqual(await post({ "datalayer-signature": forged }), [401, "unknown_key"]);
        assert.equal(out.trim().split("\n").length, 2, "nothing forged was taken");
        await dl.queue.setDestination({ queue: q });
      } finally {
        example.kill("SIGTERM");
        if (example.exitCode === null) await once(example, "exit");
      }
    });
  });
}
