/**
 * wsserve-client — a zero-dependency ES module client for the wsserve
 * WebSocket inference server (wire protocol version 1, subprotocol `wsserve.v1`).
 *
 * Runs unchanged in browsers and in Node >= 20: it uses the global
 * `WebSocket` where there is one and falls back to the optional `ws` package
 * (loaded by dynamic import) otherwise. The API mirrors the Python client
 * (`wsserve_client`), in JavaScript style: camelCase options, milliseconds.
 *
 *   import { Client } from 'wsserve-client';
 *   const c = new Client('ws://127.0.0.1:8765/');
 *   const r = await c.predict('linear', [[0.5]]);          // r.outputs → [[2.02]]
 *   const g = c.generate('charlm', 'The ', { maxTokens: 32 });
 *   for await (const text of g) process.stdout.write(text);
 *   console.log(g.done);                                   // {reason, tokens, timing, text}
 *   const l = c.generate('charlm', 'The ', { maxTokens: 8, logprobs: 3 });
 *   let i = 0;
 *   for await (const text of l) console.log(text, l.logprobs[i++]);   // {text, logprob, top_logprobs}
 *   await c.close();
 *
 * Contracts
 * - One socket; any number of concurrent calls are multiplexed over it by a
 *   fresh integer id each. Every call settles with the server's terminal frame
 *   for its id (`result`, `done` or `error`), or with `ConnectionLost` when the
 *   connection dies first: the socket closed, or no frame arrived within
 *   `heartbeatTimeoutMs` of an application-level heartbeat `ping`. A
 *   streaming predict answered by a plain `result` (a server that did not
 *   stream) yields it as one chunk, then ends.
 * - A malformed frame fails only the call it answers (`MalformedFrame`), never
 *   the socket or another call: a text frame that is not JSON but names a
 *   pending call's `"id"`, a binary frame that does not decode but whose header
 *   names one, a frame for the call's id of a type that does not answer it
 *   (another request type's, or one protocol version 1 does not have), or one
 *   whose fields the client reads have the wrong types (`outputs` not rows or
 *   tensors, a token's `text` not a string, ...). Unless that frame ended the
 *   request on the server, `cancel` is sent (the request slot is held until the
 *   server's terminal frame). A stream fails at the bad frame (the items before
 *   it stay readable). Garbage that names no call is ignored.
 * - `hello` is checked: a `protocol` other than `PROTOCOL_VERSION` fails the
 *   connection attempt with `UnsupportedProtocol` (not retried; a hello without
 *   one is taken as version 1, as the Python client does); a limit the client
 *   relies on (`LIMIT_NAMES`) that is not an integer in [1, 2**53] is not
 *   trusted: it is null in `client.hello.limits` and the client acts as for a
 *   server that does not announce it (no client-side check of that limit).
 * - A stream buffers the items its consumer has not read yet; past
 *   `maxStreamBufferBytes` of buffered frames (default 64 MiB) it fails with
 *   `StreamOverflow`, drops them and is cancelled on the server.
 * - A stream whose client-side deadline passes still yields the items that
 *   arrived before it, then throws `DeadlineExceeded` (as the Python client).
 * - At most `max_inflight` (from `hello`, or the `maxInflight` option)
 *   predict/generate requests are outstanding; further calls wait, FIFO. A
 *   request's slot is held until the server's terminal frame for it, even
 *   when the caller stopped listening.
 * - Cancellation: aborting a call's `AbortSignal`, calling `stream.cancel()`,
 *   leaving a `for await` early or hitting the client-side deadline sends
 *   `{"type":"cancel","id":...}`. An aborted `predict` rejects with the
 *   server's `RequestCancelled` (a local one if it was never sent: waiting for
 *   a connection or a free slot, or to retry a refusal); an aborted
 *   `generate` ends normally with `done.reason === 'cancelled'`.
 * - `timeoutMs` is sent as the server deadline `timeout_ms`; the client also
 *   gives up on its own 1 s later (`DeadlineExceeded`, cancel sent).
 * - A request larger than the server's `max_message_bytes` is refused
 *   locally with `RequestTooLarge` (sending it would close the connection),
 *   and so is a binary tensor frame whose header is longer than
 *   `max_binary_header_bytes` (the server could not read its id).
 * - After a connection is lost, the next call reconnects, trying up to
 *   `reconnect.maxAttempts` times with jittered exponential backoff.
 *   `overloaded`/`rate_limited` refusals are retried only when `retry` is set;
 *   a server's `retry_after_ms` is waited for up to the policy's
 *   `maxRetryAfterMs` (default 60000).
 * - `close()` resolves within `closeTimeoutMs` (default 2000) even when the
 *   server never completes the close handshake: the socket is then dropped.
 * - `version` (predict, predictStream, generate, complete and the admin calls
 *   load/unload/reload) pins a model version: a string, or an integer >= 1;
 *   anything else throws (or rejects) before anything is sent. Results and
 *   `done` say which `version` computed them.
 * - Options objects are checked up front: an unknown key (top level or in
 *   `reconnect`/`retry`) or a non-object throws a `TypeError` that names the
 *   key and lists the known ones, before anything is sent. The constructor and
 *   the synchronous `predictStream`/`generate` throw; the async calls reject.
 *
 * Error tree (each carries `code` — the wire code, or null for client-side
 * errors —, `requestId`, `retryAfterMs` and, from the server, `frame`):
 *
 *   WsserveError              root; also used as is for an unknown wire code
 *   ├── BadJsonError          bad_json
 *   ├── BadRequestError       bad_request
 *   ├── UnknownModelError     unknown_model
 *   ├── DuplicateIdError      duplicate_id
 *   ├── InvalidInput          invalid_input
 *   ├── OverloadedError       overloaded          (retryAfterMs)
 *   ├── RateLimitedError      rate_limited        (retryAfterMs)
 *   ├── DeadlineExceeded      deadline_exceeded   (server deadline, or the client-side guard)
 *   ├── RequestCancelled      cancelled
 *   ├── Unauthorized          unauthorized
 *   ├── Forbidden             forbidden           (an admin call without the admin key)
 *   ├── ShuttingDown          shutting_down
 *   ├── InternalServerError   internal
 *   ├── RequestTooLarge       (client side: larger than max_message_bytes, or a binary header
 *   │                          over max_binary_header_bytes; not sent)
 *   ├── StreamOverflow        (client side: a stream's unread items over maxStreamBufferBytes; cancelled)
 *   ├── ProtocolError         (client side: the server broke the protocol)
 *   │   ├── MalformedFrame    (the server's answer to the call is malformed or of the wrong type)
 *   │   └── UnsupportedProtocol (the server's hello is of another protocol version)
 *   └── ConnectionLost        (client side: socket closed, heartbeat missed, connect failed)
 *       └── ClientClosed      (the Client was closed while the call was unfinished)
 */

export const PROTOCOL_VERSION = 1;
export const SUBPROTOCOL = 'wsserve.v1';
/** The client-side deadline fires this long after a request's `timeoutMs`. */
export const DEADLINE_GRACE_MS = 1000;
/** Default `maxStreamBufferBytes`: a stream's unread frames may hold this much (64 MiB). */
export const DEFAULT_STREAM_BUFFER_BYTES = 64 * 1024 * 1024;
/** Default `cancelTimeoutMs`: how long the server has to end a request after its `cancel`. */
export const DEFAULT_CANCEL_TIMEOUT_MS = 30000;
/** Default `closeTimeoutMs`: how long `close()` waits for the close handshake. */
export const DEFAULT_CLOSE_TIMEOUT_MS = 2000;
/** The `hello.limits` the client relies on; each must be an integer in [1, `MAX_LIMIT`] to be trusted. */
export const LIMIT_NAMES = Object.freeze(['max_message_bytes', 'max_inflight', 'max_rows', 'max_tokens', 'max_binary_header_bytes']);
/** The largest `hello` limit trusted (2**53, as the Python client); a larger one is as absurd as a negative one. */
export const MAX_LIMIT = 2 ** 53;
/**
 * The frame types of protocol version 1. A frame for a pending call of any other type is ignored
 * (a later, compatible protocol may add types: clients ignore what they do not know); one of
 * these types that does not answer the call fails it with `MalformedFrame`.
 */
export const FRAME_TYPES = Object.freeze(['hello', 'result', 'chunk', 'done', 'token', 'error', 'models', 'pong',
  'draining', 'auth', 'load', 'unload', 'reload', 'response']);
const KNOWN_FRAME_TYPES = new Set(FRAME_TYPES);

// =================================================================== options

/**
 * The keys each options object accepts (`…Options` in wsserve.d.ts). Anything
 * else is a typo or a name from another client, and would be ignored silently.
 */
const ERROR_OPTIONS = Object.freeze(['code', 'requestId', 'retryAfterMs', 'cause', 'frame']);
const CLIENT_OPTIONS = Object.freeze([
  'token', 'heartbeatMs', 'heartbeatTimeoutMs', 'connectTimeoutMs', 'reconnect', 'retry',
  'maxInflight', 'maxStreamBufferBytes', 'closeTimeoutMs', 'cancelTimeoutMs', 'WebSocket', 'protocols',
]);
const BACKOFF_OPTIONS = Object.freeze(['maxAttempts', 'baseDelayMs', 'maxDelayMs', 'jitter']);
const RETRY_OPTIONS = Object.freeze([...BACKOFF_OPTIONS, 'codes', 'maxRetryAfterMs']);
const CONNECT_OPTIONS = Object.freeze(['signal']);
const UNARY_OPTIONS = Object.freeze(['signal', 'timeoutMs']);
const PREDICT_OPTIONS = Object.freeze(['signal', 'version', 'timeoutMs', 'priority', 'explain', 'binary', 'traceparent', 'tracestate']);
const PREDICT_STREAM_OPTIONS = Object.freeze([...PREDICT_OPTIONS, 'chunkRows']);
const PREDICT_RESPONSES_OPTIONS = Object.freeze(['signal', 'version', 'timeoutMs', 'priority', 'binary', 'traceparent', 'tracestate']);
const GENERATE_OPTIONS = Object.freeze([
  'signal', 'version', 'maxTokens', 'temperature', 'topK', 'topP', 'minP', 'presencePenalty', 'frequencyPenalty',
  'repetitionPenalty', 'logitBias', 'seed', 'stop', 'stopTokenIds', 'minTokens', 'includeStopStrInOutput',
  'timeoutMs', 'priority', 'logprobs', 'guidedChoice', 'guidedRegex', 'guidedJson', 'traceparent', 'tracestate',
]);
const ADMIN_OPTIONS = Object.freeze(['signal', 'version', 'timeoutMs']);
const LOAD_OPTIONS = Object.freeze([...ADMIN_OPTIONS, 'config']);

function describeValue(v) {
  if (v === null) return 'null';
  if (v === undefined) return 'nothing';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'string' ? `the string ${JSON.stringify(v)}` : `${typeof v} ${String(v)}`;
}

/**
 * `opts` as an object (`{}` for undefined). Throws `TypeError` when it is not
 * a plain object or has an own key outside `known`; the message names `where`,
 * every unknown key and the known ones.
 * @param {string} where  e.g. `"predict() options"`
 * @param {unknown} opts
 * @param {readonly string[]} known
 * @returns {Record<string, any>}
 */
function checkOptions(where, opts, known) {
  if (opts === undefined) return {};
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts)) {
    throw new TypeError(`${where} must be an object, got ${describeValue(opts)}`);
  }
  const unknown = Object.keys(opts).filter((k) => !known.includes(k));
  if (unknown.length) {
    const names = unknown.map((k) => JSON.stringify(k)).join(', ');
    throw new TypeError(`${where}: unknown option${unknown.length === 1 ? '' : 's'} ${names}; known options: ${known.join(', ')}`);
  }
  return opts;
}

/**
 * `version` as sent: undefined/null (the server's default), a string, or an
 * integer >= 1. Throws `TypeError` (or `RangeError` for an integer < 1) naming `where`.
 * @param {string} where  e.g. `"predict()"`
 * @param {unknown} version
 * @returns {string|number|undefined}
 */
function checkVersion(where, version) {
  if (version === undefined || version === null || typeof version === 'string') return version ?? undefined;
  if (typeof version !== 'number' || !Number.isInteger(version)) {
    throw new TypeError(`${where}: version must be a string or an integer, got ${describeValue(version)}`);
  }
  if (version < 1 || !Number.isSafeInteger(version)) throw new RangeError(`${where}: version must be an integer >= 1, got ${version}`);
  return version;
}

/**
 * `logprobs` as sent: undefined/null (off), or an integer >= 0, how many likeliest tokens to
 * report with each generated token (`true`, OpenAI chat's spelling, is refused: it is `0` here).
 * The upper bound is the server's (`hello.limits.max_logprobs`, 20 for wsserve): above it the
 * server answers `bad_request`. Throws `TypeError` (or `RangeError` when negative) naming `where`.
 * @param {string} where  e.g. `"generate()"`
 * @param {unknown} logprobs
 * @returns {number|undefined}
 */
