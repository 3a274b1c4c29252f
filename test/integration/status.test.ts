import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentStatus } from '../../src/http/status-routes.js';
import { startAgent, type TestAgent } from '../helpers/agent.js';
import { shoal } from '../helpers/cli.js';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.js';
import { makeImage, pushImage, type PushedImage } from '../helpers/images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { skopeoPull } from '../helpers/skopeo.js';
import { bootstrapOf, metric, waitForPeers } from '../helpers/swarm.js';

let registry: Registry;
let origin: CountingProxy;
let image: PushedImage;
let a: TestAgent;
let b: TestAgent;

beforeAll(async () => {
  registry = await startRegistry();
  origin = await startCountingProxy(registry);
  const local = await makeImage({ layers: [8 * 1024 * 1024] });
  image = await pushImage(local, registry, 'team/app:v1');
  await local.remove();
  const registries = { [origin.host]: { url: origin.url } };
  a = await startAgent({ registries, p2p: { zone: 'rack-1' } });
  b = await startAgent({ registries, p2p: { zone: 'rack-2', bootstrap: bootstrapOf(a) } });
  await waitForPeers(b, 1);
});

afterAll(async () => {
  await b?.close();
  await a?.close();
  await origin?.stop();
  await registry?.close();
});

async function status(agent: TestAgent): Promise<AgentStatus> {
  return (await (await fetch(`${agent.url}/status`)).json()) as AgentStatus;
}

