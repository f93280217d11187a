/**
 * The transport of `createClient`: gRPC over one HTTP/2 session.
 *
 * Streaming calls are Connect's own (`createGrpcTransport`). Unary calls
 * take a shorter path on the same session: one HTTP/2 stream, the request
 * written in one piece, the answer collected from the stream's events.
 * Connect's unary path runs every call through its generic machinery
 * (async-iterable pipes over the request and the answer, a "sentinel" per
 * call that builds a ConnectError even on success, node-stream async
 * iterators): 550-650 µs of CPU per call, 50 in flight, on a 2-core
 * machine, against 260-290 µs on this path and about 190 µs for a bare
 * node:http2 request (see docs/benchmark.md, queue section).
 *
 * Everything a caller sees is as Connect's gRPC transport makes it: the
 * same request headers (`content-type: application/grpc+proto`,
 * `grpc-timeout`, `te: trailers`, `grpc-accept-encoding: gzip,br`, a
 * `connect-es/2` user agent unless one is set), interceptors run by
 * Connect's own `runUnaryCall` (same request and response objects, same
 * deadline and abort handling), answers compressed with gzip or br
 * accepted, and the same ConnectErrors: the status from the trailers (or
 * a trailers-only answer), its `grpc-status-details-bin` details and
 * metadata, the same codes for HTTP statuses, HTTP/2 resets and Node's
 * network errors (an unreachable service is UNAVAILABLE with the Node
 * error as its cause).
 *
 * A stream opened with the context value {@link UNCOMPRESSED_ANSWERS} set
 * (the worker helpers' Consume stream) does not offer gzip or br: the
 * service compresses every message of a stream when the caller accepts it,
 * whatever its size (its `server.compress_min_bytes` applies to unary
 * answers only), and a deflate and an inflate per small message cost both
 * sides more CPU than anything else per message.
 */
import * as http2 from "node:http2";
import { promisify } from "node:util";
import * as zlib from "node:zlib";
import { fromBinary, toBinary, type DescMessage, type DescMethodUnary, type MessageShape } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextKey,
  createContextValues,
  type Interceptor,
  type Transport,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";
import { createMethodUrl, runUnaryCall } from "@connectrpc/connect/protocol";
import { createGrpcTransport, type Http2SessionManager } from "@connectrpc/connect-node";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";

/** The user agent of unary calls (Connect's streams send `connect-es/<its version>`). */
const USER_AGENT = "connect-es/2";

const CONTENT_TYPE = /^application\/grpc(?:\+(?:(json)(?:; ?charset=utf-?8)?|proto))?$/i;
const ACCEPT_ENCODING = "gzip,br";
const gunzip = promisify(zlib.gunzip);
const brotliDecompress = promisify(zlib.brotliDecompress);

/** A stream opened with this context value true asks for its messages uncompressed. */
export const UNCOMPRESSED_ANSWERS = createContextKey(false, { description: "datalayer: no compressed stream messages" });

export interface TransportOptions {
  baseUrl: string;
  sessionManager: Http2SessionManager;
  interceptors: Interceptor[];
  /** The user agent to send unless an interceptor or header sets one. */
  userAgent?: string;
}

/** Connect's gRPC transport for streams, the short path for unary calls. */
export function createTransport(options: TransportOptions): Transport {
  const { baseUrl, sessionManager, interceptors } = options;
  const streaming = createGrpcTransport({ baseUrl, sessionManager, interceptors });
  const uncompressed = createGrpcTransport({ baseUrl, sessionManager, interceptors, acceptCompression: [] });
  const userAgent = options.userAgent ?? USER_AGENT;
  return {
    unary(method, signal, timeoutMs, header, message, contextValues) {
      // As Connect's: no default deadline here, 0 or less is none.
      const timeout = timeoutMs === undefined || timeoutMs <= 0 ? undefined : timeoutMs;
      return runUnaryCall({
        interceptors,
        signal,
        timeoutMs: timeout,
        req: {
          stream: false,
          service: method.parent,
          method,
          requestMethod: "POST",
          url: createMethodUrl(baseUrl, method),
          header: requestHeader(timeout, header, userAgent),
          contextValues: contextValues ?? createContextValues(),
          message,
        },
        next: (req) => unaryCall(sessionManager, req),
      });
    },
    stream: (method, signal, timeoutMs, header, input, contextValues) =>
      (contextValues?.get(UNCOMPRESSED_ANSWERS) ? uncompressed : streaming).stream(
        method,
        signal,
        timeoutMs,
        header,
        input,
        contextValues,
      ),
  };
}

