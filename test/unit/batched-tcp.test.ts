import { mkdtemp, rm } from 'node:fs/promises';
import { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MultiaddrConnection } from '@libp2p/interface';
import { pino } from 'pino';
import { Uint8ArrayList } from 'uint8arraylist';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { batchWrites } from '../../src/p2p/batched-tcp.js';
import { rawStreamThroughput } from '../../src/p2p/bench-protocol.js';
import { MemoryBlobs } from '../../src/p2p/memory-blobs.js';
import { P2PNode } from '../../src/p2p/node.js';

/** A socket that records what is done to it. */
function fakeSocket(writableLength = 0) {
  const calls: string[] = [];
  const socket = {
    writableLength,
    writableHighWaterMark: 16384,
    cork: () => calls.push('cork'),
    uncork: () => calls.push('uncork'),
    write: (buf: Uint8Array) => {
      calls.push(`write ${buf.byteLength}`);
      return false; // libp2p's own sendData stops at the first false
    },
  };
  return { socket, calls };
}

describe('batchWrites', () => {
  it('hands the socket every buffer of a send between one cork and one uncork', () => {
    const { socket, calls } = fakeSocket();
    const conn = batchWrites({ socket, sendData: () => ({ sentBytes: 0, canSendMore: true }) } as unknown as MultiaddrConnection);
    const data = new Uint8ArrayList(new Uint8Array(2), new Uint8Array(65535), new Uint8Array(2), new Uint8Array(100));
    expect((conn as unknown as { sendData(d: Uint8ArrayList): unknown }).sendData(data)).toEqual({ sentBytes: 65639, canSendMore: true });
    expect(calls).toEqual(['cork', 'write 2', 'write 65535', 'write 2', 'write 100', 'uncork']);
  });

  it('asks for a drain when the socket holds more than its high-water mark', () => {
    const { socket } = fakeSocket(20000);
    const conn = batchWrites({ socket, sendData: () => ({ sentBytes: 0, canSendMore: true }) } as unknown as MultiaddrConnection);
    expect((conn as unknown as { sendData(d: Uint8ArrayList): unknown }).sendData(new Uint8ArrayList(new Uint8Array(10)))).toEqual({ sentBytes: 10, canSendMore: false });
  });

  it('leaves a connection without a socket as it is', () => {
    const sendData = () => ({ sentBytes: 1, canSendMore: true });
    const conn = { sendData } as unknown as MultiaddrConnection & { sendData: unknown };
    expect(batchWrites(conn).sendData).toBe(sendData);
  });
});

describe('P2PNode connections', () => {
  let dir: string;
  let a: P2PNode;
  let b: P2PNode;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-batched-'));
    const start = (name: string) =>
      P2PNode.start({
        listen: ['/ip4/127.0.0.1/tcp/0'],
        bootstrap: [],
        mdns: false,
        zone: 'z',
        keyFile: join(dir, name, 'key'),
        logger: pino({ level: 'silent' }),
        blobs: new MemoryBlobs(),
        protocolPrefix: '/shoal-test',
        benchProtocol: true,
      });
    a = await start('a');
    b = await start('b');
    await a.dial(b.multiaddrs()[0]!);
  });
  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    await rm(dir, { recursive: true, force: true });
  });

  it('write a Noise-framed stream with one socket write per send, not two per 64 KiB message', async () => {
    const port = Number(b.multiaddrs()[0]!.split('/')[4]);
    const proto = Socket.prototype as unknown as Record<'_write' | '_writev', (this: Socket, ...args: unknown[]) => unknown>;
    const original = { _write: proto._write, _writev: proto._writev };
    let writes = 0;
    for (const name of ['_write', '_writev'] as const) {
      proto[name] = function (this: Socket, ...args: unknown[]) {
        if (this.localPort === port) writes++; // B's side of the connection A dialled
        return original[name].apply(this, args);
      };
    }
    const bytes = 8 * 1024 * 1024;
    try {
      // B sends 8 MiB to A: 128 Noise messages, which libp2p alone writes as 256 buffers.
      const result = await rawStreamThroughput(a, b, bytes);
      expect(result.bytes).toBe(bytes);
    } finally {
      Object.assign(proto, original);
    }
    expect(writes).toBeGreaterThan(0);
    expect(writes).toBeLessThan(64);
  });
});
