import { OriginError } from '../origin/errors.js';
import type { Upstreams } from '../origin/upstreams.js';
import { throttle, type TokenBucket } from '../throttle.js';
import type { BlobRequest, BlobSource, SourceBody } from './source.js';

/** The origin registry as a blob source: the last resort, and the authority. */
export class OriginSource implements BlobSource {
  readonly name = 'origin';
  readonly kind = 'origin' as const;

  constructor(
    private readonly upstreams: Upstreams,
    /** upstreams.maxRate: shared by every origin download, so an uplink keeps room for the rest. */
    private readonly limit?: TokenBucket,
  ) {}

  /** Exactly `length` bytes from `offset` (a missing piece), or an error. */
  async readRange(request: BlobRequest, offset: number, length: number, signal: AbortSignal): Promise<Buffer> {
    const blob = await this.upstreams
      .client(request.registry)
      .getBlob(request.repository, request.digest.value, { offset, length, signal });
    const out = Buffer.allocUnsafe(length);
    let filled = 0;
    try {
      for await (const chunk of blob.body as AsyncIterable<Buffer>) {
        const take = Math.min(chunk.length, length - filled);
        if (this.limit) await this.limit.take(take);
        chunk.copy(out, filled, 0, take);
        filled += take;
        if (filled === length) break;
      }
    } finally {
      blob.body.destroy();
    }
    if (filled !== length) throw new Error(`origin sent ${filled} of ${length} bytes from ${offset}`);
    return out;
  }

  async open(request: BlobRequest, offset: number, signal: AbortSignal): Promise<SourceBody | undefined> {
    try {
      const blob = await this.upstreams
        .client(request.registry)
        .getBlob(request.repository, request.digest.value, { offset, signal });
      if (!this.limit) return { size: blob.size, body: blob.body };
      const limited = throttle(this.limit);
      blob.body.on('error', (err) => limited.destroy(err));
      limited.on('close', () => blob.body.destroy());
      return { size: blob.size, body: blob.body.pipe(limited) };
    } catch (err) {
      // "Not found" is an answer, not a failure; anything else (401, outage) is passed on.
      if (err instanceof OriginError && err.kind === 'not-found') return undefined;
      throw err;
    }
  }
}