describe('GET /status and shoal status', () => {
  it('report the agent, its peers with zones, and its cache', async () => {
    const pull = await skopeoPull(`${a.host}/team/app:v1`);
    expect(pull.ok).toBe(true);
    await pull.remove();
    const s = await status(a);
    expect(s.id).toBe(a.agent.p2p!.peerId);
    expect(s.zone).toBe('rack-1');
    expect(s.peers).toEqual([expect.objectContaining({ id: b.agent.p2p!.peerId, zone: 'rack-2' })]);
    expect(s.cache.blobs).toBeGreaterThanOrEqual(image.layerDigests.length + 1);
    expect(s.cache.bytes).toBeGreaterThanOrEqual(image.blobBytes);
    expect(s.transfers).toEqual([]);

    // The metrics an on-call engineer alerts on.
    expect(await metric(a, 'shoal_http_requests_total', { route: '/v2/blobs', status: '200' })).toBeGreaterThanOrEqual(2);
    expect(await metric(a, 'shoal_http_requests_total', { route: '/v2/manifests' })).toBeGreaterThanOrEqual(1);
    // Every layer missed; the config may have been a hit (it is prefetched with the manifest).
    const misses = await metric(a, 'shoal_cache_lookups_total', { result: 'miss' });
    const hits = await metric(a, 'shoal_cache_lookups_total', { result: 'hit' });
    expect(misses).toBeGreaterThanOrEqual(image.layerDigests.length);
    expect(misses + hits).toBeGreaterThanOrEqual(image.layerDigests.length + 1);
    expect(await metric(a, 'shoal_store_bytes')).toBe(s.cache.bytes);
    expect(await metric(a, 'shoal_store_blobs')).toBe(s.cache.blobs);
    expect(await metric(a, 'shoal_peers_by_zone', { zone: 'rack-2' })).toBe(1);
    expect(await metric(a, 'shoal_nodejs_eventloop_lag_seconds')).toBeGreaterThanOrEqual(0);
    // libp2p's own metrics are there too, and every metric name carries the shoal_ prefix.
    const exposition = await (await fetch(`${a.url}/metrics`)).text();
    expect(exposition).toMatch(/^shoal_libp2p_\w+/m);
    const names = exposition.split('\n').filter((l) => l !== '' && !l.startsWith('#')).map((l) => l.split(/[{ ]/)[0]!);
    expect(names.filter((n) => !n.startsWith('shoal_'))).toEqual([]);

    const text = await shoal(['status', '--agent', a.url]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain(a.agent.p2p!.peerId);
    expect(text.stdout).toContain('zone rack-1');
    expect(text.stdout).toMatch(/peers\s+1/);
    expect(text.stdout).toContain(b.agent.p2p!.peerId);
    const json = await shoal(['status', '--json', '--agent', a.url]);
    expect((JSON.parse(json.stdout) as AgentStatus).id).toBe(s.id);
  });

  it('show a transfer in flight, and the errors of a failed one', async () => {
    origin.setRateLimit(2 * 1024 * 1024);
    try {
      const other = await pushImage(await makeImage({ layers: [4 * 1024 * 1024] }), registry, 'team/slow:v1');
      const download = fetch(`${b.url}/v2/team/slow/blobs/${other.layerDigests[0]}`).then((r) => r.arrayBuffer());
      let seen: AgentStatus['transfers'] = [];
      for (let i = 0; i < 100 && seen.length === 0; i++) {
        seen = (await status(b)).transfers;
        if (seen.length === 0) await new Promise((r) => setTimeout(r, 50));
      }
      expect(seen[0]).toMatchObject({ digest: other.layerDigests[0], repository: 'team/slow' });
      expect((await download).byteLength).toBe(other.layerSizes[0]);
    } finally {
      origin.setRateLimit(null);
    }
    origin.setDown(true);
    try {
      const res = await fetch(`${b.url}/v2/team/app/blobs/sha256:${'e'.repeat(64)}`);
      expect(res.status).toBeGreaterThanOrEqual(400);
    } finally {
      origin.setDown(false);
    }
    const s = await status(b);
    expect(await metric(b, 'shoal_origin_errors_total', { kind: 'unavailable' })).toBeGreaterThan(0);
    expect(s.recentErrors.length).toBeGreaterThan(0);
    expect(s.recentErrors[0]!.digest).toBe(`sha256:${'e'.repeat(64)}`);
  });

  it('says so when no agent answers', async () => {
    const result = await shoal(['status', '--agent', 'http://127.0.0.1:9']);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/cannot read the agent's status/);
  });
});

describe('logs', () => {
  it('carry the client request id through a pull, from the request to the committed blob', async () => {
    const lines: Record<string, unknown>[] = [];
    const stream = new Writable({
      write(chunk: Buffer, _e, cb) {
        for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line) as Record<string, unknown>);
        cb();
      },
    });
    const logged = await startAgent({ registries: { [origin.host]: { url: origin.url } }, logLevel: 'info', logStream: stream });
    try {
      const res = await fetch(`${logged.url}/v2/team/app/blobs/${image.layerDigests[0]}`, { headers: { 'X-Request-Id': 'pull-42' } });
      expect(res.headers.get('x-request-id')).toBe('pull-42');
      await res.arrayBuffer();
      const mine = lines.filter((l) => l.reqId === 'pull-42').map((l) => l.msg);
      expect(mine).toEqual(expect.arrayContaining(['downloading blob', 'blob committed', 'request']));
    } finally {
      await logged.close();
    }
  });
});

describe('readiness', () => {
  it('is ready without bootstrap peers, and not ready until the swarm is joined when they are set', async () => {
    expect((await fetch(`${a.url}/readyz`)).status).toBe(200);
    const lonely = await startAgent({
      registries: { [origin.host]: { url: origin.url } },
      // Nobody listens there: the agent cannot join its swarm.
      p2p: { bootstrap: ['/ip4/127.0.0.1/tcp/9'] },
    });
    try {
      const res = await fetch(`${lonely.url}/readyz`);
      expect(res.status).toBe(503);
      expect(((await res.json()) as { status: string }).status).toBe('not ready');
      expect((await fetch(`${lonely.url}/healthz`)).status).toBe(200);
    } finally {
      await lonely.close();
    }
    expect((await fetch(`${b.url}/readyz`)).status).toBe(200);
  });
});
