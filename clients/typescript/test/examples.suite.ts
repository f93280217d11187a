// The quickstart of the repository README.md, and the worker, analytics and
// push receiver examples of clients/typescript/README.md, run as they are
// written (the push receiver in push.suite.ts, which has a service
// configured for it).
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";
import { type Stack, unique, waitFor } from "./harness.js";

const here = path.dirname(fileURLToPath(import.meta.url));

export function examplesSuite(stack: () => Stack) {
  describe("examples", () => {
    test("README.md shows quickstart.ts verbatim", () => {
      const doc = readFileSync(path.join(here, "../../../README.md"), "utf8");
      const block = doc.split("```ts quickstart\n")[1]?.split("```\n")[0];
      assert.equal(block, readFileSync(path.join(here, "../examples/quickstart.ts"), "utf8"));
    });

    test("quickstart.ts", async (t) => {
      for (const svc of ["datalayer.ratelimit.v1.RateLimitService", "datalayer.cache.v1.CacheService"]) {
        if (!stack().serves(svc)) return t.skip(`${svc} is not served`);
      }
      const { stdout } = await promisify(execFile)(
        process.execPath,
        ["--import", "tsx", path.join(here, "../examples/quickstart.ts")],
        { env: { ...process.env, DATALAYER_URL: stack().baseUrl }, timeout: 60_000, cwd: path.join(here, "..") },
      );
      assert.deepEqual(stdout.trim().split("\n"), [
        "allowed=true remaining=9",
        "computing the report",
        "42 trades today",
        "42 trades today",
        "bad request: key: must not be empty",
      ]);
    });

    test("clients/typescript/README.md shows worker.ts, analytics.ts and push-receiver.ts verbatim", () => {
      const doc = readFileSync(path.join(here, "../README.md"), "utf8");
      for (const name of ["worker", "analytics", "push-receiver"]) {
        const block = doc.split(`\`\`\`ts ${name}\n`)[1]?.split("```\n")[0];
        assert.equal(block, readFileSync(path.join(here, `../examples/${name}.ts`), "utf8"), name);
      }
    });

    test("analytics.ts: tracks through a tracker, then reads", async (t) => {
      if (!stack().serves("datalayer.analytics.v1.AnalyticsService")) return t.skip("AnalyticsService is not served");
      const { stdout } = await promisify(execFile)(
        process.execPath,
        ["--import", "tsx", path.join(here, "../examples/analytics.ts")],
        { env: { ...process.env, DATALAYER_URL: stack().baseUrl }, timeout: 60_000, cwd: path.join(here, "..") },
      );
      assert.deepEqual(stdout.trim().split("\n"), ["binance 1", "kraken 2", "users: 1"]);
    });

    test("worker.ts: acks, dead-letters a bad job, stops on SIGTERM", async (t) => {
      if (!stack().serves("datalayer.queue.v1.QueueService")) return t.skip("QueueService is not served");
      const dl = stack().client();
      const queue = unique("ts.example.worker");
      const enc = (s: string) => new TextEncoder().encode(s);
      for (const job of ['{"id":"a"}', '{"id":"b"}']) await dl.queue.enqueue({ queue, message: { payload: enc(job) } });
      await dl.queue.enqueue({ queue, message: { payload: enc("{}"), maxAttempts: 1 } });
      const worker = spawn(process.execPath, ["--import", "tsx", path.join(here, "../examples/worker.ts")], {
        cwd: path.join(here, ".."),
        env: { ...process.env, DATALAYER_URL: stack().baseUrl, QUEUE: queue },
        stdio: ["ignore", "pipe", "inherit"],
      });
      let out = "";
      worker.stdout.on("data", (c: Buffer) => (out += c.toString()));
      try {
        await waitFor(async () => {
          const s = await dl.queue.stats({ queue });
          return s.ackedTotal === 2n && s.dead === 1n;
        }, 30_000);
        worker.kill("SIGTERM");
        const [code] = await once(worker, "exit");
        assert.equal(code, 0);
        assert.deepEqual(out.trim().split("\n").sort(), [
          "acked 2, nacked 1, dead-lettered 1",
          "analysed job a (attempt 1)",
          "analysed job b (attempt 1)",
        ]);
        const [dead] = (await dl.queue.listDead({ queue })).messages;
        assert.equal(dead?.reason, "a job needs an id");
      } finally {
        if (worker.exitCode === null) worker.kill("SIGKILL");
      }
    });
  });
}
