import type { IncomingHttpHeaders } from 'node:http';
import { Transform, pipeline, type Readable } from 'node:stream';
import { Agent, type Dispatcher } from 'undici';
import { digestOf, isDigest, parseDigest, tryParseDigest } from '../oci/digest.js';
import { MANIFEST_ACCEPT, mediaTypeOf } from '../oci/media-types.js';
import { DOCKER_HUB, isValidName, isValidTag, normaliseRepository } from '../oci/reference.js';
import { Authenticator, type TokenTransport } from './auth.js';
import { credentialSource, type RegistryCredentialsConfig } from './credentials.js';
import { OriginError, errorForStatus, redact } from './errors.js';
import { abortReason, parseRetryAfter, retryDelayMs, sleep } from './retry.js';

export type { RegistryCredentialsConfig } from './credentials.js';

export interface OriginLogger {
  debug(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

export interface OriginOptions {
  /** Registry host as clients name it: "docker.io", "127.0.0.1:5000" (used for dockerConfig lookup). */
  host: string;
  /** Base URL without trailing slash: "https://registry-1.docker.io", "http://127.0.0.1:5000". */
  url: string;
  credentials?: RegistryCredentialsConfig;
  /** Connect timeout and response-headers timeout, each (default 30000). */
  timeoutMs?: number;
  /** Idle time allowed between body chunks (default 60000). */
  bodyTimeoutMs?: number;
  /** Extra attempts on 429/5xx/connection errors (default 3). */
  retries?: number;
  /** Backoff base (default 200). */
  retryBaseMs?: number;
  /** How often credential files are stat'ed at most (default 1000). */
  credentialsCheckMs?: number;
  logger?: OriginLogger;
}

export interface ManifestHead {
  digest?: string;
  mediaType?: string;
  size?: number;
}

export interface ManifestResponse {
  bytes: Buffer;
  mediaType?: string;
  /** The Docker-Content-Digest header, if the origin sent a valid one. */
  digest?: string;
}

export interface BlobResponse {
  /** Total size of the blob; -1 when the origin told neither Content-Length nor Content-Range total. */
  size: number;
  /** Where `body` starts within the blob: always the requested offset. */
  offset: number;
  /**
   * The blob's bytes from `offset`, streamed with backpressure. The caller must consume or
   * destroy it (destroying early makes it emit an abort 'error': use pipeline or listen).
   * Read errors (reset, body idle timeout) surface here and are not retried.
   */
  body: Readable;
}

/** Registries cap manifests at 4 MiB; anything bigger is not a manifest we will hold in memory. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
export const MAX_REDIRECTS = 5;
const MAX_ERROR_BODY_BYTES = 64 * 1024;
const MAX_TOKEN_BODY_BYTES = 1024 * 1024;
const REDIRECT_STATUSES: ReadonlySet<number> = new Set([301, 302, 303, 307, 308]);
/** Media types some registries put on manifests that say nothing about which manifest it is. */
const GENERIC_TYPES: ReadonlySet<string> = new Set(['application/json', 'text/plain', 'application/octet-stream']);
const USER_AGENT = 'shoal/0.1';
const CLOSE_GRACE_MS = 2000;

const noopLogger: OriginLogger = { debug: () => {}, warn: () => {} };

interface Exchange {
  method: 'GET' | 'HEAD';
  /** The repository the request is for (token scope). */
  repo: string;
  path: string;
  headers: Record<string, string>;
  signal: AbortSignal | undefined;
  /** What to call the request in errors and logs. */
  what: string;
}

type Response = Dispatcher.ResponseData;

/**
 * A client for one origin registry: pull-side distribution API with Bearer/Basic auth,
 * manual redirects that never leak Authorization off the registry's origin, retries with
 * backoff, timeouts, and streamed blob bodies.
 */
export class OriginClient {
  readonly host: string;
  private readonly baseUrl: string;
  private readonly origin: string;
  private readonly agent: Agent;
  private readonly auth: Authenticator;
  private readonly retries: number;
  private readonly retryBaseMs: number;
  private readonly logger: OriginLogger;
  private closing: Promise<void> | undefined;

  constructor(opts: OriginOptions) {
    const base = new URL(opts.url);
    if (base.protocol !== 'http:' && base.protocol !== 'https:') {
      throw new Error(`registry ${opts.host}: url must be http or https, got ${opts.url}`);
    }
    this.host = opts.host;
    this.baseUrl = opts.url.replace(/\/+$/, '');
    this.origin = base.origin;
    this.retries = Math.max(0, opts.retries ?? 3);
    this.retryBaseMs = Math.max(0, opts.retryBaseMs ?? 200);
    this.logger = opts.logger ?? noopLogger;
    const timeoutMs = opts.timeoutMs ?? 30_000;
    this.agent = new Agent({
      connectTimeout: timeoutMs,
      headersTimeout: timeoutMs,
      bodyTimeout: opts.bodyTimeoutMs ?? 60_000,
      keepAliveTimeout: 30_000,
    });
    const credentials = credentialSource(opts.credentials, opts.host, {
      logger: this.logger,
      ...(opts.credentialsCheckMs !== undefined ? { checkIntervalMs: opts.credentialsCheckMs } : {}),
    });
    this.auth = new Authenticator({ host: opts.host, credentials, transport: this.tokenTransport, logger: this.logger });
  }

  /** Resolves a manifest without downloading it (HEADs do not count against Docker Hub's pull limit). */
  async headManifest(repo: string, ref: string, signal?: AbortSignal): Promise<ManifestHead> {
    const name = this.repository(repo);
    checkReference(ref);
    const ex = this.exchange('HEAD', name, `/v2/${name}/manifests/${ref}`, { accept: MANIFEST_ACCEPT }, signal, `HEAD manifest ${refName(name, ref)}`);
    return this.send(ex, async (res) => {
      await discard(res);
      const head: ManifestHead = {};
      const digest = this.digestHeader(res.headers, ex.what);
      if (digest) head.digest = digest;
      const mediaType = contentType(res.headers);
      if (mediaType) head.mediaType = mediaType;
      const size = contentLength(res.headers);
      if (size !== undefined) head.size = size;
      return head;
    });
  }

  /** The manifest's exact bytes (never re-serialised). Bigger than 4 MiB is a 'protocol' error. */
  async getManifest(repo: string, ref: string, signal?: AbortSignal): Promise<ManifestResponse> {
    const name = this.repository(repo);
    checkReference(ref);
    const ex = this.exchange('GET', name, `/v2/${name}/manifests/${ref}`, { accept: MANIFEST_ACCEPT }, signal, `GET manifest ${refName(name, ref)}`);
    return this.send(ex, async (res) => {
      const declared = contentLength(res.headers);
      if (declared !== undefined && declared > MAX_MANIFEST_BYTES) {
        drop(res.body);
        throw new OriginError('protocol', `${ex.what}: manifest of ${declared} bytes exceeds the ${MAX_MANIFEST_BYTES}-byte limit`);
      }
      const bytes = await readLimited(res.body, MAX_MANIFEST_BYTES);
      if (!bytes) throw new OriginError('protocol', `${ex.what}: manifest exceeds the ${MAX_MANIFEST_BYTES}-byte limit`);
      // Cheap here and catches a confused origin early; callers still verify against what they trust.
      const wanted = tryParseDigest(ref);
      if (wanted) {
        const actual = digestOf(bytes, wanted.algorithm).value;
        if (actual !== wanted.value) {
          throw new OriginError('protocol', `${ex.what}: origin sent a manifest whose digest is ${actual}`);
        }
      }
      const out: ManifestResponse = { bytes };
      const declaredType = contentType(res.headers);
      const mediaType = declaredType && !GENERIC_TYPES.has(declaredType) ? declaredType : mediaTypeOf(bytes);
      if (mediaType) out.mediaType = mediaType;
      const digest = this.digestHeader(res.headers, ex.what);
      if (digest) out.digest = digest;
      return out;
    });
  }

  async headBlob(repo: string, digest: string, signal?: AbortSignal): Promise<{ size: number }> {
    const name = this.repository(repo);
    const d = checkDigest(digest);
    const ex = this.exchange('HEAD', name, `/v2/${name}/blobs/${d}`, {}, signal, `HEAD blob ${name}@${d}`);
    return this.send(ex, async (res) => {
      await discard(res);
      const size = contentLength(res.headers);
      if (size === undefined) throw new OriginError('protocol', `${ex.what}: origin sent no Content-Length`);
      return { size };
    });
  }

  /**
   * Streams a blob from `offset`. A Range request is sent for offset > 0; an origin that ignores
   * it (200) has the first `offset` bytes skipped here, so `body` always starts at `offset`.
   * Nothing is retried once the body is handed over: the caller resumes with a new offset.
   */
  async getBlob(
    repo: string,
    digest: string,
    opts: { offset?: number; length?: number; signal?: AbortSignal } = {},
  ): Promise<BlobResponse> {
    const name = this.repository(repo);
    const d = checkDigest(digest);
    const offset = opts.offset ?? 0;
    if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`invalid blob offset ${offset}`);
    if (opts.length !== undefined && (!Number.isSafeInteger(opts.length) || opts.length <= 0)) {
      throw new RangeError(`invalid blob length ${opts.length}`);
    }
    // With a length, only that span is asked for (a missing piece); the body may still run on
    // if the origin ignores Range, so callers read just what they asked for.
    const headers: Record<string, string> =
      opts.length !== undefined
        ? { range: `bytes=${offset}-${offset + opts.length - 1}` }
        : offset > 0
          ? { range: `bytes=${offset}-` }
          : {};
    const ex = this.exchange('GET', name, `/v2/${name}/blobs/${d}`, headers, opts.signal, `GET blob ${name}@${d}`);
    return this.send(ex, async (res) => {
      const length = contentLength(res.headers);
      if (res.statusCode === 206) {
        const range = parseContentRange(res.headers['content-range']);
        if (!range || range.start !== offset) {
          drop(res.body);
          throw new OriginError('protocol', `${ex.what}: asked for bytes from ${offset}, origin sent Content-Range ${String(res.headers['content-range'])}`);
        }
        const size = range.total ?? (length !== undefined ? offset + length : -1);
        return { size, offset, body: res.body };
      }
      const size = length ?? -1;
      if (offset === 0) return { size, offset, body: res.body };
      if (size >= 0 && size < offset) {
        drop(res.body);
        throw new OriginError('protocol', `${ex.what}: blob is ${size} bytes, shorter than offset ${offset}`);
      }
      this.logger.debug({ host: this.host, what: ex.what, offset }, 'origin ignored Range; skipping bytes');
      return { size, offset, body: skipBytes(res.body, offset) };
    });
  }

  /** Closes pooled connections; waits briefly for requests in flight, then cuts them. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      let timer: NodeJS.Timeout | undefined;
      const grace = new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), CLOSE_GRACE_MS);
        timer.unref();
      });
      const result = await Promise.race([this.agent.close().then(() => 'closed' as const), grace]);
      clearTimeout(timer);
      if (result === 'timeout') await this.agent.destroy().catch(() => {});
    })();
    return this.closing;
  }

  // --- request machinery ---

  private exchange(
    method: 'GET' | 'HEAD',
    repo: string,
    path: string,
    headers: Record<string, string>,
    signal: AbortSignal | undefined,
    what: string,
  ): Exchange {
    return { method, repo, path, headers, signal, what: `${what} from ${this.host}` };
  }

  /** Runs an exchange with retries; `consume` turns a 2xx response into the result. */
  private async send<T>(ex: Exchange, consume: (res: Response) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await this.attempt(ex);
        try {
          return await consume(res);
        } catch (err) {
          drop(res.body);
          throw err instanceof OriginError ? err : this.bodyError(err, ex);
        }
      } catch (err) {
        if (ex.signal?.aborted) throw abortReason(ex.signal);
        if (!(err instanceof OriginError) || !err.retryable || attempt >= this.retries) {
          throw attempt > 0 && err instanceof OriginError && err.retryable ? gaveUp(err, attempt + 1) : err;
        }
        const delay = retryDelayMs(attempt, this.retryBaseMs, err.retryAfterMs);
        this.logger.debug({ host: this.host, what: ex.what, attempt: attempt + 1, delayMs: delay, err: err.message }, 'retrying origin request');
        await sleep(delay, ex.signal);
      }
    }
  }

  /** One attempt: preemptive auth, at most one challenge round, redirects. Non-2xx throws. */
  private async attempt(ex: Exchange): Promise<Response> {
    let authorization = await this.auth.preemptive(ex.repo, ex.signal);
    let { res, url } = await this.follow(ex, authorization);
    if (res.statusCode === 401 && url.origin === this.origin) {
      const challenge = res.headers['www-authenticate'];
      await discard(res);
      authorization = await this.auth.answer(challenge, ex.repo, authorization, ex.signal);
      ({ res, url } = await this.follow(ex, authorization));
      if (res.statusCode === 401 && url.origin === this.origin) {
        const again = res.headers['www-authenticate'];
        await discard(res);
        const err = this.auth.rejected(again);
        throw new OriginError('unauthorized', `${ex.what}: ${err.message}`, { status: 401 });
      }
    }
    if (res.statusCode >= 200 && res.statusCode < 300) return res;
    const body = ex.method === 'HEAD' ? undefined : await readLimited(res.body, MAX_ERROR_BODY_BYTES, true).catch(() => undefined);
    if (ex.method === 'HEAD') await discard(res);
    throw errorForStatus(res.statusCode, ex.what, body, parseRetryAfter(res.headers['retry-after']));
  }

  /** Sends the request, following redirects by hand so Authorization stays on the registry's origin. */
  private async follow(ex: Exchange, authorization: string | undefined): Promise<{ res: Response; url: URL }> {
    let url = new URL(this.baseUrl + ex.path);
    for (let hop = 0; ; hop++) {
      const headers: Record<string, string> = { 'user-agent': USER_AGENT, ...ex.headers };
      // Storage backends (S3, CDNs) get signed URLs; our registry token must never reach them.
      if (authorization && url.origin === this.origin) headers.authorization = authorization;
      const res = await this.dispatch(ex.method, url, headers, ex.signal);
      if (!REDIRECT_STATUSES.has(res.statusCode)) return { res, url };
      const location = firstHeader(res.headers.location);
      await discard(res);
      if (!location) throw new OriginError('protocol', `${ex.what}: redirect ${res.statusCode} without Location`, { status: res.statusCode });
      if (hop >= MAX_REDIRECTS) throw new OriginError('protocol', `${ex.what}: more than ${MAX_REDIRECTS} redirects`, { status: res.statusCode });
      let next: URL;
      try {
        next = new URL(location, url);
      } catch {
        throw new OriginError('protocol', `${ex.what}: redirect to an invalid Location`, { status: res.statusCode });
      }
      if (next.protocol !== 'http:' && next.protocol !== 'https:') {
        throw new OriginError('protocol', `${ex.what}: redirect to unsupported scheme ${next.protocol}`, { status: res.statusCode });
      }
      this.logger.debug({ host: this.host, what: ex.what, status: res.statusCode, to: redact(next) }, 'following redirect');
      // GET and HEAD stay what they are for every redirect status, 303 included.
      url = next;
    }
  }

  private async dispatch(
    method: 'GET' | 'HEAD' | 'POST',
    url: URL,
    headers: Record<string, string>,
    signal: AbortSignal | undefined,
    body?: string,
  ): Promise<Response> {
    try {
      return await this.agent.request({
        origin: url.origin,
        path: url.pathname + url.search,
        method,
        headers,
        ...(body !== undefined ? { body } : {}),
        ...(signal ? { signal } : {}),
      });
    } catch (err) {
      if (signal?.aborted) throw abortReason(signal);
      throw connectionError(err, `${method} ${redact(url)}`);
    }
  }

  /** Token requests: whole small bodies, no redirects, no caller signal (they are shared). */
  private readonly tokenTransport: TokenTransport = async ({ method, url, headers, body }) => {
    const res = await this.dispatch(method, url, { 'user-agent': USER_AGENT, accept: 'application/json', ...headers }, undefined, body);
    let bytes: Buffer | undefined;
    try {
      bytes = await readLimited(res.body, MAX_TOKEN_BODY_BYTES);
    } catch (err) {
      throw connectionError(err, `${method} ${redact(url)}`);
    }
    if (!bytes) throw new OriginError('protocol', `token server ${redact(url)} sent more than ${MAX_TOKEN_BODY_BYTES} bytes`);
    return { status: res.statusCode, headers: res.headers, body: bytes };
  };

  private bodyError(err: unknown, ex: Exchange): OriginError {
    return connectionError(err, `${ex.what} (reading body)`);
  }

  private repository(repo: string): string {
    const name = this.host === DOCKER_HUB ? normaliseRepository(DOCKER_HUB, repo) : repo;
    if (!isValidName(name)) throw new OriginError('protocol', `invalid repository name ${JSON.stringify(repo.slice(0, 300))}`);
    return name;
  }

  private digestHeader(headers: IncomingHttpHeaders, what: string): string | undefined {
    const value = firstHeader(headers['docker-content-digest'])?.trim();
    if (!value) return undefined;
    if (isDigest(value)) return value;
    this.logger.warn({ host: this.host, what, value: value.slice(0, 200) }, 'origin sent an invalid Docker-Content-Digest; ignoring it');
    return undefined;
  }
}

