// Type declarations for wsserve-client (src/wsserve.js).

export declare const PROTOCOL_VERSION: 1;
export declare const SUBPROTOCOL: 'wsserve.v1';
/** The client-side deadline fires this long after a request's `timeoutMs`. */
export declare const DEADLINE_GRACE_MS: number;
/** Default `maxStreamBufferBytes` (64 MiB). */
export declare const DEFAULT_STREAM_BUFFER_BYTES: number;
/** Default `closeTimeoutMs` (2000). */
export declare const DEFAULT_CLOSE_TIMEOUT_MS: number;
/** Default `cancelTimeoutMs` (30000). */
export declare const DEFAULT_CANCEL_TIMEOUT_MS: number;
/** The server's bounds on a request's `traceparent` (256) and `tracestate` (512): longer ones it ignores. */
export declare const MAX_TRACEPARENT_CHARS: number;
export declare const MAX_TRACESTATE_CHARS: number;

export type RequestId = string | number;

/** Wire error codes of protocol version 1. */
export type WireErrorCode =
  | 'bad_json' | 'bad_request' | 'unknown_model' | 'duplicate_id' | 'invalid_input'
  | 'overloaded' | 'rate_limited' | 'deadline_exceeded' | 'cancelled' | 'unauthorized'
  | 'forbidden' | 'shutting_down' | 'internal';

/** A model version: its directory name (`"2"`) or the number (`2`, an integer >= 1). */
export type Version = string | number;

export interface ErrorFrame {
  type: 'error';
  id: RequestId | null;
  code: string;
  message: string;
  retry_after_ms?: number;
  [extra: string]: unknown;
}

export interface WsserveErrorOptions {
  code?: string | null;
  requestId?: RequestId | null;
  retryAfterMs?: number | null;
  cause?: unknown;
  frame?: ErrorFrame | null;
}

// ------------------------------------------------------------------ errors

/** Root of every error the client raises. */
export declare class WsserveError extends Error {
  /** The wire code this class stands for (null for client-side errors). */
  static readonly wireCode: WireErrorCode | null;
  /** @throws {TypeError} an unknown key in `opts`. */
  constructor(message: string, opts?: WsserveErrorOptions);
  /** The wire code (an unknown code from a newer server is kept as is); null for client-side errors. */
  readonly code: WireErrorCode | (string & {}) | null;
  /** The id of the request this answers, or null. */
  readonly requestId: RequestId | null;
  /** Milliseconds the server asked to wait before retrying, or null. */
  readonly retryAfterMs: number | null;
  /** The server's error frame, when the error came from the server. */
  readonly frame: ErrorFrame | null;
}
export declare class BadJsonError extends WsserveError {}
export declare class BadRequestError extends WsserveError {}
export declare class UnknownModelError extends WsserveError {}
export declare class DuplicateIdError extends WsserveError {}
export declare class InvalidInput extends WsserveError {}
export declare class OverloadedError extends WsserveError {}
export declare class RateLimitedError extends WsserveError {}
/** The server's deadline passed, or the client-side guard fired (then `frame` is null). */
export declare class DeadlineExceeded extends WsserveError {}
/** The request was cancelled: by the server's terminal frame, or locally before it was sent. */
export declare class RequestCancelled extends WsserveError {}
export declare class Unauthorized extends WsserveError {}
/** An admin call (load/unload/reload) without the server's admin key (or, without keys, not from loopback). */
export declare class Forbidden extends WsserveError {}
export declare class ShuttingDown extends WsserveError {}
export declare class InternalServerError extends WsserveError {}
/** The request is larger than the server's `max_message_bytes` (or its binary header than `max_binary_header_bytes`); it was not sent. */
export declare class RequestTooLarge extends WsserveError {}
/** A stream's unread items went over `maxStreamBufferBytes`; they were dropped and the request cancelled. */
export declare class StreamOverflow extends WsserveError {}
/** The server broke the protocol (the Python client's `ProtocolError`): one of the two below. */
export declare class ProtocolError extends WsserveError {}
/** The server's answer to the call is malformed (not JSON, a type that does not answer the call, or fields of
 *  the wrong type); other calls and the socket are unaffected. */
