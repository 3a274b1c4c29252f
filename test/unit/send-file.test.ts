import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, get, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sendFileRange } from '../../src/http/send-file.js';

const content = randomBytes(5 * 1024 * 1024 + 123);
let dir: string;
let file: string;
let server: Server;
let url: string;
/** Outcome of each request by URL: the it.each responses may finish after their test. */
const outcomes = new Map<string, string>();

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shoal-send-'));
  file = join(dir, 'blob');
  await writeFile(file, content);
  server = createServer((req, res) => {
    const [start, end] = (req.url ?? '').slice(1).split('-').map(Number) as [number, number];
    res.writeHead(200, { 'content-length': String(end - start + 1) });
    sendFileRange(res, file, start, end).then(
      () => outcomes.set(req.url ?? '', 'done'),
      (err: Error) => outcomes.set(req.url ?? '', `failed: ${err.message}`),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await rm(dir, { recursive: true, force: true });
});

describe('sendFileRange', () => {
  it.each([
    [0, content.length - 1],
    [1, 1],
    [1024 * 1024 - 1, 3 * 1024 * 1024 + 7],
    [content.length - 10, content.length - 1],
  ])('sends bytes %i-%i exactly', async (start, end) => {
    const res = await fetch(`${url}/${start}-${end}`);
    const body = Buffer.from(await res.arrayBuffer());
    expect(body.equals(content.subarray(start, end + 1))).toBe(true);
  });

  it('stops, and says so, when the client goes away mid-body', async () => {
    // Far more than loopback socket buffers hold, so the server is still sending.
    await writeFile(file, Buffer.alloc(256 * 1024 * 1024, 1));
    const path = `/0-${256 * 1024 * 1024 - 1}`;
    await new Promise<void>((resolve) => {
      const req = get(`${url}${path}`, (res) => {
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', () => undefined);
    });
    for (let i = 0; i < 100 && !outcomes.has(path); i++) await new Promise((r) => setTimeout(r, 20));
    expect(outcomes.get(path)).toMatch(/^failed: /);
    await writeFile(file, content);
  });
});
