// SessionService through the TypeScript client, against the real binary.
import assert from "node:assert/strict";
import { describe, test, type TestContext } from "node:test";
import { Code, ConnectError, fieldViolations } from "@datalayer/client";
import { type Stack, unique } from "./harness.js";

export const SERVICE = "datalayer.session.v1.SessionService";

async function code(p: Promise<unknown>): Promise<Code> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ConnectError);
    return e.code;
  }
  assert.fail("expected the call to fail");
}

export function sessionsSuite(stack: () => Stack) {
  describe(SERVICE, () => {
    const skip = (t: TestContext) => {
      if (!stack().serves(SERVICE)) {
        t.skip(`${SERVICE} is not served`);
        return true;
      }
      return false;
    };

    test("create, get, update, touch, rotate, revoke", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const userId = unique("ts:user");
      const created = await dl.sessions.create({
        userId,
        data: { theme: "dark" },
        idleTtl: { seconds: 600n },
        clientIp: "127.0.0.1",
        userAgent: "node-test",
      });
      const token = created.token;
      assert.ok(token && created.session?.sessionId);
      assert.deepEqual(created.session?.data, { theme: "dark" });

      const got = await dl.sessions.get({ token, touch: true });
      assert.equal(got.session?.sessionId, created.session?.sessionId);
      assert.equal(got.session?.userAgent, "node-test");

      const updated = await dl.sessions.update({ token, data: { lang: "en" } });
      assert.equal(updated.updated, true);
      assert.deepEqual(updated.session?.data, { theme: "dark", lang: "en" });
      const stale = await dl.sessions.update({
        token,
        data: { x: "y" },
        expectedVersion: (updated.session?.version ?? 0n) + 100n,
      });
      assert.equal(stale.updated, false);

      const touched = await dl.sessions.touch({ token });
      assert.ok(touched.expiresAt && touched.expiresAt.seconds > 0n);

      const rotated = await dl.sessions.rotate({ token });
      assert.ok(rotated.token && rotated.token !== token);
      assert.equal(rotated.session?.sessionId, created.session?.sessionId);
      assert.equal(await code(dl.sessions.get({ token })), Code.NotFound);

      assert.equal((await dl.sessions.revoke({ token: rotated.token })).revoked, true);
      assert.equal((await dl.sessions.revoke({ token: rotated.token })).revoked, false);
    });

    test("list, count and revoke a user's sessions", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const userId = unique("ts:user");
      const tokens: string[] = [];
      for (let i = 0; i < 3; i++) tokens.push((await dl.sessions.create({ userId })).token);
      const { sessions } = await dl.sessions.listUserSessions({ userId });
      assert.equal(sessions.length, 3);
      assert.equal((await dl.sessions.countUserSessions({ userId })).count, 3n);
      assert.equal((await dl.sessions.revokeUserSessions({ userId, exceptToken: tokens[0] })).revoked, 2n);
      assert.equal((await dl.sessions.countUserSessions({ userId })).count, 1n);
    });

    test("a one-time token is consumed once", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      const subject = unique("ts:subject");
      const issued = await dl.sessions.issueOneTimeToken({ purpose: "email-verify", subject, ttl: { seconds: 600n } });
      assert.ok(issued.token && issued.expiresAt);
      const consumed = await dl.sessions.consumeOneTimeToken({ purpose: "email-verify", token: issued.token });
      assert.equal(consumed.subject, subject);
      assert.equal(
        await code(dl.sessions.consumeOneTimeToken({ purpose: "email-verify", token: issued.token })),
        Code.NotFound,
      );
    });

    test("an empty user id is a field violation", async (t) => {
      if (skip(t)) return;
      const dl = stack().client();
      try {
        await dl.sessions.create({ userId: "" });
        assert.fail("expected INVALID_ARGUMENT");
      } catch (e) {
        assert.ok(e instanceof ConnectError);
        assert.equal(e.code, Code.InvalidArgument);
        assert.ok(fieldViolations(e).some((v) => v.field === "user_id"), JSON.stringify(fieldViolations(e)));
      }
    });
  });
}
