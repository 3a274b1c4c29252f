import { createHash, type Hash } from 'node:crypto';

/**
 * A blob's piece table: the blob cut into equal pieces (the last one shorter) and the sha256 of
 * each. Peers exchange pieces checked against it before the whole-blob digest is known to match,
 * which is what lets a node serve verified pieces onward while it is still downloading.
 */
export interface PieceTable {
  size: number;
  pieceSize: number;
  /**
   * Lower-case sha256 hex of each piece, in order. A *provisional* table (the first wave: the
   * origin download is still streaming in) has only a prefix of them, those of the pieces its
   * holder has so far; it grows as they arrive, and pieces past it cannot be checked yet.
   */
  hashes: string[];
}

/** Whether every piece's hash is known (else the table is provisional: a prefix). */
export function isComplete(table: PieceTable): boolean {
  return table.hashes.length === pieceCount(table);
}

const MIB = 1024 * 1024;
export const MIN_PIECE_SIZE = 4 * MIB;
export const MAX_PIECES = 1024;

/**
 * 4 MiB, doubled until the blob has at most 1024 pieces (10 GiB → 16 MiB).
 *
 * Why: a 4 MiB piece is cheap to re-fetch when a peer fails or lies, and a small layer (tens of
 * MiB) still splits into enough pieces for several peers to share its transfer. Capping the count
 * keeps the table small (1024 × 64 hex characters ≈ 66 KiB of JSON) so it travels in one message
 * and fits in the metadata store. The rule is a pure function of the size, so every agent computes
 * the same table for the same blob and tables from different peers can be compared for equality.
 */
export function pieceSizeFor(size: number): number {
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`invalid blob size ${size}`);
  let pieceSize = MIN_PIECE_SIZE;
  while (Math.ceil(size / pieceSize) > MAX_PIECES) pieceSize *= 2;
  return pieceSize;
}

export function pieceCount(table: PieceTable): number {
  return Math.ceil(table.size / table.pieceSize);
}

export function pieceRange(table: PieceTable, index: number): { start: number; end: number } {
  if (!Number.isInteger(index) || index < 0 || index >= pieceCount(table)) {
    throw new RangeError(`piece ${index} out of range (blob has ${pieceCount(table)} pieces)`);
  }
  const start = index * table.pieceSize;
  return { start, end: Math.min(start + table.pieceSize, table.size) };
}

/**
 * Computes a blob's piece table while the whole blob streams through once (fed the same chunks
 * that are hashed for the whole digest, so no second read). Throws if fed more or fewer than
 * `size` bytes.
 */
export class PieceHasher {
  readonly pieceSize: number;
  private readonly hashes: string[] = [];
  private hash: Hash | undefined;
  /** Bytes of the current piece hashed so far. */
  private inPiece = 0;
  private total = 0;
  private finished = false;

  constructor(readonly size: number) {
    this.pieceSize = pieceSizeFor(size);
  }

  /** The hashes of the pieces hashed whole so far (a provisional table's prefix). */
  get known(): readonly string[] {
    return this.hashes;
  }

  update(chunk: Uint8Array): void {
    if (this.finished) throw new Error('PieceHasher already finished');
    if (this.total + chunk.byteLength > this.size) {
      throw new Error(`PieceHasher fed more than the blob's ${this.size} bytes`);
    }
    let pos = 0;
    while (pos < chunk.byteLength) {
      const take = Math.min(chunk.byteLength - pos, this.pieceSize - this.inPiece);
      (this.hash ??= createHash('sha256')).update(chunk.subarray(pos, pos + take));
      pos += take;
      this.inPiece += take;
      if (this.inPiece === this.pieceSize) this.closePiece();
    }
    this.total += chunk.byteLength;
    // The shorter last piece is whole once the blob is: known now, not only at finish().
    if (this.total === this.size && this.inPiece > 0) this.closePiece();
  }

  finish(): PieceTable {
    if (this.finished) throw new Error('PieceHasher already finished');
    if (this.total !== this.size) throw new Error(`PieceHasher fed ${this.total} of the blob's ${this.size} bytes`);
    this.finished = true;
    return { size: this.size, pieceSize: this.pieceSize, hashes: this.hashes };
  }

