import type { Readable } from 'node:stream';
import type { Digest } from '../oci/digest.js';
import type { PieceTable } from './piece-table.js';

/** What a download is for: the digest, and the repository through which the client reached it. */
export interface BlobRequest {
  digest: Digest;
  /** Registry host as clients name it (`docker.io`). */
  registry: string;
  /** Repository at that registry (`library/nginx`). */
  repository: string;
  /** The client request that started the download, so its logs can be followed through a pull. */
  requestId?: string;
}

export interface SourceBody {
  /** The whole blob's size, as the source declares it. */
  size: number;
  /** Bytes from the requested offset to the end. */
  body: Readable;
  /**
   * Set when the source assembled the whole blob in a file of its own (the swarm): the
   * orchestrator then checks that file and moves it into the store instead of copying it.
   * `release` is called once the file was taken or refused. `hashed` is the digest the source
   * computed over exactly the bytes it wrote, when it did (saves reading the file again);
   * `pieceTable` the table its pieces were checked against (kept with the blob once committed).
   */
  file?: { path: string; hashed?: string; pieceTable?: PieceTable; release(): Promise<void> };
}

/**
 * One place a blob's bytes can come from (a peer, the origin). Sources only move bytes;
 * the orchestrator verifies them. `open` answers undefined when the source does not have
 * the blob, and throws when it failed trying.
 */
export interface BlobSource {
  /** For logs: `origin`, `peer:<id>`. */
  readonly name: string;
  /** For metrics: where bytes came from. */
  readonly kind: 'peer' | 'origin';
  open(request: BlobRequest, offset: number, signal: AbortSignal): Promise<SourceBody | undefined>;
  /** True when the source reports its own bytes (by their real origin) to the observer. */
  readonly countsOwnBytes?: boolean;
  /** Told when bytes from this source failed verification. */
  penalise?(request: BlobRequest, reason: string): void;
}

/** Decides, per download, which sources to try and in what order (peers first, then the origin). */
export interface SourcePlanner {
  plan(request: BlobRequest): Promise<BlobSource[]>;
}

/** The same sources for every download. */
export function fixedPlan(sources: readonly BlobSource[]): SourcePlanner {
  return { plan: async () => [...sources] };
}