function requestHeader(timeoutMs: number | undefined, init: ConstructorParameters<typeof Headers>[0], userAgent: string): Headers {
  const h = new Headers(init ?? {});
  h.set("content-type", "application/grpc+proto");
  if (!h.has("user-agent")) h.set("user-agent", userAgent);
  if (timeoutMs !== undefined) h.set("grpc-timeout", `${timeoutMs}m`);
  h.set("te", "trailers");
  h.set("grpc-accept-encoding", ACCEPT_ENCODING);
  return h;
}

/** The path of each URL seen (`/<service>/<method>`), and whether it is the session's origin. */
const paths = new Map<string, { origin: string; path: string }>();
function pathOf(url: string): { origin: string; path: string } {
  let p = paths.get(url);
  if (!p) {
    const u = new URL(url);
    p = { origin: u.origin, path: u.pathname + u.search };
    if (paths.size < 1000) paths.set(url, p);
  }
  return p;
}

function webHeader(nodeHeaders: http2.IncomingHttpHeaders): Headers {
  const h = new Headers();
  for (const k in nodeHeaders) {
    if (k.startsWith(":")) continue;
    const v = nodeHeaders[k];
    if (v === undefined) continue;
    if (Array.isArray(v)) for (const e of v) h.append(k, e);
    else h.append(k, String(v));
  }
  return h;
}

/** The ConnectError of a Node error, as connect-node maps it. */
export function connectErrorFromNodeReason(reason: unknown): ConnectError {
  const codes = new Set<string>();
  const seen = new Set<unknown>();
  for (let e: unknown = reason; e instanceof Error && !seen.has(e); e = e.cause) {
    seen.add(e);
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string") codes.add(code);
  }
  let code = Code.Internal;
  if (codes.has("ERR_STREAM_WRITE_AFTER_END")) code = Code.Aborted;
  else if (codes.has("ERR_STREAM_DESTROYED") || codes.has("ERR_HTTP2_INVALID_STREAM") || codes.has("ECONNRESET")) {
    code = Code.Aborted;
  } else if (codes.has("ETIMEDOUT") || codes.has("ENOTFOUND") || codes.has("EAI_AGAIN") || codes.has("ECONNREFUSED")) {
    code = Code.Unavailable;
  }
  const ce = ConnectError.from(reason, code);
  if (ce !== reason) ce.cause = reason;
  return ce;
}

const H2_NAMES: Record<number, string> = {
  1: "PROTOCOL_ERROR",
  2: "INTERNAL_ERROR",
  3: "FLOW_CONTROL_ERROR",
  4: "SETTINGS_TIMEOUT",
  6: "FRAME_SIZE_ERROR",
  7: "REFUSED_STREAM",
  8: "CANCEL",
  9: "COMPRESSION_ERROR",
  10: "CONNECT_ERROR",
  11: "ENHANCE_YOUR_CALM",
  12: "INADEQUATE_SECURITY",
  13: "HTTP_1_1_REQUIRED",
};
const H2_CODES: Record<number, Code> = {
  1: Code.Internal,
  2: Code.Internal,
  3: Code.Internal,
  4: Code.Internal,
  6: Code.Internal,
  9: Code.Internal,
  10: Code.Internal,
  7: Code.Unavailable,
  8: Code.Canceled,
  11: Code.ResourceExhausted,
  12: Code.PermissionDenied,
  13: Code.PermissionDenied,
};