export declare class MalformedFrame extends ProtocolError {}
/** The server's `hello` is of another protocol version than {@link PROTOCOL_VERSION}; the connect is not retried. */
export declare class UnsupportedProtocol extends ProtocolError {}
/** The connection closed, missed the heartbeat, or could not be opened before the call finished. */
export declare class ConnectionLost extends WsserveError {}
/** The client was closed while the call was unfinished. */
export declare class ClientClosed extends ConnectionLost {}

/** Wire code → error class. */
export declare const ERROR_CLASSES: Readonly<Record<WireErrorCode, typeof WsserveError>>;
/** The error for a wire `error` frame (a plain `WsserveError` for an unknown code). */
export declare function errorFromFrame(frame: Partial<ErrorFrame>): WsserveError;

// ------------------------------------------------------------------ policies

export interface BackoffPolicy {
  /** Tries in total (1 = no retry). */
  maxAttempts?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** In [0, 1]. */
  jitter?: number;
}

export interface RetryPolicy extends BackoffPolicy {
  /** Wire codes that are retried. Default `['overloaded', 'rate_limited']`. */
  codes?: string[];
  /** A server's `retry_after_ms` is waited for up to this many ms; `null`: no bound. Default 60000. */
  maxRetryAfterMs?: number | null;
}

export declare const DEFAULT_RECONNECT: Readonly<Required<BackoffPolicy>>;
export declare const DEFAULT_RETRY: Readonly<Required<RetryPolicy>>;
/** `min(maxDelayMs, baseDelayMs * 2**attempt)` scaled by a factor in `[1 - jitter, 1]`. */
export declare function reconnectDelayMs(policy: Required<BackoffPolicy>, attempt: number, rand: number): number;
/** `max(backoff, min(retryAfterMs, maxRetryAfterMs))` stretched by a factor in `[1, 1 + jitter]`, but a wait the
 *  server asked for never past `maxRetryAfterMs`. */
export declare function retryDelayMs(
  policy: Required<BackoffPolicy> & { maxRetryAfterMs?: number | null }, attempt: number, retryAfterMs: number | null, rand: number,
): number;

// ------------------------------------------------------------------ frames and results

/** `hello.limits` as the client uses them: each of {@link LIMIT_NAMES} an integer in [1, 2**53], or null when the
 *  server did not announce it or sent something else (then the client does not check that limit); other limits as sent. */
export interface Limits {
  max_message_bytes: number | null;
  max_inflight: number | null;
  max_rows: number | null;
  max_tokens: number | null;
  max_binary_header_bytes: number | null;
  /** The largest `logprobs` a generate may ask for (20 for wsserve; absent from a server without logprobs). */
  max_logprobs?: number;
  /** The most `stopTokenIds` a generate may name (64 for wsserve; absent from a server without vLLM's stop controls,
   *  which ignores them). */
  max_stop_token_ids?: number;
  /** The most strings a generate's `guidedChoice` may hold (64 for wsserve; absent from a server without it). */
  max_guided_choices?: number;
  /** The most characters of each `guidedChoice` string (256 for wsserve). */
  max_guided_choice_chars?: number;
  /** The most characters of a generate's `guidedRegex` or `guidedJson` (16384 for wsserve). */
  max_guided_pattern_chars?: number;
  [extra: string]: unknown;
}

