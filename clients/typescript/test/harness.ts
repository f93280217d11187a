// Harness: a real redis-server on a free port and the real service binary
// (DATALAYER_BIN, default target/debug/datalayer) pointed at it, or the
// binary alone on its in-process memory store (`Stack.start({ store:
// "memory" })`); health must say SERVING first. The RPCs the binary serves
// are listed by reflection (`buf curl --list-methods`), and every call made
// through `stack.client()` (unary, or a stream when it is opened) is
// recorded so the suite can check that each served RPC was called.
// `Stack.start({ config, tls })` starts the binary with a configuration
// file (API keys, TLS: lists do not fit environment variables); `newKey`
// makes an API key with `datalayer keys new`, `makeCerts` a CA, a server
// and client certificates with `openssl`.
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { readFileSync, writeFileSync } from "node:fs";
import * as http2 from "node:http2";
import * as net from "node:net";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { createClient, type ClientOptions, type DatalayerClient, type Interceptor } from "@datalayer/client";

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, "../../..");
export const BIN = process.env.DATALAYER_BIN ?? path.join(REPO, "target/debug/datalayer");
const BUF = path.join(REPO, "node_modules/.bin/buf");

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as net.AddressInfo;
  server.close();
  await once(server, "close");
  return port;
}

async function redisPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect(port, "127.0.0.1");
    sock.setTimeout(500);
    sock.on("connect", () => sock.write("PING\r\n"));
    sock.on("data", (d) => {
      resolve(d.toString().startsWith("+PONG"));
      sock.destroy();
    });
    sock.on("error", () => resolve(false));
    sock.on("timeout", () => {
      resolve(false);
      sock.destroy();
    });
  });
}

export class Redis {
  proc?: ChildProcess;
  constructor(readonly port: number) {}

  async start(): Promise<void> {
    this.proc = spawn(
      "redis-server",
      ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      { stdio: "ignore" },
    );
    const deadline = Date.now() + 10_000;
    while (!(await redisPing(this.port))) {
      if (Date.now() > deadline) throw new Error(`redis-server did not start on ${this.port}`);
      await sleep(20);
    }
  }

  async kill(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null) return;
    p.kill("SIGCONT");
    p.kill("SIGKILL");
    await once(p, "exit");
    this.proc = undefined;
  }

  pause() {
    this.proc?.kill("SIGSTOP");
  }

  resume() {
    this.proc?.kill("SIGCONT");
  }
}

/** grpc.health.v1.Health/Check over raw HTTP/2: the status number (1 = SERVING) or undefined. */
export async function healthStatus(
  baseUrl: string,
  service = "",
  tls: http2.SecureClientSessionOptions = {},
): Promise<number | undefined> {
  const name = Buffer.from(service);
  const msg = name.length ? Buffer.concat([Buffer.from([0x0a, name.length]), name]) : Buffer.alloc(0);
  const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, msg.length]), msg]);
  return new Promise((resolve) => {
    const session = http2.connect(baseUrl, tls);
    session.on("error", () => resolve(undefined));
    const req = session.request({
      ":method": "POST",
      ":path": "/grpc.health.v1.Health/Check",
      "content-type": "application/grpc",
      te: "trailers",
      "grpc-timeout": "1000m",
    });
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("error", () => resolve(undefined));
    req.on("end", () => {
      session.close();
      const body = Buffer.concat(chunks);
      // 5-byte frame header, then HealthCheckResponse { status = 1: enum }
      if (body.length >= 7 && body[5] === 0x08) resolve(body[6]);
      else resolve(body.length >= 5 ? 0 : undefined);
    });
    req.end(frame);
  });
}

/**
 * The rate-limit policies every stack is configured with (through
 * `DATALAYER__RATELIMIT__POLICIES__<NAME>__*`), for `dl.ratelimit.policy(name)`.
 */
export const POLICIES = {
  auth: { algorithm: "fixed_window", limit: 3, window: "1h" },
  /** GCRA, 1 per hour, in shadow mode: over the limit is answered allowed, reason "shadow_over_limit". */
  shadow: { limit: 1, period: "1h", shadow_mode: true },
} as const;

function policyEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, fields] of Object.entries(POLICIES)) {
    for (const [field, value] of Object.entries(fields)) {
      env[`DATALAYER__RATELIMIT__POLICIES__${name.toUpperCase()}__${field.toUpperCase()}`] = String(value);
    }
  }
  return env;
}

export interface StackOptions {
  /** `redis` (default): a redis-server of its own; `memory`: no `redis.url`. */
  store?: "redis" | "memory";
  /** Record the calls into this set (e.g. another stack's `called`). */
  called?: Set<string>;
  /** A configuration file (`--config`); the environment still sets the address, metrics and health. */
  config?: string;
  /** The listener serves TLS: the harness connects over https with these options (e.g. `{ ca }`). */
  tls?: http2.SecureClientSessionOptions;
  /** List the served RPCs by reflection (default true; reflection needs a key when `auth.required` is true). */
  reflect?: boolean;
}

export class Stack {
  readonly called: Set<string>;
  served = new Map<string, string[]>();
  private clients: DatalayerClient[] = [];

  constructor(
    readonly baseUrl: string,
    /** On the memory store, a placeholder that is never started. */
    readonly redis: Redis,
    readonly proc: ChildProcess,
    called?: Set<string>,
    /** The TLS options the harness connects with, for a TLS listener. */
    readonly tls?: http2.SecureClientSessionOptions,
  ) {
    this.called = called ?? new Set<string>();
  }

  static async start(options: StackOptions = {}): Promise<Stack> {
    const memory = options.store === "memory";
    const redis = new Redis(memory ? 0 : await freePort());
    if (!memory) await redis.start();
    const port = await freePort();
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      DATALAYER__SERVER__ADDR: `127.0.0.1:${port}`,
      DATALAYER__METRICS__ADDR: "127.0.0.1:0",
      DATALAYER__HEALTH__PROBE_INTERVAL: "100ms",
      DATALAYER__HEALTH__PROBE_TIMEOUT: "100ms",
      DATALAYER__TELEMETRY__LOG_LEVEL: "warn",
      ...policyEnv(),
    };
    if (memory) delete env.DATALAYER__REDIS__URL;
    else env.DATALAYER__REDIS__URL = `redis://127.0.0.1:${redis.port}`;
    const proc = spawn(BIN, options.config ? ["--config", options.config] : [], {
      stdio: ["ignore", "ignore", process.env.DATALAYER_LOG ? "inherit" : "ignore"],
      env,
    });
    const scheme = options.tls ? "https" : "http";
    const stack = new Stack(`${scheme}://127.0.0.1:${port}`, redis, proc, options.called, options.tls);
    await stack.waitServing();
    if (options.reflect ?? true) stack.served = stack.reflect();
    return stack;
  }

  async waitServing(timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ((await healthStatus(this.baseUrl, "", this.tls)) !== 1) {
      if (this.proc.exitCode !== null) throw new Error(`the service exited (${this.proc.exitCode})`);
      if (Date.now() > deadline) throw new Error("health never became SERVING");
      await sleep(50);
    }
  }

  /** Served datalayer RPCs by reflection: service -> method names. */
  reflect(): Map<string, string[]> {
    const out = execFileSync(BUF, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-methods", this.baseUrl], {
      encoding: "utf8",
    });
    const served = new Map<string, string[]>();
    for (const line of out.split("\n")) {
      const m = /^(datalayer\.[\w.]+)\/(\w+)$/.exec(line.trim());
      if (m) served.set(m[1], [...(served.get(m[1]) ?? []), m[2]]);
    }
    return served;
  }

  serves(service: string): boolean {
    return this.served.has(service);
  }

  /** A client whose calls are recorded for the coverage check. */
  client(options: Partial<ClientOptions> = {}): DatalayerClient {
    const record: Interceptor = (next) => (req) => {
      this.called.add(`${req.service.typeName}/${req.method.name}`);
      return next(req);
    };
    const c = createClient({
      baseUrl: this.baseUrl,
      ...options,
      interceptors: [record, ...(options.interceptors ?? [])],
    });
    this.clients.push(c);
    return c;
  }

  pauseService() {
    this.proc.kill("SIGSTOP");
  }

  resumeService() {
    this.proc.kill("SIGCONT");
  }

  async stop(): Promise<void> {
    for (const c of this.clients) c.close();
    if (this.proc.exitCode === null) {
      this.proc.kill("SIGCONT");
      this.proc.kill("SIGTERM");
      const timer = setTimeout(() => this.proc.kill("SIGKILL"), 15_000);
      await once(this.proc, "exit");
      clearTimeout(timer);
    }
    await this.redis.kill();
  }
}

