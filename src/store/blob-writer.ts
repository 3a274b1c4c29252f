import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import type { Hash } from 'node:crypto';
import { DigestMismatchError, hasherFor, type Digest } from '../oci/digest.js';
import { PieceHasher, type PieceTable } from '../fetch/piece-table.js';
import { Readable } from 'node:stream';
import { FlushBehind } from './flush-behind.js';
import { openReadStream } from './read-stream.js';

/**
 * Writes one blob to a temporary file while hashing it. Bytes may arrive from several
 * sources one after another (a resume at `bytesWritten`); the blob becomes visible only
 * through `commit`, after the whole stream hashed to its digest.
 */
export class BlobWriter {
  private readonly hash: Hash;
  private written = 0;
  private done = false;
  private readonly flush: FlushBehind;
  private pieces: PieceHasher | undefined;
  /** Pieces hashed whole and written to the file: peers may read them (the first wave). */
  private piecesOnFile = 0;

  constructor(
    readonly digest: Digest,
    private readonly tempPath: string,
    private readonly file: FileHandle,
    private readonly onCommit: (size: number, table: PieceTable | undefined) => Promise<void>,
    private readonly onRelease: () => void,
  ) {
    this.hash = hasherFor(digest);
    this.flush = new FlushBehind(file);
  }

  static async create(
    digest: Digest,
    tempPath: string,
    onCommit: (size: number, table: PieceTable | undefined) => Promise<void>,
    onRelease: () => void,
  ): Promise<BlobWriter> {
    const file = await open(tempPath, 'wx', 0o644);
    return new BlobWriter(digest, tempPath, file, onCommit, onRelease);
  }

  get bytesWritten(): number {
    return this.written;
  }

  /**
   * Also computes the blob's piece table as the bytes go by, for a blob of `size` bytes: peers
   * can then be served pieces of it at once, without a second read of the file. Only from the
   * first byte on (else it is ignored).
   */
  trackPieces(size: number): void {
    if (this.written === 0 && this.pieces === undefined) this.pieces = new PieceHasher(size);
  }

  /** Appends chunks (one vectored write), hashing them in order. */
  async write(chunks: Uint8Array | readonly Uint8Array[]): Promise<void> {
    if (this.done) throw new Error('blob writer is closed');
    const list = chunks instanceof Uint8Array ? [chunks] : chunks;
    let length = 0;
    for (const chunk of list) {
      this.hash.update(chunk);
      length += chunk.length;
    }
    if (this.pieces !== undefined) {
      try {
        for (const chunk of list) this.pieces.update(chunk);
      } catch {
        this.pieces = undefined; // more bytes than announced: the digest check will fail anyway
      }
    }
    let written = 0;
    while (written < length) {
      const { bytesWritten } = await this.file.writev(remaining(list, written), this.written + written);
      written += bytesWritten;
    }
    this.written += length;
    this.flush.wrote(length);
    // Hashed before the write, so every piece closed so far is on the file now.
    if (this.pieces !== undefined) this.piecesOnFile = this.pieces.known.length;
  }

  /**
   * The provisional piece table of what is written so far (the hashes of the pieces whole on
   * the file), while the bytes are not yet checked against the digest; undefined without
   * `trackPieces` or before a whole piece. Its pieces are read with `openProvisional`.
   */
  provisional(): PieceTable | undefined {
    if (this.pieces === undefined || this.piecesOnFile === 0 || this.done) return undefined;
    return { size: this.pieces.size, pieceSize: this.pieces.pieceSize, hashes: this.pieces.known.slice(0, this.piecesOnFile) };
  }

  /** Whole pieces on the file so far (changes with each write that completes one). */
  get provisionalPieces(): number {
    return this.piecesOnFile;
  }

  /**
   * Bytes [offset, offset+length) of the provisional pieces, read from the temporary file;
   * undefined when they are not all whole on it. The descriptor keeps them readable if the file
   * is renamed (committed) or removed (aborted) meanwhile.
   */
  async openProvisional(offset: number, length: number | undefined): Promise<{ size: number; body: Readable } | undefined> {
    const table = this.provisional();
    if (table === undefined) return undefined;
    const held = Math.min(table.size, table.hashes.length * table.pieceSize);
    const end = Math.min(table.size, length === undefined ? table.size : offset + length);
    if (offset > end || end > held) return undefined;
    if (end === offset) return { size: table.size, body: Readable.from([]) };
    const body = await openReadStream(this.tempPath, { start: offset, end: end - 1, highWaterMark: 1024 * 1024 });
    return body === undefined ? undefined : { size: table.size, body };
  }

  /** Verifies the digest, makes the file durable and moves it into place. */
  async commit(finalPath: string, source: string): Promise<void> {
    if (this.done) throw new Error('blob writer is closed');
    this.done = true;
    try {
      const actual = `${this.digest.algorithm}:${this.hash.digest('hex')}`;
      if (actual !== this.digest.value) throw new DigestMismatchError(this.digest.value, actual, source);
      await this.flush.settle();
      await this.file.sync();
      await this.file.close();
      await rename(this.tempPath, finalPath);
      await this.onCommit(this.written, this.pieceTable());
    } catch (err) {
      await this.discard();
      throw err;
    } finally {
      this.onRelease();
    }
  }

  /** The table of a verified blob whose size was announced right. */
  private pieceTable(): PieceTable | undefined {
    if (this.pieces === undefined || this.pieces.size !== this.written) return undefined;
    return this.pieces.finish();
  }

  /** Drops everything written; nothing reaches the store. */
  async abort(): Promise<void> {
    if (this.done) return;
    this.done = true;
    await this.discard();
    this.onRelease();
  }

  private async discard(): Promise<void> {
    await this.flush.settle();
    await this.file.close().catch(() => undefined);
    await rm(this.tempPath, { force: true });
  }
}

/** The chunks from byte `skip` on (after a short vectored write). */
function remaining(chunks: readonly Uint8Array[], skip: number): Uint8Array[] {
  if (skip === 0) return chunks as Uint8Array[];
  const out: Uint8Array[] = [];
  for (const chunk of chunks) {
    if (skip >= chunk.length) {
      skip -= chunk.length;
      continue;
    }
    out.push(skip > 0 ? chunk.subarray(skip) : chunk);
    skip = 0;
  }
  return out;
}
