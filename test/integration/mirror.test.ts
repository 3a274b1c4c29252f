import { readdir } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseDigest } from '../../src/oci/digest.js';
import { startAgent, type TestAgent } from '../helpers/agent.js';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.js';
import { makeImage, makeIndex, pushImage, pushIndex, type PushedImage, type PushedIndex } from '../helpers/images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { sleep } from '../helpers/proc.js';
import { skopeoPull } from '../helpers/skopeo.js';

// A real docker-registry as the origin, behind a proxy that counts what the origin serves;
// a real agent in front; skopeo (which verifies every digest) as the client.
let registry: Registry;
let origin: CountingProxy;
let agent: TestAgent;
let image: PushedImage;
let v2s2: PushedImage;
let index: PushedIndex;

beforeAll(async () => {
  registry = await startRegistry();
  origin = await startCountingProxy(registry);
  const local = await makeImage({ layers: [3 * 1024 * 1024, 512 * 1024] });
  image = await pushImage(local, registry, 'team/app:v1');
  v2s2 = await pushImage(local, registry, 'team/docker:v1', { format: 'v2s2' });
  await local.remove();
  const multi = await makeIndex({
    images: [
      { platform: { os: 'linux', architecture: 'amd64' }, layers: [200_000] },
      { platform: { os: 'linux', architecture: 'arm64' }, layers: [300_000] },
    ],
  });
  index = await pushIndex(multi, registry, 'team/multi:v1');
  await multi.remove();
  agent = await startAgent({ registries: { [origin.host]: { url: origin.url } } });
});

afterAll(async () => {
  await agent?.close();
  await origin?.stop();
  await registry?.close();
});

function rawGet(base: string, path: string): Promise<{ status: number; contentType: string; body: string }> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request({ host: url.hostname, port: url.port, path, method: 'GET' }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          contentType: String(res.headers['content-type']),
          body: Buffer.concat(chunks).toString('utf8'),
        }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

async function tmpFiles(dir: string): Promise<string[]> {
  return readdir(join(dir, 'tmp'));
}

