import type { Logger } from 'pino';
import type { PeerBook } from '../p2p/peer-book.js';
import type { Grants } from './grants.js';
import { PeerSource, type PeerSourceEvents, type Swarm } from './peer-source.js';
import type { BlobRequest, BlobSource, SourcePlanner } from './source.js';

export interface PeerPlannerOptions {
  swarm: Swarm;
  book: PeerBook;
  grants: Grants;
  origin: BlobSource;
  /** Asks the origin whether this agent may read the blob (a HEAD with its credentials). */
  originAllows(request: BlobRequest): Promise<boolean>;
  lookupTimeoutMs: number;
  logger: Logger;
  events: PeerSourceEvents & { lookup(seconds: number, found: number): void };
  /** Providers tried per download before the origin. */
  maxProviders?: number;
}

/**
 * Plans a download: the best providers in the swarm first, then the origin. Peers are asked
 * only for digests the origin let this agent reach (its grants), so private bytes never reach
 * an agent whose credentials the origin would refuse.
 */
export class PeerPlanner implements SourcePlanner {
  constructor(private readonly opts: PeerPlannerOptions) {}

  async plan(request: BlobRequest): Promise<BlobSource[]> {
    const { swarm, book, origin } = this.opts;
    if (swarm.peers().length === 0) return [origin];
    if (!(await this.authorised(request))) return [origin];
    const started = performance.now();
    const providers = await swarm.findProviders(request.digest.value, {
      timeoutMs: this.opts.lookupTimeoutMs,
      max: this.opts.maxProviders ?? 8,
    });
    this.opts.events.lookup((performance.now() - started) / 1000, providers.length);
    const known = new Map(swarm.peers().map((p) => [p.id, p]));
    const ranked = book.rank(providers.map((id) => known.get(id) ?? { id }));
    return [...ranked.map((peer) => new PeerSource(peer.id, swarm, this.opts.events)), origin];
  }

  private async authorised(request: BlobRequest): Promise<boolean> {
    const { registry, repository, digest } = request;
    if (await this.opts.grants.has(registry, repository, digest.value)) return true;
    try {
      if (!(await this.opts.originAllows(request))) return false;
    } catch (err) {
      this.opts.logger.debug({ digest: digest.value, err }, 'origin did not confirm access; not asking peers');
      return false;
    }
    await this.opts.grants.grant(registry, repository, [digest.value]);
    return true;
  }
}
