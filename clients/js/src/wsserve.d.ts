// Type declarations for wsserve-client (src/wsserve.js).

export declare const PROTOCOL_VERSION: 1;
export declare const SUBPROTOCOL: 'wsserve.v1';

export type RequestId = string | number;

/** Wire error codes of protocol version 1, plus the client-side `connection_lost`. */
export type ErrorCode =
  | 'bad_json' | 'bad_request' | 'unknown_model' | 'duplicate_id' | 'invalid_input'
  | 'overloaded' | 'rate_limited' | 'deadline_exceeded' | 'cancelled' | 'unauthorized'
  | 'shutting_down' | 'internal' | 'connection_lost';

export interface ErrorFrame {
  type: 'error';
  id: RequestId | null;
  code: string;
  message: string;
  retry_after_ms?: number;
  [extra: string]: unknown;
}

export interface WsserveErrorOptions {
  code?: string;
  requestId?: RequestId | null;
  retryAfterMs?: number | null;
  cause?: unknown;
  frame?: object;
}

/** Root of every error the client raises. */
export declare class WsserveError extends Error {
  static readonly code: ErrorCode;
  constructor(message: string, opts?: WsserveErrorOptions);
  /** The wire code (an unknown code from a newer server is kept as is). */
  readonly code: ErrorCode | (string & {});
  readonly requestId: RequestId | null;
  /** Server's hint for `overloaded` / `rate_limited`. */
  readonly retryAfterMs: number | null;
  /** The error frame, when the error came from the server. */
  readonly frame: ErrorFrame | null;
}
export declare class BadJson extends WsserveError {}
export declare class BadRequest extends WsserveError {}
export declare class UnknownModel extends WsserveError {}
export declare class DuplicateId extends WsserveError {}
export declare class InvalidInput extends WsserveError {}
export declare class Overloaded extends WsserveError {}
export declare class RateLimited extends WsserveError {}
export declare class DeadlineExceeded extends WsserveError {}
export declare class Cancelled extends WsserveError {}
export declare class Unauthorized extends WsserveError {}
export declare class ShuttingDown extends WsserveError {}
export declare class Internal extends WsserveError {}
/** The connection died, or could not be made, before the call finished. */
export declare class ConnectionLost extends WsserveError {}

export declare const ERRORS_BY_CODE: Readonly<Record<ErrorCode, typeof WsserveError>>;
export declare function errorFromFrame(frame: Partial<ErrorFrame>): WsserveError;
export declare function backoffMs(
  attempt: number,
  policy?: { initialDelayMs?: number; maxDelayMs?: number },
  random?: () => number,
): number;

export interface Limits {
  max_message_bytes: number;
  max_inflight: number;
  max_rows: number;
  max_tokens: number;
  [extra: string]: number;
}

export interface Hello {
  type: 'hello';
  server: string;
  version: string;
  protocol: number;
  limits: Limits;
  models: string[];
  [extra: string]: unknown;
}

