// API keys, quotas, TLS and mTLS through the TypeScript client, end to end
// against the real binary started with a configuration file (on the memory
// store): keys made by `datalayer keys new`, certificates by `openssl`.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import {
  Code,
  ConnectError,
  TLS_HINT,
  createClient,
  retryAfterMs,
  type ClientOptions,
  type DatalayerClient,
  type Interceptor,
} from "@datalayer/client";
import { auditedSoon, audited, reset, RESET } from "./audit.suite.js";
import { type ApiKey, type Certs, Stack, healthStatus, keyEntry, makeCerts, newKey, sleep, unique } from "./harness.js";

const CACHE_SET = "datalayer.cache.v1.CacheService/Set";
const minute = { seconds: 60n };
const bytes = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array | undefined) => (b === undefined ? undefined : new TextDecoder().decode(b));

async function rejects(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ConnectError, `expected a ConnectError, got ${e}`);
    return e;
  }
  assert.fail("expected the call to fail");
}

async function put(dl: DatalayerClient, key: string, value: string) {
  assert.equal((await dl.cache.set({ key, value: bytes(value), ttl: minute })).stored, true);
}

async function get(dl: DatalayerClient, key: string): Promise<string | undefined> {
  const answer = await dl.cache.get({ key });
  return answer.found ? text(answer.entry?.value) : undefined;
}

/** An interceptor counting the attempts that reach the transport (each retry is one). */
function attempts(): { count: number; interceptor: Interceptor } {
  const counter = {
    count: 0,
    interceptor: ((next) => (req) => {
      counter.count++;
      return next(req);
    }) as Interceptor,
  };
  return counter;
}

