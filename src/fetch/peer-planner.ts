import type { Logger } from 'pino';
import { closestPeers } from '../p2p/closest.js';
import type { PeerBook } from '../p2p/peer-book.js';
import type { Grants } from './grants.js';
import { PeerSource, type PeerSourceEvents, type Swarm } from './peer-source.js';
import type { BlobRequest, BlobSource, SourcePlanner } from './source.js';

export interface PeerPlannerOptions {
  swarm: Swarm;
  /** This agent, for electing origin fetchers among its zone. */
  self: { id: string; zone: string };
  /** Agents of a zone closest to a blob that fetch it from the origin (p2p.originFetchers). */
  originFetchers: number;
  /** How long to wait for an origin fetcher to start before going to the origin oneself. */
  fetcherTimeoutMs: number;
  /** How long to wait at most for a fetcher that is downloading. */
  fetchWaitMs: number;
  /** How often a waiting agent looks again. */
  pollMs?: number;
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
    const { swarm, origin } = this.opts;
    if (swarm.peers().length === 0) return [origin];
    if (!(await this.authorised(request))) return [origin];
    const holders = await this.holders(request);
    return [...holders.map((peer) => new PeerSource(peer, swarm, this.opts.events)), origin];
  }

  /**
   * Peers that hold the blob, best first. When none does yet, only the zone's elected origin
   * fetchers go to the origin; everyone else waits for them to get it, and goes to the origin
   * itself only if no fetcher starts within fetcherTimeoutMs (or finishes within fetchWaitMs),
   * so a pull never hangs on a missing peer.
   */
  private async holders(request: BlobRequest): Promise<string[]> {
    const digest = request.digest.value;
    const started = performance.now();
    const elected = this.isOriginFetcher(digest);
    for (let round = 0; ; round++) {
      const providers = await this.lookup(digest);
      const holding = await this.holding(request, providers);
      if (holding.length > 0 || elected) return holding;
      // Providers that do not hold it yet are fetching it (agents announce a blob when they
      // start fetching it from the origin): worth waiting for, up to fetchWaitMs.
      const waited = performance.now() - started;
      const limit = providers.length > 0 ? this.opts.fetchWaitMs : this.opts.fetcherTimeoutMs;
      if (waited >= limit) {
        if (round > 0) this.opts.logger.info({ digest, waitedMs: Math.round(waited) }, 'no peer got the blob in time: fetching it from the origin');
        return [];
      }
      await new Promise((resolve) => setTimeout(resolve, this.opts.pollMs ?? 200));
    }
  }

  private async lookup(digest: string): Promise<string[]> {
    const started = performance.now();
    const providers = await this.opts.swarm.findProviders(digest, {
      timeoutMs: this.opts.lookupTimeoutMs,
      max: this.opts.maxProviders ?? 8,
    });
    this.opts.events.lookup((performance.now() - started) / 1000, providers.length);
    return providers;
  }

  /** Providers that hold the whole blob now (an empty-range request answers that), ranked. */
  private async holding(request: BlobRequest, providers: string[]): Promise<string[]> {
    const { swarm, book } = this.opts;
    const known = new Map(swarm.peers().map((p) => [p.id, p]));
    const ranked = book.rank(providers.map((id) => known.get(id) ?? { id }));
    const probes = await Promise.all(
      ranked.map(async (peer) => {
        try {
          const opened = await swarm.openBlob(peer.id, request.digest.value, 0, { length: 0 });
          opened?.body.resume();
          return opened ? peer.id : undefined;
        } catch {
          return undefined;
        }
      }),
    );
    return probes.filter((id): id is string => id !== undefined);
  }

  /** Whether this agent is among its zone's origin fetchers for the digest. */
  private isOriginFetcher(digest: string): boolean {
    const { self, swarm } = this.opts;
    const zone = swarm.peers().filter((p) => p.zone === self.zone).map((p) => p.id);
    return closestPeers(digest, [self.id, ...zone], this.opts.originFetchers).includes(self.id);
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
