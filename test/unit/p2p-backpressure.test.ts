import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryBlobs } from '../../src/p2p/memory-blobs.js';
import { P2PNode } from '../../src/p2p/node.js';

const logger = pino({ level: 'silent' });
const SIZE = 96 * 1024 * 1024;
const digest = `sha256:${'d'.repeat(64)}`;
let dir: string;
let a: P2PNode;
let b: P2PNode;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shoal-p2p-bp-'));
  const blobs = new MemoryBlobs();
  blobs.setGenerated(digest, SIZE);
  const common = { bootstrap: [], mdns: false, zone: 'z', logger };
  a = await P2PNode.start({ ...common, listen: ['/ip4/127.0.0.1/tcp/0'], keyFile: join(dir, 'a'), blobs });
  b = await P2PNode.start({
    ...common,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    bootstrap: a.multiaddrs(),
    keyFile: join(dir, 'b'),
    blobs: new MemoryBlobs(),
  });
  while (b.peers().length === 0) await new Promise((r) => setTimeout(r, 20));
});

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await rm(dir, { recursive: true, force: true });
});

describe('a blob body whose reader pauses and resumes often', () => {
  it('arrives whole: pausing never lets the stream overrun its read buffer', async () => {
    const opened = await b.openBlob(a.peerId, digest, 0);
    let received = 0;
    let chunks = 0;
    await new Promise<void>((resolve, reject) => {
      const body = opened!.body;
      body.on('data', (chunk: Buffer) => {
        received += chunk.length;
        // Like a writer waiting for the disk: stop after every few chunks, go on a moment later.
        if (++chunks % 4 === 0) {
          body.pause();
          setTimeout(() => body.resume(), 1);
        }
      });
      body.once('end', resolve);
      body.once('error', reject);
    });
    expect(received).toBe(SIZE);
  });
});
