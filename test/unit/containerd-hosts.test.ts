import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  defaultMirror,
  normaliseMirror,
  renderHostsToml,
  writeContainerdHosts,
} from '../../src/config/containerd-hosts.js';
import { ConfigError, parseConfig } from '../../src/config/load.js';

const HEADER = '# Written by shoal containerd-config. The origin stays the fallback when the agent is down.';

function expected(server: string, mirror: string): string {
  return [
    HEADER,
    `server = "${server}"`,
    '',
    `[host."${mirror}"]`,
    '  capabilities = ["pull", "resolve"]',
    '  dial_timeout = "200ms"',
    '',
  ].join('\n');
}

describe('writeContainerdHosts', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-hosts-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const config = parseConfig({
    registry: { listen: '0.0.0.0:30020' },
    upstreams: {
      registries: {
        'docker.io': {},
        'ghcr.io': {},
        '127.0.0.1:5000': { url: 'http://127.0.0.1:5000' },
      },
    },
  });

  it('writes one hosts.toml per registry, with the origin as server and the agent as mirror', async () => {
    const r = await writeContainerdHosts({ config, dir });
    expect(r.written.sort()).toEqual(
      [join(dir, '127.0.0.1:5000', 'hosts.toml'), join(dir, 'docker.io', 'hosts.toml'), join(dir, 'ghcr.io', 'hosts.toml')].sort(),
    );
    expect(r.unchanged).toEqual([]);
    expect(r.backups).toEqual([]);
    // A 0.0.0.0 listen is dialled on loopback.
    expect(await readFile(join(dir, 'docker.io', 'hosts.toml'), 'utf8')).toBe(
      expected('https://registry-1.docker.io', 'http://127.0.0.1:30020'),
    );
    expect(await readFile(join(dir, 'ghcr.io', 'hosts.toml'), 'utf8')).toBe(
      expected('https://ghcr.io', 'http://127.0.0.1:30020'),
    );
    expect(await readFile(join(dir, '127.0.0.1:5000', 'hosts.toml'), 'utf8')).toBe(
      expected('http://127.0.0.1:5000', 'http://127.0.0.1:30020'),
    );
    // Nothing but hosts.toml is left behind (no temp files).
    expect(await readdir(join(dir, 'docker.io'))).toEqual(['hosts.toml']);
  });

  it('uses an explicit mirror', async () => {
    const r = await writeContainerdHosts({ config, dir, mirror: 'https://shoal.node.local:8443/' });
    expect(r.written).toHaveLength(3);
    expect(await readFile(join(dir, 'ghcr.io', 'hosts.toml'), 'utf8')).toBe(
      expected('https://ghcr.io', 'https://shoal.node.local:8443'),
    );
  });

  it('is idempotent: a second run changes nothing', async () => {
    await writeContainerdHosts({ config, dir });
    const r = await writeContainerdHosts({ config, dir });
    expect(r.written).toEqual([]);
    expect(r.unchanged).toHaveLength(3);
    expect(r.backups).toEqual([]);
    expect(await readdir(join(dir, 'ghcr.io'))).toEqual(['hosts.toml']);
  });

  it('backs up a file with different content before replacing it', async () => {
    await mkdir(join(dir, 'ghcr.io'), { recursive: true });
    const file = join(dir, 'ghcr.io', 'hosts.toml');
    await writeFile(file, 'server = "https://ghcr.io"\n');
    const r = await writeContainerdHosts({ config, dir });
    expect(r.backups).toEqual([`${file}.bak`]);
    expect(r.written).toContain(file);
    expect(await readFile(`${file}.bak`, 'utf8')).toBe('server = "https://ghcr.io"\n');
    expect(await readFile(file, 'utf8')).toBe(expected('https://ghcr.io', 'http://127.0.0.1:30020'));

    // A second change keeps the first backup and adds a timestamped one.
    await writeFile(file, 'server = "https://other.example"\n');
    const r2 = await writeContainerdHosts({ config, dir });
    expect(r2.backups).toHaveLength(1);
    expect(r2.backups[0]).toMatch(/hosts\.toml\.bak\.\d{8}T\d{6}Z(-\d+)?$/);
    expect(await readFile(`${file}.bak`, 'utf8')).toBe('server = "https://ghcr.io"\n');
    expect(await readFile(r2.backups[0]!, 'utf8')).toBe('server = "https://other.example"\n');
    expect(r2.unchanged).toHaveLength(2);
  });

  it('rewrites when the mirror changes', async () => {
    await writeContainerdHosts({ config, dir });
    const r = await writeContainerdHosts({ config, dir, mirror: 'http://10.0.0.5:30020' });
    expect(r.written).toHaveLength(3);
    expect(r.backups).toHaveLength(3);
  });

  it('adds skip_verify for an insecure https origin', async () => {
    const c = parseConfig({ upstreams: { registries: { 'docker.io': {}, 'harbor.lan': { insecure: true } } } });
    await writeContainerdHosts({ config: c, dir });
    const text = await readFile(join(dir, 'harbor.lan', 'hosts.toml'), 'utf8');
    expect(text).toContain('server = "https://harbor.lan"\nskip_verify = true\n');
    // skip_verify must stay a root key, before the first table.
    expect(text.indexOf('skip_verify')).toBeLessThan(text.indexOf('[host.'));
  });

  it('refuses a mirror that is not an http(s) URL, naming --mirror', async () => {
    for (const mirror of ['127.0.0.1:30020', 'ftp://x', 'http://x/path', 'nonsense']) {
      const e = await writeContainerdHosts({ config, dir, mirror }).catch((err: unknown) => err);
      expect(e).toBeInstanceOf(ConfigError);
      expect((e as ConfigError).path).toBe('--mirror');
      expect((e as ConfigError).message).toMatch(/^--mirror: /);
    }
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('defaultMirror', () => {
  it('dials loopback for wildcard listens and keeps other hosts', () => {
    expect(defaultMirror('0.0.0.0:30020')).toBe('http://127.0.0.1:30020');
    expect(defaultMirror('[::]:30020')).toBe('http://127.0.0.1:30020');
    expect(defaultMirror('[0:0::0]:30020')).toBe('http://127.0.0.1:30020');
    expect(defaultMirror('127.0.0.1:30020')).toBe('http://127.0.0.1:30020');
    expect(defaultMirror('[::1]:30020')).toBe('http://[::1]:30020');
    expect(defaultMirror('10.1.2.3:5000')).toBe('http://10.1.2.3:5000');
  });

  it('refuses port 0, which containerd could not dial', () => {
    expect(() => defaultMirror('127.0.0.1:0')).toThrow(ConfigError);
    expect(() => defaultMirror('127.0.0.1:0')).toThrow(/^--mirror: /);
  });
});

describe('renderHostsToml / normaliseMirror', () => {
  it('renders the documented layout', () => {
    expect(renderHostsToml({ server: 'https://registry-1.docker.io', mirror: 'http://127.0.0.1:30020' })).toBe(
      expected('https://registry-1.docker.io', 'http://127.0.0.1:30020'),
    );
  });

  it('does not add skip_verify for plain http origins', () => {
    expect(renderHostsToml({ server: 'http://10.0.0.1:5000', mirror: 'http://127.0.0.1:30020', insecure: true })).not.toContain(
      'skip_verify',
    );
  });

  it('strips a trailing slash from the mirror', () => {
    expect(normaliseMirror('http://127.0.0.1:30020/')).toBe('http://127.0.0.1:30020');
    expect(normaliseMirror('http://[::1]:30020')).toBe('http://[::1]:30020');
  });
});