function checkLogprobs(where, logprobs) {
  if (logprobs === undefined || logprobs === null) return undefined;
  if (typeof logprobs !== 'number' || !Number.isInteger(logprobs)) {
    throw new TypeError(`${where}: logprobs must be an integer >= 0 (how many likeliest tokens to report with each token), `
      + `got ${describeValue(logprobs)}`);
  }
  if (logprobs < 0 || !Number.isSafeInteger(logprobs)) {
    throw new RangeError(`${where}: logprobs must be an integer >= 0 (how many likeliest tokens to report with each token), got ${logprobs}`);
  }
  return logprobs;
}

/** The server's bounds on a request's `traceparent` and `tracestate` (it ignores longer ones). */
export const MAX_TRACEPARENT_CHARS = 256;
export const MAX_TRACESTATE_CHARS = 512;

/**
 * Put a request's W3C trace context (`opts.traceparent`, `opts.tracestate`) into `msg`: strings of at
 * most MAX_TRACEPARENT_CHARS / MAX_TRACESTATE_CHARS characters, a tracestate only with a traceparent.
 * Their W3C syntax is the server's to check (it ignores a malformed value, never failing the request).
 * @throws {TypeError} a value that is not a string; {RangeError} one over its bound, or a tracestate alone
 */
function setTraceContext(where, msg, { traceparent, tracestate }) {
  for (const [name, value, bound] of [['traceparent', traceparent, MAX_TRACEPARENT_CHARS],
    ['tracestate', tracestate, MAX_TRACESTATE_CHARS]]) {
    if (value === undefined || value === null) continue;
    if (typeof value !== 'string') throw new TypeError(`${where}: ${name} must be a string, got ${describeValue(value)}`);
    if (value.length > bound) throw new RangeError(`${where}: ${name} has ${value.length} characters; the server takes at most ${bound}`);
  }
  if (tracestate != null && traceparent == null) {
    throw new RangeError(`${where}: tracestate needs a traceparent (W3C: the server ignores a tracestate alone)`);
  }
  setIf(msg, 'traceparent', traceparent);
  setIf(msg, 'tracestate', tracestate);
}

// =================================================================== errors

/** Root of every error this client raises. */
export class WsserveError extends Error {
  /** The wire code this class stands for (null for client-side errors). */
  static wireCode = null;

  /**
   * @param {string} message
   * @param {{code?: string|null, requestId?: string|number|null, retryAfterMs?: number|null,
   *          cause?: unknown, frame?: object|null}} [opts]
   * @throws {TypeError} an unknown key in `opts`
   */
  constructor(message, opts = {}) {
    checkOptions(`${new.target.name} options`, opts, ERROR_OPTIONS);
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    /** The wire error code (`"overloaded"`, ...), or null for client-side errors. */
    this.code = opts.code !== undefined ? opts.code : new.target.wireCode;
    /** The id of the request this answers, or null. */
    this.requestId = opts.requestId ?? null;
    /** Milliseconds the server asked to wait before retrying, or null. */
    this.retryAfterMs = opts.retryAfterMs ?? null;
    /** The server's `error` frame, when the error came from the server. */
    this.frame = opts.frame ?? null;
  }
}

export class BadJsonError extends WsserveError { static wireCode = 'bad_json'; }
export class BadRequestError extends WsserveError { static wireCode = 'bad_request'; }
export class UnknownModelError extends WsserveError { static wireCode = 'unknown_model'; }
export class DuplicateIdError extends WsserveError { static wireCode = 'duplicate_id'; }
export class InvalidInput extends WsserveError { static wireCode = 'invalid_input'; }
export class OverloadedError extends WsserveError { static wireCode = 'overloaded'; }
export class RateLimitedError extends WsserveError { static wireCode = 'rate_limited'; }
export class DeadlineExceeded extends WsserveError { static wireCode = 'deadline_exceeded'; }
export class RequestCancelled extends WsserveError { static wireCode = 'cancelled'; }
export class Unauthorized extends WsserveError { static wireCode = 'unauthorized'; }
/** An admin call (load/unload/reload) without the server's admin key (or, without keys, not from loopback). */
export class Forbidden extends WsserveError { static wireCode = 'forbidden'; }
export class ShuttingDown extends WsserveError { static wireCode = 'shutting_down'; }
export class InternalServerError extends WsserveError { static wireCode = 'internal'; }
/** The request is larger than the server's `max_message_bytes` (or its binary header than `max_binary_header_bytes`); it was not sent. */
export class RequestTooLarge extends WsserveError {}
/**
 * A stream's unread items went over `maxStreamBufferBytes`: its consumer does not keep up. The
 * items were dropped and the request cancelled on the server.
 */
export class StreamOverflow extends WsserveError {}
/** The server broke the protocol (the Python client's `ProtocolError`); one of the two below. */
export class ProtocolError extends WsserveError {}
/**
 * The server's answer to the call is malformed: not JSON, of a type that does not answer the
 * call, or with fields of the wrong type. Only that call fails; other calls and the socket go on.
 */
export class MalformedFrame extends ProtocolError {}
/** The server's `hello` announced a protocol version this client does not speak; not retried. */
export class UnsupportedProtocol extends ProtocolError {}
/** The connection closed (or could not be opened) before the call finished. */
export class ConnectionLost extends WsserveError {}
/** The client was closed while the call was unfinished. */
export class ClientClosed extends ConnectionLost {}

/** Wire code → error class, for every code of protocol version 1. */
export const ERROR_CLASSES = Object.freeze(Object.fromEntries([
  BadJsonError, BadRequestError, UnknownModelError, DuplicateIdError, InvalidInput,
  OverloadedError, RateLimitedError, DeadlineExceeded, RequestCancelled, Unauthorized,
  Forbidden, ShuttingDown, InternalServerError,
].map((cls) => [cls.wireCode, cls])));

/**
 * The error for a wire `error` frame. An unknown code gives a plain
 * `WsserveError` that still carries it.
 * @param {{code?: string, message?: string, id?: any, retry_after_ms?: number}} frame
 * @returns {WsserveError}
 */
export function errorFromFrame(frame) {
  const code = typeof frame?.code === 'string' ? frame.code : 'internal';
  const Cls = Object.hasOwn(ERROR_CLASSES, code) ? ERROR_CLASSES[code] : WsserveError;
  return new Cls(typeof frame?.message === 'string' ? frame.message : code, {
    code,
    requestId: frame?.id ?? null,
    // anything but a finite number >= 0 is not a wait to honour
    retryAfterMs: Number.isFinite(frame?.retry_after_ms) && frame.retry_after_ms >= 0 ? frame.retry_after_ms : null,
    frame,
  });
}

// =================================================================== policies

/** Reconnect policy defaults: at most `maxAttempts` tries in total. */
export const DEFAULT_RECONNECT = Object.freeze({ maxAttempts: 5, baseDelayMs: 100, maxDelayMs: 2000, jitter: 0.5 });
/** Retry policy defaults (used when `retry: true`). `maxAttempts` counts every try. */
export const DEFAULT_RETRY = Object.freeze({
  maxAttempts: 4, baseDelayMs: 50, maxDelayMs: 2000, jitter: 0.5, codes: Object.freeze(['overloaded', 'rate_limited']),
  maxRetryAfterMs: 60000,
});

/**
 * Wait after failed connection try `attempt` (0-based):
 * `min(maxDelayMs, baseDelayMs * 2**attempt)` scaled by a factor in `[1 - jitter, 1]`.
 * @param {{baseDelayMs: number, maxDelayMs: number, jitter: number}} policy
 * @param {number} attempt
 * @param {number} rand  uniform in [0, 1)
 */
export function reconnectDelayMs(policy, attempt, rand) {
  const raw = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** attempt);
  return raw * (1 - policy.jitter * rand);
}

/**
 * Wait before retrying after refused try `attempt` (0-based): the backoff
 * `min(maxDelayMs, baseDelayMs * 2**attempt)` or the server's `retryAfterMs`
 * if longer (never shortened, but honoured only up to `policy.maxRetryAfterMs`
 * when that is set), stretched by a factor in `[1, 1 + jitter]` — though never
 * past `maxRetryAfterMs` when the wait is the server's.
 * @param {{baseDelayMs: number, maxDelayMs: number, jitter: number, maxRetryAfterMs?: number|null}} policy
 * @param {number} attempt
 * @param {number|null} retryAfterMs
 * @param {number} rand  uniform in [0, 1)
 */
export function retryDelayMs(policy, attempt, retryAfterMs, rand) {
  const backoff = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** attempt);
  const stretch = 1 + policy.jitter * rand;
  if (!(retryAfterMs > 0)) return backoff * stretch;
  const cap = policy.maxRetryAfterMs ?? Infinity;
  const floor = Math.max(backoff, Math.min(retryAfterMs, cap));
  // The jitter never takes a wait the server asked for past the cap (as the Python client).
  return Math.min(floor * stretch, Math.max(cap, backoff * stretch));
}

function checkPolicy(name, p) {
  if (!Number.isInteger(p.maxAttempts) && p.maxAttempts !== Infinity) {
    throw new TypeError(`${name}.maxAttempts must be an integer >= 1 or Infinity, got ${p.maxAttempts}`);
  }
  if (p.maxAttempts < 1) throw new RangeError(`${name}.maxAttempts must be >= 1, got ${p.maxAttempts}`);
  if (!(p.baseDelayMs >= 0 && p.maxDelayMs >= p.baseDelayMs)) {
    throw new RangeError(`${name}: need 0 <= baseDelayMs <= maxDelayMs, got ${p.baseDelayMs}, ${p.maxDelayMs}`);
  }
  if (!(p.jitter >= 0 && p.jitter <= 1)) throw new RangeError(`${name}.jitter must be in [0, 1], got ${p.jitter}`);
  if (p.maxRetryAfterMs !== undefined && p.maxRetryAfterMs !== null && !(typeof p.maxRetryAfterMs === 'number' && p.maxRetryAfterMs >= 0)) {
    throw new RangeError(`${name}.maxRetryAfterMs must be a number >= 0 or null, got ${describeValue(p.maxRetryAfterMs)}`);
  }
  if (p.codes !== undefined && !(Array.isArray(p.codes) && p.codes.every((c) => typeof c === 'string'))) {
    throw new TypeError(`${name}.codes must be an array of wire error codes (strings), got ${describeValue(p.codes)}`);
  }
  return Object.freeze(p);
}

function checkPolicyType(name, value) {
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new TypeError(`Client option "${name}" must be true, false or an object, got ${describeValue(value)}`);
  }
}

/**
 * The reconnect policy from the `reconnect` option: `undefined`, `null` or
 * `true` → the defaults; `false` → one attempt; an object → the defaults
 * overridden by its keys (unknown keys throw `TypeError`).
 */
function reconnectPolicy(value) {
  if (value === false) return checkPolicy('reconnect', { ...DEFAULT_RECONNECT, maxAttempts: 1 });
  if (value === undefined || value === null || value === true) return checkPolicy('reconnect', { ...DEFAULT_RECONNECT });
  checkPolicyType('reconnect', value);
  return checkPolicy('reconnect', { ...DEFAULT_RECONNECT, ...checkOptions('Client option "reconnect"', value, BACKOFF_OPTIONS) });
}

/**
 * The retry policy from the `retry` option: `undefined`, `null` or `false` →
 * off (null); `true` → the defaults; an object → the defaults overridden by
 * its keys (unknown keys throw `TypeError`).
 */
function retryPolicy(value) {
  if (value === undefined || value === null || value === false) return null;
  if (value === true) return checkPolicy('retry', { ...DEFAULT_RETRY });
  checkPolicyType('retry', value);
  return checkPolicy('retry', { ...DEFAULT_RETRY, ...checkOptions('Client option "retry"', value, RETRY_OPTIONS) });
}

// =================================================================== helpers

const now = () => performance.now();

function unrefTimer(t) {
  if (t && typeof t === 'object' && typeof t.unref === 'function') t.unref();
  return t;
}

/** Sleep `ms`; rejects with `signal.reason` if the signal aborts first. */
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) { reject(signal.reason); return; }
    const onAbort = () => { clearTimeout(t); reject(signal.reason); };
    const t = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve(); }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * `promise`, or a rejection with `signal.reason` if the signal aborts first.
 * Nobody awaits `promise` after an abort: its own rejection is then handled here, not
 * left to become an unhandled rejection (which ends a Node process).
 */
