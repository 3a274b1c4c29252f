import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { closestPeers } from '../p2p/closest.js';
import type { PeerBook } from '../p2p/peer-book.js';
import type { Grants } from './grants.js';
import type { HashWorker } from './hash-worker.js';
import type { Partials } from './partials.js';
import type { PieceTable } from './piece-table.js';
import type { BlobRequest, BlobSource, SourcePlanner } from './source.js';
import type { PieceSource } from './swarm-download.js';
import { SwarmSource, type RangeSource, type SwarmSourceEvents } from './swarm-source.js';

/** How often a waiting agent asks the DHT again (when no fetcher is known), and the longest pause between its checks. */
const LOOKUP_INTERVAL_MS = 3_000;
const MAX_POLL_MS = 1_000;
/** How long a peer fetching the blob may hold a waiting agent's question (a long poll). */
const FETCHER_WAIT_MS = 2_000;

/** The part of the libp2p node a download needs. */
export interface Swarm {
  findProviders(digest: string, opts: { timeoutMs: number; max?: number }): Promise<string[]>;
  pieceInfo(peerId: string, digest: string, opts?: { signal?: AbortSignal; wait?: { known: number; waitMs: number } }): Promise<{ table: PieceTable; have: boolean[]; peers?: string[] } | 'pending' | undefined>;
  openBlob(
    peerId: string,
    digest: string,
    offset: number,
    opts?: { signal?: AbortSignal; length?: number },
  ): Promise<{ size: number; body: Readable } | undefined>;
  peers(): { id: string; zone?: string; rttMs?: number }[];
  requestFetch(peerId: string, request: { registry: string; repository: string; digest: string }, opts?: { signal?: AbortSignal }): Promise<boolean>;
}

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
  /** How often a waiting agent that knows no fetcher asks the DHT again; default 3 s. */
  lookupIntervalMs?: number;
  /** True for digests a peer asked this agent to fetch from the origin. */
  askedToFetch?(digest: string): boolean;
  book: PeerBook;
  grants: Grants;
  partials: Partials;
  origin: BlobSource & RangeSource;
  /** Asks the origin whether this agent may read the blob (a HEAD with its credentials). */
  originAllows(request: BlobRequest): Promise<boolean>;
  lookupTimeoutMs: number;
  logger: Logger;
  events: SwarmSourceEvents & { lookup(seconds: number, found: number): void };
  /** Providers asked per download. */
  maxProviders?: number;
  /** Hashes pieces and assembled blobs off the event loop. */
  hashing?: HashWorker;
}

/**
 * Plans a download: the swarm first (pieces from every provider that holds some), then the
 * origin. Peers are asked only for digests the origin let this agent reach (its grants), so
 * private bytes never reach an agent whose credentials the origin would refuse.
 */
export class PeerPlanner implements SourcePlanner {
  private readonly pieces: PieceSource;

  constructor(private readonly opts: PeerPlannerOptions) {
    const { swarm } = opts;
    this.pieces = {
      pieceInfo: async (peer, digest, signal, wait) => {
        const answer = await swarm.pieceInfo(peer, digest, { signal, ...(wait && { wait }) });
        if (typeof answer !== 'object' || answer.peers === undefined) return answer;
        // Peers another agent named join a download only if they are of this zone (and not
        // penalised): a blob should cross between zones once, through the zone's fetcher.
        const zoneOf = new Map(swarm.peers().map((p) => [p.id, p.zone]));
        const local = answer.peers.filter((id) => id !== opts.self.id && zoneOf.get(id) === opts.self.zone);
        return { ...answer, peers: opts.book.rank(local.map((id) => ({ id }))).map((p) => p.id) };
      },
      openRange: async (peer, digest, offset, length, signal) =>
        (await swarm.openBlob(peer, digest, offset, { length, signal }))?.body,
    };
  }

  async plan(request: BlobRequest): Promise<BlobSource[]> {
    const { swarm, origin } = this.opts;
    if (swarm.peers().length === 0) return [origin];
    if (!(await this.authorised(request))) return [origin];
    const holders = await this.holders(request);
    if (holders.length === 0) return [origin];
    const { partials, events, logger, hashing } = this.opts;
    return [new SwarmSource({ providers: holders, pieces: this.pieces, partials, events, logger, fallback: origin, ...(hashing && { hashing }) }), origin];
  }