export function securitySuite() {
  const dir = mkdtempSync(path.join(tmpdir(), "datalayer-ts-security-"));
  const clients: DatalayerClient[] = [];
  const connect = (options: ClientOptions) => {
    const c = createClient(options);
    clients.push(c);
    return c;
  };
  after(() => {
    for (const c of clients) c.close();
    rmSync(dir, { recursive: true, force: true });
  });

  describe("API keys", () => {
    const keys = {
      a: newKey("a-all", "ta"), // every method, tenant ta
      b: newKey("b-all", "tb"), // every method, tenant tb
      reader: newKey("a-reader", "ta"), // `read` only
      cacheOnly: newKey("a-cache", "ta"), // CacheService/* only
      expired: newKey("a-old", "ta"),
      quota: newKey("q-all", "tq"), // tenant tq: 1 call per second
    };
    let stack: Stack | undefined;
    const as = (key: ApiKey | string | undefined, more: Partial<ClientOptions> = {}) => {
      assert.ok(stack, "the auth stack is running");
      return connect({ baseUrl: stack.baseUrl, token: typeof key === "string" ? key : key?.key, ...more });
    };

    before(async () => {
      const entries = [
        keyEntry(keys.a),
        keyEntry(keys.b),
        keyEntry(keys.reader, ["read"]),
        keyEntry(keys.cacheOnly, ["datalayer.cache.v1.CacheService/*"]),
        keyEntry(keys.expired, ["*"], "2020-01-01T00:00:00Z"),
        keyEntry(keys.quota),
      ];
      const config = path.join(dir, "auth.yaml");
      writeFileSync(
        config,
        "auth:\n" +
          "  required: true\n" +
          "  max_failures: 1000\n" + // the tests fail on purpose, all from 127.0.0.1
          "  keys:\n" +
          entries.map((e) => `    - ${e}\n`).join("") +
          "  quotas:\n" +
          "    tq: { calls_per_second: 1, burst: 1 }\n",
      );
      stack = await Stack.start({ store: "memory", config, reflect: false });
    });
    after(async () => stack?.stop());

    test("a key from `keys new` acts in its own tenant", async () => {
      const [a, b] = [as(keys.a), as(keys.b)];
      const name = unique("ts:shared");
      await put(a, name, "a's");
      assert.equal(await get(a, name), "a's");
      assert.equal(await get(b, name), undefined, "tenant tb sees nothing of tenant ta's entry of the same name");
      await put(b, name, "b's");
      assert.deepEqual([await get(a, name), await get(b, name)], ["a's", "b's"]);
      assert.equal(await get(as(keys.reader), name), "a's", "another key of tenant ta sees ta's data");
    });

    test("a call without a key is UNAUTHENTICATED; health stays open", async () => {
      const err = await rejects(put(as(undefined), unique("ts:nokey"), "v"));
      assert.equal(err.code, Code.Unauthenticated);
      assert.match(err.rawMessage, new RegExp(`${CACHE_SET} needs an API key`));
      assert.equal(await healthStatus(stack!.baseUrl), 1);
    });

    test("unknown and expired keys are UNAUTHENTICATED, not retried", async () => {
      const counter = attempts();
      const unknown = await rejects(get(as(`dlk_${"0".repeat(64)}`, { interceptors: [counter.interceptor] }), "k"));
      assert.equal(unknown.code, Code.Unauthenticated);
      assert.equal(unknown.rawMessage, "unknown API key");
      assert.equal(counter.count, 1);
      const expired = await rejects(get(as(keys.expired), "k"));
      assert.equal(expired.code, Code.Unauthenticated);
      assert.match(expired.rawMessage, /`a-old` has expired/);
    });

    test("a key without the permission is PERMISSION_DENIED naming the method", async () => {
      const reader = as(keys.reader);
      assert.equal(await get(reader, unique("ts:ro")), undefined, "a read key reads");
      const denied = await rejects(put(reader, unique("ts:ro"), "v"));
      assert.equal(denied.code, Code.PermissionDenied);
      assert.equal(denied.rawMessage, `API key \`a-reader\` may not call ${CACHE_SET}`);
      const cacheOnly = as(keys.cacheOnly);
      await put(cacheOnly, unique("ts:cache-only"), "v");
      const reset_ = await rejects(reset(cacheOnly, unique("ts:cache-only")));
      assert.equal(reset_.code, Code.PermissionDenied);
      assert.match(reset_.rawMessage, new RegExp(RESET));
    });

    test("the audit log names the key and stays in its tenant", async () => {
      const [a, b] = [as(keys.a), as(keys.b)];
      const target = unique("ts:audited");
      await reset(a, target);
      const [event] = await auditedSoon(a, target);
      assert.deepEqual([event.principal, event.method, event.outcome], ["a-all", RESET, "OK"]);
      assert.deepEqual(await audited(b, target), [], "tenant tb does not read tenant ta's audit log");
      assert.equal((await audited(as(keys.reader), target)).length, 1, "AuditService/List is a read");
    });

    test("over quota is RESOURCE_EXHAUSTED with RetryInfo, not retried", async () => {
      const counter = attempts();
      const dl = as(keys.quota, { interceptors: [counter.interceptor] });
      // 1 call per second with a burst of 1: one gets through, then the refusal.
      const started = Date.now();
      const err = await rejects((async () => {
        for (let i = 0; i < 3; i++) await get(dl, "k");
      })());
      const elapsed = Date.now() - started;
      assert.equal(err.code, Code.ResourceExhausted);
      assert.match(err.rawMessage, /tenant tq is over its quota/);
      const wait = retryAfterMs(err);
      assert.ok(wait !== undefined && wait > 0 && wait <= 1000, `retryAfterMs ${wait}`);
      assert.equal(counter.count, 2, "RESOURCE_EXHAUSTED is thrown at once, not retried");
      assert.ok(elapsed < 900, "the client did not wait out RetryInfo on its own");
      await sleep(wait + 50);
      assert.equal(await get(dl, "k"), undefined, "after the wait the tenant's calls go through again");
    });
  });

  describe("TLS and mTLS", () => {
    let certs: Certs;
    let tls: Stack | undefined; // client certificates optional; keys required
    let mtls: Stack | undefined; // a client certificate required to connect
    const tlsKey = newKey("k-all", "tk");
    const ca = () => ({ ca: certs.read("ca.crt") });
    const cert = (cn: string) => ({ ca: certs.read("ca.crt"), cert: certs.read(`${cn}.crt`), key: certs.read(`${cn}.key`) });
    const tlsConfig = (requireClientCert: boolean) =>
      "server:\n" +
      "  tls:\n" +
      `    cert_file: ${certs.path("server.crt")}\n` +
      `    key_file: ${certs.path("server.key")}\n` +
      `    client_ca_file: ${certs.path("ca.crt")}\n` +
      `    require_client_cert: ${requireClientCert}\n`;

    before(async () => {
      certs = makeCerts(dir, ["svc-a", "svc-ro", "stranger"]);
      const tlsFile = path.join(dir, "tls.yaml");
      writeFileSync(
        tlsFile,
        tlsConfig(false) +
          "auth:\n" +
          "  required: true\n" +
          "  max_failures: 1000\n" +
          `  keys:\n    - ${keyEntry(tlsKey)}\n` +
          "  clients:\n" +
          '    - { common_name: svc-a, tenant: tc, allow: ["*"] }\n' +
          '    - { common_name: svc-ro, tenant: tc, allow: ["read"] }\n',
      );
      tls = await Stack.start({ store: "memory", config: tlsFile, tls: ca(), reflect: false });
      const mtlsFile = path.join(dir, "mtls.yaml");
      writeFileSync(mtlsFile, tlsConfig(true));
      mtls = await Stack.start({ store: "memory", config: mtlsFile, tls: cert("svc-a"), reflect: false });
    });
    after(async () => {
      await mtls?.stop();
      await tls?.stop();
    });
    const url = (s: Stack | undefined) => {
      assert.ok(s, "the TLS stack is running");
      return s.baseUrl;
    };
    const plain = (s: Stack | undefined) => url(s).replace(/^https:/, "http:");

    test("TLS with a given CA and a key", async () => {
      const name = unique("ts:tls");
      const dl = connect({ baseUrl: url(tls), tls: ca(), token: tlsKey.key });
      await put(dl, name, "over TLS");
      assert.equal(await get(dl, name), "over TLS");
      // A bare host:port with tls options is https too.
      const bare = connect({ baseUrl: url(tls).replace(/^https:\/\//, ""), tls: ca(), token: tlsKey.key });
      assert.equal(await get(bare, name), "over TLS");
    });

    test("plaintext to a TLS server fails saying so", async () => {
      const started = Date.now();
      const err = await rejects(get(connect({ baseUrl: plain(tls), token: tlsKey.key, timeoutMs: 3000 }), "k"));
      assert.equal(err.code, Code.Unavailable);
      assert.ok(err.rawMessage.endsWith(TLS_HINT), err.rawMessage);
      // Not retried: the request went out (the server closed the
      // connection on it), so it did not demonstrably stay in the client.
      assert.ok(Date.now() - started < 3000, "thrown within the deadline");
    });

    test("Node's CA roots do not trust a private CA", async () => {
      const err = await rejects(get(connect({ baseUrl: url(tls), token: tlsKey.key, retries: 0 }), "k"));
      assert.equal(err.code, Code.Internal, err.message);
      assert.match(err.rawMessage, /certificate/);
      assert.ok(!err.rawMessage.includes(TLS_HINT));
    });

    test("mTLS: a client certificate's common name acts as its tenant without a key", async () => {
      const name = unique("ts:mtls");
      const svc = connect({ baseUrl: url(tls), tls: cert("svc-a") });
      await put(svc, name, "svc-a's");
      await reset(svc, name);
      const [event] = await auditedSoon(svc, name);
      assert.equal(event.principal, "cert:svc-a");
      const reader = connect({ baseUrl: url(tls), tls: cert("svc-ro") });
      assert.equal(await get(reader, name), "svc-a's", "the same tenant, tc");
      const denied = await rejects(put(reader, name, "v"));
      assert.equal(denied.code, Code.PermissionDenied);
      assert.match(denied.rawMessage, new RegExp(CACHE_SET));
      const other = connect({ baseUrl: url(tls), tls: ca(), token: tlsKey.key });
      assert.equal(await get(other, name), undefined, "the key's tenant tk sees nothing of tc");
      // A key sent with a certificate wins: the call acts as the key's tenant.
      const both = connect({ baseUrl: url(tls), tls: cert("svc-a"), token: tlsKey.key });
      assert.equal(await get(both, name), undefined);
    });

    test("without a mapped certificate or a key, TLS calls are UNAUTHENTICATED", async () => {
      const noCert = await rejects(get(connect({ baseUrl: url(tls), tls: ca() }), "k"));
      assert.equal(noCert.code, Code.Unauthenticated);
      assert.match(noCert.rawMessage, /needs an API key/);
      const stranger = await rejects(get(connect({ baseUrl: url(tls), tls: cert("stranger") }), "k"));
      assert.equal(stranger.code, Code.Unauthenticated);
    });

    test("a required client certificate", async () => {
      await put(connect({ baseUrl: url(mtls), tls: cert("svc-a") }), unique("ts:mtls-required"), "v");
      const err = await rejects(get(connect({ baseUrl: url(mtls), tls: ca(), retries: 0 }), "k"));
      // Node's TLS errors are INTERNAL in Connect; the handshake says why.
      assert.equal(err.code, Code.Internal, err.message);
      assert.match(err.rawMessage, /certificate required/);
    });

    test("tls options with an http:// baseUrl are refused", () => {
      assert.throws(() => createClient({ baseUrl: "http://127.0.0.1:1", tls: { ca: "x" } }), /use https:\/\//);
    });
  });
}