  private closePiece(): void {
    this.hashes.push(this.hash!.digest('hex'));
    this.hash = undefined;
    this.inPiece = 0;
  }
}

const HEX64 = /^[0-9a-f]{64}$/;

/**
 * Checks a table received from a peer (or read back from storage) and returns a clean copy
 * (unknown fields dropped). Throws an Error saying what is wrong. A valid table is still only a
 * claim: pieces are checked against it, and the whole blob against its digest.
 */
export function validatePieceTable(raw: unknown, expectedSize?: number, opts: { provisional?: boolean } = {}): PieceTable {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error('piece table is not an object');
  const { size, pieceSize, hashes } = raw as Record<string, unknown>;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw new Error(`piece table has an invalid size (${String(size)})`);
  }
  if (expectedSize !== undefined && size !== expectedSize) {
    throw new Error(`piece table is for ${size} bytes, the blob has ${expectedSize}`);
  }
  const want = pieceSizeFor(size);
  if (pieceSize !== want) throw new Error(`piece table has piece size ${String(pieceSize)}, ${want} expected for ${size} bytes`);
  if (!Array.isArray(hashes)) throw new Error('piece table hashes are not an array');
  const count = Math.ceil(size / want);
  if (opts.provisional === true ? hashes.length > count : hashes.length !== count) {
    throw new Error(`piece table has ${hashes.length} hashes, ${opts.provisional === true ? 'at most ' : ''}${count} expected`);
  }
  hashes.forEach((h, i) => {
    if (typeof h !== 'string' || !HEX64.test(h)) throw new Error(`piece table hash ${i} is not lower-case sha256 hex`);
  });
  return { size, pieceSize: want, hashes: [...(hashes as string[])] };
}

/**
 * Whether two tables, either of them provisional, can be of the same bytes: the same cut, and
 * the same hash for every piece both know.
 */
export function consistentTables(a: PieceTable, b: PieceTable): boolean {
  if (a.size !== b.size || a.pieceSize !== b.pieceSize) return false;
  const n = Math.min(a.hashes.length, b.hashes.length);
  for (let i = 0; i < n; i++) if (a.hashes[i] !== b.hashes[i]) return false;
  return true;
}

/** Whether two tables describe the same pieces. */
export function sameTable(a: PieceTable, b: PieceTable): boolean {
  return a.size === b.size && a.pieceSize === b.pieceSize && a.hashes.length === b.hashes.length && a.hashes.every((h, i) => h === b.hashes[i]);
}

/** Bit i is bit (7 - i % 8) of byte i / 8 (most significant first, as in BitTorrent); spare bits are zero. */
export function encodeBitfield(have: (i: number) => boolean, count: number): Uint8Array {
  if (!Number.isSafeInteger(count) || count < 0) throw new RangeError(`invalid piece count ${count}`);
  const out = new Uint8Array(Math.ceil(count / 8));
  for (let i = 0; i < count; i++) if (have(i)) out[i >> 3]! |= 0x80 >> (i & 7);
  return out;
}

/** Throws if `bytes` is not exactly ceil(count / 8) long or sets a bit past `count`. */
export function decodeBitfield(bytes: Uint8Array, count: number): boolean[] {
  if (!Number.isSafeInteger(count) || count < 0) throw new RangeError(`invalid piece count ${count}`);
  const want = Math.ceil(count / 8);
  if (bytes.byteLength !== want) throw new Error(`bitfield has ${bytes.byteLength} bytes, ${want} expected for ${count} pieces`);
  const out: boolean[] = new Array<boolean>(count);
  for (let i = 0; i < count; i++) out[i] = (bytes[i >> 3]! & (0x80 >> (i & 7))) !== 0;
  const spare = count % 8;
  if (spare !== 0 && (bytes[want - 1]! & (0xff >> spare)) !== 0) throw new Error('bitfield sets bits past the last piece');
  return out;
}