export interface ModelInfo {
  name: string;
  version: string;
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

export interface PredictResult {
  id: RequestId;
  model: string;
  version: string;
  outputs: number[][];
  timing: PredictTiming;
  [extra: string]: unknown;
}

export interface Chunk {
  seq: number;
  offset: number;
  outputs: number[][];
}

export interface DoneInfo {
  reason: 'complete' | 'length' | 'stop' | 'cancelled' | (string & {});
  /** generate: tokens produced. */
  tokens?: number;
  /** streaming predict: rows answered. */
  rows?: number;
  /** `null` when the call was cancelled before it reached the server. */
  timing?: { ttft_ms?: number; total_ms?: number; [k: string]: unknown } | null;
  [extra: string]: unknown;
}

export interface BackoffPolicy {
  initialDelayMs?: number;
  maxDelayMs?: number;
  maxAttempts?: number;
}

export interface ClientOptions {
  /** API key; sent as the `token` query parameter (and a Bearer header under `ws`). */
  token?: string;
  /** Application-level ping interval in ms; `null` disables the heartbeat. Default 15000. */
  heartbeatMs?: number | null;
  /** No frame at all within this many ms after a heartbeat ping → connection dead. Default 10000. */
  heartbeatTimeoutMs?: number;
  /** Per attempt, until the server's `hello`. Default 10000. */
  connectTimeoutMs?: number;
  /** Reconnect policy for new calls after a loss; `false` disables. Default 100 ms → 5 s, 6 attempts. */
  reconnect?: false | BackoffPolicy;
  /** Opt-in retry of `overloaded` / `rate_limited`, honouring `retry_after_ms`. */
  retry?: boolean | BackoffPolicy;
  /** WebSocket constructor to use instead of the global one (or `ws`). */
  WebSocket?: unknown;
  /** Subprotocols to offer. Default `['wsserve.v1']`. */
  protocols?: string[];
}

export interface CallOptions {
  signal?: AbortSignal;
}

export interface PredictOptions extends CallOptions {
  version?: string;
  /** Server-side deadline from receipt; past it the call fails with `DeadlineExceeded`. */
  timeoutMs?: number;
  /** 0 normal, 1 high. */
  priority?: 0 | 1;
}

export interface PredictStreamOptions extends PredictOptions {
  chunkRows?: number;
}

export interface GenerateOptions extends CallOptions {
  maxTokens?: number;
  temperature?: number;
  topK?: number;
  seed?: number;
  stop?: string[];
  timeoutMs?: number;
  priority?: 0 | 1;
}

export type Rows = ReadonlyArray<ReadonlyArray<number> | ArrayLike<number>>;

/** An async-iterable response; the request is sent when it is created. */
export declare class ResponseStream<T> implements AsyncIterableIterator<T> {
  readonly kind: 'predict' | 'generate';
  /** The request id once sent. */
  readonly id: RequestId | null;
  /** The final `done` info, once finished without error. */
  readonly done: DoneInfo | null;
  readonly error: WsserveError | null;
  /** Concatenated token text so far (generate). */
  readonly text: string;
  readonly finished: boolean;
  /** Settles when the stream ends: the done info, or the error. */
  readonly result: Promise<DoneInfo>;
  /** Send `cancel` for this request (idempotent). */
  cancel(): void;
  next(): Promise<IteratorResult<T>>;
  /** Called when a `for await` loop is left early: sends `cancel`. */
  return(): Promise<IteratorResult<T>>;
  [Symbol.asyncIterator](): this;
}

export interface RequestEventDetail {
  type: 'predict' | 'generate' | 'models' | 'ping';
  model: string | null;
  ms: number;
  ok: boolean;
  code: string;
  rows?: number;
  tokens?: number;
}

export interface ClientEventMap {
  open: CustomEvent<Hello>;
  close: CustomEvent<{ code: number | null; reason: string; error: WsserveError }>;
  draining: CustomEvent<{ type: 'draining'; deadline_ms: number }>;
  reconnecting: CustomEvent<{ attempt: number; delayMs: number; error: unknown }>;
  request: CustomEvent<RequestEventDetail>;
  servererror: CustomEvent<ErrorFrame>;
}

export declare class Client extends EventTarget {
  constructor(url: string | URL, opts?: ClientOptions);
  readonly url: string;
  /** The latest `hello`, or null before the first connection. */
  readonly hello: Hello | null;
  readonly state: 'open' | 'connecting' | 'idle' | 'closed';
  /** Unfinished predict/generate calls. */
  readonly inflight: number;

  connect(opts?: CallOptions): Promise<Hello>;
  close(): Promise<void>;

  predict(model: string, inputs: Rows, opts?: PredictOptions): Promise<PredictResult>;
  predictStream(model: string, inputs: Rows, opts?: PredictStreamOptions): ResponseStream<Chunk>;
  generate(model: string, prompt: string, opts?: GenerateOptions): ResponseStream<string>;
  models(opts?: CallOptions): Promise<ModelInfo[]>;
  /** Round-trip time in ms. */
  ping(opts?: CallOptions): Promise<number>;

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
