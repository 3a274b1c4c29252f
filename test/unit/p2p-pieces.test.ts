import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Stream } from '@libp2p/interface';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PieceHasher, encodeBitfield, pieceRange, type PieceTable } from '../../src/fetch/piece-table.js';
import { BlobProtocolError } from '../../src/p2p/errors.js';
import { MemoryBlobs } from '../../src/p2p/memory-blobs.js';
import { P2PNode, type P2PStartOptions } from '../../src/p2p/node.js';
import { PieceNews } from '../../src/fetch/piece-news.js';
import { pieceProtocolId, type LocalPieces } from '../../src/p2p/piece-protocol.js';
import { sendAll, StreamReader } from '../../src/p2p/stream-io.js';

const logger = pino({ level: process.env.P2P_TEST_LOG ?? 'silent' });
const MIB = 1024 * 1024;

function digestOf(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

function tableOf(bytes: Uint8Array): PieceTable {
  const h = new PieceHasher(bytes.byteLength);
  h.update(bytes);
  return h.finish();
}

async function readAll(body: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of body) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}

/** LocalPieces over a map, with a hook to make it fail; `update` wakes long polls. */
class FakePieces implements LocalPieces {
  readonly entries = new Map<string, { table: PieceTable; have: boolean[] } | 'pending'>();
  readonly news = new PieceNews();
  readonly infoCalls = new Map<string, number>();
  readonly waits = new Map<string, number>();
  failWith: Error | undefined;
  async info(digest: string): Promise<{ table: PieceTable; have: boolean[] } | 'pending' | undefined> {
    this.infoCalls.set(digest, (this.infoCalls.get(digest) ?? 0) + 1);
    if (this.failWith !== undefined) throw this.failWith;
    return this.entries.get(digest);
  }
  changed(digest: string, signal: AbortSignal): Promise<void> {
    this.waits.set(digest, (this.waits.get(digest) ?? 0) + 1);
    return this.news.next(digest, signal);
  }
  update(digest: string, entry: { table: PieceTable; have: boolean[] } | 'pending'): void {
    this.entries.set(digest, entry);
    this.news.notify(digest);
  }
}

async function until(check: () => boolean, what: string, budgetMs = 5000): Promise<void> {
  for (let i = 0; i < budgetMs / 10 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!check()) throw new Error(`timed out waiting for ${what}`);
}

