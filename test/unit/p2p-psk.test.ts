import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { peerIdFromString } from '@libp2p/peer-id';
import { multiaddr } from '@multiformats/multiaddr';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SwarmKeyError } from '../../src/p2p/errors.js';
import { MemoryBlobs } from '../../src/p2p/memory-blobs.js';
import { P2PNode, type P2PStartOptions } from '../../src/p2p/node.js';
import { generateSwarmKey, parseSwarmKey, readSwarmKey } from '../../src/p2p/psk.js';

const logger = pino({ level: process.env.P2P_TEST_LOG ?? 'silent' });

async function until(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function readAll(body: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of body) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}

describe('swarm key files', () => {
  const hex = 'ab'.repeat(32);

  it('parses a valid key and normalises it', () => {
    const key = new TextDecoder().decode(parseSwarmKey(`/key/swarm/psk/1.0.0/\r\n/base16/\r\n${hex.toUpperCase()}\r\n\n`));
    expect(key).toBe(`/key/swarm/psk/1.0.0/\n/base16/\n${hex}`);
    expect(() => parseSwarmKey(generateSwarmKey())).not.toThrow();
  });

  it.each([
    ['empty', ''],
    ['wrong header', `/key/swarm/psk/2.0.0/\n/base16/\n${hex}`],
    ['wrong encoding', `/key/swarm/psk/1.0.0/\n/base64/\n${hex}`],
    ['short key', `/key/swarm/psk/1.0.0/\n/base16/\n${hex.slice(2)}`],
    ['not hex', `/key/swarm/psk/1.0.0/\n/base16/\n${'zz'.repeat(32)}`],
    ['trailing junk', `/key/swarm/psk/1.0.0/\n/base16/\n${hex}\nmore`],
  ])('refuses a malformed key (%s) with an error naming the file', (_, text) => {
    expect(() => parseSwarmKey(text, '/etc/shoal/swarm.key')).toThrow(SwarmKeyError);
    expect(() => parseSwarmKey(text, '/etc/shoal/swarm.key')).toThrow('/etc/shoal/swarm.key');
  });

  it('reports a missing file by name', async () => {
    await expect(readSwarmKey('/nonexistent/swarm.key')).rejects.toThrow(/\/nonexistent\/swarm\.key/);
  });
});

describe('private network', () => {
  let dir: string;
  const nodes: P2PNode[] = [];
  const blob = Buffer.from('private layer bytes '.repeat(500));
  const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`;

  async function start(name: string, pskFile: string | undefined, extra: Partial<P2PStartOptions> = {}): Promise<P2PNode> {
    const node = await P2PNode.start({
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: [],
      mdns: false,
      zone: 'default',
      keyFile: join(dir, name, 'key'),
      ...(pskFile === undefined ? {} : { pskFile }),
      logger,
      blobs: new MemoryBlobs(),
      ...extra,
    });
    nodes.push(node);
    return node;
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-p2p-psk-'));
    await writeFile(join(dir, 'k1'), generateSwarmKey());
    await writeFile(join(dir, 'k2'), generateSwarmKey());
    await writeFile(join(dir, 'bad'), '/key/swarm/psk/1.0.0/\n/base16/\nnot-a-key\n');
  });

  afterAll(async () => {
    await Promise.all(nodes.map((n) => n.stop()));
    await rm(dir, { recursive: true, force: true });
  });

  it('nodes with the same key connect, find and transfer', async () => {
    const blobs = new MemoryBlobs();
    blobs.set(digest, blob);
    const a = await start('same-a', join(dir, 'k1'), { blobs });
    const b = await start('same-b', join(dir, 'k1'), { bootstrap: [a.multiaddrs()[0]!] });
    await until('connected', () => b.peers().length === 1);
    await a.provide(digest);
    expect(await b.findProviders(digest, { timeoutMs: 3_000, max: 1 })).toEqual([a.peerId]);
    const opened = await b.openBlob(a.peerId, digest, 0);
    expect((await readAll(opened!.body)).equals(blob)).toBe(true);
  });

  it('a node with another key, or none, cannot connect at all', async () => {
    const blobs = new MemoryBlobs();
    blobs.set(digest, blob);
    const a = await start('diff-a', join(dir, 'k1'), { blobs });
    await a.provide(digest);
    const other = await start('diff-b', join(dir, 'k2'), { bootstrap: [a.multiaddrs()[0]!], bootstrapIntervalMs: 200 });
    const open = await start('diff-c', undefined, { bootstrap: [a.multiaddrs()[0]!], bootstrapIntervalMs: 200 });
    await new Promise((r) => setTimeout(r, 1_000));
    expect(other.peers()).toEqual([]);
    expect(open.peers()).toEqual([]);
    expect(a.peers()).toEqual([]);

    // A wrong key fails only when the upgrade times out (the Noise handshake reads garbage).
    await expect(other.dial(a.multiaddrs()[0]!)).rejects.toThrow();
    expect(await other.findProviders(digest, { timeoutMs: 1_000 })).toEqual([]);
    // Even knowing A's address, opening a blob fails: the connection never comes up.
    await other.libp2p.peerStore.merge(peerIdFromString(a.peerId), { multiaddrs: [multiaddr(a.multiaddrs()[0]!)] });
    await expect(other.openBlob(a.peerId, digest, 0)).rejects.toThrow();
    await expect(open.dial(a.multiaddrs()[0]!)).rejects.toThrow();
    expect(a.peers()).toEqual([]);
  });

  it('a malformed key file stops start with an error naming the file', async () => {
    const file = join(dir, 'bad');
    await expect(start('bad-key', file)).rejects.toThrow(SwarmKeyError);
    await expect(start('bad-key', file)).rejects.toThrow(file);
  });
});