/** The ConnectError of an HTTP/2 RST_STREAM code, as connect-node maps it (none for NO_ERROR and STREAM_CLOSED). */
function errorFromResetCode(rstCode: number): ConnectError | undefined {
  const code = H2_CODES[rstCode];
  if (code === undefined) return undefined;
  return new ConnectError(`http/2 stream closed with error code ${H2_NAMES[rstCode]} (0x${rstCode.toString(16)})`, code);
}

function codeFromHttpStatus(status: number): Code {
  switch (status) {
    case 400:
      return Code.Internal;
    case 401:
      return Code.Unauthenticated;
    case 403:
      return Code.PermissionDenied;
    case 404:
      return Code.Unimplemented;
    case 429:
    case 502:
    case 503:
    case 504:
      return Code.Unavailable;
    default:
      return Code.Unknown;
  }
}

/** The error a header block (trailers, or a trailers-only answer) carries, if any. */
function statusError(h: Headers): ConnectError | undefined {
  const details = h.get("grpc-status-details-bin");
  if (details != null) {
    const status = fromBinary(StatusSchema, Buffer.from(details, "base64"));
    if (status.code === 0) return undefined;
    const error = new ConnectError(status.message, status.code, h);
    error.details = status.details.map((any) => ({
      type: any.typeUrl.substring(any.typeUrl.lastIndexOf("/") + 1),
      value: any.value,
    }));
    return error;
  }
  const grpcStatus = h.get("grpc-status");
  if (grpcStatus == null || grpcStatus === "0") return undefined;
  const code = parseInt(grpcStatus, 10);
  if (code in Code) return new ConnectError(decodeURIComponent(h.get("grpc-message") ?? ""), code, h);
  return new ConnectError(`invalid grpc-status: ${grpcStatus}`, Code.Internal, h);
}

/** One unary call on its own HTTP/2 stream of the session. */
function unaryCall<I extends DescMessage, O extends DescMessage>(
  sm: Http2SessionManager,
  req: UnaryRequest<I, O>,
): Promise<UnaryResponse<I, O>> {
  const method = req.method;
  return new Promise<UnaryResponse<I, O>>((resolve, reject) => {
    const signal = req.signal;
    let done = false;
    let stream: http2.ClientHttp2Stream | undefined;
    const onAbort = () => {
      const reason = signal.reason;
      fail(reason instanceof ConnectError ? reason : ConnectError.from(reason, Code.Canceled));
    };
    function fail(e: unknown) {
      if (done) return;
      done = true;
      signal.removeEventListener("abort", onAbort);
      const err = e instanceof ConnectError ? e : connectErrorFromNodeReason(e);
      // As Connect: a cancelled call resets its stream with CANCEL, any other failure with INTERNAL_ERROR.
      if (stream && !stream.closed) {
        stream.close(err.code === Code.Canceled ? http2.constants.NGHTTP2_CANCEL : http2.constants.NGHTTP2_INTERNAL_ERROR);
      }
      reject(err);
    }
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort);

    const { origin, path } = pathOf(req.url);
    if (origin !== sm.authority) {
      return fail(
        new ConnectError(`cannot make a request to ${origin}: the http2 session is connected to ${sm.authority}`, Code.Internal),
      );
    }
    let body: Uint8Array;
    try {
      body = toBinary(method.input, req.message);
    } catch (e) {
      return fail(new ConnectError(`serialize binary: ${e instanceof Error ? e.message : String(e)}`, Code.Internal));
    }
    const frame = Buffer.allocUnsafe(5 + body.byteLength);
    frame[0] = 0;
    frame.writeUInt32BE(body.byteLength, 1);
    frame.set(body, 5);
    const headers: http2.OutgoingHttpHeaders = {};
    req.header.forEach((value, key) => (headers[key] = value));

    sm.request("POST", path, headers, {}).then(
      (s) => {
        stream = s;
        if (done) {
          // Aborted while the session was being made ready.
          if (!s.closed) s.close(http2.constants.NGHTTP2_CANCEL);
          return;
        }
        let status = 0;
        let header: Headers | undefined;
        let trailer: Headers | undefined;
        const chunks: Buffer[] = [];
        s.on("response", (h) => {
          status = Number(h[":status"] ?? 0);
          header = webHeader(h);
        });
        s.on("data", (chunk: Buffer) => {
          chunks.push(chunk);
          sm.notifyResponseByteRead(s);
        });
        s.on("trailers", (t) => (trailer = webHeader(t)));
        s.on("error", (e) => {
          if (s.writableEnded && (e as { code?: unknown }).code === "ERR_STREAM_WRITE_AFTER_END") return;
          fail(e);
        });
        s.on("close", () => {
          if (done) return;
          const reset = errorFromResetCode(s.rstCode ?? 0);
          if (reset) return fail(reset);
          if (header === undefined) {
            return fail(new ConnectError("http/2 stream closed before the response headers", Code.Unavailable));
          }
          answer(method, status, header, trailer ?? new Headers(), chunks).then(
            (res) => {
              if (done) return;
              done = true;
              signal.removeEventListener("abort", onAbort);
              resolve(res);
            },
            fail,
          );
        });
        s.end(frame);
      },
      (e) => fail(e),
    );
  });
}

