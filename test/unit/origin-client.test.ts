import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { MANIFEST_ACCEPT } from '../../src/oci/media-types.js';
import { MAX_MANIFEST_BYTES, OriginClient, parseContentRange, type OriginOptions } from '../../src/origin/client.js';
import { OriginError } from '../../src/origin/errors.js';
import { MAX_RETRY_WAIT_MS, parseRetryAfter, retryDelayMs } from '../../src/origin/retry.js';
import { basic, readAll, registryError, silentLogger, startServer, type Handler, type TestServer } from './origin-helpers.js';

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const BLOB = randomBytes(256 * 1024);
const BLOB_DIGEST = sha256(BLOB);
const INDEX = Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [] }));

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

function client(opts: Partial<OriginOptions> & { url: string }): OriginClient {
  const c = new OriginClient({ host: 'reg.test', retries: 0, retryBaseMs: 1, logger: silentLogger, ...opts });
  cleanups.push(() => c.close());
  return c;
}

async function server(handler: Handler): Promise<TestServer> {
  const s = await startServer(handler);
  cleanups.push(() => s.close());
  return s;
}

/** Serves BLOB honouring (or ignoring) Range. */
function serveBlob(res: Parameters<Handler>[1], range: string | undefined, honourRange = true): void {
  const m = range ? /^bytes=(\d+)-$/.exec(range) : null;
  if (m && honourRange) {
    const start = Number(m[1]);
    res.writeHead(206, {
      'content-length': BLOB.length - start,
      'content-range': `bytes ${start}-${BLOB.length - 1}/${BLOB.length}`,
    });
    res.end(BLOB.subarray(start));
    return;
  }
  res.writeHead(200, { 'content-length': BLOB.length, 'content-type': 'application/octet-stream' });
  res.end(BLOB);
}

async function failure(p: Promise<unknown>): Promise<OriginError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(OriginError);
  return err as OriginError;
}

describe('manifests', () => {
  it('HEAD sends the Accept list and reports digest, media type and size', async () => {
    const digest = sha256(INDEX);
    const s = await server((_req, res) =>
      res
        .writeHead(200, {
          'content-type': 'application/vnd.oci.image.index.v1+json',
          'content-length': INDEX.length,
          'docker-content-digest': digest,
        })
        .end(),
    );
    const head = await client({ url: s.url }).headManifest('library/app', 'latest');
    expect(head).toEqual({ digest, mediaType: 'application/vnd.oci.image.index.v1+json', size: INDEX.length });
    expect(s.requests[0]).toMatchObject({ method: 'HEAD', url: '/v2/library/app/manifests/latest' });
    expect(s.requests[0]!.headers.accept).toBe(MANIFEST_ACCEPT);
  });

  it('GET returns the exact bytes; a generic Content-Type falls back to the body; bad digests are ignored', async () => {
    const s = await server((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'docker-content-digest': 'md5:nope' });
      res.end(INDEX);
    });
    const m = await client({ url: s.url }).getManifest('app', 'v1');
    expect(m.bytes.equals(INDEX)).toBe(true);
    expect(m.mediaType).toBe('application/vnd.oci.image.index.v1+json');
    expect(m.digest).toBeUndefined();
    expect(s.requests[0]!.headers.accept).toBe(MANIFEST_ACCEPT);
  });

  it('checks bytes fetched by digest against the digest', async () => {
    const s = await server((_req, res) => res.writeHead(200, { 'content-type': 'application/vnd.oci.image.index.v1+json' }).end(INDEX));
    const c = client({ url: s.url });
    const ok = await c.getManifest('app', sha256(INDEX));
    expect(ok.mediaType).toBe('application/vnd.oci.image.index.v1+json');
    const err = await failure(c.getManifest('app', `sha256:${'0'.repeat(64)}`));
    expect(err.kind).toBe('protocol');
  });

  it('refuses manifests over 4 MiB, declared or streamed', async () => {
    const big = Buffer.alloc(MAX_MANIFEST_BYTES + 1, 0x20);
    const declared = await server((_req, res) => res.writeHead(200, { 'content-length': big.length }).end(big));
    expect((await failure(client({ url: declared.url }).getManifest('app', 'latest'))).kind).toBe('protocol');
    const chunked = await server((_req, res) => {
      res.writeHead(200, { 'transfer-encoding': 'chunked' });
      res.write(big.subarray(0, 1024 * 1024));
      res.end(big.subarray(1024 * 1024));
    });
    const err = await failure(client({ url: chunked.url }).getManifest('app', 'latest'));
    expect(err.kind).toBe('protocol');
    expect(err.message).toMatch(/limit/);
  });

  it('normalises Docker Hub official images to library/', async () => {
    const s = await server((_req, res) => res.writeHead(200, { 'content-type': 'application/vnd.oci.image.index.v1+json' }).end(INDEX));
    await client({ url: s.url, host: 'docker.io' }).getManifest('nginx', 'latest');
    expect(s.requests[0]!.url).toBe('/v2/library/nginx/manifests/latest');
  });

  it('rejects invalid names and references before sending anything', async () => {
    const s = await server((_req, res) => res.end());
    const c = client({ url: s.url });
    expect((await failure(c.getManifest('../etc', 'latest'))).kind).toBe('protocol');
    expect((await failure(c.getManifest('app', 'bad/tag'))).kind).toBe('protocol');
    expect((await failure(c.getBlob('app', 'sha256:short'))).kind).toBe('protocol');
    expect(s.requests).toHaveLength(0);
  });
});