/** The `hello.limits` the client relies on. */
export declare const LIMIT_NAMES: readonly ['max_message_bytes', 'max_inflight', 'max_rows', 'max_tokens', 'max_binary_header_bytes'];
/** The largest `hello` limit trusted: 2**53. */
export declare const MAX_LIMIT: number;
/** The frame types of protocol version 1; a frame of another type for a pending call is ignored. */
export declare const FRAME_TYPES: readonly string[];
/** A copy of `hello` whose {@link LIMIT_NAMES} limits are integers in [1, 2**53] or null (not announced or not trusted). */
export declare function checkedHello(hello: Record<string, unknown>): Hello;
/** What is wrong with the fields the client reads in a reply frame, or null. */
export declare function frameProblem(frame: Record<string, unknown>): string | null;
/** What is wrong with a `token` frame of a generate that asked for `logprobs` (no `logprob`/`top_logprobs`,
 *  or ones of the wrong type), or null. */
export declare function logprobsProblem(frame: Record<string, unknown>): string | null;

export interface Hello {
  type: 'hello';
  server: string;
  version: string;
  protocol: number;
  limits: Limits;
  models: string[];
  /** The dtypes a binary tensor frame may carry (absent from a server that took only float32, float64, int32, int64, bool). */
  binary_dtypes?: TensorDtype[];
  [extra: string]: unknown;
}

export interface VersionStatus {
  version: string;
  state: 'loading' | 'ready' | 'unloading' | 'failed' | (string & {});
  /** Why it failed (only when `state` is `'failed'`). */
  reason?: string;
}

export interface ModelInfo {
  name: string;
  /** The default version (the highest ready one); null when no version is ready. */
  version: string | null;
  /** Every version the server knows of, with its state (servers with a model repository). */
  versions?: VersionStatus[];
  task: string;
  input_shape?: number[];
  output_shape?: number[];
  parameters?: number;
  metrics?: Record<string, unknown>;
  [extra: string]: unknown;
}

export interface PredictTiming {
  queue_ms: number;
  compute_ms: number;
  batch_size: number;
  [extra: string]: unknown;
}

/** How attributions were computed (`explain: true`). */
export interface Explanation {
  /** `linear-exact` (w * (x - baseline)) or `integrated-gradients`. */
  method: 'linear-exact' | 'integrated-gradients' | (string & {});
  /** `zeros`: the all-zeros input. */
  baseline: 'zeros' | (string & {});
  /** `argmax`: each row's largest output (the predicted class for a classifier). */
  target: 'argmax' | (string & {});
  /** Integration steps (0 for the exact method). */
  steps: number;
}

/** Outputs: `[n, ...]` rows, or `{name: rows}` for a model with several named outputs;
 *  with `binary: true` a {@link Tensor} (or `{name: Tensor}`). */
export type Outputs = number[][] | Record<string, unknown[]> | Tensor | Record<string, Tensor>;

/** Wire dtypes of binary tensor frames. */
export type TensorDtype = 'float32' | 'float64' | 'int32' | 'int64' | 'bool'
  | 'int8' | 'int16' | 'uint8' | 'uint16' | 'uint32' | 'uint64' | 'float16' | 'bfloat16';
/** The TypedArray of each wire dtype (`bool`: one byte per value, 0 or 1; `float16`, `bfloat16`: raw bits;
 *  an input `{data: Float32Array, dtype: 'bfloat16'}` is rounded to bfloat16 by {@link toTensor}). */
export interface TensorDataTypes {
  float32: Float32Array; float64: Float64Array; int32: Int32Array; int64: BigInt64Array; bool: Uint8Array;
  int8: Int8Array; int16: Int16Array; uint8: Uint8Array; uint16: Uint16Array; uint32: Uint32Array;
  uint64: BigUint64Array; float16: Uint16Array; bfloat16: Uint16Array;
}
/** Raw values in C order with their shape (batch dimension first). */
export interface Tensor<D extends TensorDtype = TensorDtype> {
  data: TensorDataTypes[D];
  shape: number[];
  dtype: D;
}
/** A binary input: a tensor (`dtype` inferred from `data`; `shape` defaults to one row), or a bare TypedArray (one row). */
export type TensorInput =
  | Float32Array | Float64Array | Int32Array | BigInt64Array | Int8Array | Int16Array | Uint32Array | BigUint64Array
  | { data: TensorDataTypes[TensorDtype]; shape?: number[]; dtype?: TensorDtype }
  | { data: Float32Array; shape?: number[]; dtype: 'bfloat16' };
