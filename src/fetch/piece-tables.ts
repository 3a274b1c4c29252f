import { createReadStream } from 'node:fs';
import { tryParseDigest } from '../oci/digest.js';
import type { BlobStore } from '../store/blob-store.js';
import { PieceHasher, validatePieceTable, type PieceTable } from './piece-table.js';
import { SingleFlight } from './single-flight.js';

/**
 * Piece tables of complete blobs. A table is computed the first time a peer asks for one (one
 * read of the verified file), then kept in the store's metadata: single-node pulls never pay
 * for it, and a rollout's first holder pays once.
 */
export class PieceTables {
  private readonly flights = new SingleFlight<string, PieceTable | undefined>();

  constructor(private readonly store: BlobStore) {}

  get(digest: string): Promise<PieceTable | undefined> {
    return this.flights.run(digest, async () => {
      const parsed = tryParseDigest(digest);
      if (!parsed) return undefined;
      const blob = await this.store.get(parsed);
      if (!blob) return undefined;
      const cached = await this.store.metadata.getPieceTable(digest);
      if (cached !== undefined) {
        try {
          return validatePieceTable(cached, blob.size);
        } catch {
          // A damaged record is computed again.
        }
      }
      const hasher = new PieceHasher(blob.size);
      const lease = this.store.lease(digest);
      try {
        for await (const chunk of createReadStream(blob.path, { highWaterMark: 1024 * 1024 })) hasher.update(chunk as Buffer);
      } finally {
        lease.release();
      }
      const table = hasher.finish();
      await this.store.metadata.putPieceTable(digest, table);
      return table;
    });
  }
}
