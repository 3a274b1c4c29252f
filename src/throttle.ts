import { Transform, type TransformCallback } from 'node:stream';

/**
 * A token bucket shared by every stream it throttles: `rate` bytes a second on average, bursts
 * of up to `burst` bytes. One bucket per limit (a node's uploads, an origin's downloads), so
 * the limit holds for all transfers together.
 */
export class TokenBucket {
  private tokens: number;
  private last = performance.now();
  /** Callers waiting for tokens, served in order. */
  private queue: Promise<void> = Promise.resolve();

  constructor(
    readonly rate: number,
    readonly burst: number = Math.max(rate / 4, 256 * 1024),
  ) {
    if (!(rate > 0)) throw new RangeError('rate must be positive');
    this.tokens = this.burst;
  }

  /** Resolves once `bytes` may be sent. Large amounts are paid for as they accrue. */
  take(bytes: number): Promise<void> {
    const turn = this.queue.then(() => this.pay(bytes));
    this.queue = turn;
    return turn;
  }

  private async pay(bytes: number): Promise<void> {
    let owed = bytes;
    while (owed > 0) {
      this.refill();
      const spend = Math.min(owed, this.tokens);
      this.tokens -= spend;
      owed -= spend;
      if (owed > 0) {
        const wait = (Math.min(owed, this.burst) / this.rate) * 1000;
        await new Promise((resolve) => setTimeout(resolve, Math.max(1, wait)));
      }
    }
  }

  private refill(): void {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
  }
}

/** A pass-through stream that lets bytes by only as fast as the bucket allows. */
export function throttle(bucket: TokenBucket): Transform {
  return new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      bucket.take(chunk.length).then(
        () => callback(null, chunk),
        (err: Error) => callback(err),
      );
    },
  });
}