export declare const TENSOR_DTYPES: Readonly<{
  float32: Float32ArrayConstructor; float64: Float64ArrayConstructor; int32: Int32ArrayConstructor;
  int64: BigInt64ArrayConstructor; bool: Uint8ArrayConstructor; int8: Int8ArrayConstructor;
  int16: Int16ArrayConstructor; uint8: Uint8ArrayConstructor; uint16: Uint16ArrayConstructor;
  uint32: Uint32ArrayConstructor; uint64: BigUint64ArrayConstructor; float16: Uint16ArrayConstructor;
  bfloat16: Uint16ArrayConstructor;
}>;
/** The 16-bit patterns of the bfloat16 values nearest float32 ones: ties to even, as ml_dtypes rounds
 *  (beyond ±3.3895e38 by half a step: an infinity; NaN: the quiet NaN of its sign). */
export declare function float32ToBfloat16(values: Float32Array): Uint16Array;
/** Checks and normalises a binary input; throws `TypeError` when sizes or types do not match. */
export declare function toTensor(value: TensorInput, what?: string): Tensor;
/** One binary tensor frame (request side): header `fields` plus one tensor or `{name: tensor}`. */
export declare function encodeTensorFrame(
  fields: Record<string, unknown>, tensors: Tensor | Record<string, Tensor>, key?: 'inputs' | 'outputs'): Uint8Array;
/** A binary `result`/`chunk` frame as an object whose `outputs` is a Tensor (or `{name: Tensor}`). */
export declare function decodeTensorFrame(buffer: ArrayBuffer | ArrayBufferView): Record<string, unknown> & { outputs: Tensor | Record<string, Tensor> };
/** A binary answer to an `explain: true` predict names its attributions `<output>` + this. */
export declare const ATTRIBUTIONS_SUFFIX: '_attributions';
/** `[outputs, attributions]` of a decoded binary answer to an `explain: true` predict (named tensors
 *  `{<output>, <output>_attributions}`); anything else comes back as it is, with `undefined`. */
export declare function splitAttributions(
  outputs: Tensor | Record<string, Tensor>): [Tensor | Record<string, Tensor>, Tensor<'float64'> | undefined];

export interface PredictResult {
  id: RequestId;
  model: string;
  /** The model version that computed it. */
  version: string;
  /** Shape `[n, k]`: row i answers input row i (by name for a model with named outputs). */
  outputs: Outputs;
  /** With `explain: true`: shape `[n, d]`, row i's per-feature attributions (they sum to f(x) - f(baseline));
   *  with `binary: true` a float64 {@link Tensor} of that shape. */
  attributions?: number[][] | Tensor<'float64'>;
  explanation?: Explanation;
  timing: PredictTiming;
  [extra: string]: unknown;
}

export interface Chunk {
  seq: number;
  offset: number;
  outputs: Outputs;
  /** With `explain: true`: the chunk's rows' attributions (with `binary: true` a float64 {@link Tensor}). */
  attributions?: number[][] | Tensor<'float64'>;
}

export interface StreamDone {
  reason: 'complete' | (string & {});
  rows: number;
  timing: PredictTiming;
  /** The model version that computed it. */
  version?: string;
  /** With `explain: true`: how the chunks' attributions were computed. */
  explanation?: Explanation;
  [extra: string]: unknown;
}

/** One message of a conversation (OpenAI's chat `messages`; text only, no tool calling). */
export interface ChatMessage {
  role: 'system' | 'developer' | 'user' | 'assistant';
  /** A string, or text parts (joined); `null` only for `assistant`. */
  content: string | Array<{ type: 'text'; text: string }> | null;
  name?: string;
}

