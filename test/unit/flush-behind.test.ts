import type { FileHandle } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { FlushBehind } from '../../src/store/flush-behind.js';

const MiB = 1024 * 1024;

/** A file whose datasync calls are counted and finish when the test says so. */
function fakeFile() {
  const pending: (() => void)[] = [];
  let calls = 0;
  const file = {
    datasync: () => {
      calls++;
      return new Promise<void>((resolve) => pending.push(resolve));
    },
  } as unknown as FileHandle;
  return { file, pending, calls: () => calls };
}

describe('FlushBehind', () => {
  it('flushes every 32 MiB written, one flush at a time', async () => {
    const f = fakeFile();
    const flush = new FlushBehind(f.file);
    flush.wrote(31 * MiB);
    expect(f.calls()).toBe(0);
    flush.wrote(1 * MiB);
    expect(f.calls()).toBe(1);
    // Another 64 MiB while the first flush runs: no second flush until it is done.
    flush.wrote(64 * MiB);
    expect(f.calls()).toBe(1);
    let settled = false;
    const settling = flush.settle().then(() => (settled = true));
    await new Promise((r) => setTimeout(r, 10));
    expect(settled).toBe(false);
    f.pending.shift()!();
    await settling;
    flush.wrote(32 * MiB);
    expect(f.calls()).toBe(2);
    f.pending.shift()!();
    await flush.settle();
  });

  it('leaves a failed flush to the final fsync', async () => {
    const file = { datasync: () => Promise.reject(new Error('EIO')) } as unknown as FileHandle;
    const flush = new FlushBehind(file);
    flush.wrote(32 * MiB);
    await expect(flush.settle()).resolves.toBeUndefined();
  });
});