describe('status mapping', () => {
  it('maps 404, 403, 401 and keeps the origin error code', async () => {
    const s = await server((req, res) => {
      if (req.url?.includes('/missing/')) return registryError(res, 404, 'MANIFEST_UNKNOWN', 'manifest unknown');
      if (req.url?.includes('/forbidden/')) return registryError(res, 403, 'DENIED', 'requested access to the resource is denied');
      return registryError(res, 400, 'NAME_INVALID', 'bad name');
    });
    const c = client({ url: s.url, retries: 3 });
    const notFound = await failure(c.getManifest('missing/app', 'latest'));
    expect(notFound).toMatchObject({ kind: 'not-found', status: 404, code: 'MANIFEST_UNKNOWN' });
    expect(notFound.message).toContain('manifest unknown');
    expect(await failure(c.getManifest('forbidden/app', 'latest'))).toMatchObject({ kind: 'denied', status: 403, code: 'DENIED' });
    expect(await failure(c.headManifest('missing/app', 'latest'))).toMatchObject({ kind: 'not-found', status: 404 });
    expect(await failure(c.getManifest('other/app', 'latest'))).toMatchObject({ kind: 'protocol', status: 400, code: 'NAME_INVALID' });
    // 4xx other than 429 are never retried.
    expect(s.requests).toHaveLength(4);
  });
});

