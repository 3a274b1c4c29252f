import { afterEach, describe, expect, it, vi } from 'vitest';
import pino from 'pino';
import { Writable } from 'node:stream';
import { Bootstrapper, parseBootstrapEntry } from '../../src/p2p/bootstrap.js';

afterEach(() => vi.useRealTimers());

function logCapture(): { logger: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  return { logger: pino({ level: 'warn' }, sink), lines };
}

describe('Bootstrapper: getting in', () => {
  it('retries a refusing seed every few seconds while outside, warns once, and says why', async () => {
    vi.useFakeTimers();
    const { logger, lines } = logCapture();
    const dials: number[] = [];
    let joined = false;
    const b = new Bootstrapper({
      entries: [parseBootstrapEntry('/ip4/127.0.0.1/tcp/4001')],
      intervalMs: 30_000,
      logger,
      dial: async () => {
        dials.push(Date.now());
        if (dials.length < 8) throw new Error('connection refused');
        joined = true;
        return 'seed';
      },
      isConnected: () => joined,
      selfKeys: () => new Set(),
      onPeer: () => {},
      wanted: () => !joined,
    });
    b.start();
    await vi.advanceTimersByTimeAsync(60_000);
    await b.stop();
    expect(dials.length).toBe(8);
    const gaps = dials.slice(1).map((t, i) => t - dials[i]!);
    // 1 s, 2 s, then never more than 4 s apart while the agent is outside the fleet.
    expect(gaps).toEqual([1_000, 2_000, 4_000, 4_000, 4_000, 4_000, 4_000]);
    expect(b.lastError).toBe('/ip4/127.0.0.1/tcp/4001: connection refused');
    const warnings = lines.filter((l) => l.msg === 'p2p bootstrap: no address answered yet; still trying');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!.err).toBe('/ip4/127.0.0.1/tcp/4001: connection refused');
  });
});
