import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { throttle, TokenBucket } from '../../src/throttle.js';

// Fake time: the bucket's arithmetic is checked exactly, with no dependence on the machine.
beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'performance'] });
});
afterEach(() => {
  vi.useRealTimers();
});

describe('TokenBucket', () => {
  it('lets a burst through at once, then paces at the rate', async () => {
    const bucket = new TokenBucket(1000, 500);
    let done = false;
    const taken = bucket.take(500).then(() => bucket.take(1000)).then(() => (done = true));
    await vi.advanceTimersByTimeAsync(999);
    expect(done).toBe(false);
    await vi.advanceTimersByTimeAsync(2);
    await taken;
    expect(done).toBe(true);
  });

  it('is shared: two takers together get the rate, not twice it', async () => {
    const bucket = new TokenBucket(1000, 100);
    const finished: number[] = [];
    const start = performance.now();
    const a = bucket.take(100).then(() => bucket.take(900)).then(() => finished.push(performance.now() - start));
    const b = bucket.take(1000).then(() => finished.push(performance.now() - start));
    await vi.advanceTimersByTimeAsync(2100);
    await Promise.all([a, b]);
    // 2000 bytes at 1000 B/s with 100 B of burst: the last finishes after about 1.9 s.
    expect(Math.max(...finished)).toBeGreaterThanOrEqual(1890);
  });

  it('refuses a rate that is not positive', () => {
    expect(() => new TokenBucket(0)).toThrow(/positive/);
  });
});

describe('throttle', () => {
  it('passes every byte through, in order', async () => {
    vi.useRealTimers();
    const bucket = new TokenBucket(50 * 1024 * 1024);
    const chunks = Array.from({ length: 20 }, (_, i) => Buffer.alloc(1000, i));
    const out: Buffer[] = [];
    await pipeline(
      Readable.from(chunks),
      throttle(bucket),
      new Writable({
        write(chunk: Buffer, _e, cb) {
          out.push(chunk);
          cb();
        },
      }),
    );
    expect(Buffer.concat(out).equals(Buffer.concat(chunks))).toBe(true);
  });
});