describe('retries', () => {
  it('retries a 503 and then succeeds', async () => {
    let n = 0;
    const s = await server((_req, res) => (++n < 3 ? registryError(res, 503, 'UNAVAILABLE', 'busy') : res.writeHead(200, { 'content-type': 'application/vnd.oci.image.index.v1+json' }).end(INDEX)));
    const m = await client({ url: s.url, retries: 3 }).getManifest('app', 'latest');
    expect(m.bytes.equals(INDEX)).toBe(true);
    expect(s.requests).toHaveLength(3);
  });

  it('honours Retry-After', async () => {
    let n = 0;
    const s = await server((_req, res) => (++n === 1 ? registryError(res, 429, 'TOOMANYREQUESTS', 'slow down', { 'retry-after': '1' }) : res.writeHead(200, { 'content-length': 3 }).end('abc')));
    const started = Date.now();
    await client({ url: s.url, retries: 2, retryBaseMs: 1 }).headBlob('app', BLOB_DIGEST);
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
  });

  it('gives up after the configured retries with unavailable', async () => {
    const s = await server((_req, res) => registryError(res, 502, 'UNAVAILABLE', 'bad gateway'));
    const err = await failure(client({ url: s.url, retries: 2 }).getManifest('app', 'latest'));
    expect(err).toMatchObject({ kind: 'unavailable', status: 502 });
    expect(err.message).toMatch(/gave up after 3 attempts/);
    expect(s.requests).toHaveLength(3);
  });

  it('reports a final 429 as toomanyrequests with Retry-After', async () => {
    const s = await server((_req, res) => registryError(res, 429, 'TOOMANYREQUESTS', 'pull rate limit', { 'retry-after': '0' }));
    const err = await failure(client({ url: s.url, retries: 1 }).getManifest('app', 'latest'));
    expect(err).toMatchObject({ kind: 'toomanyrequests', status: 429, code: 'TOOMANYREQUESTS', retryAfterMs: 0 });
  });

  it('retries refused connections and then reports unavailable', async () => {
    // A port that was just free: connecting is refused.
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as { port: number }).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const err = await failure(client({ url: `http://127.0.0.1:${port}`, retries: 2 }).getManifest('app', 'latest'));
    expect(err.kind).toBe('unavailable');
    expect(err.message).toMatch(/ECONNREFUSED/);
  });

  it('retries a connection reset while reading a manifest body', async () => {
    let n = 0;
    const s = await server((_req, res) => {
      if (++n === 1) {
        res.writeHead(200, { 'content-length': 1000 });
        res.write('{"partial');
        setTimeout(() => res.socket?.destroy(), 10);
        return;
      }
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.index.v1+json' }).end(INDEX);
    });
    const m = await client({ url: s.url, retries: 1 }).getManifest('app', 'latest');
    expect(m.bytes.equals(INDEX)).toBe(true);
  });

  it('computes delays: Retry-After capped, seconds or HTTP date', () => {
    expect(retryDelayMs(0, 1, 60_000)).toBe(MAX_RETRY_WAIT_MS);
    expect(retryDelayMs(0, 1, 1500)).toBe(1500);
    const d = retryDelayMs(3, 100, undefined);
    expect(d).toBeGreaterThanOrEqual(400);
    expect(d).toBeLessThanOrEqual(800);
    expect(parseRetryAfter('7')).toBe(7000);
    const now = Date.parse('Wed, 21 Oct 2015 07:28:00 GMT');
    expect(parseRetryAfter('Wed, 21 Oct 2015 07:28:05 GMT', now)).toBe(5000);
    expect(parseRetryAfter('garbage')).toBeUndefined();
    expect(parseRetryAfter(undefined)).toBeUndefined();
  });
});