// --- helpers ---

function refName(repo: string, ref: string): string {
  return isDigest(ref) ? `${repo}@${ref}` : `${repo}:${ref}`;
}

function checkReference(ref: string): void {
  if (!isValidTag(ref) && !isDigest(ref)) throw new OriginError('protocol', `invalid manifest reference ${JSON.stringify(ref.slice(0, 200))}`);
}

function checkDigest(digest: string): string {
  try {
    return parseDigest(digest).value;
  } catch (err) {
    throw new OriginError('protocol', (err as Error).message);
  }
}

function gaveUp(err: OriginError, attempts: number): OriginError {
  return new OriginError(err.kind, `${err.message} (gave up after ${attempts} attempts)`, {
    ...(err.status !== undefined ? { status: err.status } : {}),
    ...(err.retryAfterMs !== undefined ? { retryAfterMs: err.retryAfterMs } : {}),
    ...(err.code !== undefined ? { code: err.code } : {}),
    ...(err.detail !== undefined ? { detail: err.detail } : {}),
    retryable: true,
    cause: err,
  });
}

/** Errors that are not an HTTP answer: refused/reset connections, DNS, timeouts. */
function connectionError(err: unknown, what: string): OriginError {
  if (err instanceof OriginError) return err;
  const e = err as { code?: unknown; message?: unknown; cause?: { code?: unknown } };
  const code = typeof e.code === 'string' ? e.code : typeof e.cause?.code === 'string' ? e.cause.code : undefined;
  const message = typeof e.message === 'string' ? e.message : String(err);
  // Argument errors are our bugs and a closed client stays closed: retrying cannot help.
  const permanent = code === 'UND_ERR_INVALID_ARG' || code === 'UND_ERR_DESTROYED' || code === 'UND_ERR_CLOSED';
  return new OriginError(code === 'UND_ERR_INVALID_ARG' ? 'protocol' : 'unavailable', `${what}: ${code ? `${code} ` : ''}${message}`, {
    retryable: !permanent,
    cause: err,
  });
}

function firstHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function contentLength(headers: IncomingHttpHeaders): number | undefined {
  const v = firstHeader(headers['content-length']);
  if (v === undefined || !/^\d+$/.test(v.trim())) return undefined;
  const n = Number(v.trim());
  return Number.isSafeInteger(n) ? n : undefined;
}

function contentType(headers: IncomingHttpHeaders): string | undefined {
  const v = firstHeader(headers['content-type']);
  if (!v) return undefined;
  const type = v.split(';')[0]!.trim().toLowerCase();
  return type || undefined;
}

/** `bytes start-end/total` (total may be `*`). */
export function parseContentRange(value: string | string[] | undefined): { start: number; end: number; total?: number } | undefined {
  const v = firstHeader(value);
  if (!v) return undefined;
  const m = /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(v);
  if (!m) return undefined;
  const start = Number(m[1]);
  const end = Number(m[2]);
  if (end < start) return undefined;
  const out: { start: number; end: number; total?: number } = { start, end };
  if (m[3] !== '*') out.total = Number(m[3]);
  return out;
}

/** Destroys a body we will not read; undici then emits an abort error nobody needs to hear. */
function drop(body: Readable): void {
  body.on('error', () => {});
  body.destroy();
}

/** Lets a response go: small bodies are read so the connection can be reused. */
async function discard(res: Response): Promise<void> {
  await res.body.dump({ limit: MAX_ERROR_BODY_BYTES }).catch(() => {});
}

/**
 * Reads a whole body up to `limit` bytes. Over the limit: `undefined` (or, with `truncate`,
 * the first `limit` bytes), and the stream is destroyed.
 */
async function readLimited(body: Readable, limit: number, truncate = false): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    if (total + chunk.length > limit) {
      if (truncate) chunks.push(chunk.subarray(0, limit - total));
      drop(body);
      return truncate ? Buffer.concat(chunks) : undefined;
    }
    chunks.push(chunk);
    total += chunk.length;
  }
  return Buffer.concat(chunks, total);
}

/** Drops the first `count` bytes of a stream, for origins that answer a Range request with 200. */
function skipBytes(source: Readable, count: number): Readable {
  let left = count;
  const skipper = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      if (left >= chunk.length) {
        left -= chunk.length;
        callback();
        return;
      }
      const rest = left > 0 ? chunk.subarray(left) : chunk;
      left = 0;
      callback(null, rest);
    },
    flush(callback) {
      callback(left > 0 ? new OriginError('protocol', `blob ended ${left} bytes before the requested offset`) : null);
    },
  });
  // pipeline keeps backpressure and tears both down together (source errors reach the reader).
  pipeline(source, skipper, () => {});
  return skipper;
}