function raceAbort(promise, signal) {
  if (!signal) return promise;
  if (signal.aborted) {
    promise.catch(() => {});
    return Promise.reject(signal.reason);
  }
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => { signal.removeEventListener('abort', onAbort); resolve(v); },
      (e) => { signal.removeEventListener('abort', onAbort); reject(e); },
    );
  });
}

function makeEvent(type, detail) {
  if (typeof CustomEvent === 'function') return new CustomEvent(type, { detail });
  const ev = new Event(type);
  Object.defineProperty(ev, 'detail', { value: detail });
  return ev;
}

/**
 * Inputs as plain nested arrays (rows may be typed arrays), or `{name: rows}`
 * for a model with several named inputs. Throws TypeError on anything else.
 */
function toInputs(inputs) {
  if (inputs !== null && typeof inputs === 'object' && !Array.isArray(inputs) && !ArrayBuffer.isView(inputs)) {
    return Object.fromEntries(Object.entries(inputs).map(([name, rows]) => [name, toRows(rows, `inputs.${name}`)]));
  }
  return toRows(inputs, 'inputs');
}

function toRows(rows, what) {
  if (!Array.isArray(rows) && !ArrayBuffer.isView(rows)) {
    throw new TypeError(`${what} must be an array of rows (number[][])${what === 'inputs' ? ' or an object {name: rows}' : ''}`);
  }
  return Array.from(/** @type {any} */ (rows), (row) => (ArrayBuffer.isView(row) ? Array.from(/** @type {any} */ (row)) : row));
}

/** A predict's message: JSON rows, or (`opts.binary`) tensors for a binary tensor frame with binary outputs. */
function predictMessage(model, inputs, opts) {
  if (!opts.binary) return { type: 'predict', model, inputs: toInputs(inputs) };
  const named = inputs !== null && typeof inputs === 'object' && !ArrayBuffer.isView(inputs) && inputs.data === undefined;
  const tensors = named
    ? Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, toTensor(v, `inputs.${k}`)]))
    : toTensor(inputs);
  return { type: 'predict', model, binary_outputs: true, tensors };
}

function setIf(obj, key, value) {
  if (value !== undefined && value !== null) obj[key] = value;
}

let utf8 = null;
/** UTF-8 length of `text`, computed only when the cheap bounds cannot decide. */
function exceedsBytes(text, limit) {
  if (limit == null) return false;
  if (text.length > limit) return true; // every UTF-16 unit is at least one byte
  if (text.length * 3 <= limit) return false; // and at most three
  utf8 ??= new TextEncoder();
  return utf8.encode(text).length > limit;
}

// ------------------------------------------------------------ binary tensor frames

/**
 * Wire dtype → TypedArray constructor (bool travels as one byte, 0 or 1; float16 and bfloat16 as
 * their raw bits in a Uint16Array: JavaScript has no Float16Array here). A bare Uint8Array is taken
 * as bool and a bare Uint16Array as uint16: give `dtype: 'uint8'`, `'float16'` or `'bfloat16'` to say
 * otherwise (a Float32Array with `dtype: 'bfloat16'` is rounded to it: `toTensor`). The server lists
 * what it takes in `hello.binary_dtypes` (a server before that list took float32, float64, int32,
 * int64 and bool).
 */
export const TENSOR_DTYPES = Object.freeze({
  float32: Float32Array, float64: Float64Array, int32: Int32Array, int64: BigInt64Array, bool: Uint8Array,
  int8: Int8Array, int16: Int16Array, uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array,
  uint64: BigUint64Array, float16: Uint16Array, bfloat16: Uint16Array,
});
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function dtypeOf(data) {
  for (const [name, ctor] of Object.entries(TENSOR_DTYPES)) if (data instanceof ctor) return name;
  return null;
}

/**
 * A tensor from `{data, shape, dtype?}` (data a TypedArray of `TENSOR_DTYPES`: Float32Array,
 * Float64Array, Int32Array, BigInt64Array, Uint8Array for `dtype: 'bool'` or `'uint8'`, Int8Array,
 * Int16Array, Uint16Array for `'uint16'`, `'float16'` or `'bfloat16'` (raw bits), Uint32Array,
 * BigUint64Array; a Float32Array with `dtype: 'bfloat16'` is rounded to it: `float32ToBfloat16`), or a
 * bare TypedArray (one row: shape `[1, length]`). Throws `TypeError` when sizes or types do not match.
 */
export function toTensor(value, what = 'inputs') {
  let t = ArrayBuffer.isView(value) ? { data: value, shape: [1, value.length] } : value;
  if (t === null || typeof t !== 'object' || !ArrayBuffer.isView(t.data) || t.data instanceof DataView) {
    throw new TypeError(`${what} must be a TypedArray or {data: TypedArray, shape: number[]} for a binary predict`);
  }
  if (t.dtype === 'bfloat16' && t.data instanceof Float32Array) t = { ...t, data: float32ToBfloat16(t.data) };
  const dtype = t.dtype ?? dtypeOf(t.data);
  if (dtype === null || !(dtype in TENSOR_DTYPES) || !(t.data instanceof TENSOR_DTYPES[dtype])) {
    throw new TypeError(`${what}: a ${t.data.constructor.name} is not one of the wire dtypes (${Object.keys(TENSOR_DTYPES).join(', ')})`);
  }
  const shape = Array.from(t.shape ?? [1, t.data.length]);
  if (!shape.length || !shape.every((d) => Number.isInteger(d) && d >= 1)) {
    throw new TypeError(`${what}: shape must be a non-empty array of integers >= 1, got ${JSON.stringify(t.shape)}`);
  }
  const count = shape.reduce((a, b) => a * b, 1);
  if (count !== t.data.length) {
    throw new TypeError(`${what}: shape ${JSON.stringify(shape)} holds ${count} values; data has ${t.data.length}`);
  }
  return { data: t.data, shape, dtype };
}

/**
 * One binary tensor frame: 4-byte little-endian header length, the JSON header padded
 * with spaces so the payload starts at a multiple of 8, then the tensors' bytes.
 * `tensors` is one tensor (described by `dtype`/`shape`) or `{name: tensor}` (a list under `key`:
 * `inputs` in requests, `outputs` in replies).
 */
export function encodeTensorFrame(fields, tensors, key = 'inputs') {
  if (!LITTLE_ENDIAN) throw new Error('binary tensor frames need a little-endian platform');
  const header = { ...fields };
  let list;
  if (tensors.data !== undefined) {
    header.dtype = tensors.dtype;
    header.shape = tensors.shape;
    list = [tensors];
  } else {
    list = Object.values(tensors);
    header[key] = Object.entries(tensors).map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape }));
  }
  utf8 ??= new TextEncoder();
  let head = utf8.encode(JSON.stringify(header));
  const pad = (8 - ((4 + head.length) % 8)) % 8;
  const size = 4 + head.length + pad + list.reduce((a, t) => a + t.data.byteLength, 0);
  const out = new Uint8Array(size);
  new DataView(out.buffer).setUint32(0, head.length + pad, true);
  out.set(head, 4);
  out.fill(0x20, 4 + head.length, 4 + head.length + pad);
  let at = 4 + head.length + pad;
  for (const t of list) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), at);
    at += t.data.byteLength;
  }
  return out;
}

/** A binary answer to an `explain: true` predict names its attributions `<output>` + this. */
export const ATTRIBUTIONS_SUFFIX = '_attributions';

/**
 * `[outputs, attributions]` of a decoded binary answer to an `explain: true` predict: its named
 * tensors `{<output>: Tensor, <output>_attributions: Tensor}` as the output alone and its
 * attributions (float64, shape `[n, d]`); anything else is returned as it is, with `undefined`.
 */
export function splitAttributions(outputs) {
  if (outputs !== null && typeof outputs === 'object' && outputs.data === undefined) {
    const names = Object.keys(outputs);
    if (names.length === 2 && names[1] === names[0] + ATTRIBUTIONS_SUFFIX) {
      return [outputs[names[0]], outputs[names[1]]];
    }
  }
  return [outputs, undefined];
}

/** A binary reply to an explain request with its attributions moved out of `outputs` (JSON replies as they are). */
function withAttributions(frame, explain) {
  if (!explain || frame.attributions !== undefined) return frame;
  const [outputs, attributions] = splitAttributions(frame.outputs);
  if (attributions === undefined) return frame;
  return { ...frame, outputs, attributions };
}

/**
 * The bfloat16 values nearest float32 ones, as their 16-bit patterns (the upper half of the float32
 * of the same value): ties to even, as `ml_dtypes` (and the server) round; a value beyond bfloat16's
 * ±3.3895e38 by half a step becomes an infinity, NaN the quiet NaN of its sign (the server refuses
 * both in a request).
 */
export function float32ToBfloat16(values) {
  const words = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < words.length; i++) {
    const w = words[i];
    out[i] = (w & 0x7fffffff) > 0x7f800000 ? ((w >>> 16) & 0x8000) | 0x7fc0 : (w + 0x7fff + ((w >>> 16) & 1)) >>> 16;
  }
  return out;
}

/**
 * bfloat16 values (their 16-bit patterns: the upper half of the float32 of the same value) as
 * those float32 values, exactly.
 */
function bfloat16ToFloat32(bits) {
  const wide = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) wide[i] = bits[i] << 16;
  return new Float32Array(wide.buffer);
}

let utf8Decoder = null;
/**
 * A binary reply (`result` or `chunk`) as a frame object whose `outputs` is a tensor
 * `{data, shape, dtype}` (or `{name: tensor}` for named outputs). A `bfloat16` tensor (a Triton
 * `TYPE_BF16` model's output) comes widened to `float32`, a
 * Float32Array holding each value exactly. Throws on a malformed frame.
 */
export function decodeTensorFrame(buffer) {
  const bytes = buffer instanceof ArrayBuffer ? new Uint8Array(buffer)
    : new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  if (bytes.length < 4) throw new Error('binary frame shorter than its length prefix');
  const n = new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
  if (n > bytes.length - 4) throw new Error(`binary frame header length ${n} exceeds the frame`);
  utf8Decoder ??= new TextDecoder();
  const header = JSON.parse(utf8Decoder.decode(bytes.subarray(4, 4 + n)));
  let at = 4 + n;
  const take = (desc) => {
    const widen = desc.dtype === 'bfloat16'; // its 16-bit patterns, widened to float32 below
    const ctor = widen ? Uint16Array : Object.hasOwn(TENSOR_DTYPES, desc.dtype) ? TENSOR_DTYPES[desc.dtype] : undefined;
    // each dimension an integer >= 0: a negative one would move `at` back and read the header as data
    if (!ctor || !Array.isArray(desc.shape) || !desc.shape.every(isCount)) {
      throw new Error(`binary frame: bad tensor ${JSON.stringify(desc)}`);
    }
    const count = desc.shape.reduce((a, b) => a * b, 1);
    const nbytes = count * ctor.BYTES_PER_ELEMENT;
    if (at + nbytes > bytes.length) throw new Error('binary frame: payload shorter than its header says');
    // A copy: aligned for the TypedArray, and independent of the socket's buffer.
    const data = new ctor(bytes.slice(at, at + nbytes).buffer);
    at += nbytes;
    if (widen) return { data: bfloat16ToFloat32(data), shape: desc.shape, dtype: 'float32' };
    return { data, shape: desc.shape, dtype: desc.dtype };
  };
  const { outputs, dtype, shape, ...frame } = header;
  if (Array.isArray(outputs)) {
    frame.outputs = {};
    for (const d of outputs) {
      // a second tensor of one name would silently replace the first
      if (Object.hasOwn(frame.outputs, d?.name)) throw new Error(`binary frame: outputs name ${JSON.stringify(d.name)} twice`);
      frame.outputs[d?.name] = take(d);
    }
  } else {
    frame.outputs = take({ dtype, shape });
  }
  if (at !== bytes.length) throw new Error(`binary frame: ${bytes.length - at} bytes beyond the tensors`);
  return frame;
}

// =================================================================== what the server sends

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const isCount = (v) => Number.isSafeInteger(v) && v >= 0;
/** A limit the client can rely on: an integer in [1, MAX_LIMIT]. */
const isLimit = (v) => Number.isInteger(v) && v >= 1 && v <= MAX_LIMIT;

/**
 * `hello` with `limits` the client can rely on: each of `LIMIT_NAMES` is an integer in
 * [1, MAX_LIMIT], or null — not announced, or not trusted (a string, zero, negative, fractional
 * or absurdly large; any of them when `limits` is not an object). The client treats null as a
 * server that does not announce the limit: no client-side check of it. Other limits are kept.
 * @param {Record<string, any>} hello
 * @returns {Record<string, any>} a copy
 */
export function checkedHello(hello) {
  const given = isObject(hello.limits) ? hello.limits : {};
  const limits = { ...given };
  for (const name of LIMIT_NAMES) limits[name] = isLimit(given[name]) ? given[name] : null;
  return { ...hello, limits };
}

