// Proves the real-parts harness works end to end: a real distribution registry (open, htpasswd,
// token auth), umoci-built images pushed and pulled with skopeo, the counting proxy, and a real
// containerd pulling through a hosts.toml mirror.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { startContainerd, writeHostsToml } from '../helpers/containerd.js';
import { startCountingProxy } from '../helpers/counting-proxy.js';
import { makeImage, makeIndex, pushImage, pushIndex } from '../helpers/images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { skopeoInspect, skopeoPull } from '../helpers/skopeo.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp.js';
import { ANONYMOUS, startTokenIssuer } from '../helpers/token-issuer.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function blobFromLayout(layout: string, digest: string): Promise<Buffer> {
  return readFile(join(layout, 'blobs', ...digest.split(':')));
}

describe('harness', () => {
  let plain: Registry;

  test('plain registry: umoci image pushed with skopeo, pulled back byte-exact; restart keeps data', async () => {
    plain = await startRegistry();
    cleanups.push(() => plain.close());
    const img = await makeImage({ layers: [1 << 20, 256 * 1024, Buffer.from('hello shoal\n')] });
    cleanups.push(() => img.remove());
    // Random content does not compress: blob sizes stay close to what was asked for.
    expect(img.layerSizes[0]).toBeGreaterThanOrEqual(1 << 20);
    expect(img.layerSizes[0]).toBeLessThan((1 << 20) + 16 * 1024);

    const pushed = await pushImage(img, plain, 'team/app:v1');
    expect(pushed.manifestDigest).toBe(img.manifestDigest); // pushed verbatim
    expect(pushed.manifestDigest).toBe(sha256(pushed.manifestRaw));
    expect(pushed.layerDigests).toEqual(img.layerDigests);
    expect(pushed.configDigest).toBe(img.configDigest);
    expect(pushed.blobBytes).toBe(img.blobBytes);
    expect(pushed.manifestMediaType).toBe('application/vnd.oci.image.manifest.v1+json');

    const r = await fetch(`${plain.url}/v2/team/app/manifests/v1`, {
      method: 'HEAD',
      headers: { accept: pushed.manifestMediaType },
    });
    expect(r.headers.get('docker-content-digest')).toBe(pushed.manifestDigest);

    const pull = await skopeoPull(`${plain.host}/team/app:v1`);
    cleanups.push(() => pull.remove());
    expect(pull.ok, pull.stderr).toBe(true);
    for (const d of pushed.layerDigests) expect(sha256(await blobFromLayout(pull.layoutDir, d))).toBe(d);

    await plain.stop();
    expect((await skopeoPull(`${plain.host}/team/app:v1`)).ok).toBe(false);
    await plain.start();
    const info = await skopeoInspect(`${plain.host}/team/app:v1`);
    expect(info['Digest']).toBe(pushed.manifestDigest);
  });

  test('multi-platform index pushed with --all', async () => {
    const idx = await makeIndex({
      images: [
        { platform: { os: 'linux', architecture: 'amd64' }, layers: [64 * 1024] },
        { platform: { os: 'linux', architecture: 'arm64' }, layers: [32 * 1024] },
      ],
    });
    cleanups.push(() => idx.remove());
    const pushed = await pushIndex(idx, plain, 'multi/app:1');
    expect(pushed.indexDigest).toBe(idx.indexDigest);
    expect(pushed.manifests.map((m) => m.platform.architecture)).toEqual(['amd64', 'arm64']);
    expect(pushed.manifests[1]!.layerDigests).toEqual(idx.images[1]!.layerDigests);
    const arm = await skopeoPull(`${plain.host}/multi/app:1`, { os: 'linux', arch: 'arm64' });
    cleanups.push(() => arm.remove());
    expect(arm.ok).toBe(true);
    const layout = JSON.parse(await readFile(join(arm.layoutDir, 'index.json'), 'utf8')) as {
      manifests: { digest: string }[];
    };
    expect(layout.manifests[0]!.digest).toBe(pushed.manifests[1]!.manifestDigest);
  });

  test('htpasswd registry: push and pull with credentials, 401 without', async () => {
    const reg = await startRegistry({ auth: { kind: 'htpasswd', users: { alice: 's3cret' } } });
    cleanups.push(() => reg.close());
    const img = await makeImage({ layers: [100_000] });
    cleanups.push(() => img.remove());
    await expect(pushImage(img, reg, 'private/app:1')).rejects.toThrow(/unauthorized|authentication required/i);
    const pushed = await pushImage(img, reg, 'private/app:1', 'alice:s3cret');
    expect(pushed.layerDigests).toEqual(img.layerDigests);

    const good = await skopeoPull(`${reg.host}/private/app:1`, { creds: { username: 'alice', password: 's3cret' } });
    cleanups.push(() => good.remove());
    expect(good.ok).toBe(true);
    const anon = await skopeoPull(`${reg.host}/private/app:1`);
    cleanups.push(() => anon.remove());
    expect(anon.ok).toBe(false);
    const bad = await skopeoPull(`${reg.host}/private/app:1`, { creds: 'alice:wrong' });
    cleanups.push(() => bad.remove());
    expect(bad.ok).toBe(false);
    const r = await fetch(`${reg.url}/v2/private/app/manifests/1`);
    expect(r.status).toBe(401);
    expect(r.headers.get('www-authenticate')).toMatch(/^Basic realm="shoal-test"/);
  });

  test.each(['x5c', 'kid'] as const)('token registry (%s): ACL decides push, pull and anonymous pull', async (keyRef) => {
    const issuer = await startTokenIssuer({
      keyRef,
      users: { pusher: 'push-pw', reader: 'read-pw' },
      acl: [
        { user: 'pusher', repos: [/.*/], actions: ['pull', 'push'] },
        { user: 'reader', repos: ['private/*'], actions: ['pull'] },
        { user: ANONYMOUS, repos: ['public/app'], actions: ['pull'] },
      ],
    });
    cleanups.push(() => issuer.stop());
    const reg = await startRegistry({ auth: { kind: 'token', issuer } });
    cleanups.push(() => reg.close());

    const img = await makeImage({ layers: [50_000, 70_000] });
    cleanups.push(() => img.remove());
    await expect(pushImage(img, reg, 'private/app:1', 'reader:read-pw')).rejects.toThrow();
    const priv = await pushImage(img, reg, 'private/app:1', 'pusher:push-pw');
    await pushImage(img, reg, 'public/app:1', 'pusher:push-pw');
    expect(priv.layerDigests).toEqual(img.layerDigests);

    const before = issuer.requests;
    const readerPull = await skopeoPull(`${reg.host}/private/app:1`, { creds: 'reader:read-pw' });
    cleanups.push(() => readerPull.remove());
    expect(readerPull.ok).toBe(true);
    expect(issuer.requests).toBeGreaterThan(before);

    const anonPrivate = await skopeoPull(`${reg.host}/private/app:1`);
    cleanups.push(() => anonPrivate.remove());
    expect(anonPrivate.ok).toBe(false);
    const anonPublic = await skopeoPull(`${reg.host}/public/app:1`);
    cleanups.push(() => anonPublic.remove());
    expect(anonPublic.ok).toBe(true);
    const wrong = await skopeoPull(`${reg.host}/private/app:1`, { creds: 'reader:nope' });
    cleanups.push(() => wrong.remove());
    expect(wrong.ok).toBe(false);

    const anonGrant = issuer.log.find((l) => l.user === null && l.scopes.some((s) => s.includes('private/app')));
    expect(anonGrant?.granted[0]?.actions).toEqual([]);

    // The realm the registry advertises is the issuer's.
    const r = await fetch(`${reg.url}/v2/`);
    expect(r.status).toBe(401);
    expect(r.headers.get('www-authenticate')).toContain(`realm="${issuer.realm}"`);
  });

  test('counting proxy: counts traffic, keeps uploads on itself, hooks, outage, rate limit', async () => {
    const proxy = await startCountingProxy(plain);
    cleanups.push(() => proxy.stop());
    const pushed = await pushImage(await makeImage({ layers: [300_000] }).then((i) => (cleanups.push(() => i.remove()), i)), proxy.host, 'via/proxy:1');
    // Uploads went through the proxy: the registry's Location pointed back at it.
    expect(proxy.requests.some((e) => e.method === 'PATCH' || e.method === 'PUT')).toBe(true);
    expect(proxy.requests.every((e) => !e.path.includes(plain.host))).toBe(true);
    proxy.reset();

    const pull = await skopeoPull(`${proxy.host}/via/proxy:1`);
    cleanups.push(() => pull.remove());
    expect(pull.ok).toBe(true);
    expect(proxy.manifestGets()).toBeGreaterThanOrEqual(1);
    expect(proxy.blobBytes()).toBe(pushed.blobBytes);
    expect(proxy.blobGets()).toBe(2);

    // A hook that corrupts one blob: skopeo must notice.
    proxy.reset();
    const layer = pushed.layerDigests[0]!;
    proxy.onRequest = async (req, res) => {
      if (!req.url?.includes(layer)) return false;
      const up = await proxy.forward(req);
      res.writeHead(up.statusCode ?? 502, up.headers);
      let first = true;
      for await (const chunk of up) {
        const b = Buffer.from(chunk as Buffer);
        if (first) b[100] = b[100]! ^ 0xff;
        first = false;
        res.write(b);
      }
      res.end();
      return true;
    };
    const corrupt = await skopeoPull(`${proxy.host}/via/proxy:1`);
    cleanups.push(() => corrupt.remove());
    expect(corrupt.ok).toBe(false);
    expect(corrupt.stderr).toMatch(/digest/i);
    expect(proxy.requests.some((e) => e.hooked)).toBe(true);
    proxy.onRequest = undefined;

    proxy.setDown(true);
    await expect(fetch(`${proxy.url}/v2/`)).rejects.toThrow();
    proxy.setDown(false);
    expect((await fetch(`${proxy.url}/v2/`)).status).toBe(200);

    // Rate limit: 300 KB at 1 MB/s takes at least ~0.3 s.
    proxy.setRateLimit(1_000_000);
    const t0 = Date.now();
    const r = await fetch(`${proxy.url}/v2/via/proxy/blobs/${layer}`);
    expect(sha256(Buffer.from(await r.arrayBuffer()))).toBe(layer);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    proxy.setRateLimit(null);
  });

  test('containerd pulls through a hosts.toml mirror (counting proxy in front of the registry)', async () => {
    const ctd = await startContainerd();
    cleanups.push(() => ctd.stop());
    const proxy = await startCountingProxy(plain);
    cleanups.push(() => proxy.stop());
    const hostsDir = await makeTempDir('shoal-hosts-');
    cleanups.push(() => removeTempDir(hostsDir));
    await writeHostsToml(hostsDir, plain.host, plain.url, [proxy.url]);

    const img = await makeImage({ layers: [200_000, 10_000] });
    cleanups.push(() => img.remove());
    const pushed = await pushImage(img, plain, 'ctd/app:1');

    const r = await ctd.pull(`${plain.host}/ctd/app:1`, { hostsDir });
    expect(r.code, r.stderr).toBe(0);
    // The whole pull went through the mirror, and carried ?ns=<registry host>.
    const ns = `ns=${encodeURIComponent(plain.host)}`;
    expect(proxy.manifestHeads() + proxy.manifestGets()).toBeGreaterThanOrEqual(1);
    expect(proxy.blobBytes()).toBe(pushed.blobBytes);
    for (const e of proxy.requests) expect(e.path).toContain(`?${ns}`);
    const images = await ctd.ctr(['images', 'ls', '-q']);
    expect(images.stdout).toContain(`${plain.host}/ctd/app:1`);

    // A fresh namespace downloads again (content is not shared across namespaces).
    proxy.reset();
    expect((await ctd.pull(`${plain.host}/ctd/app:1`, { hostsDir, namespace: 'second' })).code).toBe(0);
    expect(proxy.blobBytes()).toBe(pushed.blobBytes);

    // Mirror down: containerd falls back to the server itself.
    proxy.reset();
    proxy.setDown(true);
    expect((await ctd.removeImage(`${plain.host}/ctd/app:1`)).code).toBe(0);
    const direct = await ctd.pull(`${plain.host}/ctd/app:1`, { hostsDir, namespace: 'third' });
    expect(direct.code, direct.stderr).toBe(0);
    expect(proxy.requests.filter((e) => e.status !== 0)).toEqual([]);
  });
});
