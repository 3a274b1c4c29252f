import { createReadStream, type ReadStream } from 'node:fs';
import { openReadStream } from './read-stream.js';
import { mkdir, open, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Digest } from '../oci/digest.js';
import { DigestMismatchError, hasherFor, tryParseDigest } from '../oci/digest.js';
import type { PieceTable } from '../fetch/piece-table.js';
import { BlobWriter } from './blob-writer.js';
import { Metadata, type BlobRecord } from './metadata.js';

export interface StoreOptions {
  dir: string;
  maxSize: number;
  /** Called after a blob leaves the store (the p2p layer stops providing it). */
  onEvict?: (digest: string) => void;
  now?: () => number;
}

export interface StoredBlob {
  digest: string;
  size: number;
  mediaType?: string;
  path: string;
}

const READ_CHUNK = 1024 * 1024;

/** Readers of a blob keep it from eviction until their stream closes. */
interface Lease {
  release(): void;
}

/**
 * Blob files by digest under `<dir>/blobs/<algorithm>/<hex>`, temporary writes under
 * `<dir>/tmp`, metadata in LevelDB under `<dir>/meta`. Knows nothing of the network.
 */
export class BlobStore {
  private readonly readers = new Map<string, number>();
  private readonly writing = new Set<string>();
  /** Writers of downloads in flight, by digest: peers read their provisional pieces. */
  private readonly writers = new Map<string, BlobWriter>();
  /** Size of every blob held, so accounting stays right when two paths forget one blob. */
  private readonly sizes = new Map<string, number>();
  private total = 0;
  private evicting: Promise<void> | undefined;
  private evictionChain: Promise<unknown> = Promise.resolve();
  private readonly now: () => number;

  private constructor(
    private readonly opts: StoreOptions,
    readonly metadata: Metadata,
  ) {
    this.now = opts.now ?? Date.now;
  }