/**
 * Why this client cannot talk to the server that sent `hello` (at `url`), or null. A hello
 * without `protocol` is taken as version 1, like any missing field (as the Python client).
 */
function protocolMismatch(hello, url) {
  if (hello.protocol === PROTOCOL_VERSION || hello.protocol === undefined) return null;
  return `the server at ${url} sent protocol ${JSON.stringify(hello.protocol)}; this client speaks protocol `
    + `${PROTOCOL_VERSION} (${SUBPROTOCOL}): upgrade the client or use a matching server`;
}

const isTensor = (v) => isObject(v) && ArrayBuffer.isView(v.data);
const isOutput = (v) => (Array.isArray(v) && v.every(Array.isArray)) || isTensor(v);
/** Rows (an array of arrays), a decoded binary tensor, or `{name: rows or tensor}`. */
const isOutputs = (v) => isOutput(v) || (isObject(v) && Object.values(v).every(isOutput));
const isObjectArray = (v) => Array.isArray(v) && v.every(isObject);
/** Rows in checked outputs: an array's length, a tensor's first dimension, or the first named output's. */
function rowCount(outputs) {
  if (Array.isArray(outputs)) return outputs.length;
  if (isTensor(outputs)) return outputs.shape?.[0] ?? 0;
  const first = Object.values(outputs)[0];
  return first === undefined ? 0 : rowCount(first);
}
const isTiming = (v) => v === null || isObject(v);
/** A log-probability on the wire: a number, or null (the model's logits were not finite). */
const isLogprob = (v) => v === null || typeof v === 'number';
/** `top_logprobs`: `[{id, text, logprob}, ...]`. */
const isTopLogprobs = (v) => Array.isArray(v)
  && v.every((t) => isObject(t) && isCount(t.id) && typeof t.text === 'string' && isLogprob(t.logprob));
/** The fields of a `token` frame of a generate that asked for `logprobs` (read only then). */
const LOGPROB_FIELDS = Object.freeze([['logprob', isLogprob, 'a number or null'],
  ['top_logprobs', isTopLogprobs, 'an array of {id: an integer >= 0, text: a string, logprob: a number or null}']]);

const OUTPUTS = 'rows (an array of arrays), a tensor or {name: rows or tensor}';
/** Per reply type: `[field, check, what it must be, optional]` for the fields the client reads. */
const FRAME_FIELDS = Object.freeze({
  result: [['outputs', isOutputs, OUTPUTS], ['attributions', isOutputs, OUTPUTS, true], ['timing', isTiming, 'an object', true]],
  chunk: [['seq', isCount, 'an integer >= 0'], ['offset', isCount, 'an integer >= 0'], ['outputs', isOutputs, OUTPUTS],
    ['attributions', isOutputs, OUTPUTS, true]],
  token: [['seq', isCount, 'an integer >= 0'], ['text', (v) => typeof v === 'string', 'a string']],
  done: [['reason', (v) => typeof v === 'string', 'a string'], ['tokens', isCount, 'an integer >= 0', true],
    ['rows', isCount, 'an integer >= 0', true], ['responses', isCount, 'an integer >= 0', true],
    ['timing', isTiming, 'an object', true]],
  response: [['seq', isCount, 'an integer >= 0'], ['outputs', isOutputs, OUTPUTS],
    ['final', (v) => typeof v === 'boolean', 'a boolean', true]],
  models: [['models', isObjectArray, 'an array of objects']],
  load: [['versions', isObjectArray, 'an array of objects']],
  unload: [['versions', isObjectArray, 'an array of objects']],
  reload: [['versions', isObjectArray, 'an array of objects']],
});

/**
 * What is wrong with a reply `frame`, or null: the fields the client reads (`FRAME_FIELDS`) must
 * have their protocol types; other fields, and frame types it does not read, are not looked at.
 * The values inside `outputs` are not checked one by one.
 * @param {Record<string, any>} frame
 * @returns {string|null}
 */
export function frameProblem(frame) {
  for (const [field, ok, what, optional] of Object.hasOwn(FRAME_FIELDS, frame.type) ? FRAME_FIELDS[frame.type] : []) {
    const v = frame[field];
    if (v === undefined && optional) continue;
    if (!ok(v)) return `${frame.type} frame: ${field} must be ${what}, got ${describeValue(v)}`;
  }
  return null;
}

/**
 * What is wrong with the `seq` of `frame`, an item of `call` (after `frameProblem`), or null: a
 * generation's `token` frames are numbered 0, 1, 2, ... (`call.items` before this one), so one
 * whose `seq` is not the next means a token was lost, repeated or reordered — its text would
 * silently differ from the one generated.
 * @param {{item: string|null, items: number}} call
 * @param {Record<string, any>} frame
 * @returns {string|null}
 */
function seqProblem(call, frame) {
  if (call.item !== 'token' || frame.seq === call.items) return null;
  return `token frame: seq must be ${call.items} (the next in order), got ${frame.seq}: a token was lost, repeated or reordered`;
}

/**
 * What is wrong with a `token` frame of a generate that asked for `logprobs`, beyond
 * `frameProblem`, or null: it must carry `logprob` (a number or null) and `top_logprobs`
 * (`[{id, text, logprob}]`). A server without logprobs support ignores the option and sends
 * plain tokens. (A generate that did not ask does not read these fields.)
 * @param {Record<string, any>} frame
 * @returns {string|null}
 */
export function logprobsProblem(frame) {
  if (frame.logprob === undefined || frame.top_logprobs === undefined) {
    return 'token frame: no logprob/top_logprobs though the generate asked for logprobs (a server without logprobs '
      + 'support ignores the option: its hello has no limit max_logprobs)';
  }
  for (const [field, ok, what] of LOGPROB_FIELDS) {
    if (!ok(frame[field])) return `token frame: ${field} must be ${what}, got ${describeValue(frame[field])}`;
  }
  return null;
}

/**
 * The `"id"` a text frame that is not JSON names (its first `"id":` member that reads as a JSON
 * string or integer), or undefined. Best effort: the frame is broken, so this may be wrong — it
 * only decides which pending call, if any, fails.
 * @param {string} text
 */
function idOfBrokenText(text) {
  const m = /(?:^|[^\\])"id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)/.exec(text.slice(0, 4096));
  if (!m) return undefined;
  try { return JSON.parse(m[1]); } catch { return undefined; }
}

let wsModulePromise = null;
async function resolveWebSocket(explicit) {
  if (explicit) return explicit;
  if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
  const specifier = 'ws'; // a variable, so browser tooling does not try to resolve it
  wsModulePromise ??= import(specifier).then(
    (m) => m.WebSocket ?? m.default,
    (e) => {
      wsModulePromise = null;
      throw new ConnectionLost(
        'this runtime has no global WebSocket and the optional "ws" package is not installed (npm install ws)',
        { cause: e },
      );
    },
  );
  return wsModulePromise;
}

// =================================================================== limiter

/**
 * A signal that aborts when `a` (optional) or `b` does, with its reason (`AbortSignal.any`; by hand
 * where it is missing: Node before 20.3).
 */
function eitherSignal(a, b) {
  if (!a) return b;
  if (typeof AbortSignal.any === 'function') return AbortSignal.any([a, b]);
  const both = new AbortController();
  for (const s of [a, b]) {
    if (s.aborted) { both.abort(s.reason); break; }
    s.addEventListener('abort', () => both.abort(s.reason), { once: true });
  }
  return both.signal;
}

/** FIFO counting semaphore for the `max_inflight` slots. */
class Limiter {
  used = 0;
  #waiters = [];

  /** @param {() => number} capacity */
  constructor(capacity) { this.capacity = capacity; }

  get waiting() { return this.#waiters.length; }

  /** Take a slot, waiting FIFO; rejects with `signal.reason` on abort. */
  acquire(signal) {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.used < this.capacity() && this.#waiters.length === 0) { this.used++; return Promise.resolve(); }
    return new Promise((resolve, reject) => {
      const w = { resolve, reject, signal, onAbort: null };
      if (signal) {
        w.onAbort = () => {
          const i = this.#waiters.indexOf(w);
          if (i >= 0) this.#waiters.splice(i, 1);
          reject(signal.reason);
        };
        signal.addEventListener('abort', w.onAbort, { once: true });
      }
      this.#waiters.push(w);
    });
  }

  release() {
    this.used--;
    this.wake();
  }

  /** Hand free slots to waiters (also after the capacity grew). */
  wake() {
    while (this.#waiters.length && this.used < this.capacity()) {
      const w = this.#waiters.shift();
      w.signal?.removeEventListener('abort', w.onAbort);
      this.used++;
      w.resolve();
    }
  }

  /** Reject every waiter with `error`. */
  failAll(error) {
    for (const w of this.#waiters.splice(0)) {
      w.signal?.removeEventListener('abort', w.onAbort);
      w.reject(error);
    }
  }
}

// =================================================================== calls and connection

/**
 * Request type → the frame type that answers it successfully (a non-streaming `predict`:
 * `result`; a streaming one: `done`). A frame of any other type for a call's id, such as a
 * type a later protocol adds, is not its answer and is ignored.
 */
const REPLY_TYPES = Object.freeze({
  generate: 'done', models: 'models', ping: 'pong', load: 'load', unload: 'unload', reload: 'reload',
});

/**
 * Marks a `predict` message sent by `Client.predictResponses` (a decoupled model's request: its
 * items are `response` frames, its answer `done`). A symbol key: never sent (JSON skips it).
 */
const RESPONSES = Symbol('responses');

/** One request on the wire, until its terminal frame or the connection's end. */
class Call {
  /** Called with each non-terminal frame (chunk, token) and its size on the wire. */
  onItem = () => {};
  /** Called once: `(error, terminalFrame)`. */
  onEnd = () => {};
  /** Called with a `MalformedFrame` for a malformed non-terminal frame (the call is cancelled, not ended). */
  onFault = () => {};
  items = 0;
  ended = false;
  cancelSent = false;

  constructor(id, msg, counted, sentAt) {
    this.id = id;
    this.type = msg.type;
    /** The frame type of a successful answer (an `error` also ends the call; other types do not). */
    this.reply = REPLY_TYPES[msg.type] ?? (msg.stream || msg[RESPONSES] ? 'done' : 'result');
    /** The frame type of its items: `token` (generate), `chunk` (streaming predict), `response` (a
     *  decoupled model's predict), else none. */
    this.item = msg.type === 'generate' ? 'token' : msg[RESPONSES] ? 'response'
      : msg.type === 'predict' && msg.stream ? 'chunk' : null;
    /** A generate that asked for `logprobs`: each of its tokens must carry them. */
    this.logprobs = msg.type === 'generate' && msg.logprobs !== undefined;
    this.model = msg.model ?? null;
    this.rows = Array.isArray(msg.inputs) ? msg.inputs.length : undefined;
    this.counted = counted;
    this.sentAt = sentAt;
    this.internal = false;
  }
}

/** One open socket and the calls waiting on it. */
class Connection {
  /** @type {Map<string|number, Call>} */
  pending = new Map();
  hello = null;
  draining = false;
  dead = false;
  lastRxAt = now();
  #hbInterval = null;
  #hbTimeout = null;

  constructor(ws) { this.ws = ws; }

  /** Send one JSON message (or a binary tensor frame, a Uint8Array); throws `ConnectionLost` if the socket is gone. */
  sendText(text) {
    if (this.dead || this.ws.readyState !== 1) throw new ConnectionLost('the connection is closed');
    this.ws.send(text);
  }

  /** Best-effort cancel of `call` (never throws). */
  cancel(call) {
    if (call.ended || call.cancelSent) return false;
    call.cancelSent = true;
    try { this.sendText(`{"type":"cancel","id":${JSON.stringify(call.id)}}`); return true; } catch { return false; }
  }

