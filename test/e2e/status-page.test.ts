import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type TestAgent } from '../helpers/agent.js';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.js';
import { makeImage, pushImage } from '../helpers/images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { skopeoPull } from '../helpers/skopeo.js';
import { bootstrapOf, waitForPeers } from '../helpers/swarm.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp.js';

// The status page in a real headless Chromium (Debian's), driven by playwright-core.
let registry: Registry;
let origin: CountingProxy;
let a: TestAgent;
let b: TestAgent;
let browser: Browser;
let dir: string;

beforeAll(async () => {
  registry = await startRegistry();
  origin = await startCountingProxy(registry);
  const local = await makeImage({ layers: [1024 * 1024] });
  await pushImage(local, registry, 'team/app:v1');
  await local.remove();
  const registries = { [origin.host]: { url: origin.url } };
  a = await startAgent({ registries, p2p: { zone: 'rack-1' } });
  b = await startAgent({ registries, p2p: { zone: 'rack-2', bootstrap: bootstrapOf(a) } });
  await waitForPeers(a, 1);
  dir = await makeTempDir('shoal-page-');
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

afterAll(async () => {
  await browser?.close();
  await b?.close();
  await a?.close();
  await origin?.stop();
  await registry?.close();
  if (dir) await removeTempDir(dir);
});

describe('the status page', () => {
  it('shows the agent, its peers with zones, its cache and its recent errors', async () => {
    const pull = await skopeoPull(`${a.host}/team/app:v1`);
    expect(pull.ok).toBe(true);
    await pull.remove();
    origin.setDown(true);
    await fetch(`${a.url}/v2/team/app/blobs/sha256:${'f'.repeat(64)}`);
    origin.setDown(false);

    const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
    await page.goto(a.url);
    await page.waitForFunction("document.getElementById('peer-count')?.textContent === '1'");
    expect(await page.textContent('#id')).toBe(a.agent.p2p!.peerId);
    expect(await page.textContent('#meta')).toContain('zone rack-1');
    const peers = await page.textContent('#peers');
    expect(peers).toContain(b.agent.p2p!.peerId);
    expect(peers).toContain('rack-2');
    expect(await page.textContent('#transfers')).toContain('no transfers');
    expect(await page.textContent('#cache')).toMatch(/MiB \/ 10\.0 GiB/);
    expect(await page.textContent('#errors')).toContain(`sha256:${'f'.repeat(12)}`);

    const file = join(dir, 'status.png');
    await page.screenshot({ path: file, fullPage: true });
    const png = await readFile(file);
    // A real rendering: a PNG of the page's size with more than a blank page's worth of detail.
    expect(png.subarray(1, 4).toString('latin1')).toBe('PNG');
    expect(png.readUInt32BE(16)).toBeGreaterThanOrEqual(1100);
    if (process.env.SHOAL_SCREENSHOT) await writeFile(process.env.SHOAL_SCREENSHOT, png);
    expect(png.length).toBeGreaterThan(20_000);
    await page.close();
  });
});
