import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  consistentTables,
  decodeBitfield,
  isComplete,
  encodeBitfield,
  PieceHasher,
  pieceCount,
  pieceRange,
  pieceSizeFor,
  sameTable,
  validatePieceTable,
  type PieceTable,
} from '../../src/fetch/piece-table.js';

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

describe('pieceSizeFor', () => {
  it('is 4 MiB up to 1024 pieces, then doubles', () => {
    expect(pieceSizeFor(0)).toBe(4 * MIB);
    expect(pieceSizeFor(1)).toBe(4 * MIB);
    expect(pieceSizeFor(4 * GIB)).toBe(4 * MIB); // exactly 1024 pieces
    expect(pieceSizeFor(4 * GIB + 1)).toBe(8 * MIB);
    expect(pieceSizeFor(10 * GIB)).toBe(16 * MIB);
    expect(pieceSizeFor(1024 * GIB)).toBe(1024 * MIB);
  });

  it('always yields at most 1024 pieces', () => {
    for (const size of [1, 5 * GIB, 33 * GIB + 7, Number.MAX_SAFE_INTEGER]) {
      expect(Math.ceil(size / pieceSizeFor(size))).toBeLessThanOrEqual(1024);
    }
  });

  it('rejects invalid sizes', () => {
    expect(() => pieceSizeFor(-1)).toThrow(RangeError);
    expect(() => pieceSizeFor(1.5)).toThrow(RangeError);
    expect(() => pieceSizeFor(Number.NaN)).toThrow(RangeError);
  });
});

describe('pieceCount / pieceRange', () => {
  const table: PieceTable = { size: 10 * MIB + 3, pieceSize: 4 * MIB, hashes: ['a', 'b', 'c'].map((c) => c.repeat(64)) };

  it('counts the shorter last piece', () => {
    expect(pieceCount(table)).toBe(3);
    expect(pieceCount({ size: 0, pieceSize: 4 * MIB, hashes: [] })).toBe(0);
    expect(pieceCount({ size: 8 * MIB, pieceSize: 4 * MIB, hashes: [] })).toBe(2);
  });

  it('gives exclusive byte ranges', () => {
    expect(pieceRange(table, 0)).toEqual({ start: 0, end: 4 * MIB });
    expect(pieceRange(table, 1)).toEqual({ start: 4 * MIB, end: 8 * MIB });
    expect(pieceRange(table, 2)).toEqual({ start: 8 * MIB, end: 10 * MIB + 3 });
    expect(() => pieceRange(table, 3)).toThrow(RangeError);
    expect(() => pieceRange(table, -1)).toThrow(RangeError);
  });
});