  startHeartbeat(intervalMs, timeoutMs, ping, die) {
    if (intervalMs == null) return;
    this.#hbInterval = unrefTimer(setInterval(() => {
      if (this.dead || this.#hbTimeout) return;
      const sentAt = now();
      ping();
      this.#hbTimeout = unrefTimer(setTimeout(() => {
        this.#hbTimeout = null;
        if (this.lastRxAt < sentAt) {
          die(new ConnectionLost(`no frame from the server within ${timeoutMs} ms of a heartbeat ping; connection presumed dead`));
        }
      }, timeoutMs));
    }, intervalMs));
  }

  stopTimers() {
    clearInterval(this.#hbInterval);
    clearTimeout(this.#hbTimeout);
    this.#hbInterval = this.#hbTimeout = null;
  }
}

// =================================================================== streams

/**
 * An async-iterable response, created by `Client.predictStream` and
 * `Client.generate`. The request is sent at once; items are buffered until
 * read. Iterate it once.
 * @template T
 */
export class ResponseStream {
  /** @type {string|number|null} the current attempt's request id, once sent */
  id = null;
  /** The final info once finished without error: `{reason, timing, ...}`. */
  done = null;
  /** @type {WsserveError|null} the error that ended it, if any */
  error = null;
  /** Items received from the server so far (all attempts). */
  received = 0;

  /** @type {Array<[T, number]>} unread items, each with its frame's size */
  #items = [];
  #bufferedBytes = 0;
  #waiter = null;
  #abandoned = false;
  #errorThrown = false;
  #cancelFn = null;
  #cancelRequested = false;
  #settled = [];

  /** True once nothing more can arrive (done, error, or cancelled before sending). */
  get finished() { return this.done !== null || this.error !== null; }

  /** True once `cancel()` was called (or the signal aborted). */
  get cancelRequested() { return this.#cancelRequested; }

  /**
   * The size of the frames of the items received but not read yet (characters of a text
   * frame — bytes for the ASCII JSON the server sends —, bytes of a binary one). Past the
   * client's `maxStreamBufferBytes` the stream fails with `StreamOverflow`.
   */
  get bufferedBytes() { return this.#bufferedBytes; }

  /**
   * Ask the server to stop this request; iteration continues to its terminal
   * frame (a generation then ends with reason `cancelled`). Idempotent.
   */
  cancel() {
    if (this.finished) return;
    this.#cancelRequested = true;
    this.#cancelFn?.();
  }

  /**
   * Wait for the end without reading: resolves with `done`, rejects with the
   * error. Items not yet read stay readable.
   * @returns {Promise<object>}
   */
  wait() {
    if (this.error) return Promise.reject(this.error);
    if (this.done) return Promise.resolve(this.done);
    return new Promise((resolve, reject) => this.#settled.push({ resolve, reject }));
  }

  /** @returns {Promise<IteratorResult<T>>} */
  next() {
    if (this.#items.length) {
      const [value, size] = this.#items.shift();
      this.#bufferedBytes -= size;
      return Promise.resolve({ value, done: false });
    }
    if (this.#abandoned) return Promise.resolve({ value: undefined, done: true });
    if (this.error) {
      if (this.#errorThrown) return Promise.resolve({ value: undefined, done: true });
      this.#errorThrown = true;
      return Promise.reject(this.error);
    }
    if (this.done) return Promise.resolve({ value: undefined, done: true });
    if (this.#waiter) return Promise.reject(new TypeError('next() called again before the previous call settled'));
    return new Promise((resolve, reject) => { this.#waiter = { resolve, reject }; });
  }

  /**
   * Leaving a `for await` early lands here: the server is told to cancel,
   * unread and later items are dropped.
   */
  return() {
    this.cancel();
    this.#abandoned = true;
    this.#dropItems();
    this.#wake();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator]() { return this; }

  /** Converts one server frame to the item yielded. */
  _item(frame) { return frame; }
  /** Builds `done` from the terminal `done` frame. */
  _doneInfo(frame) { const { type: _t, id: _i, ...rest } = frame; return rest; }
  /** What `done` is when cancelled before it was ever sent; null → an error instead. */
  _localCancelInfo() { return null; }

  _bindCancel(fn) {
    this.#cancelFn = fn;
    if (fn && this.#cancelRequested) fn();
  }

  /** One item from the server, `size` the length of its frame (counted while it is unread). */
  _push(frame, size = 0) {
    if (this.finished) return;
    this.received++;
    const item = this._item(frame);
    if (this.#abandoned) return;
    if (this.#waiter) {
      const w = this.#waiter; this.#waiter = null;
      w.resolve({ value: item, done: false });
    } else {
      this.#items.push([item, size]);
      this.#bufferedBytes += size;
    }
  }

  /** End with `error` (a `StreamOverflow`), letting go of the unread items: the next read throws it. */
  _overflow(error) {
    if (this.finished) return;
    this.#dropItems();
    this._finish(null, error);
  }

  #dropItems() {
    this.#items.length = 0;
    this.#bufferedBytes = 0;
  }

  _finish(doneFrame, error) {
    if (this.finished) return;
    if (error) this.error = error;
    else this.done = this._doneInfo(doneFrame);
    this.#wake();
    for (const s of this.#settled.splice(0)) {
      if (error) s.reject(error); else s.resolve(this.done);
    }
  }

  _finishLocalCancel() {
    const info = this._localCancelInfo();
    if (info) {
      this.done = null;
      this.#finishWithInfo(info);
    } else {
      this._finish(null, new RequestCancelled('cancelled before it was sent'));
    }
  }

  #finishWithInfo(info) {
    if (this.finished) return;
    this.done = info;
    this.#wake();
    for (const s of this.#settled.splice(0)) s.resolve(info);
  }

  #wake() {
    if (!this.#waiter || this.#items.length) return;
    const w = this.#waiter; this.#waiter = null;
    if (this.#abandoned || !this.error) w.resolve({ value: undefined, done: true });
    else { this.#errorThrown = true; w.reject(this.error); }
  }
}

/**
 * Streaming predict: yields `{seq, offset, outputs}` chunks in order (plus
 * `attributions` with `explain: true`); `done` is `{reason: 'complete', rows,
 * timing}` at the end (plus `explanation`).
 * @extends {ResponseStream<{seq: number, offset: number, outputs: number[][], attributions?: number[][]}>}
 */
export class PredictStream extends ResponseStream {
  #explain;

  /** @param {boolean} [explain] the request asked for attributions (a binary chunk's are its second tensor) */
  constructor(explain = false) {
    super();
    this.#explain = explain;
  }

  _item(frame) {
    const f = withAttributions(frame, this.#explain);
    const chunk = { seq: f.seq, offset: f.offset, outputs: f.outputs };
    if (f.attributions !== undefined) chunk.attributions = f.attributions;
    return chunk;
  }
}

/**
 * A decoupled model's predict (Triton's decoupled mode: any number of responses per request):
 * yields `{seq, outputs, final}` per `response` frame as the model sends them; `done` is
 * `{reason, responses, timing, version}` at the end. Created by `Client.predictResponses`.
 * @extends {ResponseStream<{seq: number, outputs: any, final: boolean}>}
 */
export class PredictResponses extends ResponseStream {
  _item(frame) { return { seq: frame.seq, outputs: frame.outputs, final: frame.final === true }; }
}

/**
 * Token streaming: yields each token's text as it is generated; `done` is
 * `{reason, tokens, timing, text}` at the end (reason `length`, `stop` or
 * `cancelled`); `text` is the whole text so far. With the `logprobs` option,
 * `logprobs` holds one `{text, logprob, top_logprobs}` record per token received
 * (as `text`, received, not only read: the record of the i-th text yielded is
 * `logprobs[i]`) and `done.logprobs` all of them; without it, `logprobs` is null
 * and `done` has none.
 * @extends {ResponseStream<string>}
 */
export class Generation extends ResponseStream {
  /** The generated text so far (stop strings excluded, as the server sends it). */
  text = '';
  /**
   * With `logprobs`: per token received so far (the i-th text yielded is `logprobs[i]`'s),
   * `{text, logprob, top_logprobs: [{id, text, logprob}]}` (the token frame's fields; read it, do
   * not modify it); null otherwise.
   * @type {Array<{text: string, logprob: number|null, top_logprobs: Array<{id: number, text: string, logprob: number|null}>}>|null}
   */
  logprobs;

  /** @param {boolean} [logprobs] the request asked for logprobs (each token frame carries them) */
  constructor(logprobs = false) {
    super();
    this.logprobs = logprobs ? [] : null;
  }

  _item(f) {
    this.text += f.text;
    this.logprobs?.push({ text: f.text, logprob: f.logprob, top_logprobs: f.top_logprobs });
    return f.text;
  }

  _doneInfo(f) {
    const done = { ...super._doneInfo(f), text: this.text };
    if (this.logprobs) done.logprobs = this.logprobs.slice();
    return done;
  }

  _localCancelInfo() {
    const done = { reason: 'cancelled', tokens: 0, timing: null, text: '' };
    if (this.logprobs) done.logprobs = [];
    return done;
  }
}

// =================================================================== client

/**
 * A wsserve client: one WebSocket, many concurrent calls.
 *
 * It is an `EventTarget`; `event.detail` carries: `open` → the hello frame;
 * `close` → `{code, reason, error}`, once per connection that opened (a failed
 * attempt dispatches none; `reconnecting` reports it); `reconnecting` → `{attempt, delayMs, error}`;
 * `draining` → the draining frame; `request` → `{type, model, ms, ok, code,
 * rows, tokens}` after every finished call (for dashboards); `servererror` →
 * an error frame that answers no call.
 */
export class Client extends EventTarget {
  /** @type {Connection|null} */
  #conn = null;
  #connecting = null;
  #closed = false;
  /** Aborted by `close()`: ends a connection attempt or the backoff between two at once. */
  #closing = new AbortController();
  #nextId = 1;
  #lastHello = null;
  #opts;
  #limiter;
  #counters = { connects: 0, requestsSent: 0, cancelsSent: 0, serverCancelled: 0 };

  /**
   * @param {string|URL} url  `ws://host:port/` or `wss://...` (http(s) is mapped to ws(s))
   * @param {object} [opts]
   * @param {string} [opts.token]  API key, sent in-band as `{"type":"auth","token":...}` after `hello`
   * @param {number|null} [opts.heartbeatMs=15000]  application-level ping interval; null disables
   * @param {number} [opts.heartbeatTimeoutMs=10000]  no frame this long after a ping → connection dead
   * @param {number} [opts.connectTimeoutMs=10000]  one attempt, handshake to `hello` (and auth)
   * @param {false|{maxAttempts?: number, baseDelayMs?: number, maxDelayMs?: number, jitter?: number}} [opts.reconnect]
   * @param {boolean|{maxAttempts?: number, baseDelayMs?: number, maxDelayMs?: number, jitter?: number, codes?: string[]}} [opts.retry]
   *   opt-in retry of `overloaded`/`rate_limited` refusals, honouring `retry_after_ms`
   * @param {number|null} [opts.maxInflight]  client-side cap on outstanding predict+generate (default: the server's)
   * @param {number|null} [opts.maxStreamBufferBytes=67108864]  a stream's unread frames may hold this many bytes,
   *   past it the stream fails with `StreamOverflow` and is cancelled; null: no bound
   * @param {number} [opts.closeTimeoutMs=2000]  `close()` waits this long for the close handshake, then drops the socket
   * @param {number|null} [opts.cancelTimeoutMs=30000]  after a `cancel`, the server has this long to end the request;
   *   then the call fails with `ProtocolError` and frees its inflight slot (null: wait forever)
   * @param {any} [opts.WebSocket]  WebSocket constructor to use
   * @param {string[]} [opts.protocols=['wsserve.v1']]  subprotocols to offer
   * @throws {TypeError} a bad URL, or an unknown key in `opts`, `opts.reconnect` or `opts.retry`
   * @throws {RangeError} a policy or `maxInflight` out of range
   */
  constructor(url, opts = {}) {
    super();
    let parsed;
    try {
      parsed = new URL(String(url));
    } catch {
      throw new TypeError(`not a valid WebSocket URL: ${JSON.stringify(String(url))}`);
    }
    if (parsed.protocol === 'http:') parsed.protocol = 'ws:';
    if (parsed.protocol === 'https:') parsed.protocol = 'wss:';
    if (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:') {
      throw new TypeError(`a wsserve URL starts with ws:// or wss://, got ${JSON.stringify(String(url))}`);
    }
    opts = checkOptions('Client options', opts, CLIENT_OPTIONS);
    if (opts.maxInflight != null && !(Number.isInteger(opts.maxInflight) && opts.maxInflight >= 1)) {
      throw new RangeError(`maxInflight must be an integer >= 1 or null, got ${opts.maxInflight}`);
    }
    const {
      maxStreamBufferBytes = DEFAULT_STREAM_BUFFER_BYTES, closeTimeoutMs = DEFAULT_CLOSE_TIMEOUT_MS,
      cancelTimeoutMs = DEFAULT_CANCEL_TIMEOUT_MS,
    } = opts;
    if (maxStreamBufferBytes !== null && !(Number.isSafeInteger(maxStreamBufferBytes) && maxStreamBufferBytes >= 1)) {
      const Err = typeof maxStreamBufferBytes === 'number' ? RangeError : TypeError;
      throw new Err(`maxStreamBufferBytes must be an integer >= 1 or null, got ${describeValue(maxStreamBufferBytes)}`);
    }
    if (cancelTimeoutMs !== null && !(typeof cancelTimeoutMs === 'number' && cancelTimeoutMs > 0 && cancelTimeoutMs < Infinity)) {
      const Err = typeof cancelTimeoutMs === 'number' ? RangeError : TypeError;
      throw new Err(`cancelTimeoutMs must be a number > 0 or null, got ${describeValue(cancelTimeoutMs)}`);
    }
    if (!(typeof closeTimeoutMs === 'number' && closeTimeoutMs >= 0)) {
      const Err = typeof closeTimeoutMs === 'number' ? RangeError : TypeError;
      throw new Err(`closeTimeoutMs must be a number >= 0, got ${describeValue(closeTimeoutMs)}`);
    }
    this.url = parsed.toString();
    this.#opts = {
      token: opts.token ?? null,
      heartbeatMs: opts.heartbeatMs === undefined ? 15000 : opts.heartbeatMs,
      heartbeatTimeoutMs: opts.heartbeatTimeoutMs ?? 10000,
      connectTimeoutMs: opts.connectTimeoutMs ?? 10000,
      reconnect: reconnectPolicy(opts.reconnect),
      reconnectEnabled: opts.reconnect !== false,
      retry: retryPolicy(opts.retry),
      maxInflight: opts.maxInflight ?? null,
      maxStreamBufferBytes: maxStreamBufferBytes ?? Infinity,
      closeTimeoutMs,
      cancelTimeoutMs,
      WebSocket: opts.WebSocket ?? null,
      protocols: opts.protocols ?? [SUBPROTOCOL],
    };
    this.#limiter = new Limiter(() => this.#opts.maxInflight ?? this.#lastHello?.limits?.max_inflight ?? Infinity);
  }

  /**
   * The current (or last) connection's `hello`, or null before the first; its `limits` as the
   * client uses them (`checkedHello`: each of `LIMIT_NAMES` a number, or null when not announced or not trusted).
   */
  get hello() { return this.#lastHello; }

  /** `'open'`, `'connecting'`, `'idle'` (no socket; the next call connects) or `'closed'`. */
  get state() {
    if (this.#closed) return 'closed';
    if (this.#conn && !this.#conn.dead) return 'open';
    if (this.#connecting) return 'connecting';
    return 'idle';
  }

  /** True after `close()` began. */
  get closed() { return this.#closed; }

  /** True once the server announced `draining` on the current connection. */
  get draining() { return Boolean(this.#conn && !this.#conn.dead && this.#conn.draining); }

  /** A snapshot of this client's counters. */
  stats() {
    return {
      inflight: this.#limiter.used,
      waiting: this.#limiter.waiting,
      capacity: this.#limiter.capacity(),
      ...this.#counters,
      connected: this.state === 'open',
    };
  }

  // ------------------------------------------------------------ connecting

  /**
   * Open the connection now (calls also connect on demand). Resolves with
   * the `hello` frame. Rejects with `ConnectionLost` when no attempt
   * succeeded, `Unauthorized` when the token was refused, `UnsupportedProtocol`
   * when the server's `hello` is of another protocol version (neither is retried).
   * @param {{signal?: AbortSignal}} [opts]
   */
  async connect(opts) {
    const { signal } = checkOptions('connect() options', opts, CONNECT_OPTIONS);
    return (await this.#ensureConn(signal)).hello;
  }

  #ensureConn(signal) {
    if (this.#closed) return Promise.reject(new ClientClosed('the client was closed'));
    if (this.#conn && !this.#conn.dead) return Promise.resolve(this.#conn);
    if (!this.#opts.reconnectEnabled && this.#counters.connects > 0) {
      return Promise.reject(new ConnectionLost('the connection was lost and reconnect is disabled'));
    }
    this.#connecting ??= this.#connectLoop().finally(() => { this.#connecting = null; });
    return raceAbort(this.#connecting, signal);
  }

  async #connectLoop() {
    const policy = this.#opts.reconnect;
    let lastError = null;
    for (let attempt = 0; attempt < policy.maxAttempts; attempt++) {
      if (this.#closed) throw new ClientClosed('the client was closed');
      try {
        return await this.#openOnce();
      } catch (e) {
        lastError = e;
        // a refused token or another protocol version will not change on the next try
        if (e instanceof Unauthorized || e instanceof UnsupportedProtocol || e instanceof ClientClosed || this.#closed) throw e;
        if (attempt + 1 >= policy.maxAttempts) break;
        const delayMs = reconnectDelayMs(policy, attempt, Math.random());
        this.dispatchEvent(makeEvent('reconnecting', { attempt: attempt + 1, delayMs, error: e }));
        await sleep(delayMs, this.#closing.signal).catch(() => {
          throw new ClientClosed('the client was closed');
        });
      }
    }
    throw new ConnectionLost(
      `could not connect to ${this.url} (${policy.maxAttempts} attempt${policy.maxAttempts === 1 ? '' : 's'}): ${lastError?.message ?? lastError}`,
      { cause: lastError },
    );
  }

  async #openOnce() {
    const WS = await resolveWebSocket(this.#opts.WebSocket);
    const ws = new WS(this.url, this.#opts.protocols);
    ws.binaryType = 'arraybuffer'; // binary tensor frames
    const conn = new Connection(ws);
    const token = this.#opts.token;
    let authId = null;

    return new Promise((resolve, reject) => {
      let settled = false;
      let opened = false; // a failed attempt is settled too, but its end is no `close` event
      const onClosing = () => fail(new ClientClosed('the client was closed'));
      const fail = (err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.#closing.signal.removeEventListener('abort', onClosing);
        conn.dead = true;
        try { ws.close(); } catch { /* not open yet */ }
        reject(err);
      };
      const timer = setTimeout(
        () => fail(new ConnectionLost(`no hello from ${this.url} within ${this.#opts.connectTimeoutMs} ms`)),
        this.#opts.connectTimeoutMs,
      );
      if (this.#closing.signal.aborted) onClosing();
      else this.#closing.signal.addEventListener('abort', onClosing, { once: true });
      const open = () => {
        if (this.#closed) { fail(new ClientClosed('the client was closed')); return; }
        settled = opened = true;
        clearTimeout(timer);
        this.#closing.signal.removeEventListener('abort', onClosing);
        this.#lastHello = conn.hello;
        this.#conn = conn;
        this.#counters.connects++;
        this.#limiter.wake(); // the capacity may have changed
        conn.startHeartbeat(
          this.#opts.heartbeatMs, this.#opts.heartbeatTimeoutMs,
          () => this.#heartbeatPing(conn),
          (err) => this.#connectionDied(conn, err),
        );
        this.dispatchEvent(makeEvent('open', conn.hello));
        resolve(conn);
      };

      ws.addEventListener('message', (ev) => {
        conn.lastRxAt = now();
        let frame;
        try {
          frame = typeof ev.data === 'string' ? JSON.parse(ev.data) : decodeTensorFrame(ev.data);
        } catch (e) {
          // Neither JSON text nor a binary tensor frame: ignored, unless it names a pending call
          // (which would else wait forever for an answer it lost).
          if (settled) this.#onMalformed(conn, ev.data, e);
          return;
        }
        if (settled) {
          this.#onFrame(conn, frame, typeof ev.data === 'string' ? ev.data.length : ev.data.byteLength);
          return;
        }
        if (frame?.type === 'hello') {
          const mismatch = protocolMismatch(frame, this.url);
          if (mismatch) { fail(new UnsupportedProtocol(mismatch)); return; }
          conn.hello = checkedHello(frame);
          if (!token) { open(); return; }
          // Browsers cannot set headers on a WebSocket handshake: authenticate in-band.
          authId = this.#nextId++;
          try { conn.sendText(JSON.stringify({ type: 'auth', id: authId, token })); } catch (e) { fail(e); }
        } else if (frame?.type === 'auth' && frame.id === authId && authId !== null) {
          if (frame.ok === false) fail(new Unauthorized('the server refused the token', { frame }));
          else open();
        } else if (frame?.type === 'error') {
          fail(errorFromFrame(frame));
        }
      });
      ws.addEventListener('close', (ev) => {
        const why = `connection closed (code ${ev.code}${ev.reason ? `: ${ev.reason}` : ''})`;
        if (!settled) fail(new ConnectionLost(why));
        else if (opened) this.#connectionDied(conn, new ConnectionLost(why), ev.code, ev.reason);
      });
      ws.addEventListener('error', (ev) => {
        // After open, the close event that follows does the cleanup.
        if (!settled) fail(new ConnectionLost(`could not connect to ${this.url}: ${ev?.message || ev?.error?.message || 'WebSocket error'}`));
      });
    });
  }

  #heartbeatPing(conn) {
    const id = this.#nextId++;
    const call = new Call(id, { type: 'ping' }, false, now());
    call.internal = true;
    conn.pending.set(id, call);
    try { conn.sendText(`{"type":"ping","id":${id}}`); } catch { conn.pending.delete(id); }
  }

  /** Fail every call of `conn` with `error` and forget it. Idempotent. */
  #connectionDied(conn, error, code = null, reason = '', graceful = false) {
    if (conn.cleanedUp) return;
    conn.cleanedUp = true;
    conn.dead = true;
    conn.stopTimers();
    if (this.#conn === conn) this.#conn = null;
    try {
      if (!graceful && typeof conn.ws.terminate === 'function') conn.ws.terminate(); // ws: no close handshake with a dead peer
      else conn.ws.close(1000, 'client closed');
    } catch { /* already closed */ }
    for (const call of [...conn.pending.values()]) this.#endCall(conn, call, error, null);
    this.dispatchEvent(makeEvent('close', { code, reason, error }));
  }

  /**
   * Close the client: send `cancel` for unfinished calls, close the socket,
   * fail local waiters with `ClientClosed` — also the calls waiting for a connection or to
   * retry a refusal: an attempt in progress and any backoff wait end at once. Resolves when the
   * close handshake is done, or after `closeTimeoutMs` when the server does not complete it (the
   * socket is then dropped). Idempotent; the client cannot be reused.
   */
  async close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#closing.abort();
    const error = new ClientClosed('the client was closed');
    this.#limiter.failAll(error);
    const conn = this.#conn;
    if (!conn) return;
    for (const call of conn.pending.values()) {
      if (call.counted && conn.cancel(call)) this.#counters.cancelsSent++;
    }
    let timer = null;
    const closed = new Promise((resolve) => {
      conn.ws.addEventListener('close', resolve, { once: true });
      // A server that never answers the close frame: drop the socket rather than wait (the `ws`
      // package would keep it for 30 s). A browser WebSocket has no such call; it closes on its own.
      timer = unrefTimer(setTimeout(() => {
        try { conn.ws.terminate?.(); } catch { /* already gone */ }
        resolve();
      }, this.#opts.closeTimeoutMs));
    });
    this.#connectionDied(conn, error, 1000, 'client closed', true);
    await closed;
    clearTimeout(timer);
  }

  // ------------------------------------------------------------ frames

  /**
   * One parsed frame after `hello` (`size`: its length on the wire). A frame for a pending call
   * whose fields have the wrong types fails that call with `MalformedFrame` (a stream's item also
   * cancels it); nothing here fails the socket or another call.
   */
  #onFrame(conn, frame, size) {
    if (!isObject(frame)) return;
    if (frame.type === 'draining') {
      conn.draining = true;
      this.dispatchEvent(makeEvent('draining', frame));
      return;
    }
    const call = frame.id === undefined || frame.id === null ? undefined : conn.pending.get(frame.id);
    if (!call) {
      if (frame.type === 'error') this.dispatchEvent(makeEvent('servererror', frame));
      return; // a late frame for a call that already ended, or one we do not know
    }
    if (frame.type === 'error') {
      if (frame.code === 'cancelled') this.#counters.serverCancelled++;
      this.#endCall(conn, call, errorFromFrame(frame), null);
      return;
    }
    if (frame.type === call.item) {
      const problem = frameProblem(frame) ?? seqProblem(call, frame) ?? (call.logprobs ? logprobsProblem(frame) : null);
      if (problem) { this.#fault(conn, call, frame.type, problem); return; }
      call.items++;
      call.onItem(frame, size);
      return;
    }
    if (frame.type === call.reply) {
      const problem = frameProblem(frame);
      if (problem) { this.#fault(conn, call, frame.type, problem); return; }
      if (frame.type === 'done' && frame.reason === 'cancelled') this.#counters.serverCancelled++;
      this.#endCall(conn, call, null, frame);
      return;
    }
    if (frame.type === 'result' && call.item === 'chunk') { // a server that did not stream: one chunk, then done
      const problem = frameProblem(frame);
      if (problem) { this.#fault(conn, call, frame.type, problem); return; }
      const { type: _t, outputs, attributions, timing, ...rest } = frame;
      const chunk = { type: 'chunk', id: call.id, seq: 0, offset: 0, outputs };
      if (attributions !== undefined) chunk.attributions = attributions;
      call.items++;
      call.onItem(chunk, size);
      this.#endCall(conn, call, null, { ...rest, type: 'done', reason: 'complete', rows: rowCount(outputs), timing: timing ?? {} });
      return;
    }
    if (!KNOWN_FRAME_TYPES.has(frame.type)) return; // a type protocol version 1 does not have: ignored
    // Another request type's answer or items.
    const expected = [call.reply, call.item, 'error'].filter(Boolean).map((t) => JSON.stringify(t)).join(', ');
    this.#fault(conn, call, frame.type, `a ${JSON.stringify(frame.type) ?? 'typeless'} frame does not answer it (expected ${expected})`);
  }

  /**
   * Fail `call` with a `MalformedFrame` for a frame of type `type`. A frame that ends a request on
   * the server (`result`, `done`), or a call that holds no request slot, ends the call; otherwise
   * the server may still be running it: `cancel` is sent and the caller gets the error at once,
   * while the slot stays held until the server's terminal frame (as for any cancel).
   */
  #fault(conn, call, type, problem) {
    const error = this.#malformed(call, problem);
    if (!call.counted || type === 'result' || type === 'done') {
      this.#endCall(conn, call, error, null);
      return;
    }
    this.#cancel(conn, call);
    call.onFault(error);
  }

  #malformed(call, problem, cause) {
    return new MalformedFrame(`malformed frame from the server for ${call.type} ${JSON.stringify(call.id)}: ${problem}`,
      { requestId: call.id, cause });
  }

  /**
   * A frame that did not parse (`error`): a text frame that is not JSON, or a binary frame that
   * does not decode. If it still names a pending call (the text's `"id"`, the binary header's),
   * that call is cancelled on the server and fails with a `MalformedFrame`.
   */
  #onMalformed(conn, data, error) {
    let id;
    if (typeof data === 'string') {
      id = idOfBrokenText(data);
      const call = id === undefined || id === null ? undefined : conn.pending.get(id);
      if (!call) return;
      this.#cancel(conn, call);
      this.#endCall(conn, call, this.#malformed(call, `not JSON (${error?.message ?? error})`, error), null);
      return;
    }
    try {
      const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      const n = new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
      utf8Decoder ??= new TextDecoder();
      id = JSON.parse(utf8Decoder.decode(bytes.subarray(4, 4 + n)))?.id;
    } catch {
      return; // not even its header reads: nothing to tie it to
    }
    const call = id === undefined || id === null ? undefined : conn.pending.get(id);
    if (!call) return;
    this.#cancel(conn, call);
    this.#endCall(conn, call, new MalformedFrame(`malformed binary frame from the server: ${error?.message ?? error}`,
      { requestId: id, cause: error }), null);
  }

  #endCall(conn, call, error, frame) {
    if (call.ended) return;
    call.ended = true;
    conn.pending.delete(call.id);
    if (call.counted) this.#limiter.release();
    if (!call.internal) {
      const cancelled = error?.code === 'cancelled' || frame?.reason === 'cancelled';
      this.dispatchEvent(makeEvent('request', {
        type: call.type,
        model: call.model,
        ms: now() - call.sentAt,
        ok: !error,
        code: error ? (error.code ?? error.name) : cancelled ? 'cancelled' : 'ok',
        rows: call.rows,
        tokens: call.type === 'generate' ? (frame?.tokens ?? call.items) : undefined,
      }));
    }
    call.onEnd(error, frame);
  }

  // ------------------------------------------------------------ sending

  /**
   * Connect if needed, take an inflight slot if `counted`, send `msg` with a
   * fresh id. Returns `{conn, call}`; the slot is released when the call ends.
   * Rejects with `signal.reason` if aborted first.
   */
  async #send(msg, { counted, signal }) {
    await this.#ensureConn(signal); // first, so the hello's max_inflight is known
    if (counted) await this.#limiter.acquire(signal);
    try {
      const conn = await this.#ensureConn(signal); // it may have died while we waited
      if (signal?.aborted) throw signal.reason;
      const id = this.#nextId++;
      const { type, tensors, ...rest } = msg;
      const text = tensors ? encodeTensorFrame({ type, id, ...rest }, tensors) : JSON.stringify({ type, id, ...rest });
      const limit = conn.hello?.limits?.max_message_bytes;
      if (tensors ? limit != null && text.byteLength > limit : exceedsBytes(text, limit)) {
        throw new RequestTooLarge(
          `the ${type} request is larger than the server's max_message_bytes (${limit}); split it`,
          { requestId: id },
        );
      }
      const headerLimit = conn.hello?.limits?.max_binary_header_bytes;
      const header = tensors ? new DataView(text.buffer, text.byteOffset, 4).getUint32(0, true) : 0;
      if (headerLimit != null && header > headerLimit) {
        // The server could not read this frame's id: its error would answer no call.
        throw new RequestTooLarge(
          `the binary ${type} header is ${header} bytes, over the server's max_binary_header_bytes (${headerLimit}); `
          + 'use fewer or shorter input names', { requestId: id },
        );
      }
      const call = new Call(id, msg, counted, now());
      conn.pending.set(id, call);
      try {
        conn.sendText(text);
      } catch (e) {
        conn.pending.delete(id);
        throw e;
      }
      this.#counters.requestsSent++;
      return { conn, call };
    } catch (e) {
      if (counted) this.#limiter.release();
      throw e;
    }
  }

  /**
   * Send `cancel` for `call` (once). A server that has not ended the request `cancelTimeoutMs`
   * later is not going to: the call ends with `ProtocolError` and frees its inflight slot.
   */
  #cancel(conn, call) {
    if (call.ended || call.cancelSent) return;
    if (conn.cancel(call)) this.#counters.cancelsSent++;
    const ms = this.#opts.cancelTimeoutMs;
    if (ms === null) return;
    unrefTimer(setTimeout(() => {
      if (call.ended || conn.pending.get(call.id) !== call) return;
      this.#endCall(conn, call, new ProtocolError(`${call.type} ${JSON.stringify(call.id)}: the server did not end `
        + `the request within ${ms} ms of its cancel`, { requestId: call.id }), null);
    }, ms));
  }

  /**
   * One request/one reply, with abort and client-side deadline handling.
   * `abortMode`: 'server' waits for the server's terminal frame after sending
   * `cancel`; 'local' stops waiting at once.
   */
  async #unary(msg, { counted, signal, guardMs, abortMode }) {
    let sent;
    try {
      sent = await this.#send(msg, { counted, signal });
    } catch (e) {
      if (signal?.aborted && !(e instanceof WsserveError)) {
        throw new RequestCancelled(`the ${msg.type} was aborted before it was sent`, { cause: signal.reason });
      }
      throw e;
    }
    const { conn, call } = sent;
    return new Promise((resolve, reject) => {
      let timer = null;
      const cleanup = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = () => {
        if (counted) this.#cancel(conn, call);
        if (abortMode === 'local') {
          cleanup();
          reject(new RequestCancelled(`the ${msg.type} was aborted`, { requestId: call.id, cause: signal.reason }));
        }
      };
      call.onEnd = (err, frame) => { cleanup(); if (err) reject(err); else resolve(frame); };
      call.onFault = (err) => { cleanup(); reject(err); }; // cancel sent; the slot waits for the terminal frame
      if (signal) {
        if (signal.aborted) onAbort();
        else signal.addEventListener('abort', onAbort, { once: true });
      }
      if (guardMs != null) {
        timer = setTimeout(() => {
          if (counted) this.#cancel(conn, call);
          cleanup();
          reject(new DeadlineExceeded(`no answer within ${guardMs} ms (client-side deadline); cancel sent`, { requestId: call.id }));
        }, guardMs);
      }
    });
  }

  /**
   * Wait `ms` before retrying a refusal. Rejects with `ClientClosed` when the client closes
   * first, with a local `RequestCancelled` when `signal` aborts or the function given to
   * `bindCancel` (a stream's cancel) is called first; nothing is on the wire meanwhile.
   */
  async #retryWait(ms, signal, bindCancel) {
    const stop = new AbortController();
    const onAbort = () => stop.abort(new RequestCancelled('cancelled while waiting to retry', { cause: signal?.reason }));
    const onClose = () => stop.abort(new ClientClosed('the client was closed'));
    bindCancel?.(onAbort);
    if (signal?.aborted) onAbort(); else signal?.addEventListener('abort', onAbort, { once: true });
    if (this.#closing.signal.aborted) onClose(); else this.#closing.signal.addEventListener('abort', onClose, { once: true });
    try {
      await sleep(ms, stop.signal);
    } finally {
      bindCancel?.(null);
      signal?.removeEventListener('abort', onAbort);
      this.#closing.signal.removeEventListener('abort', onClose);
    }
  }

  async #withRetry(fn, signal) {
    const policy = this.#opts.retry;
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (e) {
        if (!policy || !(e instanceof WsserveError) || !policy.codes.includes(e.code) || attempt + 1 >= policy.maxAttempts) throw e;
        await this.#retryWait(retryDelayMs(policy, attempt, e.retryAfterMs, Math.random()), signal);
      }
    }
  }

  // ------------------------------------------------------------ public calls

  /**
   * Batched inference: `model` on `inputs` (shape `[n, d]`). Resolves with
   * `{id, model, version, outputs, timing}` (outputs shape `[n, k]`); with
   * `explain: true` also `attributions` (shape `[n, d]`: each feature's share
   * of the row's explained output) and `explanation` (`{method, baseline,
   * target, steps}`). With `binary: true` `outputs` (and `attributions`, float64)
   * are tensors `{data: TypedArray, shape, dtype}`.
   * @param {string} model
   * @param {ArrayLike<ArrayLike<number>>|Record<string, ArrayLike<ArrayLike<number>>>} inputs  rows, or `{name: rows}`
   * `traceparent`/`tracestate` (W3C Trace Context): the server's span for the request (with
   * `--otlp-traces-endpoint`) joins the caller's trace.
   * @param {{version?: string|number, timeoutMs?: number, priority?: number, explain?: boolean, signal?: AbortSignal,
   *          traceparent?: string, tracestate?: string}} [opts]
   */
  async predict(model, inputs, opts) {
    opts = checkOptions('predict() options', opts, PREDICT_OPTIONS);
    const msg = predictMessage(model, inputs, opts);
    setIf(msg, 'version', checkVersion('predict()', opts.version));
    setIf(msg, 'timeout_ms', opts.timeoutMs);
    setIf(msg, 'priority', opts.priority);
    setTraceContext('predict()', msg, opts);
    if (opts.explain) msg.explain = true;
    const frame = await this.#withRetry(() => this.#unary(msg, {
      counted: true,
      signal: opts.signal,
      guardMs: opts.timeoutMs == null ? null : opts.timeoutMs + DEADLINE_GRACE_MS,
      abortMode: 'server',
    }), opts.signal);
    const { type: _t, ...result } = withAttributions(frame, opts.explain);
    return result;
  }

  /**
   * Streaming predict: `for await (const chunk of c.predictStream(...))`
   * yields `{seq, offset, outputs}` in order; `stream.done` is
   * `{reason: 'complete', rows, timing}` at the end. Errors (`RequestCancelled`
   * after an abort included) are thrown by the iteration.
   * @param {string} model
   * @param {ArrayLike<ArrayLike<number>>|Record<string, ArrayLike<ArrayLike<number>>>} inputs  rows, or `{name: rows}`
   * @param {{chunkRows?: number, version?: string|number, timeoutMs?: number, priority?: number, explain?: boolean, signal?: AbortSignal,
   *          traceparent?: string, tracestate?: string}} [opts]
   * @returns {PredictStream}
   */
  predictStream(model, inputs, opts) {
    opts = checkOptions('predictStream() options', opts, PREDICT_STREAM_OPTIONS);
    const msg = predictMessage(model, inputs, opts);
    msg.stream = true;
    setIf(msg, 'chunk_rows', opts.chunkRows);
    setIf(msg, 'version', checkVersion('predictStream()', opts.version));
    setIf(msg, 'timeout_ms', opts.timeoutMs);
    setIf(msg, 'priority', opts.priority);
    setTraceContext('predictStream()', msg, opts);
    if (opts.explain) msg.explain = true;
    const stream = new PredictStream(Boolean(opts.explain));
    this.#runStream(stream, msg, opts);
    return stream;
  }

  /**
   * A decoupled model's predict (Triton's decoupled mode): `for await (const r of
   * c.predictResponses(...))` yields each response `{seq, outputs, final}` as the model sends it
   * (any number, zero included); `stream.done` is `{reason, responses, timing, version}` at the
   * end. `cancel()` (or leaving the loop) cancels the request: the model sees it cancelled. The
   * server's error (the model's, a slow consumer's `overloaded`) is thrown after the responses
   * before it. Options: `version`, `timeoutMs`, `priority`, `signal`, `traceparent`/`tracestate`, and
   * `binary` (as for `predict`: `inputs` sent as a binary tensor frame, each response's `outputs` as
   * {@link Tensor}s, `{name: Tensor}` for a model with several outputs).
   * @returns {PredictResponses}
   */
  predictResponses(model, inputs, opts) {
    opts = checkOptions('predictResponses() options', opts, PREDICT_RESPONSES_OPTIONS);
    const msg = predictMessage(model, inputs, opts);
    msg[RESPONSES] = true;
    setIf(msg, 'version', checkVersion('predictResponses()', opts.version));
    setIf(msg, 'timeout_ms', opts.timeoutMs);
    setIf(msg, 'priority', opts.priority);
    setTraceContext('predictResponses()', msg, opts);
    const stream = new PredictResponses();
    this.#runStream(stream, msg, opts);
    return stream;
  }

  /**
   * Token streaming: `for await (const text of c.generate(...))` yields each
   * token's text; `gen.done` is `{reason, tokens, timing, text, version}` at the end,
   * reason `length`, `stop` or `cancelled`. Options left out take the
   * server's defaults (`max_tokens` 64, greedy, the default version).
   * `prompt` is the text to continue, or an array of chat messages
   * (`{role, content}`, sent as `messages`: the model's chat template makes the prompt).
   * `logprobs: k` (an integer >= 0, at most the server's `max_logprobs`, 20) asks for each
   * token's log-probability and the `k` likeliest tokens of its step, by the model's own
   * distribution: iteration still yields texts; `gen.logprobs` holds a record per token
   * received (`gen.logprobs[i]` is the i-th text's) and `done.logprobs` all of them. A bad `logprobs` throws (`TypeError`, `RangeError`).
   * vLLM's stop controls, sent as `stop_token_ids`, `min_tokens` and `include_stop_str_in_output` (unchecked, like
   * the sampling options: the server refuses a bad value naming the field): `stopTokenIds` (token ids, at most the
   * server's `max_stop_token_ids`, 64: the generation ends with reason `stop` at one of them, whose text is not
   * sent), `minTokens` (0 to `maxTokens`: no stop within the first ones) and `includeStopStrInOutput` (the stop
   * string or token text is sent, and nothing after it).
   * vLLM's `guidedChoice`, sent as `guided_choice` (unchecked): 1 to the server's `max_guided_choices` (64) strings;
   * the generated text is exactly one of them (reason `stop` when it is complete). Structured outputs (the server's
   * `wsserve[structured]` extra): `guidedRegex` (a regular expression the text matches) or `guidedJson` (a JSON Schema,
   * an object or a string: the text is JSON following it), sent as `guided_regex` / `guided_json`, at most the
   * server's `max_guided_pattern_chars` (16384); one guided form per request.
   * @param {string} model
   * @param {string|Array<{role: string, content: string|Array<{type: 'text', text: string}>|null, name?: string}>} prompt
   * @param {{version?: string|number, maxTokens?: number, temperature?: number, topK?: number, topP?: number, minP?: number,
   *          presencePenalty?: number, frequencyPenalty?: number, repetitionPenalty?: number, logitBias?: Object<string, number>, seed?: number, stop?: string|string[], timeoutMs?: number, priority?: 0|1,
   *          stopTokenIds?: number[], minTokens?: number, includeStopStrInOutput?: boolean, guidedChoice?: string[], guidedRegex?: string, guidedJson?: Object|string,
   *          logprobs?: number, signal?: AbortSignal, traceparent?: string, tracestate?: string}} [opts]
   * @returns {Generation}
   */
  generate(model, prompt, opts) {
    opts = checkOptions('generate() options', opts, GENERATE_OPTIONS);
    const msg = Array.isArray(prompt) ? { type: 'generate', model, messages: prompt } : { type: 'generate', model, prompt };
    setIf(msg, 'version', checkVersion('generate()', opts.version));
    setIf(msg, 'max_tokens', opts.maxTokens);
    setIf(msg, 'temperature', opts.temperature);
    setIf(msg, 'top_k', opts.topK);
    setIf(msg, 'top_p', opts.topP);
    setIf(msg, 'min_p', opts.minP);
    setIf(msg, 'presence_penalty', opts.presencePenalty);
    setIf(msg, 'frequency_penalty', opts.frequencyPenalty);
    setIf(msg, 'repetition_penalty', opts.repetitionPenalty);
    setIf(msg, 'logit_bias', opts.logitBias);
    setIf(msg, 'seed', opts.seed);
    setIf(msg, 'stop', typeof opts.stop === 'string' ? [opts.stop] : opts.stop);
    setIf(msg, 'stop_token_ids', opts.stopTokenIds);
    setIf(msg, 'min_tokens', opts.minTokens);
    setIf(msg, 'include_stop_str_in_output', opts.includeStopStrInOutput);
    setIf(msg, 'guided_choice', opts.guidedChoice);
    setIf(msg, 'guided_regex', opts.guidedRegex);
    setIf(msg, 'guided_json', opts.guidedJson);
    setIf(msg, 'timeout_ms', opts.timeoutMs);
    setIf(msg, 'priority', opts.priority);
    setIf(msg, 'logprobs', checkLogprobs('generate()', opts.logprobs));
    setTraceContext('generate()', msg, opts);
    const stream = new Generation(msg.logprobs !== undefined);
    this.#runStream(stream, msg, opts);
    return stream;
  }

  /**
   * Generate to the end; resolves with `{text, reason, tokens, timing}` (and `logprobs` with that option).
   * @param {string} model
   * @param {Parameters<Client['generate']>[1]} prompt  text, or chat messages
   * @param {Parameters<Client['generate']>[2]} [opts]
   */
  async complete(model, prompt, opts) {
    const gen = this.generate(model, prompt, checkOptions('complete() options', opts, GENERATE_OPTIONS));
    return gen.wait();
  }

  #runStream(stream, msg, { signal, timeoutMs }) {
    const onAbort = () => stream.cancel();
    if (signal?.aborted) stream.cancel();
    else signal?.addEventListener('abort', onAbort, { once: true });
    const policy = this.#opts.retry;

    const run = async () => {
      for (let attempt = 0; ; attempt++) {
        if (stream.cancelRequested) { stream._finishLocalCancel(); return; }
        // Until it is sent, stream.cancel() ends the wait for a connection or a free slot: it is then
        // a local cancel, with nothing on the wire.
        const unsent = new AbortController();
        stream._bindCancel(() => unsent.abort(new RequestCancelled('cancelled before it was sent')));
        let sent;
        try {
          sent = await this.#send(msg, { counted: true, signal: eitherSignal(signal, unsent.signal) });
        } catch (e) {
          if (stream.cancelRequested || signal?.aborted) stream._finishLocalCancel();
          else stream._finish(null, e);
          return;
        }
        const { conn, call } = sent;
        stream.id = call.id;
        const outcome = await new Promise((resolve) => {
          let timer = null;
          const limit = this.#opts.maxStreamBufferBytes;
          call.onItem = (f, size) => {
            stream._push(f, size);
            if (stream.bufferedBytes > limit) {
              this.#cancel(conn, call);
              stream._overflow(new StreamOverflow(
                `${stream.bufferedBytes} bytes of unread items, over maxStreamBufferBytes (${limit}): `
                + 'read the stream as it comes (or raise the bound); cancel sent', { requestId: call.id }));
            }
          };
          // the items before a malformed one stay readable; the slot stays held until the server's terminal frame
          call.onFault = (err) => stream._finish(null, err);
          call.onEnd = (err, frame) => { clearTimeout(timer); resolve({ err, frame }); };
          if (timeoutMs != null) {
            timer = setTimeout(() => {
              this.#cancel(conn, call);
              stream._finish(null, new DeadlineExceeded(
                `no end of stream within ${timeoutMs + DEADLINE_GRACE_MS} ms (client-side deadline); cancel sent`,
                { requestId: call.id }));
            }, timeoutMs + DEADLINE_GRACE_MS);
          }
          stream._bindCancel(() => this.#cancel(conn, call));
        });
        const { err, frame } = outcome;
        if (err && policy && err.code && policy.codes.includes(err.code) && stream.received === 0
            && !call.cancelSent && attempt + 1 < policy.maxAttempts) {
          try {
            await this.#retryWait(retryDelayMs(policy, attempt, err.retryAfterMs, Math.random()), signal,
              (fn) => stream._bindCancel(fn));
            continue;
          } catch (e) { // nothing is on the wire
            if (e instanceof ClientClosed) stream._finish(null, e);
            else stream._finishLocalCancel();
            return;
          }
        }
        stream._finish(frame, err);
        return;
      }
    };
    run()
      .catch((e) => stream._finish(null, e instanceof WsserveError ? e : new WsserveError(`client bug: ${e}`, { cause: e })))
      .finally(() => signal?.removeEventListener('abort', onAbort));
  }

  /**
   * The served models with metadata (`name`, `version`, `task`,
   * `input_shape`, `output_shape`, `parameters`, `metrics`, ...).
   * @param {{signal?: AbortSignal, timeoutMs?: number}} [opts]  timeoutMs bounds the wait locally
   * @returns {Promise<object[]>}
   */
  async models(opts) {
    const { signal, timeoutMs } = checkOptions('models() options', opts, UNARY_OPTIONS);
    const frame = await this.#unary({ type: 'models' }, { counted: false, signal, guardMs: timeoutMs, abortMode: 'local' });
    return frame.models;
  }

  /**
   * Load `model` from the server's model repository (one `version`, or every
   * version its policy selects). Resolves with `{model, versions}`: each
   * version's `{version, state, reason?}` afterwards; a version that failed to
   * load is reported there (`state: 'failed'`), not thrown.
   *
   * An admin call: it needs the server's admin key as the `token` option, or a
   * loopback connection to a server without keys; else it rejects with
   * `Forbidden`. `UnknownModelError` for a model or version not in the
   * repository. `timeoutMs` bounds the wait locally.
   *
   * `config`: a model configuration in Triton's JSON form (an object, or JSON text as
   * tritonclient's `load_model(config=...)` takes it) served instead of the model's config file
   * until the model is loaded again without one; a bad one rejects with `BadRequestError` naming
   * the problem (the model keeps what it served). Anything but an object or a string is a `TypeError`.
   * @param {string} model
   * @param {{version?: string|number, config?: object|string, signal?: AbortSignal, timeoutMs?: number}} [opts]
   * @returns {Promise<{model: string, versions: {version: string, state: string, reason?: string}[]}>}
   */
  async load(model, opts) { return this.#admin('load', model, opts); }

  /**
   * Stop serving `model` (or one `version`): no new requests, in-flight ones
   * finish (state `unloading`), then it leaves. Admin call, see `load()`.
   * @param {string} model
   * @param {{version?: string|number, signal?: AbortSignal, timeoutMs?: number}} [opts]
   */
  async unload(model, opts) { return this.#admin('unload', model, opts); }

  /**
   * Load `model` (or one `version`) again from its files and swap it in once
   * warmed up. Admin call, see `load()`.
   * @param {string} model
   * @param {{version?: string|number, signal?: AbortSignal, timeoutMs?: number}} [opts]
   */
  async reload(model, opts) { return this.#admin('reload', model, opts); }

  async #admin(op, model, opts) {
    const { signal, timeoutMs, version, config } = checkOptions(`${op}() options`, opts,
      op === 'load' ? LOAD_OPTIONS : ADMIN_OPTIONS);
    const msg = { type: op, model };
    setIf(msg, 'version', checkVersion(`${op}()`, version));
    if (config !== undefined) {
      if (typeof config !== 'string' && (!isObject(config) || Array.isArray(config))) {
        throw new TypeError(`load(): config must be an object or a JSON string, got ${describeValue(config)}`);
      }
      msg.config = config;
    }
    const frame = await this.#unary(msg, { counted: false, signal, guardMs: timeoutMs, abortMode: 'local' });
    const { type: _t, id: _i, ok: _o, ...result } = frame;
    return result;
  }

  /**
   * Round-trip time of one application-level `ping`/`pong`, in milliseconds.
   * @param {{signal?: AbortSignal, timeoutMs?: number}} [opts]
   * @returns {Promise<number>}
   */
  async ping(opts) {
    const { signal, timeoutMs } = checkOptions('ping() options', opts, UNARY_OPTIONS);
    await raceAbort(this.#ensureConn(signal), signal).catch((e) => {
      throw signal?.aborted && !(e instanceof WsserveError) ? new RequestCancelled('the ping was aborted', { cause: e }) : e;
    });
    const t0 = now();
    await this.#unary({ type: 'ping' }, { counted: false, signal, guardMs: timeoutMs, abortMode: 'local' });
    return now() - t0;
  }
}

if (typeof Symbol.asyncDispose === 'symbol') {
  // `await using c = new Client(...)` closes it at the end of the block.
  Object.defineProperty(Client.prototype, Symbol.asyncDispose, {
    value() { return this.close(); }, writable: true, configurable: true,
  });
}

export default Client;
