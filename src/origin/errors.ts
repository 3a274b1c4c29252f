/** What went wrong talking to an origin registry, in the terms callers act on. */
export type OriginErrorKind = 'unauthorized' | 'denied' | 'not-found' | 'toomanyrequests' | 'unavailable' | 'protocol';

export interface OriginErrorOptions {
  status?: number;
  /** How long the origin asked us to wait (Retry-After), uncapped, in milliseconds. */
  retryAfterMs?: number;
  /** The `code` of the first entry of the origin's JSON error body (e.g. `MANIFEST_UNKNOWN`). */
  code?: string;
  /** The `detail` of that entry, if any. */
  detail?: unknown;
  /** Whether trying again later may succeed (429, 500/502/503/504, connection failures). */
  retryable?: boolean;
  cause?: unknown;
}

export class OriginError extends Error {
  readonly kind: OriginErrorKind;
  readonly status?: number;
  readonly retryAfterMs?: number;
  readonly code?: string;
  readonly detail?: unknown;
  readonly retryable: boolean;

  constructor(kind: OriginErrorKind, message: string, options: OriginErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'OriginError';
    this.kind = kind;
    if (options.status !== undefined) this.status = options.status;
    if (options.retryAfterMs !== undefined) this.retryAfterMs = options.retryAfterMs;
    if (options.code !== undefined) this.code = options.code;
    if (options.detail !== undefined) this.detail = options.detail;
    this.retryable = options.retryable ?? (kind === 'toomanyrequests');
  }
}

/** Statuses worth another attempt: the origin (or something before it) is briefly unwell. */
export const RETRYABLE_STATUSES: ReadonlySet<number> = new Set([429, 500, 502, 503, 504]);

export function kindForStatus(status: number): OriginErrorKind {
  if (status === 401) return 'unauthorized';
  if (status === 403) return 'denied';
  if (status === 404) return 'not-found';
  if (status === 429) return 'toomanyrequests';
  if (status >= 500) return 'unavailable';
  return 'protocol';
}

/** The first error of a registry's `{"errors":[{code,message,detail}]}` body, if it is one. */
export function parseErrorBody(body: Buffer | undefined): { code?: string; message?: string; detail?: unknown } {
  if (!body || body.length === 0) return {};
  try {
    const doc = JSON.parse(body.toString('utf8')) as { errors?: unknown };
    if (!doc || typeof doc !== 'object') return {};
    const first = Array.isArray(doc.errors) ? (doc.errors[0] as Record<string, unknown> | undefined) : undefined;
    if (first && typeof first === 'object') {
      const out: { code?: string; message?: string; detail?: unknown } = {};
      if (typeof first.code === 'string') out.code = first.code;
      if (typeof first.message === 'string') out.message = first.message;
      if (first.detail !== undefined) out.detail = first.detail;
      return out;
    }
    // Token servers answer OAuth-style `{"error": "...", "error_description": "..."}` or
    // Docker Hub's `{"details": "..."}`.
    const d = doc as Record<string, unknown>;
    const out: { code?: string; message?: string } = {};
    if (typeof d.error === 'string') out.code = d.error;
    for (const key of ['details', 'error_description', 'message']) {
      if (typeof d[key] === 'string') {
        out.message = d[key];
        break;
      }
    }
    return out;
  } catch {
    // Not JSON: an HTML error page from a proxy, say. The status alone has to do.
  }
  return {};
}

/** An error for a non-success response from the registry (or a storage redirect target). */
export function errorForStatus(
  status: number,
  what: string,
  body?: Buffer,
  retryAfterMs?: number,
): OriginError {
  const parsed = parseErrorBody(body);
  const kind = kindForStatus(status);
  const origin = parsed.code ? ` ${parsed.code}` : '';
  const text = parsed.message ? `: ${parsed.message}` : '';
  const options: OriginErrorOptions = { status, retryable: RETRYABLE_STATUSES.has(status) };
  if (parsed.code !== undefined) options.code = parsed.code;
  if (parsed.detail !== undefined) options.detail = parsed.detail;
  if (retryAfterMs !== undefined) options.retryAfterMs = retryAfterMs;
  return new OriginError(kind, `${what}: origin answered ${status}${origin}${text}`, options);
}

/** A URL fit for logs and messages: no query string (signed URLs carry credentials there). */
export function redact(url: string | URL): string {
  try {
    const u = typeof url === 'string' ? new URL(url) : url;
    return `${u.origin}${u.pathname}`;
  } catch {
    return '<invalid url>';
  }
}
