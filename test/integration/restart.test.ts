import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type TestAgent } from '../helpers/agent.js';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.js';
import { makeImage, pushImage, type PushedImage } from '../helpers/images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { skopeoPull } from '../helpers/skopeo.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp.js';

let registry: Registry;
let origin: CountingProxy;
let image: PushedImage;
let dir: string;
const agents: TestAgent[] = [];

async function agentOn(storage: string, staleIfError = '1h'): Promise<TestAgent> {
  const a = await startAgent({
    registries: { [origin.host]: { url: origin.url } },
    dir: storage,
    upstreams: { staleIfError, timeout: '2s', retries: 0 },
  });
  agents.push(a);
  return a;
}

beforeAll(async () => {
  registry = await startRegistry();
  origin = await startCountingProxy(registry);
  const local = await makeImage({ layers: [1024 * 1024, 256 * 1024] });
  image = await pushImage(local, registry, 'team/app:v1');
  await local.remove();
  dir = await makeTempDir('shoal-restart-');
});

afterAll(async () => {
  for (const a of agents) await a.stop();
  await origin?.stop();
  await registry?.close();
  await removeTempDir(dir);
});

describe('a restarted agent', () => {
  it('keeps its cache: a pull after a restart takes no blob bytes from the origin', async () => {
    const first = await agentOn(dir);
    const pull = await skopeoPull(`${first.host}/team/app:v1`);
    expect(pull.ok).toBe(true);
    await pull.remove();
    await first.stop();

    origin.reset();
    const second = await agentOn(dir);
    const again = await skopeoPull(`${second.host}/team/app:v1`);
    expect(again.stderr).toBe('');
    expect(again.ok).toBe(true);
    await again.remove();
    expect(origin.blobBytes()).toBe(0);
    expect(origin.blobGets()).toBe(0);
    await second.stop();
  });

  it('serves pulls by digest, and recently resolved tags, while the origin is down', async () => {
    const a = await agentOn(dir);
    origin.setDown(true);
    try {
      const byDigest = await skopeoPull(`${a.host}/team/app@${image.manifestDigest}`);
      expect(byDigest.stderr).toBe('');
      expect(byDigest.ok).toBe(true);
      await byDigest.remove();

      const byTag = await fetch(`${a.url}/v2/team/app/manifests/v1`);
      expect(byTag.status).toBe(200);
      expect(byTag.headers.get('docker-content-digest')).toBe(image.manifestDigest);
      expect(byTag.headers.get('warning')).toMatch(/origin unreachable/);
      const tagPull = await skopeoPull(`${a.host}/team/app:v1`);
      expect(tagPull.ok).toBe(true);
      await tagPull.remove();

      // A tag never resolved here cannot be answered: the origin is the authority for tags.
      const unknown = await fetch(`${a.url}/v2/team/app/manifests/v2`);
      expect(unknown.status).toBe(503);
      expect(((await unknown.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('UNAVAILABLE');
    } finally {
      origin.setDown(false);
      await a.stop();
    }
  });

  it('does not answer a tag from cache once staleIfError has passed', async () => {
    const a = await agentOn(dir, '1ms');
    const fresh = await fetch(`${a.url}/v2/team/app/manifests/v1`);
    expect(fresh.status).toBe(200);
    await new Promise((r) => setTimeout(r, 20));
    origin.setDown(true);
    try {
      const stale = await fetch(`${a.url}/v2/team/app/manifests/v1`);
      expect(stale.status).toBe(503);
      // By digest it is still served: digests never go stale.
      const byDigest = await fetch(`${a.url}/v2/team/app/manifests/${image.manifestDigest}`);
      expect(byDigest.status).toBe(200);
    } finally {
      origin.setDown(false);
      await a.stop();
    }
  });
});