/** One of the likeliest tokens of a generation step (`top_logprobs` of a token frame). */
export interface TopLogprob {
  /** Its token id (of the model's vocabulary). */
  id: number;
  text: string;
  /** The natural log of its probability; null when the model's logits were not finite. */
  logprob: number | null;
}

/** A generated token's log-probability, from a token frame of a generate with `logprobs`. */
export interface TokenLogprob {
  /** The token's text as streamed. */
  text: string;
  /** The natural log of the probability the model gave it (<= 0; before penalties, bias, temperature);
   *  null when the model's logits were not finite. */
  logprob: number | null;
  /** The `logprobs` likeliest tokens of the step, likeliest first (ties by lowest id; empty for 0);
   *  the chosen token may or may not be among them. */
  top_logprobs: TopLogprob[];
}

export interface GenerationDone {
  reason: 'length' | 'stop' | 'cancelled' | (string & {});
  tokens: number;
  /** null when cancelled before the request was sent. */
  timing: { ttft_ms?: number; total_ms?: number; queue_ms?: number; [k: string]: unknown } | null;
  /** The whole generated text (stop strings excluded). */
  text: string;
  /** The model version that generated it (absent when cancelled before the request was sent). */
  version?: string;
  /** The token ids the model was given for the prompt (servers that say; absent when cancelled
   * before the request was sent). */
  prompt_tokens?: number;
  /** The tokens generated as vLLM counts them (a stop token whose text is not sent included: OpenAI's
   *  `usage.completion_tokens`; servers that say). */
  completion_tokens?: number;
  /** With the `logprobs` option: one record per token received, in order (absent otherwise). */
  logprobs?: TokenLogprob[];
  [extra: string]: unknown;
}

/** The answer to `load`, `unload` and `reload`: the model's versions once the operation was done. */
export interface ModelStatus {
  model: string;
  versions: VersionStatus[];
  [extra: string]: unknown;
}

// ------------------------------------------------------------------ options
//
// Every options object (and the `reconnect` / `retry` policies) is checked at run
// time too: an unknown key, or a value that is not an object, throws a TypeError
// naming the key and listing the known ones (async calls reject with it), before
// anything is sent. The interfaces below are exactly the keys accepted.

export interface ClientOptions {
  /** API key, sent in-band as `{"type":"auth","token":...}` after `hello` (works in browsers). */
  token?: string;
  /** Application-level ping interval in ms; `null` disables the heartbeat. Default 15000. */
  heartbeatMs?: number | null;
  /** No frame at all within this many ms after a heartbeat ping → connection dead. Default 10000. */
  heartbeatTimeoutMs?: number;
  /** One connection attempt, handshake to `hello` (and auth). Default 10000. */
  connectTimeoutMs?: number;
  /** (Re)connect policy for calls; `true`: the defaults; `false`: one attempt, and a lost connection stays lost. */
  reconnect?: boolean | BackoffPolicy;
  /** Opt-in retry of `overloaded` / `rate_limited` refusals, honouring `retry_after_ms`. */
  retry?: boolean | RetryPolicy;
  /** Client-side cap on outstanding predict+generate (default: the server's `max_inflight`). */
  maxInflight?: number | null;
  /** A stream's unread frames may hold this many bytes; past it the stream fails with `StreamOverflow`
   *  and is cancelled. `null`: no bound. Default 64 MiB. */
  maxStreamBufferBytes?: number | null;
  /** `close()` waits this long for the close handshake, then drops the socket. Default 2000. */
  closeTimeoutMs?: number;
  /** After a `cancel`, the server has this long to end the request; then the call fails with
   *  `ProtocolError` and frees its inflight slot. `null`: wait forever. Default 30000. */
  cancelTimeoutMs?: number | null;
  /** WebSocket constructor to use instead of the global one (or the `ws` package). */
  WebSocket?: unknown;
  /** Subprotocols to offer. Default `['wsserve.v1']`. */
  protocols?: string[];
}

