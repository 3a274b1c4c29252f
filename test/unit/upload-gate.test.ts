import { describe, expect, it } from 'vitest';
import { UploadGate } from '../../src/p2p/upload-gate.js';

describe('UploadGate', () => {
  it('queues requests beyond its limit in arrival order and refuses beyond its queue', async () => {
    const gate = new UploadGate(1, 2);
    const signal = new AbortController().signal;
    const first = await gate.acquire(signal);
    expect(first).toBeTypeOf('function');
    const order: string[] = [];
    const second = gate.acquire(signal).then((r) => (order.push('second'), r));
    const third = gate.acquire(signal).then((r) => (order.push('third'), r));
    expect(gate.queued).toBe(2);
    expect(await gate.acquire(signal)).toBeUndefined(); // the queue is full: refused at once
    first!();
    (await second)!();
    (await third)!();
    expect(order).toEqual(['second', 'third']);
    expect(gate.activeUploads).toBe(0);
  });

  it('drops a waiter whose signal aborts, and a release frees its slot once', async () => {
    const gate = new UploadGate(1, 4);
    const release = await gate.acquire(new AbortController().signal);
    const ac = new AbortController();
    const waiting = gate.acquire(ac.signal);
    ac.abort(new Error('gone'));
    await expect(waiting).rejects.toThrow('gone');
    expect(gate.queued).toBe(0);
    release!();
    release!();
    expect(gate.activeUploads).toBe(0);
  });
});
