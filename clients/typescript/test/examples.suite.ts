// The quickstart of the repository README.md, run as it is written.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";
import { type Stack } from "./harness.js";

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
  });
}
