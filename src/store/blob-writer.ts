import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import type { Hash } from 'node:crypto';
import { DigestMismatchError, hasherFor, type Digest } from '../oci/digest.js';

/**
 * Writes one blob to a temporary file while hashing it. Bytes may arrive from several
 * sources one after another (a resume at `bytesWritten`); the blob becomes visible only
 * through `commit`, after the whole stream hashed to its digest.
 */
export class BlobWriter {
  private readonly hash: Hash;
  private written = 0;
  private done = false;

  constructor(
    readonly digest: Digest,
    private readonly tempPath: string,
    private readonly file: FileHandle,
    private readonly onCommit: (size: number) => Promise<void>,
    private readonly onRelease: () => void,
  ) {
    this.hash = hasherFor(digest);
  }

  static async create(
    digest: Digest,
    tempPath: string,
    onCommit: (size: number) => Promise<void>,
    onRelease: () => void,
  ): Promise<BlobWriter> {
    const file = await open(tempPath, 'wx', 0o644);
    return new BlobWriter(digest, tempPath, file, onCommit, onRelease);
  }

  get bytesWritten(): number {
    return this.written;
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
    let written = 0;
    while (written < length) {
      const { bytesWritten } = await this.file.writev(remaining(list, written), this.written + written);
      written += bytesWritten;
    }
    this.written += length;
  }

  /** Verifies the digest, makes the file durable and moves it into place. */
  async commit(finalPath: string, source: string): Promise<void> {
    if (this.done) throw new Error('blob writer is closed');
    this.done = true;
    try {
      const actual = `${this.digest.algorithm}:${this.hash.digest('hex')}`;
      if (actual !== this.digest.value) throw new DigestMismatchError(this.digest.value, actual, source);
      await this.file.sync();
      await this.file.close();
      await rename(this.tempPath, finalPath);
      await this.onCommit(this.written);
    } catch (err) {
      await this.discard();
      throw err;
    } finally {
      this.onRelease();
    }
  }

  /** Drops everything written; nothing reaches the store. */
  async abort(): Promise<void> {
    if (this.done) return;
    this.done = true;
    await this.discard();
    this.onRelease();
  }

  private async discard(): Promise<void> {
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
