/** Backoff, Retry-After and abortable sleeping for the origin client. */

/** The longest we wait before one retry, whatever Retry-After says: a pull is waiting on us. */
export const MAX_RETRY_WAIT_MS = 10_000;

/**
 * `Retry-After` as milliseconds from now: either delay-seconds or an HTTP date.
 * `undefined` when absent or unparseable.
 */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  if (v === undefined) return undefined;
  const text = v.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at - now);
}

/**
 * Exponential backoff with "equal jitter": half the step is fixed, half random, so retries of
 * many agents hitting the same origin outage spread out but never collapse to zero.
 */
export function backoffMs(attempt: number, baseMs: number, random: () => number = Math.random): number {
  const step = Math.min(MAX_RETRY_WAIT_MS, baseMs * 2 ** attempt);
  return Math.round(step / 2 + random() * (step / 2));
}

/** The wait before retry number `attempt` (0-based), honouring the origin's Retry-After up to the cap. */
export function retryDelayMs(attempt: number, baseMs: number, retryAfterMs: number | undefined): number {
  if (retryAfterMs !== undefined) return Math.min(MAX_RETRY_WAIT_MS, retryAfterMs);
  return backoffMs(attempt, baseMs);
}

export function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(abortReason(signal));
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortReason(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Settles with `promise`, or rejects as soon as `signal` aborts (the promise keeps running). */
export function raceSignal<T>(promise: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}
