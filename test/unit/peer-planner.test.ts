import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Grants } from '../../src/fetch/grants.js';
import { Partials } from '../../src/fetch/partials.js';
import { PeerPlanner, type PeerPlannerOptions, type Swarm } from '../../src/fetch/peer-planner.js';
import type { PieceTable } from '../../src/fetch/piece-table.js';
import { SwarmSource } from '../../src/fetch/swarm-source.js';
import { parseDigest } from '../../src/oci/digest.js';
import { closestPeers } from '../../src/p2p/closest.js';
import { PeerBook } from '../../src/p2p/peer-book.js';

const digest = `sha256:${'ab'.repeat(32)}`;
const table: PieceTable = { size: 10, pieceSize: 4 * 1024 * 1024, hashes: ['00'.repeat(32)] };
const me = 'me';
// A peer of the zone that the digest elects as its origin fetcher (and not this agent).
const fetcher = Array.from({ length: 64 }, (_, i) => `peer-${i}`).find((id) => closestPeers(digest, [me, id], 1)[0] === id)!;

/** The zone's fetcher: 'pending' until `holds`; it holds a long poll 50 ms at most (a peer may answer sooner than asked). */
class FakeSwarm implements Swarm {
  lookups = 0;
  holds = false;
  readonly asks: { waitMs?: number; known?: number }[] = [];
  async findProviders(): Promise<string[]> {
    this.lookups++;
    return [fetcher];
  }
  async pieceInfo(peerId: string, d: string, opts?: { signal?: AbortSignal; wait?: { known: number; waitMs: number } }) {
    expect([peerId, d]).toEqual([fetcher, digest]);
    this.asks.push({ ...opts?.wait });
    const until = Date.now() + Math.min(50, opts?.wait?.waitMs ?? 0);
    while (!this.holds && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
    return this.holds ? { table, have: [true] } : ('pending' as const);
  }
  async openBlob(): Promise<undefined> {
    return undefined;
  }
  peers() {
    return [{ id: fetcher, zone: 'z' }];
  }
  async requestFetch(): Promise<boolean> {
    return true;
  }
}

describe('PeerPlanner while the zone fetcher downloads', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-planner-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  function planner(swarm: FakeSwarm, extra: Partial<PeerPlannerOptions> = {}): PeerPlanner {
    const noop = (): void => undefined;
    return new PeerPlanner({
      swarm,
      self: { id: me, zone: 'z' },
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
      ...extra,
    });
  }

  it('asks the fetcher to answer once it holds a piece, and leaves the DHT alone meanwhile', async () => {
    const swarm = new FakeSwarm();
    const plan = planner(swarm).plan({ digest: parseDigest(digest), registry: 'r', repository: 'x' });
    // Many lookup intervals pass while the fetcher downloads.
    await new Promise((r) => setTimeout(r, 300));
    swarm.holds = true;
    const sources = await plan;
    expect(sources[0]).toBeInstanceOf(SwarmSource);
    expect(swarm.lookups).toBe(1);
    // The first question is answered at once; the later ones are long polls for any piece.
    expect(swarm.asks[0]).toEqual({});
    expect(swarm.asks.length).toBeGreaterThan(1);
    for (const ask of swarm.asks.slice(1)) expect(ask).toEqual({ known: 0, waitMs: 2_000 });
  });
});