describe('pieces protocol (1.0.0) between two P2PNodes on loopback', () => {
  let dir: string;
  const nodes: P2PNode[] = [];
  let a: P2PNode; // serves pieces
  let b: P2PNode; // asks
  let c: P2PNode; // started without `pieces`
  const blobsA = new MemoryBlobs();
  const piecesA = new FakePieces();
  const blob = randomBytes(9 * MIB + 777); // three pieces, the last one short
  const digest = digestOf(blob);
  const table = tableOf(blob);
  const partial = digestOf(Buffer.from('partial'));

  async function start(name: string, extra: Partial<P2PStartOptions>): Promise<P2PNode> {
    const node = await P2PNode.start({
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: [],
      mdns: false,
      zone: 'z',
      keyFile: join(dir, name, 'key'),
      logger,
      blobs: new MemoryBlobs(),
      protocolPrefix: '/shoal-test',
      // The one-question-per-stream protocol an older release speaks, and this one still answers
      // (the swarm wire has its own tests).
      legacyWire: true,
      ...extra,
    });
    nodes.push(node);
    return node;
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-pieces-'));
    blobsA.set(digest, blob);
    piecesA.entries.set(digest, { table, have: [true, true, true] });
    piecesA.entries.set(partial, { table, have: [true, false, true] });
    a = await start('a', { blobs: blobsA, pieces: piecesA });
    b = await start('b', {});
    c = await start('c', {});
    await b.dial(a.multiaddrs()[0]!);
    await b.dial(c.multiaddrs()[0]!);
  });

  afterAll(async () => {
    await Promise.all(nodes.map((n) => n.stop()));
    await rm(dir, { recursive: true, force: true });
  });

  it('uses the node protocol prefix', () => {
    expect(pieceProtocolId('/shoal-test')).toBe('/shoal-test/pieces/1.0.0');
    expect(pieceProtocolId('/x/')).toBe('/x/pieces/1.0.0');
    expect(pieceProtocolId()).toBe('/shoal/pieces/1.0.0');
    expect(a.libp2p.getProtocols()).toContain('/shoal-test/pieces/1.0.0');
  });

  it('returns the table and a full bitfield for a whole blob; pieces come over the blob protocol', async () => {
    const answer = await b.pieceInfo(a.peerId, digest);
    expect(answer).toEqual({ table, have: [true, true, true] });
    const info = answer as Exclude<typeof answer, 'pending'>;
    // Each piece as a range of the blob protocol, checked against the table.
    for (let i = 0; i < info!.table.hashes.length; i++) {
      const { start, end } = pieceRange(info!.table, i);
      const opened = await b.openBlob(a.peerId, digest, start, { length: end - start });
      const bytes = await readAll(opened!.body);
      expect(bytes.length).toBe(end - start);
      expect(createHash('sha256').update(bytes).digest('hex')).toBe(info!.table.hashes[i]);
    }
  });

  it('says when the node is fetching the blob but holds no verified piece yet', async () => {
    const pending = `sha256:${'9'.repeat(64)}`;
    piecesA.entries.set(pending, 'pending');
    expect(await b.pieceInfo(a.peerId, pending)).toBe('pending');
  });

  it('carries a partial bitfield', async () => {
    expect(await b.pieceInfo(a.peerId, partial)).toEqual({ table, have: [true, false, true] });
  });

  it('carries a table of 1024 pieces', async () => {
    const size = 4 * 1024 * MIB;
    const big: PieceTable = { size, pieceSize: 4 * MIB, hashes: Array.from({ length: 1024 }, () => randomBytes(32).toString('hex')) };
    const have = Array.from({ length: 1024 }, (_, i) => i % 3 === 0);
    const d = digestOf(Buffer.from('big'));
    piecesA.entries.set(d, { table: big, have });
    expect(await b.pieceInfo(a.peerId, d)).toEqual({ table: big, have });
  });

  it('answers undefined for a digest the peer does not hold', async () => {
    expect(await b.pieceInfo(a.peerId, digestOf(Buffer.from('unknown')))).toBeUndefined();
  });

  it('answers undefined when the node was started without pieces', async () => {
    expect(await b.pieceInfo(c.peerId, digest)).toBeUndefined();
  });

  it('reports a failing store as a protocol error', async () => {
    piecesA.failWith = new Error('disk on fire');
    try {
      await expect(b.pieceInfo(a.peerId, digest)).rejects.toThrow(BlobProtocolError);
      await expect(b.pieceInfo(a.peerId, digest)).rejects.toThrow(/could not read piece info/);
    } finally {
      piecesA.failWith = undefined;
    }
  });

  it('refuses to send inconsistent local info', async () => {
    const d = digestOf(Buffer.from('inconsistent'));
    piecesA.entries.set(d, { table, have: [true] });
    await expect(b.pieceInfo(a.peerId, d)).rejects.toThrow(/inconsistent piece info/);
  });

  it('rejects an invalid digest before dialling', async () => {
    await expect(b.pieceInfo(a.peerId, 'sha256:nothex')).rejects.toThrow();
  });

  it('honours an aborted signal', async () => {
    await expect(b.pieceInfo(a.peerId, digest, { signal: AbortSignal.abort() })).rejects.toThrow();
  });

  it('names the other peers that asked about the blob lately (peer exchange)', async () => {
    const asked = digestOf(Buffer.from('asked by two'));
    piecesA.entries.set(asked, { table, have: [true, true, true] });
    await c.dial(a.multiaddrs()[0]!);
    expect(await b.pieceInfo(a.peerId, asked)).toEqual({ table, have: [true, true, true] }); // first asker
    expect(await c.pieceInfo(a.peerId, asked)).toEqual({ table, have: [true, true, true], peers: [b.peerId] });
    expect(await b.pieceInfo(a.peerId, asked)).toEqual({ table, have: [true, true, true], peers: [c.peerId] });
  });

  describe('long polls', () => {
    it('holds the answer until the node verifies a piece', async () => {
      const d = digestOf(Buffer.from('long poll: news'));
      piecesA.entries.set(d, 'pending');
      const answer = b.pieceInfo(a.peerId, d, { wait: { known: 0, waitMs: 4000 } });
      // The question has arrived and is waiting: only now does the node gain a piece.
      await until(() => piecesA.waits.get(d) === 1, 'the long poll to wait');
      piecesA.update(d, { table, have: [false, true, false] });
      expect(await answer).toEqual({ table, have: [false, true, false] });
    });

    it('keeps waiting through changes that bring nothing new', async () => {
      const d = digestOf(Buffer.from('long poll: no news yet'));
      piecesA.entries.set(d, { table, have: [true, false, false] });
      const answer = b.pieceInfo(a.peerId, d, { wait: { known: 1, waitMs: 4000 } });
      await until(() => piecesA.waits.get(d) === 1, 'the long poll to wait');
      piecesA.update(d, 'pending'); // e.g. the download restarted: fewer pieces than known
      await until(() => piecesA.waits.get(d) === 2, 'the long poll to wait again');
      piecesA.update(d, { table, have: [true, false, true] });
      expect(await answer).toEqual({ table, have: [true, false, true] });
    });

    it('answers what it holds when waitMs passes without news', async () => {
      const d = digestOf(Buffer.from('long poll: quiet'));
      piecesA.entries.set(d, { table, have: [true, true, false] });
      expect(await b.pieceInfo(a.peerId, d, { wait: { known: 2, waitMs: 50 } })).toEqual({ table, have: [true, true, false] });
      expect(piecesA.waits.get(d)).toBe(1);
      expect(piecesA.news.size).toBe(0);
    });

    it('answers at once when the node already holds more than the asker knows', async () => {
      const d = digestOf(Buffer.from('long poll: already'));
      piecesA.entries.set(d, { table, have: [true, true, false] });
      expect(await b.pieceInfo(a.peerId, d, { wait: { known: 1, waitMs: 4000 } })).toEqual({ table, have: [true, true, false] });
      expect(piecesA.waits.get(d)).toBeUndefined();
    });

    it('stops waiting when the asker goes away', async () => {
      const d = digestOf(Buffer.from('long poll: asker gone'));
      piecesA.entries.set(d, 'pending');
      const controller = new AbortController();
      const answer = b.pieceInfo(a.peerId, d, { wait: { known: 0, waitMs: 4000 }, signal: controller.signal });
      await until(() => piecesA.waits.get(d) === 1, 'the long poll to wait');
      controller.abort(new Error('asker gave up'));
      await expect(answer).rejects.toThrow();
      // The stream's reset ends the wait well before the wait asked for (4 s) would.
      await until(() => piecesA.news.size === 0, 'the wait to end', 2500);
    });

    it('refuses a request whose known or waitMs is not a count', async () => {
      const protocol = pieceProtocolId('/shoal-test');
      for (const bad of [{ known: -1, waitMs: 10 }, { known: 0 }, { known: 0, waitMs: 1.5 }, { known: '1', waitMs: 10 }]) {
        const stream: Stream = await b.libp2p.dialProtocol(a.libp2p.peerId, protocol);
        const json = Buffer.from(JSON.stringify({ digest, ...bad }));
        const length = Buffer.alloc(4);
        length.writeUInt32BE(json.length);
        await sendAll(stream, Buffer.concat([length, json]));
        await stream.close();
        const reader = new StreamReader(stream, 1024);
        expect((await reader.readExactly(1))[0]).toBe(3); // ERROR
        const n = Buffer.from(await reader.readExactly(2)).readUInt16BE(0);
        expect(Buffer.from(await reader.readExactly(n)).toString()).toBe('invalid request');
        reader.dispose();
      }
    });
  });

  describe('a lying peer', () => {
    const protocol = pieceProtocolId('/shoal-test');
    /** Replaces C's pieces handler with one that reads the request and answers `answer`. */
    async function answerWith(answer: Uint8Array): Promise<void> {
      await c.libp2p.unhandle(protocol);
      await c.libp2p.handle(protocol, async (stream: Stream) => {
        const reader = new StreamReader(stream);
        const n = new DataView((await reader.readExactly(4)).buffer).getUint32(0);
        await reader.readExactly(n);
        reader.dispose();
        await sendAll(stream, answer);
        await stream.close();
      });
    }

    function ok(tableJson: unknown, bits: Uint8Array): Uint8Array {
      const json = Buffer.from(JSON.stringify(tableJson));
      const head = Buffer.alloc(5);
      head[0] = 0;
      head.writeUInt32BE(json.length, 1);
      return Buffer.concat([head, json, bits]);
    }

    it('is refused when its table breaks the piece size rule', async () => {
      await answerWith(ok({ ...table, pieceSize: 1 * MIB }, Uint8Array.of(0xe0)));
      await expect(b.pieceInfo(c.peerId, digest)).rejects.toThrow(/bad piece table: .*piece size/);
    });

    it('is refused when its table is not JSON', async () => {
      await answerWith(Buffer.concat([Buffer.from([0, 0, 0, 0, 3]), Buffer.from('{{{')]));
      await expect(b.pieceInfo(c.peerId, digest)).rejects.toThrow(/bad piece table/);
    });

    it('is refused when its bitfield sets bits past the last piece', async () => {
      await answerWith(ok(table, Uint8Array.of(0xff)));
      await expect(b.pieceInfo(c.peerId, digest)).rejects.toThrow(/bad bitfield/);
    });

    it('is refused when the bitfield is cut short', async () => {
      await answerWith(ok(table, new Uint8Array(0)));
      await expect(b.pieceInfo(c.peerId, digest)).rejects.toThrow(BlobProtocolError);
    });

    it('is refused when it announces an oversized table', async () => {
      const head = Buffer.alloc(5);
      head.writeUInt32BE(10 * MIB, 1);
      await answerWith(head);
      await expect(b.pieceInfo(c.peerId, digest)).rejects.toThrow(/too long/);
    });

    it('is refused on an unknown status', async () => {
      await answerWith(Uint8Array.of(9));
      await expect(b.pieceInfo(c.peerId, digest)).rejects.toThrow(/unknown status 9/);
    });

    function peersSection(ids: string[]): Buffer {
      return Buffer.concat([Buffer.of(ids.length), ...ids.map((id) => Buffer.concat([Buffer.of(Buffer.byteLength(id)), Buffer.from(id)]))]);
    }

    it('decodes the peers an answer names', async () => {
      await answerWith(Buffer.concat([ok(table, encodeBitfield(() => true, 3)), peersSection([a.peerId, b.peerId])]));
      expect(await b.pieceInfo(c.peerId, digest)).toEqual({ table, have: [true, true, true], peers: [a.peerId, b.peerId] });
    });

    it('is refused when it names an invalid peer id, or too many peers', async () => {
      await answerWith(Buffer.concat([ok(table, encodeBitfield(() => true, 3)), peersSection(['not a peer id'])]));
      await expect(b.pieceInfo(c.peerId, digest)).rejects.toThrow(/invalid peer id/);
      await answerWith(Buffer.concat([ok(table, encodeBitfield(() => true, 3)), Buffer.of(200)]));
      await expect(b.pieceInfo(c.peerId, digest)).rejects.toThrow(/names 200 peers/);
    });

    it('a valid answer from a raw handler decodes (the format is as documented)', async () => {
      await answerWith(ok(table, encodeBitfield((i) => i !== 1, 3)));
      expect(await b.pieceInfo(c.peerId, digest)).toEqual({ table, have: [true, false, true] });
    });
  });
});
