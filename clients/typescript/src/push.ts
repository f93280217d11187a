/**
 * Verifying a push delivery. A push queue's messages are POSTed by the
 * service to its destination URL (`dl.queue.setDestination(...)`), each
 * with a `datalayer-signature` header: a JWT signed with HS256 whose claims
 * bind the delivery to its exact body and URL, for five minutes:
 *
 * ```text
 * header  {"alg":"HS256","typ":"JWT"}
 * claims  {"iss":"datalayer","sub":<url>,"iat":<s>,"nbf":<s>,"exp":<s + 300>,
 *          "jti":<message id>,"body":<base64url(sha256(body)), no padding>}
 * ```
 *
 * The service signs with the current key of `queue.push.signing_key_file`;
 * a receiver accepts the current key and the next one, so a key rotation
 * needs no downtime. Callbacks (`callback_url`, `failure_callback_url`) are
 * signed the same way, for their own URL.
 *
 * ```ts
 * import { readFileSync } from "node:fs";
 * import { parseSigningKeys, verifySignature } from "@datalayer/client";
 * const keys = parseSigningKeys(readFileSync("/etc/datalayer/push-keys", "utf8"));
 * const claims = verifySignature(body, req.headers["datalayer-signature"], keys,
 *   "https://hooks.example.com/analyses"); // throws a SignatureError
 * ```
 *
 * Only `node:crypto` is used.
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";

/** The header carrying the signature. */
export const SIGNATURE_HEADER = "datalayer-signature";
/** How long the service makes a signature valid for, in seconds. */
export const SIGNATURE_VALID_FOR_S = 300;
/** The shortest signing key the service accepts, in bytes. */
export const MIN_SIGNING_KEY_BYTES = 16;
/** The default clock leeway of {@link verifySignature}, in seconds. */
export const DEFAULT_LEEWAY_S = 30;

/** The claims of a valid signature. */
export interface SignatureClaims {
  /** Always `"datalayer"`. */
  iss: string;
  /** The URL the delivery was POSTed to, exactly as the destination names it. */
  sub: string;
  /** Issued at, in seconds since the epoch (when this attempt was made). */
  iat: number;
  /** Not before, in seconds (equal to `iat`). */
  nbf: number;
  /** Expires, in seconds (`iat` + 300). */
  exp: number;
  /** The message id (the same for every attempt: deduplicate with it). */
  jti: string;
  /** base64url(sha256(body)), without padding. */
  body: string;
}

/** Why {@link verifySignature} refused a signature. */
export type SignatureErrorReason =
  /** No header, not three base64url parts, not JSON, missing claims, or not issued by datalayer. */
  | "malformed"
  /** The JWT header's `alg` is not `HS256`. */
  | "algorithm"
  /** Signed by none of the keys given. */
  | "unknown_key"
  /** Signed for another URL than the one it was received on. */
  | "url"
  /** The body is not the one signed. */
  | "body"
  /** `nbf` is still in the future (beyond the leeway). */
  | "not_yet_valid"
  /** `exp` has passed (beyond the leeway). */
  | "expired";

/** A `datalayer-signature` that does not hold; `reason` says why. Answer 401. */
export class SignatureError extends Error {
  constructor(
    readonly reason: SignatureErrorReason,
    message: string,
  ) {
    super(message);
    this.name = "SignatureError";
  }
}

export interface VerifyOptions {
  /** Clock skew tolerated on `nbf` and `exp`, in seconds (default 30). */
  leewaySeconds?: number;
  /** The time to verify at (default: now). */
  now?: Date;
}

const B64URL = /^[A-Za-z0-9_-]*$/;

function b64urlDecode(part: string): Buffer | undefined {
  // base64url without padding: a length of 1 mod 4 is never produced.
  if (!B64URL.test(part) || part.length % 4 === 1) return undefined;
  return Buffer.from(part, "base64url");
}

