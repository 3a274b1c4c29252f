import { Level } from 'level';

/** What the store remembers of a blob (manifests are blobs with a media type). */
export interface BlobRecord {
  size: number;
  /** Set for manifests: the exact Content-Type the origin gave them. */
  mediaType?: string;
  createdAt: number;
  lastAccess: number;
}

/** A tag as the origin last resolved it, kept for `upstreams.staleIfError`. */
export interface TagRecord {
  digest: string;
  mediaType: string;
  size: number;
  resolvedAt: number;
}

const BLOB = 'b!';
const TAG = 't!';
const GRANT = 'g!';
const PIECES = 'p!';

/**
 * The store's embedded LevelDB. Keys are prefixed by kind so one database holds blob
 * records and the tag cache (later: piece tables, authorisations).
 */
export class Metadata {
  private constructor(private readonly db: Level<string, string>) {}

  static async open(location: string): Promise<Metadata> {
    const db = new Level<string, string>(location, { valueEncoding: 'utf8' });
    await db.open();
    return new Metadata(db);
  }

  async close(): Promise<void> {
    await this.db.close();
  }

  async getBlob(digest: string): Promise<BlobRecord | undefined> {
    return parse<BlobRecord>(await this.db.get(BLOB + digest));
  }

  async putBlob(digest: string, record: BlobRecord): Promise<void> {
    await this.db.put(BLOB + digest, JSON.stringify(record));
  }

  async deleteBlob(digest: string): Promise<void> {
    await this.db.del(BLOB + digest);
  }

  async *blobs(): AsyncGenerator<[string, BlobRecord]> {
    for await (const [key, value] of this.db.iterator({ gt: BLOB, lt: BLOB + '\xff' })) {
      const record = parse<BlobRecord>(value);
      if (record) yield [key.slice(BLOB.length), record];
    }
  }

  async getTag(key: string): Promise<TagRecord | undefined> {
    return parse<TagRecord>(await this.db.get(TAG + key));
  }

  async putTag(key: string, record: TagRecord): Promise<void> {
    await this.db.put(TAG + key, JSON.stringify(record));
  }

  async getPieceTable(digest: string): Promise<unknown> {
    return parse<unknown>(await this.db.get(PIECES + digest));
  }

  async putPieceTable(digest: string, table: unknown): Promise<void> {
    await this.db.put(PIECES + digest, JSON.stringify(table));
  }

  async deletePieceTable(digest: string): Promise<void> {
    await this.db.del(PIECES + digest);
  }

  async putGrants(keys: string[], at: number): Promise<void> {
    if (keys.length === 0) return;
    await this.db.batch(keys.map((key) => ({ type: 'put' as const, key: GRANT + key, value: String(at) })));
  }

  async hasGrant(key: string): Promise<boolean> {
    return (await this.db.get(GRANT + key)) !== undefined;
  }
}

function parse<T>(value: string | undefined): T | undefined {
  if (value === undefined) return undefined;
  try {
    return JSON.parse(value) as T;
  } catch {
    // A damaged record is treated as absent; the blob is fetched again.
    return undefined;
  }
}