let counter = 0;
export const unique = (prefix: string) => `${prefix}:${process.pid}:${Date.now()}:${counter++}`;

/** Polls `probe` until it answers something truthy (returned), or throws after `timeoutMs`. */
export async function waitFor<T>(probe: () => Promise<T>, timeoutMs = 5000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await sleep(50);
  }
}

/** A key made by `datalayer keys new`: the secret and what its `auth.keys` entry keeps. */
export interface ApiKey {
  key: string;
  id: string;
  tenant: string;
  sha256: string;
}

export function newKey(id: string, tenant: string): ApiKey {
  const out = execFileSync(BIN, ["keys", "new", "--id", id, "--tenant", tenant], { encoding: "utf8" });
  const key = /^\s*(dlk_[0-9a-f]{64})$/m.exec(out);
  const entry = /^\s*- \{ id: (\S+), tenant: (\S+), sha256: "([0-9a-f]{64})", allow: \["\*"\] \}$/m.exec(out);
  if (!key || !entry || entry[1] !== id || entry[2] !== tenant) {
    throw new Error(`unexpected \`datalayer keys new\` output:\n${out}`);
  }
  return { key: key[1], id, tenant, sha256: entry[3] };
}

/** The `auth.keys` entry of `key` as a YAML flow mapping, as `keys new` prints it. */
export function keyEntry(key: ApiKey, allow: string[] = ["*"], expires?: string): string {
  const more = expires ? `, expires: "${expires}"` : "";
  return `{ id: ${key.id}, tenant: ${key.tenant}, sha256: "${key.sha256}", allow: [${allow.map((a) => `"${a}"`).join(", ")}]${more} }`;
}

/** PEM files made by `makeCerts` in `dir`. */
export class Certs {
  constructor(readonly dir: string) {}
  path(name: string): string {
    return path.join(this.dir, name);
  }
  read(name: string): Buffer {
    return readFileSync(this.path(name));
  }
}

function openssl(cwd: string, ...args: string[]) {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

/**
 * A CA (`ca.crt`), a server certificate it signed for localhost and
 * 127.0.0.1 (`server.crt`/`server.key`, with subjectAltName), and per
 * common name in `clients` a client certificate (`<cn>.crt`/`<cn>.key`,
 * X.509 v3 with extendedKeyUsage clientAuth).
 */
export function makeCerts(dir: string, clients: string[] = []): Certs {
  const newCa = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2"];
  const caExt = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"];
  openssl(dir, ...newCa, "-subj", "/CN=datalayer-client-test-ca", ...caExt);
  const leaves: [string, string, string][] = [
    ["server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"],
    ...clients.map((cn): [string, string, string] => [cn, cn, "extendedKeyUsage=clientAuth\n"]),
  ];
  for (const [name, cn, ext] of leaves) {
    writeFileSync(path.join(dir, `${name}.ext`), ext);
    const csr = ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.csr`];
    openssl(dir, ...csr, "-subj", `/CN=${cn}`);
    const sign = ["x509", "-req", "-in", `${name}.csr`, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"];
    openssl(dir, ...sign, "-out", `${name}.crt`, "-days", "2", "-extfile", `${name}.ext`);
  }
  return new Certs(dir);
}
