/**
 * Wakes those waiting on a digest when what this agent holds of it changes: a piece verified,
 * a download started or ended, the blob committed. Peers' long polls on the pieces protocol
 * wait here instead of asking again and again (each ask is a stream each way).
 */
export class PieceNews {
  private readonly waiting = new Map<string, Set<() => void>>();

  /** Wakes everyone waiting on `digest`. */
  notify(digest: string): void {
    const wakers = this.waiting.get(digest);
    if (wakers === undefined) return;
    this.waiting.delete(digest);
    for (const wake of wakers) wake();
  }

  /** Resolves at the next notify for `digest`, or when `signal` aborts. */
  next(digest: string, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal.aborted) return resolve();
      let wakers = this.waiting.get(digest);
      if (wakers === undefined) this.waiting.set(digest, (wakers = new Set()));
      const wake = (): void => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = (): void => {
        const set = this.waiting.get(digest);
        set?.delete(wake);
        if (set?.size === 0) this.waiting.delete(digest);
        resolve();
      };
      wakers.add(wake);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Digests someone waits on (for tests: nothing may linger). */
  get size(): number {
    return this.waiting.size;
  }
}
