import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { PieceHasher, pieceRange, type PieceTable } from '../../src/fetch/piece-table.js';
import { swarmDownload, type PieceSource, type SwarmDownloadOptions } from '../../src/fetch/swarm-download.js';

/*
 * Fault injection with fake PieceSources: peers that are slow, stall, die, lie or gain pieces
 * over time. Piece sizes are the real ones (4 MiB), so the blob is ~40 MiB.
 */

const MIB = 1024 * 1024;
const CHUNK = 256 * 1024;
const SIZE = 10 * 4 * MIB + 12345; // 11 pieces, the last one short
const COUNT = 11;
const blob = randomBytes(SIZE);
const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`;
const table: PieceTable = (() => {
  const h = new PieceHasher(SIZE);
  h.update(blob);
  return h.finish();
})();

const all = (): Set<number> => new Set(Array.from({ length: COUNT }, (_, i) => i));

interface FakePeer {
  have: Set<number>;
  /** Delay before each 256 KiB chunk. */
  chunkDelayMs?: number;
  /** Delay before answering pieceInfo. */
  infoDelayMs?: number;
  /** Pieces sent with one byte flipped. */
  corrupt?: Set<number>;
  /** Sends nothing at all for these pieces (stuck). */
  stuck?: Set<number>;
  /** After this many bytes served in total the peer dies: streams error, calls throw. */
  dieAfterBytes?: number;
  /** Answers pieceInfo with this table instead of the real one. */
  table?: PieceTable;
  /** pieceInfo answers undefined. */
  unknown?: boolean;
  /** Holds a long poll until it has more than `known` pieces (as agents do); else answers at once. */
  longPoll?: boolean;
}

class FakeSwarm implements PieceSource {
  readonly peers = new Map<string, FakePeer>();
  /** Requests in the order they were made. */
  readonly requests: { peer: string; index: number }[] = [];
  readonly infoCalls = new Map<string, number>();
  /** Long polls asked, in order. */
  readonly waits: { peer: string; known: number; waitMs: number }[] = [];
  /** Pieces each peer's stream delivered to the end. */
  readonly delivered = new Map<string, number[]>();
  readonly open = new Set<Readable>();
  inFlight = new Map<string, number>();
  maxInFlight = new Map<string, number>();
  maxTotal = 0;
  private servedBytes = new Map<string, number>();

  constructor(peers: Record<string, FakePeer>) {
    for (const [id, p] of Object.entries(peers)) this.peers.set(id, p);
  }

  private dead(id: string): boolean {
    const p = this.peers.get(id)!;
    return p.dieAfterBytes !== undefined && (this.servedBytes.get(id) ?? 0) >= p.dieAfterBytes;
  }

  async pieceInfo(
    peerId: string,
    d: string,
    signal: AbortSignal,
    wait?: { known: number; waitMs: number },
  ): Promise<{ table: PieceTable; have: boolean[] } | undefined> {
    expect(d).toBe(digest);
    this.infoCalls.set(peerId, (this.infoCalls.get(peerId) ?? 0) + 1);
    const p = this.peers.get(peerId)!;
    if (wait !== undefined) {
      this.waits.push({ peer: peerId, ...wait });
      const until = Date.now() + wait.waitMs;
      while (p.longPoll === true && p.have.size <= wait.known && Date.now() < until && !signal.aborted) await new Promise((r) => setTimeout(r, 5));
    }
    if (p.infoDelayMs !== undefined) await new Promise((r) => setTimeout(r, p.infoDelayMs));
    signal.throwIfAborted();
    if (this.dead(peerId)) throw new Error(`${peerId} is unreachable`);
    if (p.unknown === true) return undefined;
    const t = p.table ?? table;
    return { table: t, have: t.hashes.map((_, i) => p.have.has(i)) };
  }

  async openRange(peerId: string, d: string, offset: number, length: number, signal: AbortSignal): Promise<Readable | undefined> {
    expect(d).toBe(digest);
    const p = this.peers.get(peerId)!;
    if (this.dead(peerId)) throw new Error(`${peerId} is unreachable`);
    const index = offset / table.pieceSize;
    expect(Number.isInteger(index)).toBe(true);
    expect(pieceRange(table, index)).toEqual({ start: offset, end: offset + length });
    this.requests.push({ peer: peerId, index });
    if (!p.have.has(index)) return undefined;

    const bytes = Buffer.from(blob.subarray(offset, offset + length));
    if (p.corrupt?.has(index) === true) bytes.writeUInt8(bytes.readUInt8(length >> 1) ^ 0xff, length >> 1);
    const self = this;
    let pos = 0;
    const body = new Readable({
      highWaterMark: CHUNK,
      read() {
        if (p.stuck?.has(index) === true) return;
        const next = (): void => {
          if (this.destroyed) return;
          if (self.dead(peerId)) {
            this.destroy(new Error(`${peerId}: connection reset`));
            return;
          }
          if (pos >= bytes.length) {
            self.delivered.set(peerId, [...(self.delivered.get(peerId) ?? []), index]);
            this.push(null);
            return;
          }
          const n = Math.min(CHUNK, bytes.length - pos);
          this.push(bytes.subarray(pos, pos + n));
          pos += n;
          self.servedBytes.set(peerId, (self.servedBytes.get(peerId) ?? 0) + n);
        };
        if ((p.chunkDelayMs ?? 0) > 0) setTimeout(next, p.chunkDelayMs);
        else setImmediate(next);
      },
    });
    // Concurrency bookkeeping: a request is in flight until its body closes.
    this.open.add(body);
    const now = (this.inFlight.get(peerId) ?? 0) + 1;
    this.inFlight.set(peerId, now);
    this.maxInFlight.set(peerId, Math.max(now, this.maxInFlight.get(peerId) ?? 0));
    this.maxTotal = Math.max(this.maxTotal, [...this.inFlight.values()].reduce((a, b) => a + b, 0));
    body.once('close', () => {
      this.open.delete(body);
      this.inFlight.set(peerId, this.inFlight.get(peerId)! - 1);
    });
    signal.addEventListener('abort', () => body.destroy(new Error('aborted')), { once: true });
    return body;
  }

  requestsTo(peer: string): number[] {
    return this.requests.filter((r) => r.peer === peer).map((r) => r.index);
  }
}

let dir: string;
let file: FileHandle;
let path: string;
let n = 0;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shoal-swarm-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
beforeEach(async () => {
  path = join(dir, `blob-${n++}`);
  file = await open(path, 'w+');
});
afterEach(async () => {
  await file.close();
});

async function fileDigest(): Promise<string> {
  return `sha256:${createHash('sha256').update(await readFile(path)).digest('hex')}`;
}

interface Events {
  pieces: { index: number; bytes: number; peer: string }[];
  bad: { peer: string; reason: string }[];
  failed: { peer: string; error: unknown }[];
  tables: PieceTable[];
}

function run(swarm: FakeSwarm, extra: Partial<SwarmDownloadOptions> = {}) {
  const events: Events = { pieces: [], bad: [], failed: [], tables: [] };
  const promise = swarmDownload({
    digest,
    providers: [...swarm.peers.keys()],
    source: swarm,
    file,
    signal: AbortSignal.timeout(20_000),
    onTable: (t) => events.tables.push(t),
    onPiece: (index, bytes, peer) => events.pieces.push({ index, bytes, peer }),
    onBadPeer: (peer, reason) => events.bad.push({ peer, reason }),
    onPeerFailed: (peer, error) => events.failed.push({ peer, error }),
    ...extra,
  });
  return { promise, events };
}

function piecesFrom(events: Events, peer: string): number[] {
  return events.pieces.filter((p) => p.peer === peer).map((p) => p.index);
}

describe('swarmDownload', () => {
  it('completes from three peers, spreading the load, with at most maxInFlightPerPeer each', async () => {
    const swarm = new FakeSwarm({
      a: { have: all(), chunkDelayMs: 1 },
      b: { have: all(), chunkDelayMs: 1 },
      c: { have: all(), chunkDelayMs: 1 },
    });
    const { promise, events } = run(swarm);
    const result = await promise;
    expect(result.complete).toBe(true);
    expect(result.table).toEqual(table);
    expect(result.have).toEqual(new Array(COUNT).fill(true));
    expect(events.tables).toEqual([table]);
    expect(await fileDigest()).toBe(digest);
    // Every piece reported once, with its size.
    expect(events.pieces.map((p) => p.index).sort((x, y) => x - y)).toEqual([...all()]);
    expect(events.pieces.reduce((s, p) => s + p.bytes, 0)).toBe(SIZE);
    for (const peer of ['a', 'b', 'c']) {
      expect(piecesFrom(events, peer).length, `pieces from ${peer}`).toBeGreaterThan(0);
      expect(swarm.maxInFlight.get(peer)).toBeLessThanOrEqual(2);
    }
    expect(events.bad).toEqual([]);
    expect(events.failed).toEqual([]);
    expect(swarm.open.size).toBe(0);
  });

  it('checks pieces with the given verifier, in reused shared buffers, and treats its failure as its own', async () => {
    const swarm = new FakeSwarm({ a: { have: all(), corrupt: all() }, b: { have: all() } });
    const buffers = new Set<ArrayBufferLike>();
    const { promise, events } = run(swarm, {
      maxInFlightPerPeer: 2,
      verifyPiece: async (index, bytes, expected) => {
        expect(expected).toBe(table.hashes[index]);
        expect(bytes.buffer).toBeInstanceOf(SharedArrayBuffer); // a worker thread can read it in place
        buffers.add(bytes.buffer);
        return createHash('sha256').update(bytes).digest('hex') === expected;
      },
    });
    const result = await promise;
    expect(result.complete).toBe(true);
    expect(await fileDigest()).toBe(digest);
    // The verifier's verdict decides: a's first (corrupt) piece got it dropped.
    expect(events.bad.map((b) => b.peer)).toEqual(['a']);
    // One buffer per request in flight (two peers, two each; a cancelled request holds its
    // own until it has wound down), reused for the 11 pieces.
    expect(buffers.size).toBeLessThanOrEqual(6);

    const broken = run(new FakeSwarm({ a: { have: all() } }), { verifyPiece: async () => Promise.reject(new Error('hasher died')) });
    await expect(broken.promise).rejects.toThrow('hasher died');
    expect(broken.events.bad).toEqual([]);
  });

  it('respects the overall in-flight cap', async () => {
    const swarm = new FakeSwarm({
      a: { have: all(), chunkDelayMs: 1 },
      b: { have: all(), chunkDelayMs: 1 },
      c: { have: all(), chunkDelayMs: 1 },
    });
    const { promise } = run(swarm, { maxInFlightPerPeer: 8, maxInFlight: 3 });
    expect((await promise).complete).toBe(true);
    expect(swarm.maxTotal).toBeLessThanOrEqual(3);
    expect(await fileDigest()).toBe(digest);
  });

  it('holds at most 32 MiB of pieces in flight by default', async () => {
    const swarm = new FakeSwarm({
      a: { have: all(), chunkDelayMs: 1 },
      b: { have: all(), chunkDelayMs: 1 },
      c: { have: all(), chunkDelayMs: 1 },
    });
    const { promise } = run(swarm, { maxInFlightPerPeer: 8 });
    expect((await promise).complete).toBe(true);
    expect(swarm.maxTotal).toBe((32 * MIB) / table.pieceSize); // 8 of the 11 pieces at once
    expect(await fileDigest()).toBe(digest);
  });

  it('takes the rarest piece first, from the one peer that has it', async () => {
    const withoutSeven = (): Set<number> => new Set([...all()].filter((i) => i !== 7));
    const swarm = new FakeSwarm({
      // A answers last, so its first choice is made knowing that only it holds piece 7.
      a: { have: all(), chunkDelayMs: 1, infoDelayMs: 30 },
      b: { have: withoutSeven(), chunkDelayMs: 1 },
      c: { have: withoutSeven(), chunkDelayMs: 1 },
    });
    const { promise, events } = run(swarm, { maxInFlightPerPeer: 1 });
    expect((await promise).complete).toBe(true);
    expect(swarm.requestsTo('a')[0]).toBe(7);
    expect(piecesFrom(events, 'a')).toContain(7);
    expect(swarm.requestsTo('b')).not.toContain(7);
    expect(await fileDigest()).toBe(digest);
  });

  it('drops a lying peer and completes from the others', async () => {
    const swarm = new FakeSwarm({
      a: { have: all(), chunkDelayMs: 1 },
      liar: { have: all(), chunkDelayMs: 1, corrupt: all() },
      c: { have: all(), chunkDelayMs: 1 },
    });
    const { promise, events } = run(swarm);
    const result = await promise;
    expect(result.complete).toBe(true);
    expect(events.bad.map((b) => b.peer)).toEqual(['liar']);
    expect(events.bad[0]!.reason).toMatch(/failed its sha256 check/);
    expect(piecesFrom(events, 'liar')).toEqual([]);
    // Dropped at the first bad piece: only its first round of requests was ever made.
    expect(swarm.requestsTo('liar').length).toBeLessThanOrEqual(2);
    expect(await fileDigest()).toBe(digest);
  });

  it('survives a peer dying mid-download', async () => {
    const swarm = new FakeSwarm({
      a: { have: all(), chunkDelayMs: 2 },
      dying: { have: all(), chunkDelayMs: 1, dieAfterBytes: 4 * MIB + CHUNK * 3 }, // dies inside its second piece
    });
    const { promise, events } = run(swarm, { refreshMs: 50 });
    const result = await promise;
    expect(result.complete).toBe(true);
    expect(events.failed.length).toBeGreaterThan(0);
    expect(new Set(events.failed.map((f) => f.peer))).toEqual(new Set(['dying']));
    // Dropped after a few failures instead of being retried forever.
    // (its first two requests, then at most three failures before it is dropped)
    expect(swarm.requestsTo('dying').length).toBeLessThanOrEqual(2 + 3);
    expect(piecesFrom(events, 'a').length).toBeGreaterThan(0);
    expect(await fileDigest()).toBe(digest);
    expect(swarm.open.size).toBe(0);
  });

  it('returns incomplete at once when every provider is gone', async () => {
    const swarm = new FakeSwarm({ only: { have: all(), chunkDelayMs: 1, dieAfterBytes: 4 * MIB + CHUNK } });
    const started = Date.now();
    const { promise, events } = run(swarm, { stallMs: 10_000 });
    const result = await promise;
    expect(result.complete).toBe(false);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(events.failed.length).toBeGreaterThanOrEqual(3);
    // Whatever was verified before the peer died is reported, and only that.
    expect(result.have.filter(Boolean).length).toBe(events.pieces.length);
  });

  /** A provider that is downloading too: it holds pieces 0 and 1 and gains one every 40 ms. */
  async function withGrowingProvider(extra: Partial<FakePeer>, test: (swarm: FakeSwarm) => Promise<void>): Promise<void> {
    const growing: FakePeer = { have: new Set([0, 1]), ...extra };
    let next = 2;
    const timer = setInterval(() => {
      if (next < COUNT) growing.have.add(next++);
    }, 40);
    try {
      await test(new FakeSwarm({ growing }));
    } finally {
      clearInterval(timer);
    }
  }

  it('picks up pieces a provider verifies meanwhile (bitfield refresh)', async () => {
    await withGrowingProvider({ chunkDelayMs: 0 }, async (swarm) => {
      const { promise, events } = run(swarm, { refreshMs: 30, stallMs: 2000 });
      const result = await promise;
      expect(result.complete).toBe(true);
      expect(swarm.infoCalls.get('growing')!).toBeGreaterThan(3);
      expect(events.pieces.length).toBe(COUNT);
      expect(await fileDigest()).toBe(digest);
    });
  });

  it('asks a provider with nothing more for us to tell when it has more (long poll), not again and again', async () => {
    await withGrowingProvider({ longPoll: true }, async (swarm) => {
      const { promise, events } = run(swarm, { refreshMs: 10, pollWaitMs: 1500, stallMs: 2000 });
      const result = await promise;
      expect(result.complete).toBe(true);
      expect(events.pieces.length).toBe(COUNT);
      expect(await fileDigest()).toBe(digest);
      // Each long poll says how many pieces the download has seen the provider hold.
      expect(swarm.waits.length).toBeGreaterThan(0);
      for (const w of swarm.waits) {
        expect(w).toMatchObject({ peer: 'growing', waitMs: 1500 });
        expect(w.known).toBeGreaterThanOrEqual(2);
      }
      expect(new Set(swarm.waits.map((w) => w.known)).size).toBe(swarm.waits.length); // never the same question twice
    });
  });

  it('with pollWaitMs 0, asks without waiting', async () => {
    await withGrowingProvider({ longPoll: true }, async (swarm) => {
      const { promise } = run(swarm, { refreshMs: 30, pollWaitMs: 0, stallMs: 2000 });
      expect((await promise).complete).toBe(true);
      expect(swarm.waits).toEqual([]);
      expect(swarm.infoCalls.get('growing')!).toBeGreaterThan(3);
    });
  });

  it('gives up after stallMs when nobody holds the missing pieces', async () => {
    const swarm = new FakeSwarm({
      a: { have: new Set([0, 1, 2]) },
      b: { have: new Set([2, 5]) },
    });
    const started = Date.now();
    const { promise, events } = run(swarm, { stallMs: 300, refreshMs: 50 });
    const result = await promise;
    const took = Date.now() - started;
    expect(result.complete).toBe(false);
    expect(result.table).toEqual(table);
    expect(result.have).toEqual(Array.from({ length: COUNT }, (_, i) => [0, 1, 2, 5].includes(i)));
    expect(took).toBeGreaterThanOrEqual(300);
    expect(took).toBeLessThan(3000);
    // The pieces it has are in the file at their offsets.
    const bytes = await readFile(path);
    for (const i of [0, 1, 2, 5]) {
      const { start, end } = pieceRange(table, i);
      expect(bytes.subarray(start, end).equals(blob.subarray(start, end))).toBe(true);
    }
    expect(events.pieces.length).toBe(4);
  });

  it('gives up without a table when no provider has one', async () => {
    const swarm = new FakeSwarm({ a: { have: new Set(), unknown: true } });
    const result = await run(swarm, { stallMs: 200, refreshMs: 50 }).promise;
    expect(result).toEqual({ table: undefined, complete: false, have: [] });
  });

  it('resumes from a given table and have, fetching only the rest', async () => {
    const done = Array.from({ length: COUNT }, (_, i) => i < 6);
    for (let i = 0; i < 6; i++) {
      const { start, end } = pieceRange(table, i);
      await file.write(blob, start, end - start, start);
    }
    const swarm = new FakeSwarm({ a: { have: all() }, b: { have: all() } });
    const { promise, events } = run(swarm, { table, have: done });
    const result = await promise;
    expect(result.complete).toBe(true);
    expect(events.tables).toEqual([]); // the table was given
    expect(swarm.requests.every((r) => r.index >= 6)).toBe(true);
    expect(events.pieces.map((p) => p.index).sort((x, y) => x - y)).toEqual([6, 7, 8, 9, 10]);
    expect(await fileDigest()).toBe(digest);
  });

  it('resumes from a provisional table (the first wave\'s prefix of hashes), growing it from the providers', async () => {
    const done = Array.from({ length: COUNT }, (_, i) => i < 3);
    for (let i = 0; i < 3; i++) {
      const { start, end } = pieceRange(table, i);
      await file.write(blob, start, end - start, start);
    }
    const provisional: PieceTable = { ...table, hashes: table.hashes.slice(0, 5) };
    const swarm = new FakeSwarm({ a: { have: all() }, b: { have: all() } });
    const { promise, events } = run(swarm, { table: provisional, have: done });
    const result = await promise;
    expect(result.complete).toBe(true);
    expect(result.table!.hashes).toEqual(table.hashes);
    expect(events.bad).toEqual([]);
    expect(swarm.requests.every((r) => r.index >= 3)).toBe(true);
    expect(await fileDigest()).toBe(digest);
  });

  it('returns at once when the given have is already complete', async () => {
    const swarm = new FakeSwarm({ a: { have: all() } });
    const result = await run(swarm, { table, have: new Array(COUNT).fill(true) }).promise;
    expect(result.complete).toBe(true);
    expect(swarm.infoCalls.size).toBe(0);
  });

  it('does not use a provider whose table differs', async () => {
    const other: PieceTable = { ...table, hashes: table.hashes.map((h, i) => (i === 3 ? 'e'.repeat(64) : h)) };
    // With a trusted (given) table the odd one out is a bad peer.
    const swarm = new FakeSwarm({ a: { have: all(), chunkDelayMs: 1 }, odd: { have: all(), table: other } });
    const { promise, events } = run(swarm, { table });
    expect((await promise).complete).toBe(true);
    expect(events.bad).toEqual([{ peer: 'odd', reason: expect.stringMatching(/table differs/) }]);
    expect(swarm.requestsTo('odd')).toEqual([]);

    // Without one, the first answer sets the table and a differing provider is left out.
    await file.truncate(0);
    const swarm2 = new FakeSwarm({ a: { have: all(), chunkDelayMs: 1 }, odd: { have: all(), table: other, infoDelayMs: 20 } });
    const second = run(swarm2);
    expect((await second.promise).complete).toBe(true);
    expect(second.events.tables).toEqual([table]);
    expect(second.events.failed.map((f) => f.peer)).toEqual(['odd']);
    expect(swarm2.requestsTo('odd')).toEqual([]);
    expect(await fileDigest()).toBe(digest);
  });

  it('adds the peers a provider names as also after the blob, but never one it dropped', async () => {
    // a is slow and names x, b and c (as an agent names others that asked it); x lies about
    // every piece; b and c are only known from a's answers.
    const swarm = new FakeSwarm({
      a: { have: all(), chunkDelayMs: 20 },
      x: { have: all(), corrupt: all() },
      b: { have: all() },
      c: { have: new Set([1, 2, 3]) },
    });
    const source: PieceSource = {
      pieceInfo: async (peer, d, signal) => {
        const answer = await swarm.pieceInfo(peer, d, signal);
        return peer === 'a' && answer !== undefined ? { ...answer, peers: ['x', 'b', 'c', 'b', 'a'] } : answer;
      },
      openRange: (peer, d, offset, length, signal) => swarm.openRange(peer, d, offset, length, signal),
    };
    let requestsToXAtDrop = -1;
    const { promise, events } = run(swarm, {
      source,
      providers: ['a'],
      onBadPeer: (peer, reason) => {
        events.bad.push({ peer, reason });
        requestsToXAtDrop = swarm.requestsTo('x').length;
      },
    });
    const result = await promise;
    expect(result.complete).toBe(true);
    expect(await fileDigest()).toBe(digest);
    expect(piecesFrom(events, 'b').length).toBeGreaterThan(0);
    expect(swarm.infoCalls.get('c')).toBeGreaterThan(0);
    // x was dropped at its first piece and never asked again, though a kept naming it.
    expect(events.bad.map((b) => b.peer)).toEqual(['x']);
    expect(requestsToXAtDrop).toBeGreaterThan(0);
    expect(swarm.requestsTo('x').length).toBe(requestsToXAtDrop);
  });

  it('takes on no more named peers than its pieces can keep busy (two per piece)', async () => {
    // a names thirty others; the blob's 11 pieces, each asked of two peers at most, use 22.
    const named = Array.from({ length: 30 }, (_, i) => `p${i}`);
    const swarm = new FakeSwarm({ a: { have: all(), chunkDelayMs: 5 }, ...Object.fromEntries(named.map((id) => [id, { have: all() }])) });
    const source: PieceSource = {
      pieceInfo: async (peer, d, signal) => {
        const answer = await swarm.pieceInfo(peer, d, signal);
        return peer === 'a' && answer !== undefined ? { ...answer, peers: named } : answer;
      },
      openRange: (peer, d, offset, length, signal) => swarm.openRange(peer, d, offset, length, signal),
    };
    const result = await run(swarm, { source, providers: ['a'] }).promise;
    expect(result.complete).toBe(true);
    expect(await fileDigest()).toBe(digest);
    expect(swarm.infoCalls.size).toBe(2 * COUNT);
  });

  it('keeps asking a busy peer: busy answers are not failures', async () => {
    // More busy answers than failures (3) or the old busy limit (10) would have allowed.
    let busyLeft = 12;
    const swarm = new FakeSwarm({ a: { have: all() } });
    const source: PieceSource = {
      pieceInfo: (peer, d, signal) => swarm.pieceInfo(peer, d, signal),
      openRange: async (peer, d, offset, length, signal) => {
        if (busyLeft-- > 0) throw Object.assign(new Error('peer a is busy'), { name: 'PeerBusyError' });
        return swarm.openRange(peer, d, offset, length, signal);
      },
    };
    const { promise, events } = run(swarm, { source, maxInFlightPerPeer: 1 });
    expect((await promise).complete).toBe(true);
    expect(await fileDigest()).toBe(digest);
    expect(events.failed.length).toBe(12);
    expect(events.bad).toEqual([]);
    expect(piecesFrom(events, 'a').length).toBe(COUNT);
  });

  it('endgame: does not duplicate requests that progress at the usual pace', async () => {
    // Six peers with four slots each: every piece is in flight at once, the endgame from the start.
    const peers = Object.fromEntries(['a', 'b', 'c', 'd', 'e', 'f'].map((id) => [id, { have: all(), chunkDelayMs: 2 }]));
    const swarm = new FakeSwarm(peers);
    const { promise } = run(swarm, { maxInFlightPerPeer: 4 });
    expect((await promise).complete).toBe(true);
    expect(await fileDigest()).toBe(digest);
    expect(swarm.requests.length).toBe(COUNT); // each piece asked for once
  });

  it('endgame: duplicates the pieces a stuck peer holds and cancels the loser', async () => {
    const swarm = new FakeSwarm({
      fast: { have: all() },
      // Ranked first, so it gets pieces first, but never sends a byte of these.
      stuck: { have: all(), stuck: all() },
    });
    const started = Date.now();
    const { promise, events } = run(swarm, {
      providers: ['stuck', 'fast'],
      pieceIdleTimeoutMs: 60_000, // only the endgame can rescue the stuck pieces
    });
    const result = await promise;
    expect(result.complete).toBe(true);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(piecesFrom(events, 'stuck')).toEqual([]);
    const stuckPieces = swarm.requestsTo('stuck');
    expect(stuckPieces.length).toBeGreaterThan(0);
    // Every piece the stuck peer held was also asked of the fast one.
    for (const i of stuckPieces) expect(swarm.requestsTo('fast')).toContain(i);
    // The losing requests were cancelled (their streams closed), not counted as failures.
    expect(swarm.open.size).toBe(0);
    expect(events.failed).toEqual([]);
    expect(await fileDigest()).toBe(digest);
  });

  it('fails a request that sends nothing for pieceIdleTimeoutMs and moves on', async () => {
    const swarm = new FakeSwarm({
      slowpoke: { have: all(), stuck: new Set([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) },
      b: { have: new Set([...all()].filter((i) => i !== 4)), chunkDelayMs: 1 },
    });
    // Piece 4 only at slowpoke, which never sends it: the request times out and is retried
    // until slowpoke is dropped; the download then ends incomplete.
    const { promise, events } = run(swarm, { providers: ['slowpoke', 'b'], pieceIdleTimeoutMs: 100, stallMs: 200 });
    const result = await promise;
    expect(result.complete).toBe(false);
    expect(result.have.filter(Boolean).length).toBe(COUNT - 1);
    expect(result.have[4]).toBe(false);
    expect(events.failed.some((f) => f.peer === 'slowpoke' && (f.error as Error).name === 'PieceTimeoutError')).toBe(true);
    expect(swarm.open.size).toBe(0);
  });

  it('throws the abort reason, closing every request', async () => {
    const swarm = new FakeSwarm({ a: { have: all(), chunkDelayMs: 5 }, b: { have: all(), chunkDelayMs: 5 } });
    const controller = new AbortController();
    const { promise, events } = run(swarm, {
      signal: controller.signal,
      onPiece: (index, bytes, peer) => {
        events.pieces.push({ index, bytes, peer });
        controller.abort(new Error('client went away'));
      },
    });
    await expect(promise).rejects.toThrow('client went away');
    expect(events.pieces.length).toBe(1);
    expect(swarm.open.size).toBe(0);
    const requests = swarm.requests.length;
    await new Promise((r) => setTimeout(r, 50));
    expect(swarm.requests.length).toBe(requests); // nothing more after the return
  });

  it('rejects at once on an already aborted signal', async () => {
    const swarm = new FakeSwarm({ a: { have: all() } });
    await expect(run(swarm, { signal: AbortSignal.abort(new Error('nope')) }).promise).rejects.toThrow('nope');
    expect(swarm.infoCalls.size).toBe(0);
  });

  it('throws on a file write error', async () => {
    const swarm = new FakeSwarm({ a: { have: all() } });
    const broken = { write: async () => Promise.reject(new Error('ENOSPC: no space left on device')) } as unknown as FileHandle;
    await expect(run(swarm, { file: broken }).promise).rejects.toThrow(/ENOSPC/);
    expect(swarm.open.size).toBe(0);
  });
});