export interface CallOptions {
  signal?: AbortSignal;
}

export interface UnaryOptions extends CallOptions {
  /** Bounds the wait locally (`DeadlineExceeded`). */
  timeoutMs?: number;
}

export interface PredictOptions extends CallOptions {
  /** Pin a model version (default: the server's default version). */
  version?: Version;
  /** Server-side deadline from receipt (`DeadlineExceeded`); the client gives up 1 s later. */
  timeoutMs?: number;
  /** 0 normal, 1 high; a model whose config.pbtxt sets `dynamic_batching { priority_levels: N }` takes
   *  0..N (level 1 first, 0 its `default_priority_level`). Above the model's levels: `BadRequestError`. */
  priority?: number;
  /** Also return per-feature attributions (models that can be explained: `linear`, `mlp`, ...). */
  explain?: boolean;
  /** Send `inputs` as a binary tensor frame ({@link TensorInput}, or `{name: TensorInput}`) and get
   *  `outputs` back as {@link Tensor}s (no JSON numbers either way; with `explain`, `attributions` too). */
  binary?: boolean;
  /** W3C Trace Context (at most MAX_TRACEPARENT_CHARS characters): the server's span for the request (with
   *  `--otlp-traces-endpoint`) is a child of this span. A bad value throws before sending. */
  traceparent?: string;
  /** The W3C `tracestate` that goes with `traceparent` (at most MAX_TRACESTATE_CHARS characters; only with one). */
  tracestate?: string;
}

export interface PredictStreamOptions extends PredictOptions {
  chunkRows?: number;
}

/** Options of `Client.predictResponses` (a decoupled model's predict). */
export interface PredictResponsesOptions extends CallOptions {
  /** Pin a model version (default: the server's default version). */
  version?: Version;
  timeoutMs?: number;
  /** As {@link PredictOptions.priority}. */
  priority?: number;
  /** As {@link PredictOptions.binary}: each response's `outputs` are {@link Tensor}s (`{name: Tensor}` for
   *  several outputs). */
  binary?: boolean;
  traceparent?: string;
  tracestate?: string;
}

/** One response of a decoupled model (a `response` frame). */
export interface ModelResponse {
  seq: number;
  /** Rows, or `{name: rows}` for a model with several outputs; with the `binary` option a {@link Tensor}
   *  (`{name: Tensor}`). */
  outputs: any;
  /** The model sent it with its FINAL flag. */
  final: boolean;
}

/** The `done` ending a decoupled model's predict. */
export interface ResponsesDone {
  reason: string;
  responses: number;
  timing: Record<string, number>;
  version?: string;
}

