import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Grants } from '../../src/fetch/grants.js';
import { Partials } from '../../src/fetch/partials.js';
import { FETCHER_WAIT_MS, PeerPlanner, type PeerPlannerOptions, type Swarm } from '../../src/fetch/peer-planner.js';
import type { PieceTable } from '../../src/fetch/piece-table.js';
import { SwarmSource } from '../../src/fetch/swarm-source.js';
import { parseDigest } from '../../src/oci/digest.js';
import { closestPeers } from '../../src/p2p/closest.js';
import { PeerBook } from '../../src/p2p/peer-book.js';

const digest = `sha256:${'ab'.repeat(32)}`;
const table: PieceTable = { size: 10, pieceSize: 4 * 1024 * 1024, hashes: ['00'.repeat(32)] };
const candidates = Array.from({ length: 64 }, (_, i) => `peer-${i}`);
// Two agents of zone z: the one the digest elects as its origin fetcher, and one it does not.
const fetcher = candidates.find((id) => closestPeers(digest, candidates.slice(0, 2), 1)[0] === id)!;
const other = candidates.slice(0, 2).find((id) => id !== fetcher)!;
const holder = 'holder-elsewhere-in-z';

type Answer = Awaited<ReturnType<Swarm['pieceInfo']>>;

/** Peers of zone z. Answers come from `answer`; long polls are held 50 ms at most (a peer may answer sooner than asked). */
class FakeSwarm implements Swarm {
  lookups = 0;
  providers: string[] = [];
  acceptsFetch = true;
  /** Peers that never answer (at their connection limit): asking them fails. */
  silent = new Set<string>();
  /** This agent's membership links. */
  links: string[] = [];
  readonly asks: { peer: string; waitMs?: number; known?: number }[] = [];
  constructor(private readonly answer: (peer: string) => Answer) {}
  async findProviders(): Promise<string[]> {
    this.lookups++;
    this.asks.push({ peer: '(dht)' });
    return this.providers;
  }
  async pieceInfo(peerId: string, d: string, opts?: { signal?: AbortSignal; wait?: { known: number; waitMs: number } }) {
    expect(d).toBe(digest);
    this.asks.push({ peer: peerId, ...opts?.wait });
    if (this.silent.has(peerId)) throw new Error('no answer');
    const until = Date.now() + Math.min(50, opts?.wait?.waitMs ?? 0);
    const news = () => {
      const a = this.answer(peerId);
      return typeof a === 'object' && a.have.filter(Boolean).length > (opts?.wait?.known ?? 0);
    };
    while (!news() && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
    return this.answer(peerId);
  }
  async openBlob(): Promise<undefined> {
    return undefined;
  }
  /** Further members of zone z. */
  more: string[] = [];
  peers() {
    return [fetcher, other, holder, ...this.more].map((id) => ({ id, zone: 'z' }));
  }
  members() {
    return this.peers();
  }
  neighbours(): string[] {
    return this.links;
  }
  isMember(id: string): boolean {
    return this.peers().some((p) => p.id === id);
  }
  liveness(id: string): 'alive' | 'gone' {
    return this.isMember(id) ? 'alive' : 'gone';
  }
  async requestFetch(): Promise<boolean> {
    return this.acceptsFetch;
  }
}

describe('PeerPlanner: where an agent looks for a blob', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-planner-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  function planner(self: string, swarm: FakeSwarm, overrides: Partial<PeerPlannerOptions> = {}): PeerPlanner {
    const noop = (): void => undefined;
    return new PeerPlanner({
      swarm,
      self: { id: self, zone: 'z' },
      originFetchers: 1,
      fetcherTimeoutMs: 5_000,
      fetchWaitMs: 30_000,
      pollMs: 10,
      lookupIntervalMs: 20,
      book: new PeerBook('z', 60_000),
      grants: { has: async () => true, grant: async () => undefined } as unknown as Grants,
      partials: new Partials(dir),
      origin: { name: 'origin' } as unknown as PeerPlannerOptions['origin'],
      originAllows: async () => true,
      lookupTimeoutMs: 1_000,
      logger: pino({ level: 'silent' }),
      events: { penalised: noop, firstPiece: noop, badPeer: noop, peerFailed: noop, piece: noop, transferred: noop, bytes: noop, lookup: noop },
      ...overrides,
    });
  }
  const request = { digest: parseDigest(digest), registry: 'r', repository: 'x' };
  const holds: Answer = { table, have: [true] };

  it('asks the zone fetcher first, long-polls it while it downloads, and never asks the DHT', async () => {
    let fetched = false;
    const swarm = new FakeSwarm((peer) => (peer === fetcher && fetched ? holds : 'pending'));
    const plan = planner(other, swarm).plan(request);
    // Many lookup intervals pass while the fetcher downloads.
    await new Promise((r) => setTimeout(r, 300));
    fetched = true;
    const sources = await plan;
    expect(sources[0]).toBeInstanceOf(SwarmSource);
    expect(swarm.lookups).toBe(0);
    expect(new Set(swarm.asks.map((a) => a.peer))).toEqual(new Set([fetcher]));
    // The first question is answered at once; the later ones are long polls for any piece.
    expect(swarm.asks[0]).toEqual({ peer: fetcher });
    expect(swarm.asks.length).toBeGreaterThan(1);
    for (const ask of swarm.asks.slice(1)) expect(ask).toEqual({ peer: fetcher, known: 0, waitMs: FETCHER_WAIT_MS });
  });

  it('asks the DHT when the fetcher knows nothing of the blob and will not fetch it', async () => {
    const swarm = new FakeSwarm((peer) => (peer === holder ? holds : undefined));
    swarm.acceptsFetch = false;
    swarm.providers = [holder];
    const sources = await planner(other, swarm).plan(request);
    expect(sources[0]).toBeInstanceOf(SwarmSource);
    expect(swarm.lookups).toBe(1);
    // The fetcher, once declined, is not asked again: the next rank (or the DHT's holder) is.
    expect(swarm.asks.map((a) => a.peer).filter((p) => p !== '(dht)').sort()).toEqual([fetcher, holder].sort());
  });

  it('goes to the origin when neither the fetcher nor the DHT knows a holder and the fetcher refuses', async () => {
    const swarm = new FakeSwarm(() => undefined);
    swarm.acceptsFetch = false;
    const sources = await planner(other, swarm).plan(request);
    expect(sources).toEqual([{ name: 'origin' }]);
    expect(swarm.lookups).toBe(1);
  });

  it('as the elected fetcher, looks for holders in the DHT before it goes to the origin', async () => {
    const swarm = new FakeSwarm(() => undefined);
    const sources = await planner(fetcher, swarm).plan(request);
    expect(sources).toEqual([{ name: 'origin' }]);
    expect(swarm.lookups).toBe(1);
  });

  it('while the fetcher does not answer, asks its membership neighbours of the zone before the DHT', async () => {
    // The fetcher is at its connection limit; a neighbour got the blob from it already.
    const swarm = new FakeSwarm((peer) => (peer === holder ? holds : undefined));
    swarm.silent.add(fetcher);
    swarm.links = [holder];
    swarm.providers = [holder];
    const sources = await planner(other, swarm).plan(request);
    expect(sources[0]).toBeInstanceOf(SwarmSource);
    expect(swarm.asks.map((a) => a.peer)).toEqual([fetcher, fetcher, holder]);
    // The neighbour answered within the first intervals: no DHT walk was needed.
    expect(swarm.lookups).toBe(0);
  });

  it('asks the DHT too, less often, while the neighbours do not hold it either', async () => {
    // A linked member that holds nothing (ranked below the fetcher, so the election stays), and
    // the holder, known only to the DHT.
    const linked = candidates.find((id) => ![fetcher, other].includes(id) && closestPeers(digest, [fetcher, other, holder, id], 4)[0] === fetcher)!;
    let found = false;
    const swarm = new FakeSwarm((peer) => (peer === holder && found ? holds : undefined));
    swarm.silent.add(fetcher);
    swarm.more = [linked];
    swarm.links = [linked];
    swarm.providers = [holder];
    const plan = planner(other, swarm).plan(request);
    await new Promise((r) => setTimeout(r, 300));
    found = true;
    expect((await plan)[0]).toBeInstanceOf(SwarmSource);
    const neighbourAsks = swarm.asks.filter((a) => a.peer === linked).length;
    const order = swarm.asks.map((a) => a.peer);
    // The neighbour first, the DHT later and less often (one walk per four lookup intervals).
    expect(order.indexOf(linked)).toBeGreaterThanOrEqual(0);
    expect(order.indexOf('(dht)')).toBeGreaterThan(order.indexOf(linked));
    expect(swarm.lookups).toBeLessThan(neighbourAsks);
  });

  it('as the elected fetcher, takes the blob from a neighbour that holds it instead of the origin', async () => {
    // After a failover: the fetcher that left passed the blob on to this agent's neighbour.
    const swarm = new FakeSwarm((peer) => (peer === holder ? holds : undefined));
    swarm.links = [holder];
    const sources = await planner(fetcher, swarm).plan(request);
    expect(sources[0]).toBeInstanceOf(SwarmSource);
    expect(swarm.lookups).toBe(1);
  });
  it('says the blob is being fetched while its fetcher says it is downloading it, and not before or after', async () => {
    let fetched = false;
    const swarm = new FakeSwarm((peer) => (peer === fetcher && fetched ? holds : peer === fetcher ? 'pending' : undefined));
    // Each change is told (swarm sessions watching the blob push it to their askers), once.
    const told: boolean[] = [];
    const agent: PeerPlanner = planner(other, swarm, { fetchingChanged: (d) => told.push(d === digest && agent.hearsFetching(d)) });
    expect(agent.hearsFetching(digest)).toBe(false);
    const plan = agent.plan(request);
    await new Promise((r) => setTimeout(r, 100));
    expect(agent.hearsFetching(digest)).toBe(true);
    fetched = true;
    await plan;
    expect(agent.hearsFetching(digest)).toBe(false);
    expect(told).toEqual([true, false]);
  });

  it('a stalled download is not handed peers that hold only pieces it has: it waits for its fetcher, which is still downloading, to get the rest', async () => {
    // The fetcher died uploading piece 1: every agent of the zone holds piece 0 only. The next
    // fetcher (here `fetcher`) gets piece 1 from the origin after a while.
    const two: PieceTable = { size: 8 * 1024 * 1024, pieceSize: 4 * 1024 * 1024, hashes: ['00'.repeat(32), '11'.repeat(32)] };
    let fetched = false;
    const swarm = new FakeSwarm((peer) => (peer === fetcher ? { table: two, have: [true, fetched] } : peer === holder ? { table: two, have: [true, false] } : undefined));
    swarm.links = [holder];
    const found = planner(other, swarm).holders(request, new Set([1]));
    await new Promise((r) => setTimeout(r, 300));
    fetched = true;
    expect(await found).toEqual([fetcher]);
    // The fetcher was long-polled for a piece more than the one it had.
    const polls = swarm.asks.filter((a) => a.peer === fetcher).slice(1);
    expect(polls.length).toBeGreaterThan(0);
    for (const ask of polls) expect(ask).toEqual({ peer: fetcher, known: 1, waitMs: FETCHER_WAIT_MS });
  });

  it('an agent its fetcher cannot take waits with a neighbour that hears the fetcher downloading, long-polling it, and takes the pieces from it', async () => {
    // The fetcher is at its connection limit: this agent never reaches it. Its neighbour does,
    // and says the blob is being fetched; later it holds pieces.
    let passedOn = false;
    const swarm = new FakeSwarm((peer) => (peer === holder ? (passedOn ? holds : 'pending') : undefined));
    swarm.silent.add(fetcher);
    swarm.links = [holder];
    const fallbacks: string[] = [];
    const noop = (): void => undefined;
    const events = { penalised: noop, firstPiece: noop, badPeer: noop, peerFailed: noop, piece: noop, transferred: noop, bytes: noop, lookup: noop, originFallback: (r: string) => fallbacks.push(r) };
    // A fetcher timeout of 20 ms: without the relay, 300 ms of silence fail the fetcher over
    // (three timeouts for a live one), and then the ranks down to the origin.
    const plan = planner(other, swarm, { fetcherTimeoutMs: 20, events }).plan(request);
    await new Promise((r) => setTimeout(r, 300));
    passedOn = true;
    const sources = await plan;
    expect(sources[0]).toBeInstanceOf(SwarmSource);
    const relayAsks = swarm.asks.filter((a) => a.peer === holder);
    // Asked once as a neighbour, then long-polled as a relay; never the DHT meanwhile.
    expect(relayAsks[0]).toEqual({ peer: holder });
    expect(relayAsks.length).toBeGreaterThan(1);
    for (const ask of relayAsks.slice(1)) expect(ask).toEqual({ peer: holder, known: 0, waitMs: FETCHER_WAIT_MS });
    expect(swarm.lookups).toBe(0);
    expect(fallbacks).toEqual([]);
  });
});
