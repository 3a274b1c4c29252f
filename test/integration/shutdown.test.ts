import { get } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgentProcess } from '../helpers/cli.js';
import { makeImage, pushImage, type PushedImage } from '../helpers/images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { removeTempDir } from '../helpers/tmp.js';

let registry: Registry;
let image: PushedImage;

beforeAll(async () => {
  registry = await startRegistry();
  const local = await makeImage({ layers: [48 * 1024 * 1024] });
  image = await pushImage(local, registry, 'team/app:v1');
  await local.remove();
});
afterAll(async () => registry?.close());

describe('SIGTERM', () => {
  it('lets a response in flight finish, exits 0, and leaves a store that opens again', async () => {
    const config = { upstreams: { default: registry.host, registries: { [registry.host]: { url: registry.url } } } };
    const agent = await startAgentProcess(config);
    const layer = image.layerDigests[0]!;
    const url = `${agent.url}/v2/team/app/blobs/${layer}`;
    expect((await fetch(url)).status).toBe(200); // cached now
    const received = await new Promise<number>((resolve, reject) => {
      get(url, (res) => {
        let bytes = 0;
        let signalled = false;
        res.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          if (!signalled) {
            signalled = true;
            // Mid-body: ask the agent to stop, and keep reading slowly for a moment.
            process.kill(agent.pid, 'SIGTERM');
            res.pause();
            setTimeout(() => res.resume(), 300);
          }
        });
        res.on('end', () => resolve(bytes));
        res.on('error', reject);
      }).on('error', reject);
    });
    expect(received).toBe(image.layerSizes[0]);
    expect(await agent.stop()).toBe(0);

    // The same storage opens again and still serves the blob without the origin.
    const again = await startAgentProcess({ ...config, storage: { dir: `${agent.dir}/store` } });
    await registry.stop();
    try {
      const res = await fetch(`${again.url}/v2/team/app/blobs/${layer}`);
      expect(res.status).toBe(200);
      expect((await res.arrayBuffer()).byteLength).toBe(image.layerSizes[0]);
    } finally {
      await registry.start();
      await again.close();
      await removeTempDir(agent.dir);
    }
  });
});