  static async open(opts: StoreOptions): Promise<BlobStore> {
    const tmp = join(opts.dir, 'tmp');
    // Leftovers of writes that a crash interrupted are never valid blobs.
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true });
    for (const algorithm of ['sha256', 'sha512']) await mkdir(join(opts.dir, 'blobs', algorithm), { recursive: true });
    const metadata = await Metadata.open(join(opts.dir, 'meta'));
    const store = new BlobStore(opts, metadata);
    await store.reconcile();
    return store;
  }

  async close(): Promise<void> {
    await this.evicting;
    await this.metadata.close();
  }

  /** Bytes held, by the metadata's account. */
  get size(): number {
    return this.total;
  }

  /** Blobs held. */
  get count(): number {
    return this.sizes.size;
  }

  get maxSize(): number {
    return this.opts.maxSize;
  }

  pathOf(digest: Digest): string {
    return join(this.opts.dir, 'blobs', digest.algorithm, digest.hex);
  }

  async get(digest: Digest): Promise<StoredBlob | undefined> {
    const record = await this.metadata.getBlob(digest.value);
    if (!record) return undefined;
    const path = this.pathOf(digest);
    const info = await stat(path).catch(() => undefined);
    if (!info || info.size !== record.size) {
      // The file went away behind our back (or was truncated): forget it rather than serve it.
      await this.forget(digest.value);
      return undefined;
    }
    return { digest: digest.value, size: record.size, mediaType: record.mediaType, path };
  }

  /** Marks a blob used now, for least-recently-used eviction. */
  async touch(digest: Digest): Promise<void> {
    const record = await this.metadata.getBlob(digest.value);
    if (record) await this.metadata.putBlob(digest.value, { ...record, lastAccess: this.now() });
  }

  /**
   * Opens a stream over [start, end] (inclusive) of a stored blob. The blob cannot be evicted
   * until the stream closes.
   */
  async createReadStream(digest: Digest, range?: { start: number; end: number }): Promise<ReadStream | undefined> {
    const blob = await this.get(digest);
    if (!blob) return undefined;
    const lease = this.lease(digest.value);
    // Large reads keep per-chunk overhead low on multi-GiB blobs.
    const stream = await openReadStream(blob.path, { ...range, highWaterMark: READ_CHUNK }).catch((err: unknown) => {
      lease.release();
      throw err;
    });
    if (stream === undefined) {
      lease.release();
      return undefined;
    }
    stream.once('close', () => lease.release());
    void this.touch(digest).catch(() => undefined);
    return stream;
  }

  /** The writer of `digest`'s download in flight, if one is. */
  writerOf(digest: string): BlobWriter | undefined {
    return this.writers.get(digest);
  }

  /** Starts writing a blob; only one writer per digest exists at a time. */
  async beginWrite(digest: Digest, mediaType?: string): Promise<BlobWriter> {
    if (this.writing.has(digest.value)) throw new Error(`${digest.value} is already being written`);
    this.writing.add(digest.value);
    const temp = join(this.opts.dir, 'tmp', `${digest.hex.slice(0, 16)}-${randomBytes(6).toString('hex')}`);
    try {
      const writer = await BlobWriter.create(
        digest,
        temp,
        async (size, table) => {
          const at = this.now();
          await this.metadata.putBlob(digest.value, { size, mediaType, createdAt: at, lastAccess: at });
          if (table !== undefined) await this.metadata.putPieceTable(digest.value, table);
          this.account(digest.value, size);
          this.scheduleEviction();
        },
        () => {
          this.writing.delete(digest.value);
          if (this.writers.get(digest.value) === writer) this.writers.delete(digest.value);
        },
      );
      this.writers.set(digest.value, writer);
      return writer;
    } catch (err) {
      this.writing.delete(digest.value);
      throw err;
    }
  }

  /**
   * Moves a complete blob file (assembled elsewhere under this store's dir) into place once its
   * bytes hash to the digest; throws DigestMismatchError (and leaves the file) if they do not.
   * `opts.hashed` is the digest the caller computed over exactly the bytes it wrote to the file
   * (as it wrote them): it is checked instead of reading the file again. `opts.pieceTable`, the
   * table the file was assembled against, is kept with the blob (it is right if the digest is).
   */
  async commitFile(
    digest: Digest,
    path: string,
    source: string,
    opts: { mediaType?: string; hashed?: string; pieceTable?: PieceTable } = {},
  ): Promise<void> {
    if (this.writing.has(digest.value)) throw new Error(`${digest.value} is already being written`);
    this.writing.add(digest.value);
    try {
      let size = 0;
      let actual = opts.hashed;
      if (actual === undefined) {
        const hash = hasherFor(digest);
        for await (const chunk of createReadStream(path, { highWaterMark: READ_CHUNK })) {
          hash.update(chunk as Buffer);
          size += (chunk as Buffer).length;
        }
        actual = `${digest.algorithm}:${hash.digest('hex')}`;
      } else {
        size = (await stat(path)).size;
      }
      if (actual !== digest.value) throw new DigestMismatchError(digest.value, actual, source);
      const file = await open(path, 'r');
      try {
        await file.sync();
      } finally {
        await file.close();
      }
      await rename(path, this.pathOf(digest));
      const at = this.now();
      await this.metadata.putBlob(digest.value, { size, mediaType: opts.mediaType, createdAt: at, lastAccess: at });
      if (opts.pieceTable !== undefined) await this.metadata.putPieceTable(digest.value, opts.pieceTable);
      this.account(digest.value, size);
      this.scheduleEviction();
    } finally {
      this.writing.delete(digest.value);
    }
  }

  /** Evicts least recently used blobs, not being read, until the store fits its cap. */
  evict(): Promise<string[]> {
    // One eviction pass at a time: two passes over one snapshot would free a blob twice.
    const pass = this.evictionChain.then(() => this.evictPass());
    this.evictionChain = pass.catch(() => undefined);
    return pass;
  }

  private async evictPass(): Promise<string[]> {
    if (this.total <= this.opts.maxSize) return [];
    const candidates: [string, BlobRecord][] = [];
    for await (const entry of this.metadata.blobs()) candidates.push(entry);
    candidates.sort((a, b) => a[1].lastAccess - b[1].lastAccess);
    const evicted: string[] = [];
    for (const [digest] of candidates) {
      if (this.total <= this.opts.maxSize) break;
      if ((this.readers.get(digest) ?? 0) > 0 || this.writing.has(digest)) continue;
      // The snapshot may be stale: skip what another path already removed.
      if (!this.sizes.has(digest)) continue;
      const parsed = tryParseDigest(digest);
      if (parsed) await unlink(this.pathOf(parsed)).catch(() => undefined);
      await this.forget(digest);
      evicted.push(digest);
      this.opts.onEvict?.(digest);
    }
    return evicted;
  }

  /** Every digest held (at start-up the p2p layer provides them all). */
  async *digests(): AsyncGenerator<string> {
    for await (const [digest] of this.metadata.blobs()) yield digest;
  }

  private scheduleEviction(): void {
    if (this.total <= this.opts.maxSize || this.evicting) return;
    this.evicting = this.evict()
      .then(() => undefined)
      .finally(() => {
        this.evicting = undefined;
      });
  }

  /** Keeps a blob from eviction until released (a response reading its file). */
  lease(digest: string): Lease {
    this.readers.set(digest, (this.readers.get(digest) ?? 0) + 1);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        const left = (this.readers.get(digest) ?? 1) - 1;
        if (left > 0) this.readers.set(digest, left);
        else this.readers.delete(digest);
        // A blob that was spared while read may now be evicted.
        this.scheduleEviction();
      },
    };
  }

  private account(digest: string, size: number): void {
    this.total += size - (this.sizes.get(digest) ?? 0);
    this.sizes.set(digest, size);
  }

  private async forget(digest: string): Promise<void> {
    this.total -= this.sizes.get(digest) ?? 0;
    this.sizes.delete(digest);
    await this.metadata.deleteBlob(digest);
    await this.metadata.deletePieceTable(digest);
  }

  /** Brings metadata and files into agreement after a crash, and sums the store's size. */
  private async reconcile(): Promise<void> {
    const known = new Set<string>();
    for await (const [digest, record] of this.metadata.blobs()) {
      const parsed = tryParseDigest(digest);
      const info = parsed ? await stat(this.pathOf(parsed)).catch(() => undefined) : undefined;
      if (!parsed || !info || info.size !== record.size) {
        await this.metadata.deleteBlob(digest);
        if (parsed) await unlink(this.pathOf(parsed)).catch(() => undefined);
        continue;
      }
      known.add(digest);
      this.account(digest, record.size);
    }
    // A file renamed into place just before a crash lost its record: it was verified before
    // the rename, so it is adopted rather than thrown away.
    for (const algorithm of await readdir(join(this.opts.dir, 'blobs')).catch(() => [] as string[])) {
      for (const hex of await readdir(join(this.opts.dir, 'blobs', algorithm)).catch(() => [] as string[])) {
        const digest = tryParseDigest(`${algorithm}:${hex}`);
        const path = join(this.opts.dir, 'blobs', algorithm, hex);
        if (!digest) {
          await rm(path, { recursive: true, force: true });
          continue;
        }
        if (known.has(digest.value)) continue;
        const info = await stat(path);
        const at = this.now();
        await this.metadata.putBlob(digest.value, { size: info.size, createdAt: at, lastAccess: at });
        this.account(digest.value, info.size);
      }
    }
    this.scheduleEviction();
  }
}