  /**
   * Peers holding verified pieces of the blob, best first. When none does yet, only the zone's
   * elected origin fetchers go to the origin; everyone else waits while some peer says it is
   * fetching the blob (up to fetchWaitMs), and goes to the origin itself if nobody starts
   * within fetcherTimeoutMs: a pull never hangs on a missing peer.
   */
  private async holders(request: BlobRequest): Promise<string[]> {
    const digest = request.digest.value;
    const started = performance.now();
    const fetchers = this.originFetchers(digest);
    const elected = fetchers.includes(this.opts.self.id);
    const others = fetchers.filter((id) => id !== this.opts.self.id);
    let asked = false;
    /** The elected fetchers refused to fetch it: fetch it oneself once the DHT had its say. */
    let refused = false;
    let providers: string[] = others;
    /** When the DHT was last asked; never yet while -Infinity. */
    let lookedUp = -Infinity;
    const consulted = (): boolean => lookedUp > -Infinity;
    let pause = this.opts.pollMs ?? 200;
    /** Peers that said they are fetching it (or agreed to): waited for while they stay connected. */
    const fetching = new Set<string>();
    for (let round = 0; ; round++) {
      // The zone's other elected fetchers are asked first, without the DHT: a blob enters the
      // zone through them, so in a rollout they hold it or are fetching it, and a whole zone
      // asking the DHT at once cost each agent a query to every peer (DHT work was a third of
      // the agents' CPU early in a rollout). The DHT is asked when there is no other fetcher or
      // none of them has it, and again every few seconds while nobody is known to be fetching
      // it; a fetcher that is fetching it is asked to answer once it holds a piece (a long poll).
      const interval = this.opts.lookupIntervalMs ?? LOOKUP_INTERVAL_MS;
      if (fetching.size === 0 && (round > 0 || others.length === 0) && performance.now() - lookedUp >= interval) {
        providers = [...new Set([...providers, ...(await this.lookup(digest))])];
        lookedUp = performance.now();
      }
      const left = this.opts.fetchWaitMs - (performance.now() - started);
      const answers = await this.ask(digest, providers, fetching.size > 0 ? Math.max(0, Math.min(FETCHER_WAIT_MS, left)) : 0);
      if (answers.local.length > 0) return answers.local;
      // A blob enters a zone through the zone's elected fetcher (from another zone's holders if
      // there are any, else from the origin); the rest of the zone takes it from inside, so it
      // crosses between zones about once.
      if (elected || this.opts.askedToFetch?.(digest)) {
        if (consulted()) return answers.remote;
        continue;
      }
      if (refused && consulted()) return answers.remote;
      for (const peer of answers.pending) fetching.add(peer);
      for (const peer of answers.refused) fetching.delete(peer);
      if (fetching.size === 0 && !asked) {
        // Nobody of the zone is fetching it yet: ask the elected fetchers to start now rather
        // than wait for their own clients to need it. If none will, fetch it oneself at once.
        asked = true;
        const accepted = await this.askToFetch(request, fetchers);
        if (accepted.length === 0) {
          if (consulted()) return answers.remote;
          refused = true;
          continue;
        }
        for (const peer of accepted) fetching.add(peer);
        providers = [...new Set([...providers, ...accepted])];
      }
      // A fetcher that went away (or never started within fetcherTimeoutMs) is not waited for.
      const connected = new Set(this.opts.swarm.peers().map((p) => p.id));
      for (const peer of fetching) if (!connected.has(peer)) fetching.delete(peer);
      const waited = performance.now() - started;
      const limit = fetching.size > 0 ? this.opts.fetchWaitMs : this.opts.fetcherTimeoutMs;
      if (waited >= limit) {
        this.opts.logger.info({ digest, waitedMs: Math.round(waited) }, 'no peer of the zone got the blob in time: fetching it itself');
        return answers.remote;
      }
      await new Promise((resolve) => setTimeout(resolve, pause));
      pause = Math.min(pause * 1.5, MAX_POLL_MS);
    }
  }

  /** Asks the elected fetchers to fetch the blob; answers those that accepted. */
  private async askToFetch(request: BlobRequest, fetchers: string[]): Promise<string[]> {
    const { registry, repository, digest } = request;
    const answers = await Promise.all(
      fetchers.map(async (peer) =>
        (await this.opts.swarm
          .requestFetch(peer, { registry, repository, digest: digest.value }, { signal: AbortSignal.timeout(5_000) })
          .catch(() => false))
          ? peer
          : undefined,
      ),
    );
    return answers.filter((peer): peer is string => peer !== undefined);
  }

  private async lookup(digest: string): Promise<string[]> {
    const started = performance.now();
    const providers = await this.opts.swarm.findProviders(digest, {
      timeoutMs: this.opts.lookupTimeoutMs,
      max: this.opts.maxProviders ?? 16,
    });
    this.opts.events.lookup((performance.now() - started) / 1000, providers.length);
    return providers;
  }

  /**
   * Asks each provider what it holds: verified pieces (ranked), or only that it is fetching.
   * Same-zone peers come first: while one of them holds or is fetching the blob, peers of other
   * zones are not used, so a blob crosses between zones about once.
   */
  private async ask(
    digest: string,
    providers: string[],
    waitMs: number,
  ): Promise<{ local: string[]; remote: string[]; pending: string[]; refused: string[] }> {
    const { swarm, book, self } = this.opts;
    const known = new Map(swarm.peers().map((p) => [p.id, p]));
    const ranked = book.rank(providers.map((id) => known.get(id) ?? { id }));
    // Every provider asked holds nothing yet (else the wait is over), so news is any piece.
    const wait = waitMs > 0 ? { wait: { known: 0, waitMs } } : {};
    const answers = await Promise.all(
      ranked.map(async (peer) => {
        const local = peer.zone === self.zone;
        try {
          const answer = await swarm.pieceInfo(peer.id, digest, { signal: AbortSignal.timeout(5_000 + waitMs), ...wait });
          return { id: peer.id, local, answer, failed: false };
        } catch {
          // No answer (busy, slow, gone) says nothing either way.
          return { id: peer.id, local, answer: undefined, failed: true };
        }
      }),
    );
    const holds = (a: (typeof answers)[number]) => typeof a.answer === 'object' && a.answer.have.some(Boolean);
    return {
      local: answers.filter((a) => a.local && holds(a)).map(({ id }) => id),
      remote: answers.filter((a) => !a.local && holds(a)).map(({ id }) => id),
      pending: answers.filter((a) => a.local && a.answer === 'pending').map(({ id }) => id),
      refused: answers.filter((a) => !a.failed && a.answer === undefined).map(({ id }) => id),
    };
  }

  /** The zone's origin fetchers for the digest (this agent may be one). */
  private originFetchers(digest: string): string[] {
    const { self, swarm } = this.opts;
    const zone = swarm.peers().filter((p) => p.zone === self.zone).map((p) => p.id);
    return closestPeers(digest, [self.id, ...zone], this.opts.originFetchers);
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
