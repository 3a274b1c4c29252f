import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { shoal } from '../helpers/cli.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp.js';

let dir: string;
beforeAll(async () => {
  dir = await makeTempDir('shoal-cli-');
});
afterAll(async () => removeTempDir(dir));

async function configFile(name: string, body: unknown): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, typeof body === 'string' ? body : JSON.stringify(body));
  return file;
}

describe('shoal agent with a bad config', () => {
  it.each([
    [{ upstreams: { registries: { 'ghcr.io': { url: 'not a url' } } } }, 'upstreams.registries.ghcr.io.url: must be a URL'],
    [{ registry: { listen: 'nowhere' } }, 'registry.listen: must be host:port'],
    [{ storage: { maxSize: 'lots' } }, 'storage.maxSize: must be a size like'],
    [{ upstreams: { staleIfError: 'forever' } }, 'upstreams.staleIfError: must be a duration'],
    [{ surprise: true }, 'surprise: unknown key'],
    [{ registry: { listen: 5000 } }, 'registry.listen: must be host:port'],
  ])('exits 2 naming the key (%j)', async (body, message) => {
    const result = await shoal(['agent', '--config', await configFile('bad.json', body)]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain(message);
  });

  it('exits 2 for a missing file or broken JSON, naming the file', async () => {
    const missing = await shoal(['agent', '--config', join(dir, 'absent.json')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('absent.json');
    const broken = await shoal(['agent', '--config', await configFile('broken.json', '{ "registry": ')]);
    expect(broken.code).toBe(2);
    expect(broken.stderr).toContain('broken.json');
  });

  it('exits 2 for an unknown command or option', async () => {
    expect((await shoal(['serve'])).code).toBe(2);
    const option = await shoal(['agent', '--confg', 'x']);
    expect(option.code).toBe(2);
    expect(option.stderr).toMatch(/confg/);
  });

  it('refuses containerd-config without --dir', async () => {
    const result = await shoal(['containerd-config', '--config', await configFile('ok.json', {})]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('--dir');
  });
});
