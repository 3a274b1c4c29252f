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

/** LocalPieces over a map, with a hook to make it fail. */
class FakePieces implements LocalPieces {
  readonly entries = new Map<string, { table: PieceTable; have: boolean[] } | 'pending'>();
  failWith: Error | undefined;
  async info(digest: string): Promise<{ table: PieceTable; have: boolean[] } | 'pending' | undefined> {
    if (this.failWith !== undefined) throw this.failWith;
    return this.entries.get(digest);
  }
}

describe('pieces protocol between two P2PNodes on loopback', () => {
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