function json(part: string): unknown {
  const bytes = b64urlDecode(part);
  if (bytes === undefined) return undefined;
  try {
    return JSON.parse(bytes.toString("utf8"));
  } catch {
    return undefined;
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const isTime = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

function keyBytes(key: string | Uint8Array, index: number): Buffer {
  const bytes = typeof key === "string" ? Buffer.from(key, "utf8") : Buffer.from(key.buffer, key.byteOffset, key.byteLength);
  if (bytes.length < MIN_SIGNING_KEY_BYTES) {
    throw new TypeError(
      `signing key ${index + 1} is ${bytes.length} bytes; the service's keys have at least ${MIN_SIGNING_KEY_BYTES} ` +
        "(pass each line of queue.push.signing_key_file, or use parseSigningKeys)",
    );
  }
  return bytes;
}

/**
 * The keys of a `queue.push.signing_key_file`, as the service reads it: one
 * per line, trimmed, blank lines and `#` comments skipped. The first is the
 * current key, the second (if any) the next one.
 */
export function parseSigningKeys(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l.length > 0 && !l.startsWith("#"));
}

/** base64url(sha256(body)), without padding: the `body` claim of `body`. */
export function bodyHash(body: Uint8Array | string): string {
  return createHash("sha256").update(body).digest("base64url");
}

/**
 * Verifies the `datalayer-signature` header of a push delivery (or a
 * callback) and answers its claims; throws a {@link SignatureError} when it
 * does not hold, checking in this order: the token's form (`malformed`), its
 * `alg` (`algorithm`), the HMAC against each of `keys` in constant time
 * (`unknown_key`), then `url` against `sub`, the body's SHA-256 (`body`),
 * `nbf` (`not_yet_valid`) and `exp` (`expired`), the last two with
 * `leewaySeconds` (default 30) of clock skew.
 *
 * - `body`: the raw request body, byte for byte, as received (a string is
 *   taken as UTF-8): read it before any JSON parsing.
 * - `header`: the header's value (`req.headers["datalayer-signature"]`).
 * - `keys`: the current and the next signing key (the lines of
 *   `queue.push.signing_key_file`; see {@link parseSigningKeys}). A key
 *   shorter than 16 bytes, or none, is a `TypeError`: a misconfiguration.
 * - `url`: the destination URL exactly as given to `setDestination` (the
 *   service signs that string; a URL rebuilt from the request's `Host` and
 *   path may differ, e.g. by a trailing `/` or a proxy).
 *
 * The same message may be delivered more than once (every attempt is signed
 * anew): deduplicate on `claims.jti`, the message id.
 */
export function verifySignature(
  body: Uint8Array | string,
  header: string | string[] | null | undefined,
  keys: readonly (string | Uint8Array)[],
  url: string,
  opts: VerifyOptions = {},
): SignatureClaims {
  if (keys.length === 0) throw new TypeError("verifySignature needs at least one signing key");
  const secrets = keys.map(keyBytes);
  const leeway = opts.leewaySeconds ?? DEFAULT_LEEWAY_S;
  if (!(leeway >= 0) || !Number.isFinite(leeway)) {
    throw new RangeError(`leewaySeconds must be a finite number ≥ 0, got ${leeway}`);
  }
  const nowMs = (opts.now ?? new Date()).getTime();
  if (!Number.isFinite(nowMs)) throw new RangeError("now must be a valid Date");
  const now = Math.floor(nowMs / 1000);

  if (Array.isArray(header)) {
    if (header.length !== 1) throw new SignatureError("malformed", `expected one ${SIGNATURE_HEADER} header, got ${header.length}`);
    header = header[0];
  }
  if (typeof header !== "string" || header.length === 0) {
    throw new SignatureError("malformed", `no ${SIGNATURE_HEADER} header`);
  }
  const parts = header.trim().split(".");
  if (parts.length !== 3) throw new SignatureError("malformed", "not a JWT (three dot-separated parts)");
  const [head64, claims64, sig64] = parts;
  const head = json(head64);
  const sig = b64urlDecode(sig64);
  if (!isObject(head) || sig === undefined) throw new SignatureError("malformed", "not a JWT (bad header or signature encoding)");
  if (head.alg !== "HS256") {
    throw new SignatureError("algorithm", `signed with ${JSON.stringify(head.alg)}, not HS256`);
  }

  const signed = Buffer.from(`${head64}.${claims64}`, "ascii");
  let known = false;
  for (const secret of secrets) {
    const expected = createHmac("sha256", secret).update(signed).digest();
    // Every key is tried (no early exit), each comparison in constant time.
    if (expected.length === sig.length && timingSafeEqual(expected, sig)) known = true;
  }
  if (!known) throw new SignatureError("unknown_key", "signed by none of the keys given");

  const claims = json(claims64);
  if (
    !isObject(claims) ||
    typeof claims.sub !== "string" ||
    typeof claims.jti !== "string" ||
    typeof claims.body !== "string" ||
    !isTime(claims.iat) ||
    !isTime(claims.nbf) ||
    !isTime(claims.exp)
  ) {
    throw new SignatureError("malformed", "the claims are not those of a datalayer signature");
  }
  if (claims.iss !== "datalayer") {
    throw new SignatureError("malformed", `issued by ${JSON.stringify(claims.iss)}, not datalayer`);
  }
  if (claims.sub !== url) {
    throw new SignatureError("url", `signed for ${JSON.stringify(claims.sub)}, not ${JSON.stringify(url)}`);
  }
  const hash = Buffer.from(bodyHash(body), "ascii");
  const claimed = Buffer.from(claims.body, "utf8");
  if (hash.length !== claimed.length || !timingSafeEqual(hash, claimed)) {
    throw new SignatureError("body", "the body is not the one signed");
  }
  if (now + leeway < claims.nbf) {
    throw new SignatureError("not_yet_valid", `not valid before ${new Date(claims.nbf * 1000).toISOString()}`);
  }
  if (now > claims.exp + leeway) {
    throw new SignatureError("expired", `expired at ${new Date(claims.exp * 1000).toISOString()}`);
  }
  return claims as unknown as SignatureClaims;
}