export interface GenerateOptions extends CallOptions {
  /** Pin a model version (default: the server's default version). */
  version?: Version;
  maxTokens?: number;
  temperature?: number;
  topK?: number;
  /** Nucleus sampling, in (0, 1]: sample among the fewest likeliest tokens holding this much probability (1: off). */
  topP?: number;
  /** vLLM's min-p, in [0, 1]: sample among the tokens at least this fraction as likely as the likeliest (0: off). */
  minP?: number;
  /** OpenAI's penalties, in [-2, 2]: subtracted from a generated token's logit once (presence) and per occurrence (frequency). */
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** vLLM's repetition penalty, in (0, 2] (1: off): the logit of each token of the prompt (the part the model reads)
   *  or generated so far is divided by it when positive, multiplied by it when negative, before the other penalties;
   *  greedy included. Out of range: a `bad_request` error. */
  repetitionPenalty?: number;
  /** OpenAI's logit bias: token id (of the model's vocabulary) -> bias in [-100, 100], added to its logit. */
  logitBias?: Record<string | number, number>;
  seed?: number;
  stop?: string | string[];
  /** vLLM's stop token ids (sent as `stop_token_ids`; at most the server's `max_stop_token_ids`, 64): the generation
   *  ends with reason `stop` when it generates one of them, and that token's text is not sent. */
  stopTokenIds?: number[];
  /** vLLM's `min_tokens`, 0 to `maxTokens`: nothing stops the generation within its first `minTokens` tokens (the
   *  stop tokens are not generated then; a stop string counts only if it ends later). */
  minTokens?: number;
  /** vLLM's `include_stop_str_in_output`: the stop string, or the stop token's text, is sent, and nothing after it. */
  includeStopStrInOutput?: boolean;
  /** vLLM's guided choice (sent as `guided_choice`): 1 to the server's `max_guided_choices` (64) non-empty strings of
   *  at most `max_guided_choice_chars` (256) characters; the generated text is exactly one of them, and the generation
   *  ends with reason `stop` at a choice that no longer one extends (at one a longer one extends, the model decides;
   *  `length` if `maxTokens` comes first). Not with `minTokens`. */
  guidedChoice?: string[];
  /** Structured outputs (vLLM's `guided_regex`; the server needs its `structured` extra): a regular expression (Rust
   *  `regex` syntax, at most `max_guided_pattern_chars` characters) the generated text matches; ends with reason `stop`
   *  once it fully matches and the model ends it there. One guided form per request. */
  guidedRegex?: string;
  /** Structured outputs (vLLM's `guided_json`): a JSON Schema (an object, or a string holding one); the generated text
   *  is JSON following it. One guided form per request. */
  guidedJson?: Record<string, unknown> | string;
  timeoutMs?: number;
  priority?: 0 | 1;
  /** Each token's log-probability and this many likeliest tokens of its step: an integer >= 0, at most the
   *  server's `max_logprobs` (20); `true` is refused (it is `0` here). See {@link Generation.logprobs}. */
  logprobs?: number;
  /** W3C Trace Context, as for {@link PredictOptions.traceparent}. */
  traceparent?: string;
  /** As for {@link PredictOptions.tracestate}. */
  tracestate?: string;
}

export interface AdminOptions extends CallOptions {
  /** One version of the model (default: the whole model). */
  version?: Version;
  /** Bounds the wait locally (`DeadlineExceeded`); the operation itself goes on. */
  timeoutMs?: number;
}
/** `load()`'s options: `AdminOptions` and a Triton JSON model configuration served instead of the config file. */
export interface LoadOptions extends AdminOptions {
  /** An object, or JSON text (as tritonclient's `load_model(config=...)` takes it). */
  config?: Record<string, unknown> | string;
}

export type Rows = ArrayLike<ArrayLike<number>>;
/** Rows, or `{name: rows}` for a model with several named inputs; with `binary: true` a
 *  {@link TensorInput} or `{name: TensorInput}`. */
export type Inputs = Rows | Record<string, Rows> | TensorInput | Record<string, TensorInput>;

// ------------------------------------------------------------------ streams

/** An async-iterable response; the request is sent when it is created. Iterate it once. */
export declare class ResponseStream<T, D> implements AsyncIterableIterator<T> {
  /** The current attempt's request id, once sent. */
  readonly id: RequestId | null;
  /** The final info once finished without error. */
  readonly done: D | null;
  /** The error that ended the stream, if any. */
  readonly error: WsserveError | null;
  /** Items received so far. */
  readonly received: number;
  /** Size of the frames of the items received but not read yet (bounded by `maxStreamBufferBytes`). */
  readonly bufferedBytes: number;
  readonly finished: boolean;
  readonly cancelRequested: boolean;
  /** Send `cancel`; iteration continues to the server's terminal frame. Idempotent. */
  cancel(): void;
  /** Resolves with `done`, or rejects with the error, without reading the items. */
  wait(): Promise<D>;
  next(): Promise<IteratorResult<T>>;
  /** Called when a `for await` loop is left early: sends `cancel`, drops the rest. */
  return(): Promise<IteratorResult<T>>;
  [Symbol.asyncIterator](): this;
}

