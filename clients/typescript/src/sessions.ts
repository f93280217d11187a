/**
 * Session checks, on `SessionService` (the Python client's
 * `client.sessions.validate(token)`):
 *
 * ```ts
 * const session = await dl.sessions.validate(req.cookies.sid);
 * if (!session) return res.redirect("/login");
 * const userId = session.userId;
 * ```
 *
 * The session comes back as a plain, JSON-serialisable object: `version` a
 * number, times as ISO 8601 strings (`new Date(session.expiresAt)`).
 */
import { Code, ConnectError, type CallOptions, type Client } from "@connectrpc/connect";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Session, SessionService } from "./gen/datalayer/session/v1/session_pb.js";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb.js";
import { show } from "./durations.js";

/** The typed Connect client of SessionService, as `dl.sessions` holds it. */
export type SessionServiceClient = Client<typeof SessionService>;

/** `dl.sessions`: the SessionService client plus `validate`. */
export type SessionClient = SessionServiceClient & SessionHelpers;

/** A session as `validate` returns it. */
export interface SessionInfo {
  /** Stable for the session's life (rotation keeps it); safe to show and log, unlike the token. */
  sessionId: string;
  userId: string;
  data: Record<string, string>;
  /** Changes on every update. */
  version: number;
  /** ISO 8601. */
  createdAt: string | undefined;
  lastSeenAt: string | undefined;
  /** When the session ends unless touched (never later than `absoluteExpiresAt`). */
  expiresAt: string | undefined;
  absoluteExpiresAt: string | undefined;
  clientIp: string;
  userAgent: string;
}

export interface ValidateOptions {
  /** Also slide the idle expiry, as `touch` does (default false). */
  touch?: boolean;
  signal?: AbortSignal;
  /** The deadline of the call (default: the client's). */
  timeoutMs?: number;
}

export interface SessionHelpers {
  /**
   * The session behind `token`, or `undefined` if there is none: an
   * unknown, expired or revoked token (NOT_FOUND) and a malformed one
   * (INVALID_ARGUMENT on `token`) alike, and `""`, `null` or `undefined`
   * without a call. Other errors (UNAVAILABLE, UNAUTHENTICATED, ...) are
   * thrown. A token that is not a string is a `TypeError`.
   */
  validate(token: string | null | undefined, options?: ValidateOptions): Promise<SessionInfo | undefined>;
}

const iso = (t: Timestamp | undefined) => (t ? timestampDate(t).toISOString() : undefined);

/** A `Session` message as a plain object. */
export function sessionInfo(s: Session): SessionInfo {
  return {
    sessionId: s.sessionId,
    userId: s.userId,
    data: { ...s.data },
    version: Number(s.version),
    createdAt: iso(s.createdAt),
    lastSeenAt: iso(s.lastSeenAt),
    expiresAt: iso(s.expiresAt),
    absoluteExpiresAt: iso(s.absoluteExpiresAt),
    clientIp: s.clientIp,
    userAgent: s.userAgent,
  };
}

/** The service refused the token itself (not a session token), and nothing else of the request. */
function malformed(err: ConnectError): boolean {
  const violations = err.findDetails(BadRequestSchema).flatMap((d) => d.fieldViolations);
  return violations.length > 0 && violations.every((v) => v.field === "token");
}

/** `validate` on `rpc` (what `dl.sessions` adds to the generated client). */
export function sessionHelpers(rpc: SessionServiceClient): SessionHelpers {
  return {
    async validate(token, options = {}) {
      if (token === undefined || token === null || token === "") return undefined;
      if (typeof token !== "string") throw new TypeError(`a session token must be a string, got ${show(token)}`);
      if (options.touch !== undefined && typeof options.touch !== "boolean") {
        throw new TypeError(`touch must be a boolean, got ${show(options.touch)}`);
      }
      const call: CallOptions = {};
      if (options.signal) call.signal = options.signal;
      if (options.timeoutMs !== undefined) call.timeoutMs = options.timeoutMs;
      try {
        const { session } = await rpc.get({ token, touch: options.touch ?? false }, call);
        return session ? sessionInfo(session) : undefined;
      } catch (e) {
        const err = ConnectError.from(e);
        if (err.code === Code.NotFound) return undefined;
        if (err.code === Code.InvalidArgument && malformed(err)) return undefined;
        throw e;
      }
    },
  };
}

/** Adds `validate` to `dl.sessions`'s client (in place). */
export function withSessionHelpers(rpc: SessionServiceClient): SessionClient {
  return Object.assign(rpc, sessionHelpers(rpc));
}
