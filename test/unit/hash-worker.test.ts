import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HashWorker } from '../../src/fetch/hash-worker.js';
import { PieceHasher, pieceRange, type PieceTable } from '../../src/fetch/piece-table.js';

const MiB = 1024 * 1024;
let dir: string;
const worker = new HashWorker();

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shoal-hash-'));
});
afterAll(async () => {
  await worker.close();
  await rm(dir, { recursive: true, force: true });
});

function tableOf(blob: Buffer): PieceTable {
  const hasher = new PieceHasher(blob.length);
  hasher.update(blob);
  return hasher.finish();
}

/** A piece in a SharedArrayBuffer, as swarm downloads hold them. */
function shared(bytes: Uint8Array): Buffer {
  const out = Buffer.from(new SharedArrayBuffer(bytes.length));
  out.set(bytes);
  return out;
}

/** Writes `blob`'s pieces into a file in `order`, telling the session as a download does. */
async function assemble(blob: Buffer, order: number[], opts: { inMemory?: boolean } = {}) {
  const table = tableOf(blob);
  const path = join(dir, `blob-${randomBytes(4).toString('hex')}`);
  const file = await open(path, 'w+');
  const session = worker.session(path, table, 'sha256');
  for (const index of order) {
    const { start, end } = pieceRange(table, index);
    const piece = shared(blob.subarray(start, end));
    if (opts.inMemory !== false) expect(await session.verifyPiece(index, piece, table.hashes[index]!)).toBe(true);
    await file.write(piece, 0, piece.length, start);
    session.written(index);
  }
  const hex = await session.digest();
  await file.close();
  return { hex, table };
}

describe('HashWorker', () => {
  const blob = randomBytes(4 * 4 * MiB + 12345); // five pieces, the last one short
  const expected = createHash('sha256').update(blob).digest('hex');

  it('checks pieces against their table entry', async () => {
    const table = tableOf(blob);
    const session = worker.session(join(dir, 'unused'), table, 'sha256');
    const piece = shared(blob.subarray(0, table.pieceSize));
    expect(await session.verifyPiece(0, piece, table.hashes[0]!)).toBe(true);
    expect(await session.verifyPiece(0, piece, table.hashes[1]!)).toBe(false);
    piece[100]! ^= 1;
    expect(await session.verifyPiece(0, piece, table.hashes[0]!)).toBe(false);
    // A plain buffer works too (postMessage copies it).
    expect(await session.verifyPiece(1, Buffer.from(blob.subarray(table.pieceSize, 2 * table.pieceSize)), table.hashes[1]!)).toBe(true);
    session.close();
  });

  it('computes the whole digest from pieces that arrive in order', async () => {
    expect((await assemble(blob, [0, 1, 2, 3, 4])).hex).toBe(expected);
  });

  it('computes the whole digest from pieces in any order, reading back the ones that came early', async () => {
    expect((await assemble(blob, [3, 1, 4, 0, 2])).hex).toBe(expected);
    expect((await assemble(blob, [4, 3, 2, 1, 0], { inMemory: false })).hex).toBe(expected);
  });

  it('has no digest while a piece is missing', async () => {
    expect((await assemble(blob, [0, 1, 3, 4])).hex).toBeUndefined();
  });

  it('ends a session with its digest, and restarts after being closed', async () => {
    const table = tableOf(blob);
    const session = worker.session(join(dir, 'unused'), table, 'sha256');
    await session.digest();
    await expect(session.digest()).rejects.toThrow(/closed/);
    await worker.close();
    expect((await assemble(blob, [0, 1, 2, 3, 4])).hex).toBe(expected);
  });

  it('fails the digest when the file cannot be read back', async () => {
    const table = tableOf(blob);
    const session = worker.session(join(dir, 'does-not-exist'), table, 'sha256');
    session.written(1); // out of order: the worker has to read it, and cannot
    session.written(0);
    await expect(session.digest()).rejects.toThrow(/hash worker: .*ENOENT/);
  });
});