export declare class PredictStream extends ResponseStream<Chunk, StreamDone> {}

export declare class PredictResponses extends ResponseStream<ModelResponse, ResponsesDone> {}

export declare class Generation extends ResponseStream<string, GenerationDone> {
  /** The generated text so far. */
  readonly text: string;
  /** With the `logprobs` option: a record per token received so far (`logprobs[i]` is the i-th text
   *  yielded's; like `text`, tokens received but not yet read included); null without it. */
  readonly logprobs: readonly TokenLogprob[] | null;
}

// ------------------------------------------------------------------ client

export interface RequestEventDetail {
  type: 'predict' | 'generate' | 'models' | 'ping' | 'load' | 'unload' | 'reload';
  model: string | null;
  /** From send to the terminal frame. */
  ms: number;
  ok: boolean;
  /** `'ok'`, `'cancelled'`, a wire error code, or an error class name. */
  code: string;
  rows?: number;
  tokens?: number;
}

export interface ClientStats {
  inflight: number;
  waiting: number;
  capacity: number;
  connects: number;
  requestsSent: number;
  cancelsSent: number;
  serverCancelled: number;
  connected: boolean;
}

export interface ClientEventMap {
  open: CustomEvent<Hello>;
  close: CustomEvent<{ code: number | null; reason: string; error: WsserveError }>;
  draining: CustomEvent<{ type: 'draining'; deadline_ms: number; [k: string]: unknown }>;
  reconnecting: CustomEvent<{ attempt: number; delayMs: number; error: unknown }>;
  request: CustomEvent<RequestEventDetail>;
  servererror: CustomEvent<ErrorFrame>;
}

export declare class Client extends EventTarget {
  /**
   * @throws {TypeError} a bad URL, or an unknown key in `opts`, `opts.reconnect` or `opts.retry`.
   * @throws {RangeError} a policy or `maxInflight` out of range.
   */
  constructor(url: string | URL, opts?: ClientOptions);
  readonly url: string;
  /** The current (or last) connection's `hello`, or null before the first. */
  readonly hello: Hello | null;
  readonly state: 'open' | 'connecting' | 'idle' | 'closed';
  readonly closed: boolean;
  readonly draining: boolean;
  stats(): ClientStats;

  connect(opts?: CallOptions): Promise<Hello>;
  close(): Promise<void>;

  predict(model: string, inputs: Inputs, opts?: PredictOptions): Promise<PredictResult>;
  predictStream(model: string, inputs: Inputs, opts?: PredictStreamOptions): PredictStream;
  /** A decoupled model's predict: each response as the model sends it (any number). */
  predictResponses(model: string, inputs: Inputs, opts?: PredictResponsesOptions): PredictResponses;
  /** `prompt`: the text to continue, or chat messages (sent as `messages`: the model's chat template makes the prompt). */
  generate(model: string, prompt: string | ChatMessage[], opts?: GenerateOptions): Generation;
  complete(model: string, prompt: string | ChatMessage[], opts?: GenerateOptions): Promise<GenerationDone>;
  models(opts?: UnaryOptions): Promise<ModelInfo[]>;
  /** Round-trip time in milliseconds. */
  ping(opts?: UnaryOptions): Promise<number>;
  /**
   * Admin calls on the server's model repository: they need the admin key as `token`
   * (or loopback to a server without keys), else reject with `Forbidden`.
   */
  load(model: string, opts?: LoadOptions): Promise<ModelStatus>;
  unload(model: string, opts?: AdminOptions): Promise<ModelStatus>;
  reload(model: string, opts?: AdminOptions): Promise<ModelStatus>;

  addEventListener<K extends keyof ClientEventMap>(
    type: K,
    listener: (ev: ClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof ClientEventMap>(
    type: K,
    listener: (ev: ClientEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

export default Client;
