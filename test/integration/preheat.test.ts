import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { shoal, startAgentProcess, type AgentProcess } from '../helpers/cli.js';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.js';
import { makeImage, makeIndex, pushImage, pushIndex, type PushedImage, type PushedIndex } from '../helpers/images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { skopeoPull } from '../helpers/skopeo.js';

let registry: Registry;
let origin: CountingProxy;
let agent: AgentProcess;
let image: PushedImage;
let index: PushedIndex;

beforeAll(async () => {
  registry = await startRegistry();
  origin = await startCountingProxy(registry);
  const local = await makeImage({ layers: [2 * 1024 * 1024, 300_000] });
  image = await pushImage(local, registry, 'team/app:v1');
  await local.remove();
  const multi = await makeIndex({
    images: [
      { platform: { os: 'linux', architecture: 'amd64' }, layers: [200_000] },
      { platform: { os: 'linux', architecture: 'arm64' }, layers: [250_000] },
    ],
  });
  index = await pushIndex(multi, registry, 'team/multi:v1');
  await multi.remove();
  agent = await startAgentProcess({ upstreams: { default: origin.host, registries: { [origin.host]: { url: origin.url } } } });
});

afterAll(async () => {
  await agent?.close();
  await origin?.stop();
  await registry?.close();
});

const held = (digest: string) => existsSync(join(agent.dir, 'store', 'blobs', 'sha256', digest.slice('sha256:'.length)));

describe('shoal pull (preheat)', () => {
  it('fetches every blob of an image ahead of time, so the pull itself takes nothing from the origin', async () => {
    const result = await shoal(['pull', `${origin.host}/team/app:v1`, '--agent', agent.url]);
    expect(result.stderr).toMatch(/3\/3 blobs/);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('pulled');
    for (const digest of [image.configDigest, ...image.layerDigests]) expect(held(digest)).toBe(true);
    origin.reset();
    const pull = await skopeoPull(`${agent.host}/team/app:v1`);
    expect(pull.ok).toBe(true);
    await pull.remove();
    expect(origin.blobBytes()).toBe(0);
  });

  it('fetches one platform of an index', async () => {
    const result = await shoal(['pull', `${origin.host}/team/multi:v1`, '--platform', 'linux/arm64', '--agent', agent.url]);
    expect(result.code).toBe(0);
    const arm = index.manifests.find((m) => m.platform.architecture === 'arm64')!;
    const amd = index.manifests.find((m) => m.platform.architecture === 'amd64')!;
    for (const digest of arm.layerDigests) expect(held(digest)).toBe(true);
    for (const digest of amd.layerDigests) expect(held(digest)).toBe(false);
  });

  it.each([
    ['Not/A Valid:ref', /NAME_INVALID/],
    ['unknown.example/team/app:v1', /NAME_UNKNOWN: registry unknown.example is not configured/],
  ])('refuses %s with a clear error and exit 2', async (ref, message) => {
    const result = await shoal(['pull', ref, '--agent', agent.url]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(message);
  });

  it('reports a tag the origin does not have', async () => {
    const result = await shoal(['pull', `${origin.host}/team/app:nope`, '--agent', agent.url]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/MANIFEST_UNKNOWN/);
  });

  it('says so when no agent answers', async () => {
    const result = await shoal(['pull', 'team/app:v1', '--agent', 'http://127.0.0.1:9']);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/cannot reach the agent/);
  });
});