/** The answer of a finished stream, checked as Connect's gRPC transport checks it. */
async function answer<I extends DescMessage, O extends DescMessage>(
  method: DescMethodUnary<I, O>,
  status: number,
  header: Headers,
  trailer: Headers,
  chunks: Buffer[],
): Promise<UnaryResponse<I, O>> {
  if (status !== 200) throw new ConnectError(`HTTP ${status}`, codeFromHttpStatus(status), header);
  const contentType = header.get("content-type");
  if (!contentType || !CONTENT_TYPE.test(contentType) || /\+json/i.test(contentType)) {
    throw new ConnectError(`unsupported content type ${contentType}`, Code.Unknown);
  }
  const headerError = statusError(header);
  const encoding = header.get("grpc-encoding");
  let decompress: ((b: Buffer) => Promise<Buffer>) | undefined;
  if (encoding !== null && encoding.toLowerCase() !== "identity") {
    if (encoding === "gzip") decompress = gunzip;
    else if (encoding === "br") decompress = brotliDecompress;
    else throw new ConnectError(`unsupported response encoding "${encoding}"`, Code.Internal, header);
  }
  const data = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
  let message: MessageShape<O> | undefined;
  for (let offset = 0; offset < data.length; ) {
    if (data.length - offset < 5) throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
    const flags = data[offset];
    const length = data.readUInt32BE(offset + 1);
    const end = offset + 5 + length;
    if (end > data.length) {
      throw new ConnectError(`protocol error: promised ${length} bytes, received ${data.length - offset - 5}`, Code.InvalidArgument);
    }
    let bytes = data.subarray(offset + 5, end);
    offset = end;
    if ((flags & 0x01) === 0x01) {
      if (!decompress) {
        throw new ConnectError("protocol error: received compressed envelope, but do not know how to decompress", Code.Internal);
      }
      try {
        bytes = await decompress(bytes);
      } catch (e) {
        throw ConnectError.from(e, Code.InvalidArgument);
      }
    }
    if (message !== undefined) {
      throw new ConnectError("protocol error: received extra output message for unary method", Code.Unimplemented);
    }
    try {
      message = fromBinary(method.output, bytes);
    } catch (e) {
      throw new ConnectError(`parse binary: ${e instanceof Error ? e.message : String(e)}`, Code.Internal);
    }
  }
  const trailerError = statusError(trailer);
  if (trailerError) {
    header.forEach((value, key) => trailerError.metadata.append(key, value));
    throw trailerError;
  }
  if (!header.has("grpc-status") && !trailer.has("grpc-status")) {
    throw new ConnectError("protocol error: missing status", Code.Internal);
  }
  if (message === undefined) {
    if (headerError) throw headerError;
    throw new ConnectError(
      "protocol error: missing output message for unary method",
      trailer.has("grpc-status") ? Code.Unimplemented : Code.Unknown,
    );
  }
  if (headerError) {
    throw new ConnectError("protocol error: received output message for unary method with error status", Code.Unknown);
  }
  return { stream: false, service: method.parent, method, header, message, trailer };
}
