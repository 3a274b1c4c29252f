import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { closestPeers } from '../../src/p2p/closest.js';
import type { TestAgent } from '../helpers/agent.js';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.js';
import { makeImage, pushImage, type PushedImage } from '../helpers/images.js';
import { sleep } from '../helpers/proc.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { skopeoPull } from '../helpers/skopeo.js';
import { metric, startMesh } from '../helpers/swarm.js';

// A fresh image rolled out to a fleet at once: real agents on loopback, a real docker-registry
// origin behind a byte counter that also plays a thin uplink.
let registry: Registry;
let origin: CountingProxy;
let fleet: TestAgent[] = [];

beforeAll(async () => {
  registry = await startRegistry();
  origin = await startCountingProxy(registry);
});
afterEach(async () => {
  await Promise.all(fleet.map((a) => a.close()));
  fleet = [];
  origin.setRateLimit(null);
});
afterAll(async () => {
  await origin?.stop();
  await registry?.close();
});

async function fresh(repo: string): Promise<PushedImage> {
  const local = await makeImage({ layers: [12 * 1024 * 1024, 6 * 1024 * 1024, 2 * 1024 * 1024] });
  const pushed = await pushImage(local, registry, repo);
  await local.remove();
  return pushed;
}

async function pullAll(agents: TestAgent[], ref: string): Promise<boolean[]> {
  return Promise.all(
    agents.map(async (a) => {
      const result = await skopeoPull(`${a.host}/${ref}`, { timeoutMs: 240_000 });
      await result.remove();
      return result.ok;
    }),
  );
}

const registries = () => ({ [origin.host]: { url: origin.url } });

describe('a rollout to eight agents at once', () => {
  it('takes each blob from the origin about once, and every pull is verified', async () => {
    const image = await fresh('team/rollout:v1');
    fleet = await startMesh(8, { registries: registries() });
    origin.reset();
    // A thin uplink, so the agents really are fetching at the same time.
    origin.setRateLimit(40 * 1024 * 1024);
    const results = await pullAll(fleet, 'team/rollout:v1');
    expect(results).toEqual(fleet.map(() => true));
    expect(origin.blobBytes()).toBeLessThanOrEqual(1.1 * image.blobBytes);
    const fromPeers = await Promise.all(fleet.map((a) => metric(a, 'shoal_blob_bytes_total', { source: 'peer' })));
    // Most agents got the image from the swarm, not from the origin.
    expect(fromPeers.filter((bytes) => bytes > 0).length).toBeGreaterThanOrEqual(6);
  });
});

describe('two zones of four agents', () => {
  it('fetch each blob from the origin at most once per zone, and barely cross between zones', async () => {
    const image = await fresh('team/zones:v1');
    fleet = await startMesh(8, { registries: registries() }, (i) => (i % 2 === 0 ? 'zone-a' : 'zone-b'));
    origin.reset();
    origin.setRateLimit(40 * 1024 * 1024);
    const results = await pullAll(fleet, 'team/zones:v1');
    expect(results).toEqual(fleet.map(() => true));
    // Each blob at most once per zone.
    const gets = new Map<string, number>();
    for (const r of origin.requests) {
      const m = /\/blobs\/(sha256:[0-9a-f]{64})/.exec(r.path);
      if (m && r.method === 'GET') gets.set(m[1]!, (gets.get(m[1]!) ?? 0) + 1);
    }
    for (const digest of [image.configDigest, ...image.layerDigests]) expect(gets.get(digest) ?? 0).toBeLessThanOrEqual(2);
    expect(origin.blobBytes()).toBeLessThanOrEqual(2 * 1.1 * image.blobBytes);
    // Bytes that crossed between zones, as counted by the agents that received them.
    const crossed = (await Promise.all(fleet.map((a) => metric(a, 'shoal_peer_piece_bytes_total', { zone: 'other' })))).reduce((x, y) => x + y, 0);
    expect(crossed).toBeLessThanOrEqual(image.blobBytes);
  });
});

describe('an origin fetcher that dies mid-rollout', () => {
  it('does not stop anyone else’s pull', async () => {
    const image = await fresh('team/dies:v1');
    fleet = await startMesh(5, { registries: registries(), p2p: { originFetcherTimeout: '1s' } });
    const biggest = image.layerDigests[0]!;
    const ids = fleet.map((a) => a.agent.p2p!.peerId);
    const fetcherId = closestPeers(biggest, ids, 1)[0]!;
    const fetcher = fleet.find((a) => a.agent.p2p!.peerId === fetcherId)!;
    const others = fleet.filter((a) => a !== fetcher);
    origin.reset();
    // Slow enough that the fetcher is still downloading the big layer when it goes.
    origin.setRateLimit(4 * 1024 * 1024);
    const pulls = pullAll(others, 'team/dies:v1');
    void skopeoPull(`${fetcher.host}/team/dies:v1`, { timeoutMs: 60_000 }).then((r) => r.remove());
    await sleep(1500);
    await fetcher.stop();
    origin.setRateLimit(40 * 1024 * 1024);
    expect(await pulls).toEqual(others.map(() => true));
  });
});
