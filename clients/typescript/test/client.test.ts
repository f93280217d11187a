// One suite per service, run against one real Redis and one real service
// binary (FlagService: a second binary on the memory store, whose calls count
// as well; StateService, QueueService (and its worker helpers),
// LeaderboardService and TopicService: on both; push delivery: binaries of
// their own configured for it, in push.suite.ts, whose calls count as well;
// API keys, quotas, TLS and mTLS: binaries of their own, in
// security.suite.ts; the rate-limit, cache and session helpers on both, in
// helpers2.suite.ts; AnalyticsService and its tracker on both, in
// analytics.suite.ts, with a binary of its own for a small
// analytics.max_batch, whose calls count as well; `dl.queue.add` on both,
// in enqueuer.suite.ts, with a binary of its own for a full queue); then a check that every RPC the binary serves (by
// reflection) was called. To cover a new service: write test/<name>.suite.ts and add it below.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { services } from "@datalayer/client";
import { Stack } from "./harness.js";
import { rateLimitSuite } from "./ratelimit.suite.js";
import { cacheSuite } from "./cache.suite.js";
import { sessionsSuite } from "./sessions.suite.js";
import { flagsSuite } from "./flags.suite.js";
import { stateSuite } from "./state.suite.js";
import { examplesSuite } from "./examples.suite.js";
import { auditSuite } from "./audit.suite.js";
import { queueSuite } from "./queue.suite.js";
import { leaderboardSuite } from "./leaderboard.suite.js";
import { topicSuite } from "./topic.suite.js";
import { workerSuite } from "./worker.suite.js";
import { pushSuite } from "./push.suite.js";
import { securitySuite } from "./security.suite.js";
import { helpers2Suite } from "./helpers2.suite.js";
import { analyticsSuite } from "./analytics.suite.js";
import { enqueuerFullSuite, enqueuerSuite } from "./enqueuer.suite.js";

let stack: Stack | undefined;
let memory: Stack | undefined;
const current = () => {
  assert.ok(stack, "the stack is running");
  return stack;
};
const onMemory = () => {
  assert.ok(memory, "the memory-store stack is running");
  return memory;
};

before(async () => {
  stack = await Stack.start();
  memory = await Stack.start({ store: "memory", called: stack.called });
});

after(async () => {
  await memory?.stop();
  await stack?.stop();
});

rateLimitSuite(current);
cacheSuite(current);
sessionsSuite(current);
flagsSuite(onMemory);
stateSuite(current);
stateSuite(onMemory, "memory");
examplesSuite(current);
auditSuite(current);
queueSuite(current);
queueSuite(onMemory, "memory");
leaderboardSuite(current);
leaderboardSuite(onMemory, "memory");
topicSuite(current);
topicSuite(onMemory, "memory");
workerSuite(current);
workerSuite(onMemory, "memory");
pushSuite(() => current().called);
pushSuite(() => current().called, "memory");
helpers2Suite(current);
helpers2Suite(onMemory, "memory");
analyticsSuite(current);
analyticsSuite(onMemory, "memory");
enqueuerSuite(current);
enqueuerSuite(onMemory, "memory");
enqueuerFullSuite(() => current().called);
securitySuite();

describe("coverage", () => {
  test("every served RPC was called", () => {
    const s = current();
    assert.ok(s.serves("datalayer.ratelimit.v1.RateLimitService"));
    // Listed by reflection, so called (by the limiters' report()).
    assert.ok(s.served.get("datalayer.ratelimit.v1.RateLimitService")?.includes("Report"), "Report is served");
    const missing = [...s.served].flatMap(([svc, methods]) =>
      methods.map((m) => `${svc}/${m}`).filter((name) => !s.called.has(name)),
    );
    assert.deepEqual(missing, [], "served but never called by the TypeScript tests");
  });

  test("the client knows every served service", () => {
    const known = new Set(Object.values(services).map((svc) => svc.typeName));
    const unknown = [...current().served.keys()].filter((name) => !known.has(name));
    assert.deepEqual(unknown, [], "served but not generated (run scripts/gen-clients.sh)");
  });
});
