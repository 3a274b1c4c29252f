import { describe, expect, it } from 'vitest';
import { givePieceBuffer, retainedPieceBytes, takePieceBuffer } from '../../src/fetch/piece-buffers.js';

describe('piece buffers', () => {
  it('hands a returned buffer out again for the same size (no fresh pages), shared-memory backed', () => {
    const a = takePieceBuffer(1 << 20);
    expect(a.buffer).toBeInstanceOf(SharedArrayBuffer);
    givePieceBuffer(a);
    expect(takePieceBuffer(2 << 20)).not.toBe(a);
    expect(takePieceBuffer(1 << 20)).toBe(a);
  });

  it('keeps at most 64 MiB of free buffers', () => {
    const before = retainedPieceBytes();
    const many = Array.from({ length: 20 }, () => takePieceBuffer(4 << 20));
    for (const b of many) givePieceBuffer(b);
    expect(retainedPieceBytes()).toBeLessThanOrEqual(64 << 20);
    expect(retainedPieceBytes()).toBeGreaterThan(before);
  });
});
