import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { closestPeers } from '../p2p/closest.js';
import { HolderSearch } from './holder-search.js';
import type { Liveness } from '../p2p/membership/membership.js';
import type { PeerBook } from '../p2p/peer-book.js';
import type { Grants } from './grants.js';
import type { HashWorker } from './hash-worker.js';
import type { Partials } from './partials.js';
import type { PieceTable } from './piece-table.js';
import type { BlobRequest, BlobSource, SourcePlanner } from './source.js';
import type { PieceSource } from './swarm-download.js';
import { SwarmSource, type RangeSource, type SwarmSourceEvents } from './swarm-source.js';

/**
 * How often a waiting agent first seeks other holders (neighbours, the DHT), and the longest
 * pause between its checks of a fetcher that does not answer. Both back off: every check is a
 * stream (a dial, if the fetcher is at its limit), and at 64 agents on two cores an agent that
 * kept checking every second for minutes was the load that kept its fetcher from answering.
 */
const LOOKUP_INTERVAL_MS = 3_000;
const MAX_POLL_MS = 4_000;
/** Seeking backs off to this many lookup intervals between rounds. */
const MAX_SEEK_BACKOFF = 8;
/**
 * How long a peer fetching the blob may hold a waiting agent's question (a long poll). It is
 * answered as soon as the peer holds a piece, so a longer hold costs no time, and each hold
 * is one stream instead of four.
 */
export const FETCHER_WAIT_MS = 8_000;
/** While a fetcher does not answer, membership neighbours are asked first; the DHT once, after this many lookup intervals. */
const NEIGHBOUR_ROUNDS_PER_LOOKUP = 4;
/**
 * How long one question to a peer may take (beyond a long poll's hold), dial included. A
 * loaded peer answers late, and one asked again after a short timeout does the work twice: at 64
 * agents on two cores nearly every unanswered question to a fetcher had timed out at 5 s, with
 * its dial and handshake abandoned halfway, so the fetcher never caught up. A peer that is gone
 * fails fast (refused) or leaves membership; the search's own patience decides, not this.
 */
