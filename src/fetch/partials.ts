import { open, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { PieceNews } from './piece-news.js';
import { pieceRange, type PieceTable } from './piece-table.js';
import { openReadStream } from '../store/read-stream.js';

/** Read size for serving pieces: the blob protocol sends 1 MiB batches. */
const READ_CHUNK = 1024 * 1024;

/** A blob being assembled from pieces: its file, its table, and the pieces verified so far. */
export interface Partial {
  readonly digest: string;
  readonly path: string;
  readonly file: FileHandle;
  table?: PieceTable;
  have: boolean[];
  /**
   * The table was learnt provisional (the first wave): its pieces may travel between agents
   * but reach no client before the whole blob has hashed to its digest.
   */
  provisional?: boolean;
}

/**
 * Blobs being downloaded piece by piece. Verified pieces of them are served to peers while the
 * rest is still arriving, which is what makes a rollout spread like a swarm.
 */
export class Partials {
  private readonly byDigest = new Map<string, Partial>();

  /** `news` hears of every change, for peers waiting on one (long polls). */
  constructor(
    private readonly tmpDir: string,
    private readonly news?: PieceNews,
  ) {}

  async start(digest: string): Promise<Partial> {
    if (this.byDigest.has(digest)) throw new Error(`${digest} is already being assembled`);
    const path = join(this.tmpDir, `pieces-${digest.slice(digest.indexOf(':') + 1, 24)}-${randomBytes(4).toString('hex')}`);
    const file = await open(path, 'w+', 0o644);
    const partial: Partial = { digest, path, file, have: [] };
    this.byDigest.set(digest, partial);
    this.news?.notify(digest);
    return partial;
  }

  all(): Partial[] {
    return [...this.byDigest.values()];
  }

  get(digest: string): Partial | undefined {
    return this.byDigest.get(digest);
  }

  /** Records a verified piece: from now on peers may read it. */
  markHave(partial: Partial, index: number): void {
    partial.have[index] = true;
    this.news?.notify(partial.digest);
  }

  async finish(partial: Partial): Promise<void> {
    if (this.byDigest.get(partial.digest) === partial) this.byDigest.delete(partial.digest);
    this.news?.notify(partial.digest);
    await partial.file.close().catch(() => undefined);
    await rm(partial.path, { force: true });
  }

  /**
   * Bytes [offset, offset+length) if every piece they touch is verified; else undefined (also
   * when the blob finished and its partial file went away meanwhile).
   */
  async read(digest: string, offset: number, length?: number): Promise<{ size: number; body: Readable } | undefined> {
    const partial = this.byDigest.get(digest);
    const table = partial?.table;
    if (!partial || !table) return undefined;
    const end = Math.min(table.size, length === undefined ? table.size : offset + length);
    if (offset > end) return undefined;
    const first = Math.floor(offset / table.pieceSize);
    const last = Math.max(first, Math.ceil(end / table.pieceSize) - 1);
    for (let i = first; i <= last && end > offset; i++) {
      if (!partial.have[i]) return undefined;
    }
    if (end === offset) return { size: table.size, body: Readable.from([]) };
    const body = await openReadStream(partial.path, { start: offset, end: end - 1, highWaterMark: READ_CHUNK });
    return body === undefined ? undefined : { size: table.size, body };
  }

  /** The contiguous verified prefix, in bytes. */
  static prefix(partial: Partial): number {
    const table = partial.table;
    if (!table) return 0;
    let bytes = 0;
    for (let i = 0; i < table.hashes.length && partial.have[i]; i++) bytes = pieceRange(table, i).end;
    return bytes;
  }
}