describe('redirects', () => {
  async function basicRegistry(location: (storage: TestServer) => string, storage: TestServer): Promise<TestServer> {
    return server((req, res) => {
      if (req.headers.authorization !== basic('u', 'p')) return res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' }).end();
      if (req.url?.startsWith('/v2/')) return res.writeHead(307, { location: location(storage) }).end();
      serveBlob(res, req.headers.range);
    });
  }

  it('never forwards Authorization to another origin', async () => {
    const storage = await server((req, res) => serveBlob(res, req.headers.range));
    const registry = await basicRegistry((st) => `${st.url}/signed/blob?X-Amz-Signature=abc`, storage);
    const c = client({ url: registry.url, credentials: { username: 'u', password: 'p' } });
    const blob = await c.getBlob('app', BLOB_DIGEST);
    expect((await readAll(blob.body)).equals(BLOB)).toBe(true);
    expect(blob).toMatchObject({ size: BLOB.length, offset: 0 });
    expect(storage.requests).toHaveLength(1);
    expect(storage.requests[0]!.url).toBe('/signed/blob?X-Amz-Signature=abc');
    expect(storage.requests[0]!.headers.authorization).toBeUndefined();
    expect(registry.requests.at(-1)!.headers.authorization).toBe(basic('u', 'p'));
  });

  it('keeps Authorization on a same-origin relative redirect, and forwards Range', async () => {
    const storage = await server((_req, res) => res.end());
    const registry = await basicRegistry(() => '/storage/blob', storage);
    const c = client({ url: registry.url, credentials: { username: 'u', password: 'p' } });
    const blob = await c.getBlob('app', BLOB_DIGEST, { offset: 1000 });
    expect((await readAll(blob.body)).equals(BLOB.subarray(1000))).toBe(true);
    const last = registry.requests.at(-1)!;
    expect(last.url).toBe('/storage/blob');
    expect(last.headers.authorization).toBe(basic('u', 'p'));
    expect(last.headers.range).toBe('bytes=1000-');
  });

  it('stops after 5 redirects', async () => {
    let hops = 0;
    const s = await server((_req, res) => res.writeHead(302, { location: `/hop/${++hops}` }).end());
    const err = await failure(client({ url: s.url }).getBlob('app', BLOB_DIGEST));
    expect(err.kind).toBe('protocol');
    expect(s.requests).toHaveLength(6);
  });

  it('maps an error from the storage backend (expired signature)', async () => {
    const storage = await server((_req, res) => res.writeHead(403, { 'content-type': 'application/xml' }).end('<Error>AccessDenied</Error>'));
    const registry = await server((_req, res) => res.writeHead(302, { location: `${storage.url}/x` }).end());
    expect(await failure(client({ url: registry.url }).getBlob('app', BLOB_DIGEST))).toMatchObject({ kind: 'denied', status: 403 });
  });
});

