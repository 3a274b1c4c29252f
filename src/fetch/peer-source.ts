import type { Readable } from 'node:stream';
import type { BlobRequest, BlobSource, SourceBody } from './source.js';

/** The part of the libp2p node a download needs. */
export interface Swarm {
  findProviders(digest: string, opts: { timeoutMs: number; max?: number }): Promise<string[]>;
  openBlob(
    peerId: string,
    digest: string,
    offset: number,
    opts?: { signal?: AbortSignal; length?: number },
  ): Promise<{ size: number; body: Readable } | undefined>;
  peers(): { id: string; zone?: string; rttMs?: number }[];
}

export interface PeerSourceEvents {
  failed(peerId: string, reason: string): void;
  penalised(peerId: string, reason: string): void;
  transferred(seconds: number): void;
}

/** One provider of a blob, as a source; the orchestrator verifies what it sends. */
export class PeerSource implements BlobSource {
  readonly kind = 'peer' as const;
  readonly name: string;

  constructor(
    readonly peerId: string,
    private readonly swarm: Swarm,
    private readonly events: PeerSourceEvents,
  ) {
    this.name = `peer:${peerId}`;
  }

  async open(request: BlobRequest, offset: number, signal: AbortSignal): Promise<SourceBody | undefined> {
    const started = performance.now();
    let opened: SourceBody | undefined;
    try {
      opened = await this.swarm.openBlob(this.peerId, request.digest.value, offset, { signal });
    } catch (err) {
      this.events.failed(this.peerId, reasonOf(err));
      throw err;
    }
    if (!opened) return undefined;
    const { body } = opened;
    body.once('end', () => this.events.transferred((performance.now() - started) / 1000));
    body.once('error', (err) => this.events.failed(this.peerId, reasonOf(err)));
    return opened;
  }

  penalise(_request: BlobRequest, reason: string): void {
    this.events.penalised(this.peerId, reason);
  }
}

function reasonOf(err: unknown): string {
  const name = (err as { name?: unknown })?.name;
  return typeof name === 'string' && name !== 'Error' ? name : 'error';
}