describe('pull-through mirror', () => {
  it('serves an image to skopeo, fetching each blob from the origin once', async () => {
    origin.reset();
    const first = await skopeoPull(`${agent.host}/team/app:v1`);
    expect(first.stderr).toBe('');
    expect(first.ok).toBe(true);
    await first.remove();
    expect(origin.blobBytes()).toBe(image.blobBytes);

    origin.reset();
    const second = await skopeoPull(`${agent.host}/team/app:v1`);
    expect(second.ok).toBe(true);
    await second.remove();
    expect(origin.blobBytes()).toBe(0);
    // The tag is still asked of the origin each time; the manifest bytes come from the store.
    expect(origin.manifestHeads()).toBeGreaterThanOrEqual(1);
    expect(origin.manifestGets()).toBe(0);
  });

  it('answers manifests with the origin’s exact bytes and headers', async () => {
    for (const method of ['GET', 'HEAD'] as const) {
      const res = await fetch(`${agent.url}/v2/team/app/manifests/v1`, { method });
      expect(res.status).toBe(200);
      expect(res.headers.get('docker-content-digest')).toBe(image.manifestDigest);
      expect(res.headers.get('content-type')).toBe(image.manifestMediaType);
      expect(res.headers.get('content-length')).toBe(String(image.manifestRaw.length));
      expect(res.headers.get('docker-distribution-api-version')).toBe('registry/2.0');
      const body = Buffer.from(await res.arrayBuffer());
      expect(body.equals(method === 'GET' ? image.manifestRaw : Buffer.alloc(0))).toBe(true);
    }
    const docker = await fetch(`${agent.url}/v2/team/docker/manifests/v1`);
    expect(docker.headers.get('content-type')).toBe('application/vnd.docker.distribution.manifest.v2+json');
    expect(Buffer.from(await docker.arrayBuffer()).equals(v2s2.manifestRaw)).toBe(true);
    const byDigest = await fetch(`${agent.url}/v2/team/app/manifests/${image.manifestDigest}`);
    expect(Buffer.from(await byDigest.arrayBuffer()).equals(image.manifestRaw)).toBe(true);
  });

  it('starts fetching an image’s config when its manifest is served, not on a HEAD', async () => {
    const local = await makeImage({ layers: [256 * 1024] });
    const fresh = await pushImage(local, registry, 'team/prefetch:v1');
    await local.remove();
    const other = await makeImage({ layers: [128 * 1024] });
    const headOnly = await pushImage(other, registry, 'team/prefetch-head:v1');
    await other.remove();
    expect(headOnly.configDigest).not.toBe(fresh.configDigest);
    const configOf = (img: PushedImage) => parseDigest(img.configDigest);
    expect(await agent.agent.store.get(configOf(headOnly))).toBeUndefined();
    expect((await fetch(`${agent.url}/v2/team/prefetch-head/manifests/v1`, { method: 'HEAD' })).status).toBe(200);

    origin.reset();
    const res = await fetch(`${agent.url}/v2/team/prefetch/manifests/v1`);
    expect(Buffer.from(await res.arrayBuffer()).equals(fresh.manifestRaw)).toBe(true);
    // Nobody asked for the config, yet it arrives, from the origin once.
    for (let i = 0; i < 100 && !(await agent.agent.store.get(configOf(fresh))); i++) await sleep(50);
    expect(await agent.agent.store.get(configOf(fresh))).toBeDefined();
    const configGets = () => origin.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${fresh.configDigest}`)).length;
    expect(configGets()).toBe(1);
    const config = await fetch(`${agent.url}/v2/team/prefetch/blobs/${fresh.configDigest}`);
    expect(config.status).toBe(200);
    await config.arrayBuffer();
    expect(configGets()).toBe(1);
    // The layers were not prefetched, and a HEAD prefetched nothing.
    expect(await agent.agent.store.get(parseDigest(fresh.layerDigests[0]!))).toBeUndefined();
    expect(await agent.agent.store.get(configOf(headOnly))).toBeUndefined();
  });

  it('serves an index and one platform of it', async () => {
    const res = await fetch(`${agent.url}/v2/team/multi/manifests/v1`);
    expect(res.headers.get('content-type')).toBe(index.indexMediaType);
    expect(Buffer.from(await res.arrayBuffer()).equals(index.indexRaw)).toBe(true);
    const arm = await skopeoPull(`${agent.host}/team/multi:v1`, { os: 'linux', arch: 'arm64' });
    expect(arm.stderr).toBe('');
    expect(arm.ok).toBe(true);
    await arm.remove();
  });

  it('takes the upstream from ns and from a leading registry segment', async () => {
    const viaNs = await fetch(`${agent.url}/v2/team/app/manifests/v1?ns=${origin.host}`);
    expect(viaNs.headers.get('docker-content-digest')).toBe(image.manifestDigest);
    const viaPath = await fetch(`${agent.url}/v2/${origin.host}/team/app/manifests/v1`);
    expect(viaPath.headers.get('docker-content-digest')).toBe(image.manifestDigest);
    const unknown = await fetch(`${agent.url}/v2/team/app/manifests/v1?ns=not-configured.example`);
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('NAME_UNKNOWN');
  });

  it('serves byte ranges of blobs', async () => {
    const layer = image.layerDigests[1]!;
    const size = image.layerSizes[1]!;
    const whole = Buffer.from(await (await fetch(`${agent.url}/v2/team/app/blobs/${layer}`)).arrayBuffer());
    expect(whole.length).toBe(size);
    const part = await fetch(`${agent.url}/v2/team/app/blobs/${layer}`, { headers: { Range: 'bytes=100-199' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes 100-199/${size}`);
    expect(part.headers.get('content-length')).toBe('100');
    expect(Buffer.from(await part.arrayBuffer()).equals(whole.subarray(100, 200))).toBe(true);
    const tail = await fetch(`${agent.url}/v2/team/app/blobs/${layer}`, { headers: { Range: 'bytes=-10' } });
    expect(Buffer.from(await tail.arrayBuffer()).equals(whole.subarray(size - 10))).toBe(true);
    const beyond = await fetch(`${agent.url}/v2/team/app/blobs/${layer}`, { headers: { Range: `bytes=${size}-` } });
    expect(beyond.status).toBe(416);
    expect(beyond.headers.get('content-range')).toBe(`bytes */${size}`);
    expect(((await beyond.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('RANGE_INVALID');
    const head = await fetch(`${agent.url}/v2/team/app/blobs/${layer}`, { method: 'HEAD' });
    expect(head.headers.get('content-length')).toBe(String(size));
    expect(head.headers.get('docker-content-digest')).toBe(layer);
  });

  it('shares one origin download among concurrent requests for a digest', async () => {
    const local = await makeImage({ layers: [2 * 1024 * 1024] });
    const pushed = await pushImage(local, registry, 'team/concurrent:v1');
    await local.remove();
    origin.reset();
    const layer = pushed.layerDigests[0]!;
    const bodies = await Promise.all(
      Array.from({ length: 6 }, async () => {
        const res = await fetch(`${agent.url}/v2/team/concurrent/blobs/${layer}`);
        expect(res.status).toBe(200);
        return Buffer.from(await res.arrayBuffer());
      }),
    );
    expect(bodies.every((b) => b.length === pushed.layerSizes[0])).toBe(true);
    expect(origin.blobGets()).toBe(1);
  });

  it('stores nothing and serves nothing when the origin sends wrong bytes for a digest', async () => {
    const local = await makeImage({ layers: [1024 * 1024] });
    const pushed = await pushImage(local, registry, 'team/corrupt:v1');
    await local.remove();
    const layer = pushed.layerDigests[0]!;
    origin.onRequest = async (req, res) => {
      if (req.method !== 'GET' || !req.url?.includes(`/blobs/${layer}`)) return false;
      const up = await origin.forward(req);
      const chunks: Buffer[] = [];
      for await (const c of up) chunks.push(c as Buffer);
      const body = Buffer.concat(chunks);
      body.writeUInt8(body.readUInt8(1234) ^ 0x55, 1234);
      res.writeHead(200, { 'content-length': String(body.length), 'docker-content-digest': layer });
      res.end(body);
      return true;
    };
    try {
      const res = await fetch(`${agent.url}/v2/team/corrupt/blobs/${layer}`);
      expect(res.status).toBe(502);
      const body = (await res.json()) as { errors: { code: string; message: string }[] };
      expect(body.errors[0]!.code).toBe('DIGEST_INVALID');
      expect(await agent.agent.store.get(parseDigest(layer))).toBeUndefined();
      expect(await tmpFiles(agent.dir)).toEqual([]);
    } finally {
      origin.onRequest = undefined;
    }
    // Once the origin behaves, the same digest is fetched and served.
    const good = await fetch(`${agent.url}/v2/team/corrupt/blobs/${layer}`);
    expect(good.status).toBe(200);
    expect(Buffer.from(await good.arrayBuffer()).length).toBe(pushed.layerSizes[0]);
  });

  it('answers unknown manifests and blobs with the spec’s errors', async () => {
    const tag = await fetch(`${agent.url}/v2/team/app/manifests/nope`);
    expect(tag.status).toBe(404);
    expect(((await tag.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('MANIFEST_UNKNOWN');
    const blob = await fetch(`${agent.url}/v2/team/app/blobs/sha256:${'0'.repeat(64)}`);
    expect(blob.status).toBe(404);
    expect(((await blob.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('BLOB_UNKNOWN');
  });

  it.each([
    ['/v2/Team/App/manifests/v1', 400, 'NAME_INVALID'],
    ['/v2/team/../etc/manifests/v1', 400, 'NAME_INVALID'],
    ['/v2/team%2F..%2Fetc/manifests/v1', 400, 'NAME_INVALID'],
    [`/v2/${'a/'.repeat(150)}b/manifests/v1`, 400, 'NAME_INVALID'],
    ['/v2/team/app/manifests/bad!tag', 404, 'MANIFEST_UNKNOWN'],
    ['/v2/team/app/blobs/sha256:1234', 400, 'DIGEST_INVALID'],
    ['/v2/team/app/blobs/sha256:..%2F..%2Fetc%2Fpasswd', 400, 'DIGEST_INVALID'],
    [`/v2/team/app/blobs/sha256:${'f'.repeat(5000)}`.slice(0, 80) + 'f'.repeat(4000), 400, 'DIGEST_INVALID'],
    ['/v2/team/app/blobs/uploads/', 404, 'UNSUPPORTED'],
    ['/v2/_catalog', 404, 'UNSUPPORTED'],
    ['/v2/%zz/manifests/v1', 400, 'NAME_INVALID'],
  ])('%s → %i %s', async (path, status, code) => {
    // A raw request: fetch would normalise `..` away before it left the client.
    const res = await rawGet(agent.url, path);
    expect(res.status).toBe(status);
    expect(res.contentType).toMatch(/application\/json/);
    expect((JSON.parse(res.body) as { errors: { code: string }[] }).errors[0]!.code).toBe(code);
  });

  it('refuses pushes with a JSON error', async () => {
    const res = await fetch(`${agent.url}/v2/team/app/blobs/uploads/`, { method: 'POST' });
    expect(res.status).toBe(405);
    expect(((await res.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('UNSUPPORTED');
  });

  it('refuses malformed ranges with 416', async () => {
    const layer = image.layerDigests[0]!;
    const res = await fetch(`${agent.url}/v2/team/app/blobs/${layer}`, { headers: { Range: 'bytes=oops' } });
    expect(res.status).toBe(416);
    expect(((await res.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('RANGE_INVALID');
  });
});