describe('PieceHasher', () => {
  const size = 9 * MIB + 12345;
  const blob = randomBytes(size);
  const expected = [blob.subarray(0, 4 * MIB), blob.subarray(4 * MIB, 8 * MIB), blob.subarray(8 * MIB)].map(sha256);

  it('hashes pieces whatever the chunking', () => {
    for (const chunkSize of [1000, 64 * 1024, 4 * MIB, 3 * MIB + 1, size]) {
      const h = new PieceHasher(size);
      for (let pos = 0; pos < size; pos += chunkSize) h.update(blob.subarray(pos, Math.min(size, pos + chunkSize)));
      expect(h.finish()).toEqual({ size, pieceSize: 4 * MIB, hashes: expected });
    }
  });

  it('handles a size that is a multiple of the piece size, and empty blobs', () => {
    const exact = blob.subarray(0, 8 * MIB);
    const h = new PieceHasher(exact.length);
    h.update(exact);
    expect(h.finish().hashes).toEqual(expected.slice(0, 2));

    const empty = new PieceHasher(0);
    empty.update(new Uint8Array(0));
    expect(empty.finish()).toEqual({ size: 0, pieceSize: 4 * MIB, hashes: [] });
  });

  it('throws when fed more or less than the size', () => {
    const over = new PieceHasher(10);
    over.update(new Uint8Array(6));
    expect(() => over.update(new Uint8Array(5))).toThrow(/more than/);

    const under = new PieceHasher(10);
    under.update(new Uint8Array(9));
    expect(() => under.finish()).toThrow(/9 of the blob's 10/);
  });

  it('produces a table that validates', () => {
    const h = new PieceHasher(size);
    h.update(blob);
    const table = h.finish();
    expect(validatePieceTable(JSON.parse(JSON.stringify(table)), size)).toEqual(table);
  });
});

describe('validatePieceTable', () => {
  const good = { size: 5 * MIB, pieceSize: 4 * MIB, hashes: ['0'.repeat(64), 'f'.repeat(64)] };

  it('accepts a good table and drops unknown fields', () => {
    expect(validatePieceTable({ ...good, extra: 1 })).toEqual(good);
    expect(validatePieceTable({ size: 0, pieceSize: 4 * MIB, hashes: [] })).toEqual({ size: 0, pieceSize: 4 * MIB, hashes: [] });
  });

  it.each([
    ['not an object', null, /not an object/],
    ['an array', [], /not an object/],
    ['a negative size', { ...good, size: -1 }, /invalid size/],
    ['a fractional size', { ...good, size: 1.5 }, /invalid size/],
    ['a string size', { ...good, size: '5' }, /invalid size/],
    ['a piece size off the rule', { ...good, pieceSize: 1 * MIB }, /piece size/],
    ['hashes not an array', { ...good, hashes: 'x' }, /not an array/],
    ['too few hashes', { ...good, hashes: ['0'.repeat(64)] }, /1 hashes, 2 expected/],
    ['too many hashes', { ...good, hashes: [...good.hashes, '1'.repeat(64)] }, /3 hashes/],
    ['upper-case hex', { ...good, hashes: ['0'.repeat(64), 'F'.repeat(64)] }, /hash 1/],
    ['a short hash', { ...good, hashes: ['0'.repeat(63), 'f'.repeat(64)] }, /hash 0/],
    ['a non-string hash', { ...good, hashes: [1, 'f'.repeat(64)] }, /hash 0/],
  ])('rejects %s', (_name, raw, message) => {
    expect(() => validatePieceTable(raw)).toThrow(message);
  });

  it('checks the expected size', () => {
    expect(() => validatePieceTable(good, 5 * MIB + 1)).toThrow(/5242880 bytes, the blob has 5242881/);
  });
});

describe('sameTable', () => {
  it('compares every field', () => {
    const t = { size: 5 * MIB, pieceSize: 4 * MIB, hashes: ['0'.repeat(64), 'f'.repeat(64)] };
    expect(sameTable(t, { ...t, hashes: [...t.hashes] })).toBe(true);
    expect(sameTable(t, { ...t, hashes: ['0'.repeat(64), 'e'.repeat(64)] })).toBe(false);
    expect(sameTable(t, { ...t, size: 5 * MIB + 1 })).toBe(false);
  });
});

describe('provisional tables (the first wave)', () => {
  const whole = { size: 9 * MIB, pieceSize: 4 * MIB, hashes: ['0'.repeat(64), 'f'.repeat(64), 'a'.repeat(64)] };
  const prefix = { ...whole, hashes: whole.hashes.slice(0, 1) };

  it('validates a prefix of the hashes only when told the table may be provisional', () => {
    expect(validatePieceTable(prefix, undefined, { provisional: true })).toEqual(prefix);
    expect(validatePieceTable({ ...whole, hashes: [] }, undefined, { provisional: true }).hashes).toEqual([]);
    expect(() => validatePieceTable(prefix)).toThrow(/1 hashes, 3 expected/);
    expect(() => validatePieceTable({ ...whole, hashes: [...whole.hashes, 'b'.repeat(64)] }, undefined, { provisional: true })).toThrow(/at most 3/);
    expect(isComplete(prefix)).toBe(false);
    expect(isComplete(whole)).toBe(true);
  });

  it('calls tables consistent when they cut alike and agree on every hash both know', () => {
    expect(consistentTables(prefix, whole)).toBe(true);
    expect(consistentTables(whole, prefix)).toBe(true);
    expect(consistentTables(whole, { ...whole, hashes: ['0'.repeat(64), 'e'.repeat(64)] })).toBe(false);
    expect(consistentTables(prefix, { ...prefix, size: 9 * MIB + 1 })).toBe(false);
  });

  it('knows each piece hash as soon as the piece has gone through the hasher, the short last one too', () => {
    const bytes = randomBytes(9 * MIB);
    const h = new PieceHasher(bytes.length);
    h.update(bytes.subarray(0, 5 * MIB));
    expect(h.known).toEqual([sha256(bytes.subarray(0, 4 * MIB))]);
    h.update(bytes.subarray(5 * MIB));
    expect(h.known).toHaveLength(3);
    expect(h.known[2]).toBe(sha256(bytes.subarray(8 * MIB)));
    expect(h.finish().hashes).toHaveLength(3);
  });
});

describe('bitfields', () => {
  it('round-trips, most significant bit first', () => {
    const have = [true, false, false, false, false, false, false, true, true, false, true];
    const bytes = encodeBitfield((i) => have[i]!, have.length);
    expect([...bytes]).toEqual([0b1000_0001, 0b1010_0000]);
    expect(decodeBitfield(bytes, have.length)).toEqual(have);
  });

  it('handles empty and whole-byte fields', () => {
    expect(encodeBitfield(() => true, 0)).toEqual(new Uint8Array(0));
    expect(decodeBitfield(new Uint8Array(0), 0)).toEqual([]);
    expect([...encodeBitfield(() => true, 16)]).toEqual([0xff, 0xff]);
    expect(decodeBitfield(Uint8Array.of(0xff, 0xff), 16)).toEqual(new Array(16).fill(true));
  });

  it('rejects a wrong length or bits past the end', () => {
    expect(() => decodeBitfield(new Uint8Array(2), 7)).toThrow(/2 bytes, 1 expected/);
    expect(() => decodeBitfield(Uint8Array.of(0b0000_0001), 7)).toThrow(/past the last piece/);
    expect(decodeBitfield(Uint8Array.of(0b0000_0010), 7)).toEqual([false, false, false, false, false, false, true]);
  });
});
