/**
 * Uploads this agent serves at once over the swarm wire, the rest queued in arrival order: an
 * uploader at its limit makes a request wait its turn (as BitTorrent's choking does) rather
 * than refuse it, so an asker never opens another stream to try again. The queue is bounded:
 * beyond it a request is refused, in band, and the asker takes the piece elsewhere.
 */
export class UploadGate {
  private active = 0;
  private readonly queue: { grant: () => void; signal: AbortSignal; onAbort: () => void }[] = [];

  constructor(
    readonly maxActive: number,
    readonly maxQueued: number,
  ) {}

  get activeUploads(): number {
    return this.active;
  }

  get queued(): number {
    return this.queue.length;
  }

  /**
   * A slot: resolves a release function once one is free, undefined at once when the queue is
   * full. Rejects with `signal`'s reason if it aborts while waiting.
   */
  acquire(signal: AbortSignal): Promise<(() => void) | undefined> {
    signal.throwIfAborted();
    if (this.active < this.maxActive) {
      this.active++;
      return Promise.resolve(this.releaser());
    }
    if (this.queue.length >= this.maxQueued) return Promise.resolve(undefined);
    return new Promise((resolve, reject) => {
      const entry = {
        signal,
        grant: () => resolve(this.releaser()),
        onAbort: () => {
          const at = this.queue.indexOf(entry);
          if (at >= 0) this.queue.splice(at, 1);
          reject(signal.reason);
        },
      };
      signal.addEventListener('abort', entry.onAbort, { once: true });
      this.queue.push(entry);
    });
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.queue.shift();
      if (next === undefined) {
        this.active--;
        return;
      }
      // The slot passes straight to the next in line.
      next.signal.removeEventListener('abort', next.onAbort);
      next.grant();
    };
  }
}
