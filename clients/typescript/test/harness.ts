// Harness: a real redis-server on a free port and the real service binary
// (DATALAYER_BIN, default target/debug/datalayer) pointed at it, or the
// binary alone on its in-process memory store (`Stack.start({ store:
// "memory" })`); health must say SERVING first. The RPCs the binary serves
// are listed by reflection (`buf curl --list-methods`), and every call made
// through `stack.client()` (unary, or a stream when it is opened) is
// recorded so the suite can check that each served RPC was called.
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { once } from "node:events";
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
export async function healthStatus(baseUrl: string, service = ""): Promise<number | undefined> {
  const name = Buffer.from(service);
  const msg = name.length ? Buffer.concat([Buffer.from([0x0a, name.length]), name]) : Buffer.alloc(0);
  const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, msg.length]), msg]);
  return new Promise((resolve) => {
    const session = http2.connect(baseUrl);
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

export interface StackOptions {
  /** `redis` (default): a redis-server of its own; `memory`: no `redis.url`. */
  store?: "redis" | "memory";
  /** Record the calls into this set (e.g. another stack's `called`). */
  called?: Set<string>;
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
    };
    if (memory) delete env.DATALAYER__REDIS__URL;
    else env.DATALAYER__REDIS__URL = `redis://127.0.0.1:${redis.port}`;
    const proc = spawn(BIN, [], {
      stdio: ["ignore", "ignore", process.env.DATALAYER_LOG ? "inherit" : "ignore"],
      env,
    });
    const stack = new Stack(`http://127.0.0.1:${port}`, redis, proc, options.called);
    await stack.waitServing();
    stack.served = stack.reflect();
    return stack;
  }

  async waitServing(timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ((await healthStatus(this.baseUrl)) !== 1) {
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