const ASK_TIMEOUT_MS = 20_000;
/** Ranks of fetchers given up on (each after originFetcherTimeout without an answer) before an agent fetches itself. */
const MAX_FAILOVERS = 2;

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
  /** Connected peers (zones as announced, round-trip times as measured). */
  peers(): { id: string; zone?: string; rttMs?: number }[];
  /** Live members of the fleet, this agent excluded, connected or not. */
  members(): { id: string; zone: string }[];
  isMember(peerId: string): boolean;
  /** This agent's membership links: peers it holds a connection to anyway. */
  neighbours(): string[];
  liveness(peerId: string): Liveness;
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
  /** Called when `hearsFetching(digest)` changes (it is part of what this agent tells peers). */
  fetchingChanged?(digest: string): void;
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
  /** Digests whose search waits on a fetcher that says it is downloading them. */
  private readonly fetching = new Set<string>();

  constructor(private readonly opts: PeerPlannerOptions) {
    const { swarm } = opts;
    this.pieces = {
      pieceInfo: async (peer, digest, signal, wait) => {
        const answer = await swarm.pieceInfo(peer, digest, { signal, ...(wait && { wait }) });
        if (typeof answer !== 'object' || answer.peers === undefined) return answer;
        // Peers another agent named join a download only if they are of this zone (and not
        // penalised): a blob should cross between zones once, through the zone's fetcher.
        const zoneOf = this.zones();
        const local = answer.peers.filter((id) => id !== opts.self.id && zoneOf.get(id) === opts.self.zone);
        return { ...answer, peers: opts.book.rank(local.map((id) => ({ id }))).map((p) => p.id) };
      },
      openRange: async (peer, digest, offset, length, signal) =>
        (await swarm.openBlob(peer, digest, offset, { length, signal }))?.body,
    };
  }

  /**
   * Whether this agent heard from the zone's fetcher that it is downloading the blob, and waits
   * for it. A peer that asks is told the blob is being fetched, so an agent the fetcher cannot
   * take (at its connection limit) waits with this one instead of failing the fetcher over.
   */
  hearsFetching(digest: string): boolean {
    return this.fetching.has(digest);
  }

  async plan(request: BlobRequest): Promise<BlobSource[]> {
    const { swarm, origin } = this.opts;
    if (swarm.members().length === 0) return [origin];
    if (!(await this.authorised(request))) {
      this.opts.events.originFallback?.('origin did not confirm access');
      return [origin];
    }
    const holders = await this.holders(request);
    if (holders.length === 0) return [origin];
    const { partials, events, logger, hashing } = this.opts;
    // A stalled swarm asks the zone again (a new search) before any byte comes from the origin.
    const more = async (_signal: AbortSignal, missing?: ReadonlySet<number>): Promise<string[]> => {
      const found = await this.holders(request, missing);
      const zones = this.zones();
      return found.filter((id) => zones.get(id) === this.opts.self.zone);
    };
    return [new SwarmSource({ providers: holders, pieces: this.pieces, partials, events, logger, fallback: origin, more, ...(hashing && { hashing }) }), origin];
  }

  /**
   * Peers holding verified pieces of the blob, best first; empty: fetch it from the origin. The
   * decision is HolderSearch's (holder-search.ts); this loop does its I/O: asks the zone's
   * fetchers and the DHT's providers what they hold, long-polls a fetcher that is downloading,
   * and asks a fetcher to start. `wanted`: the pieces a stalled download still lacks; a peer
   * holding none of them is no holder (a fetcher among them is downloading: it is waited for).
   */
  async holders(request: BlobRequest, wanted?: ReadonlySet<number>): Promise<string[]> {
    const { swarm, self } = this.opts;
    const digest = request.digest.value;
    const started = performance.now();
    const elapsed = (): number => performance.now() - started;
    const search = new HolderSearch({
      self: self.id,
      ranked: this.ranking(digest),
      fetchers: this.opts.originFetchers,
      askedToFetch: this.opts.askedToFetch?.(digest) ?? false,
      fetcherTimeoutMs: this.opts.fetcherTimeoutMs,
      fetchWaitMs: this.opts.fetchWaitMs,
      maxFailovers: MAX_FAILOVERS,
    });
    const interval = this.opts.lookupIntervalMs ?? LOOKUP_INTERVAL_MS;
    let providers: string[] = [];
    /** Whether the DHT has been asked yet. */
    let consulted = false;
    /** When alternatives to the fetchers (neighbours or the DHT) were last sought, and how long until the next time. */
    let sought = -Infinity;
    let seekEvery = interval;
    /** While there are neighbours to ask, when the DHT is asked. */
    let nextLookup = -Infinity;
    let pause = this.opts.pollMs ?? 200;
    /** Peers of the zone that said last round that the blob is being fetched (HolderSearch's 'relayed'). */
    let relays: string[] = [];
    /** Pieces each peer held at its last answer: a long poll waits for more than that. */
    const held = new Map<string, number>();
    try {
      for (let round = 0; ; round++) {
        const fetchers = search.fetchers();
        // Long polls (of a downloading fetcher, or of relays) wait by themselves: no seeking meanwhile.
        const waiting = search.state === 'waiting' || search.state === 'relayed';
        // The zone's fetchers are asked first, without the DHT: a blob enters the zone through
        // them, so in a rollout they hold it or are fetching it, and a whole zone asking the DHT
        // at once cost each agent a query to every peer. Alternatives are sought when there is no
        // other fetcher or they do not have it, and again every few seconds while nobody is known
        // to be fetching it: first this agent's membership neighbours of the zone (connections it
        // holds anyway; in a rollout they got it from the fetcher, or from theirs), the DHT less
        // often. A fetcher at its connection limit answers only some of its zone; the rest took
        // the blob from each other's neighbours instead of each asking the DHT, a walk over new
        // connections, every 3 s (the larger part of a 32-agent rollout's CPU).
        let extra: string[] = [];
        const now = performance.now();
        if (!waiting && (round > 0 || fetchers.length === 0) && now - sought >= seekEvery) {
          if (sought > -Infinity) seekEvery = Math.min(seekEvery * 2, interval * MAX_SEEK_BACKOFF);
          sought = now;
          // A fetcher asks its neighbours too, with the DHT, before the origin: after a failover
          // they may hold what the fetcher that left passed on.
          extra = this.zoneNeighbours();
          if (extra.length > 0 && nextLookup === -Infinity) nextLookup = now + interval * NEIGHBOUR_ROUNDS_PER_LOOKUP;
          // Once per search: in a rollout the DHT names the fetchers this agent already knows
          // (the rest announce later), and at 64 agents a walk every few seconds by every agent
          // the fetcher could not answer was a large share of the fleet's CPU.
          if (fetchers.length === 0 || (!consulted && (extra.length === 0 || now >= nextLookup))) {
            providers = [...new Set([...providers, ...(await this.lookup(digest))])];
            consulted = true;
          }
        }
        const left = this.opts.fetchWaitMs - elapsed();
        const answers = await this.ask(digest, [...new Set([...fetchers, ...providers, ...extra, ...relays])], waiting ? Math.max(0, Math.min(FETCHER_WAIT_MS, left)) : 0, wanted, held);
        // A fetcher that holds only pieces this agent has is still downloading the blob: it is
        // waited for like one that holds none yet. When a fetcher died uploading, its zone held
        // the same few pieces each; taking each other for holders, every agent then fetched the
        // missing pieces from the origin itself, after a stall of each round of asking.
        const pending = [...answers.pending, ...answers.downloading.filter((id) => fetchers.includes(id))];
        const failovers = search.failovers;
        let step = search.observe({ now: elapsed(), ...answers, pending, consulted, liveness: (id) => swarm.liveness(id) });
        if (search.failovers > failovers) {
          const said = (f: string) => (pending.includes(f) ? 'pending' : answers.refused.includes(f) ? 'refused' : answers.unreachable.includes(f) ? `no answer (${answers.errors.get(f)})` : 'not asked');
          this.opts.logger.info({ digest, waitedMs: Math.round(elapsed()), from: fetchers.map((f) => `${f}:${swarm.liveness(f)}:${said(f)}`), relays: answers.pending.length }, 'fetcher failed over');
        }
        if (step.state === 'requesting') {
          // Nobody of the zone is fetching it yet: ask the fetchers to start now rather than wait
          // for their own clients to need it.
          const { accepted, failed } = await this.askToFetch(request, step.fetchers);
          step = search.requestAnswered(elapsed(), accepted, failed);
        }
        relays = step.state === 'relayed' ? step.relays : [];
        // Peers that ask about the blob are told it is being fetched while the fetcher itself says so.
        this.setFetching(digest, step.state === 'waiting');
        if (step.state === 'found') return step.holders;
        if (step.state === 'origin') {
          if (step.reason !== 'elected') {
            const fetchers = search.fetchers().map((f) => `${f}:${swarm.liveness(f)}`);
            this.opts.logger.info({ digest, waitedMs: Math.round(elapsed()), reason: step.reason, failovers: search.failovers, fetchers }, 'no peer of the zone got the blob: fetching it itself');
            this.opts.events.originFallback?.(step.reason);
          }
          return step.holders;
        }
        if (step.state === 'waiting' || step.state === 'relayed' || step.state === 'asking') continue; // a long poll waits by itself; a new fetcher is asked at once
        // Jittered, so agents that failed together do not retry together.
        await new Promise((resolve) => setTimeout(resolve, pause * (0.75 + Math.random() / 2)));
        pause = Math.min(pause * 1.5, MAX_POLL_MS);
      }
    } finally {
      this.setFetching(digest, false);
    }
  }

  private setFetching(digest: string, on: boolean): void {
    if (on === this.fetching.has(digest)) return;
    if (on) this.fetching.add(digest);
    else this.fetching.delete(digest);
    this.opts.fetchingChanged?.(digest);
  }

  /** Asks the fetchers to fetch the blob: those that accepted, and whether none answered at all. */
  private async askToFetch(request: BlobRequest, fetchers: string[]): Promise<{ accepted: string[]; failed: boolean }> {
    const { registry, repository, digest } = request;
    const answers = await Promise.all(
      fetchers.map(async (peer) => {
        try {
          const ok = await this.opts.swarm.requestFetch(peer, { registry, repository, digest: digest.value }, { signal: AbortSignal.timeout(ASK_TIMEOUT_MS) });
          return { peer, ok, failed: false };
        } catch {
          return { peer, ok: false, failed: true };
        }
      }),
    );
    return { accepted: answers.filter((a) => a.ok).map((a) => a.peer), failed: answers.every((a) => a.failed) };
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
    wanted: ReadonlySet<number> | undefined,
    held: Map<string, number>,
  ): Promise<{ local: string[]; remote: string[]; pending: string[]; downloading: string[]; refused: string[]; unreachable: string[]; errors: Map<string, string> }> {
    const { book, self } = this.opts;
    const zones = this.zones();
    const ranked = book.rank(providers.map((id) => ({ id, ...this.link(id), ...(zones.has(id) && { zone: zones.get(id)! }) })));
    const answers = await Promise.all(
      ranked.map(async (peer) => {
        const local = peer.zone === self.zone;
        // Every provider asked holds nothing wanted yet (else the wait is over), so news is a piece more than it had.
        const wait = waitMs > 0 ? { wait: { known: held.get(peer.id) ?? 0, waitMs } } : {};
        try {
          const answer = await this.opts.swarm.pieceInfo(peer.id, digest, { signal: AbortSignal.timeout(ASK_TIMEOUT_MS + waitMs), ...wait });
          if (typeof answer === 'object') held.set(peer.id, answer.have.filter(Boolean).length);
          return { id: peer.id, local, answer, failed: false };
        } catch (err) {
          // No answer (busy, slow, gone, at a connection limit) says nothing either way.
          return { id: peer.id, local, answer: undefined, failed: true, error: (err as Error).message };
        }
      }),
    );
    const holds = (a: (typeof answers)[number]) => typeof a.answer === 'object' && a.answer.have.some((has, i) => has && (wanted === undefined || wanted.has(i)));
    return {
      local: answers.filter((a) => a.local && holds(a)).map(({ id }) => id),
      remote: answers.filter((a) => !a.local && holds(a)).map(({ id }) => id),
      pending: answers.filter((a) => a.local && a.answer === 'pending').map(({ id }) => id),
      // Pieces, but none wanted: a peer assembling the blob too (only partials answer with gaps).
      downloading: answers.filter((a) => a.local && typeof a.answer === 'object' && !holds(a)).map(({ id }) => id),
      refused: answers.filter((a) => !a.failed && a.answer === undefined).map(({ id }) => id),
      unreachable: answers.filter((a) => a.failed).map(({ id }) => id),
      errors: new Map(answers.flatMap((a) => ('error' in a && a.error !== undefined ? [[a.id, a.error] as const] : []))),
    };
  }

  /**
   * The zone's live members (this agent included), closest to the blob first: the first
   * p2p.originFetchers of them fetch it from the origin. Membership, not connections: agents
   * that agree on who is in the zone agree on the order.
   */
  private ranking(digest: string): string[] {
    const { self, swarm } = this.opts;
    const zone = swarm.members().filter((m) => m.zone === self.zone).map((m) => m.id);
    return closestPeers(digest, [self.id, ...zone], zone.length + 1);
  }

  /** This agent's membership links to members of its own zone. */
  private zoneNeighbours(): string[] {
    const zones = this.zones();
    return this.opts.swarm.neighbours().filter((id) => id !== this.opts.self.id && zones.get(id) === this.opts.self.zone);
  }

  /** Zones of members and connected peers. */
  private zones(): Map<string, string | undefined> {
    const zones = new Map<string, string | undefined>(this.opts.swarm.members().map((m) => [m.id, m.zone]));
    for (const p of this.opts.swarm.peers()) if (p.zone !== undefined) zones.set(p.id, p.zone);
    return zones;
  }

  /** The measured round-trip time to a connected peer, if any. */
  private link(id: string): { rttMs?: number } {
    const rtt = this.opts.swarm.peers().find((p) => p.id === id)?.rttMs;
    return rtt === undefined ? {} : { rttMs: rtt };
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