describe('blobs', () => {
  it('HEAD reports the size', async () => {
    const s = await server((_req, res) => res.writeHead(200, { 'content-length': 1234 }).end());
    expect(await client({ url: s.url }).headBlob('app', BLOB_DIGEST)).toEqual({ size: 1234 });
    expect(s.requests[0]).toMatchObject({ method: 'HEAD', url: `/v2/app/blobs/${BLOB_DIGEST}` });
  });

  it('asks for a range and returns a 206 body from the offset', async () => {
    const s = await server((req, res) => serveBlob(res, req.headers.range));
    const blob = await client({ url: s.url }).getBlob('app', BLOB_DIGEST, { offset: 5000 });
    expect(blob.size).toBe(BLOB.length);
    expect(blob.offset).toBe(5000);
    expect((await readAll(blob.body)).equals(BLOB.subarray(5000))).toBe(true);
    expect(s.requests[0]!.headers.range).toBe('bytes=5000-');
  });

  it('skips the first bytes itself when the origin ignores Range', async () => {
    const s = await server((req, res) => serveBlob(res, req.headers.range, false));
    const blob = await client({ url: s.url }).getBlob('app', BLOB_DIGEST, { offset: 100_001 });
    expect(blob).toMatchObject({ size: BLOB.length, offset: 100_001 });
    expect((await readAll(blob.body)).equals(BLOB.subarray(100_001))).toBe(true);
  });

  it('rejects a 206 that starts elsewhere', async () => {
    const s = await server((_req, res) => res.writeHead(206, { 'content-range': `bytes 0-9/${BLOB.length}`, 'content-length': 10 }).end(BLOB.subarray(0, 10)));
    expect((await failure(client({ url: s.url }).getBlob('app', BLOB_DIGEST, { offset: 5 }))).kind).toBe('protocol');
  });

  it('streams: the first chunk arrives before the origin has sent the rest', async () => {
    const total = 8 * 1024 * 1024;
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let sentAll = false;
    const s = await server(async (_req, res) => {
      res.writeHead(200, { 'content-length': total });
      res.write(Buffer.alloc(64 * 1024, 1));
      await released; // the rest only after the client has seen data
      res.end(Buffer.alloc(total - 64 * 1024, 2));
      sentAll = true;
    });
    const blob = await client({ url: s.url }).getBlob('app', BLOB_DIGEST);
    expect(blob.size).toBe(total);
    const it = (blob.body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    const first = await it.next();
    expect(first.done).toBe(false);
    expect(sentAll).toBe(false);
    release();
    let received = (first.value as Buffer).length;
    for (let r = await it.next(); !r.done; r = await it.next()) received += (r.value as Buffer).length;
    expect(received).toBe(total);
  });

  it('keeps backpressure: an unread body stops the origin from sending', async () => {
    const total = 64 * 1024 * 1024;
    let written = 0;
    const s = await server((_req, res) => {
      res.writeHead(200, { 'content-length': total });
      const chunk = Buffer.alloc(256 * 1024);
      const pump = (): void => {
        while (written < total) {
          written += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end();
      };
      pump();
    });
    const blob = await client({ url: s.url }).getBlob('app', BLOB_DIGEST);
    await new Promise((r) => setTimeout(r, 300));
    // Socket buffers hold a few MiB at most; the rest waits for the reader.
    expect(written).toBeLessThan(total / 2);
    blob.body.on('error', () => {});
    blob.body.destroy();
  });

  it('does not retry once a body has been handed over', async () => {
    const s = await server((_req, res) => {
      res.writeHead(200, { 'content-length': BLOB.length });
      res.write(BLOB.subarray(0, 1000));
      setTimeout(() => res.socket?.destroy(), 20);
    });
    const blob = await client({ url: s.url, retries: 3 }).getBlob('app', BLOB_DIGEST);
    await expect(readAll(blob.body)).rejects.toThrow();
    expect(s.requests).toHaveLength(1);
  });
});

describe('timeouts and aborts', () => {
  it('times out waiting for response headers', async () => {
    const s = await server(() => {
      /* never answers */
    });
    const started = Date.now();
    const err = await failure(client({ url: s.url, timeoutMs: 200 }).getManifest('app', 'latest'));
    expect(err.kind).toBe('unavailable');
    expect(err.message).toMatch(/UND_ERR_HEADERS_TIMEOUT/);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('times out an idle blob body', async () => {
    const s = await server((_req, res) => {
      res.writeHead(200, { 'content-length': BLOB.length });
      res.write(BLOB.subarray(0, 100));
    });
    const blob = await client({ url: s.url, bodyTimeoutMs: 200 }).getBlob('app', BLOB_DIGEST);
    await expect(readAll(blob.body)).rejects.toMatchObject({ code: 'UND_ERR_BODY_TIMEOUT' });
  });

  it('aborts with the caller signal and does not retry', async () => {
    const s = await server(() => {
      /* never answers */
    });
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error('caller gave up')), 50);
    await expect(client({ url: s.url, retries: 3 }).getManifest('app', 'latest', ac.signal)).rejects.toThrow('caller gave up');
    expect(s.requests).toHaveLength(1);
  });

  it('aborts a backoff sleep', async () => {
    const s = await server((_req, res) => registryError(res, 503, 'UNAVAILABLE', 'x', { 'retry-after': '5' }));
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error('stop')), 100);
    const started = Date.now();
    await expect(client({ url: s.url, retries: 3 }).headBlob('app', BLOB_DIGEST, ac.signal)).rejects.toThrow('stop');
    expect(Date.now() - started).toBeLessThan(2000);
  });
});

describe('parseContentRange', () => {
  it('parses totals and unknown totals', () => {
    expect(parseContentRange('bytes 10-19/100')).toEqual({ start: 10, end: 19, total: 100 });
    expect(parseContentRange('bytes 10-19/*')).toEqual({ start: 10, end: 19 });
    expect(parseContentRange('bytes 19-10/100')).toBeUndefined();
    expect(parseContentRange(undefined)).toBeUndefined();
  });
});

describe('close', () => {
  it('can be called twice', async () => {
    const c = new OriginClient({ host: 'x', url: 'http://127.0.0.1:1' });
    await c.close();
    await c.close();
  });
});
