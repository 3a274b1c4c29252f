import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, listenAddress, loadConfig, parseConfig } from '../../src/config/load.js';
import { isRegistryHost, parseHostPort } from '../../src/config/schema.js';

/** The ConfigError parseConfig throws for raw, failing the test if it does not throw one. */
function errorOf(raw: unknown): ConfigError {
  try {
    parseConfig(raw);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error(`expected ${JSON.stringify(raw)} to be rejected`);
}

describe('parseConfig defaults', () => {
  it('fills every default from an empty object', () => {
    expect(parseConfig({})).toEqual({
      registry: { listen: '127.0.0.1:30020' },
      storage: { dir: '/var/lib/shoal', maxSize: 20 * 2 ** 30 },
      upstreams: {
        default: 'docker.io',
        staleIfError: 24 * 3_600_000,
        timeout: 30_000,
        retries: 3,
        registries: { 'docker.io': { url: 'https://registry-1.docker.io', insecure: false } },
      },
      log: { level: 'info' },
      p2p: {
        enabled: true,
        listen: ['/ip4/0.0.0.0/tcp/30021'],
        bootstrap: [],
        bootstrapInterval: 30_000,
        mdns: false,
        zone: 'default',
        maxUploadStreams: 16,
        providerLookupTimeout: 1_000,
        penaltyDuration: 600_000,
        originFetchers: 1,
        originFetcherTimeout: 10_000,
        originFetchWait: 600_000,
        maxConnections: 64,
      },
    });
  });

  it('accepts sizes and durations as numbers or strings', () => {
    const c = parseConfig({
      storage: { maxSize: '512MiB' },
      upstreams: { staleIfError: '1h30m', timeout: 1500 },
    });
    expect(c.storage.maxSize).toBe(512 * 2 ** 20);
    expect(c.upstreams.staleIfError).toBe(5_400_000);
    expect(c.upstreams.timeout).toBe(1500);
    expect(parseConfig({ storage: { maxSize: 4096 } }).storage.maxSize).toBe(4096);
    expect(parseConfig({ upstreams: { staleIfError: 0 } }).upstreams.staleIfError).toBe(0);
  });

  it('does not add docker.io when registries are given, but defaults each url', () => {
    const c = parseConfig({
      upstreams: {
        default: 'ghcr.io',
        registries: { 'ghcr.io': {}, '127.0.0.1:5000': { url: 'http://127.0.0.1:5000/' }, 'quay.io': { url: 'https://quay.io' } },
      },
    });
    expect(Object.keys(c.upstreams.registries).sort()).toEqual(['127.0.0.1:5000', 'ghcr.io', 'quay.io']);
    expect(c.upstreams.registries['ghcr.io']!.url).toBe('https://ghcr.io');
    expect(c.upstreams.registries['127.0.0.1:5000']!.url).toBe('http://127.0.0.1:5000');
    expect(c.upstreams.registries['quay.io']!.url).toBe('https://quay.io');
  });

  it('defaults a listed docker.io to registry-1.docker.io', () => {
    const c = parseConfig({ upstreams: { registries: { 'docker.io': { username: 'u', password: 'p' }, 'ghcr.io': {} } } });
    expect(c.upstreams.registries['docker.io']).toEqual({
      url: 'https://registry-1.docker.io',
      username: 'u',
      password: 'p',
      insecure: false,
    });
  });

  it('normalises urls to their origin', () => {
    const c = parseConfig({ upstreams: { registries: { 'docker.io': { url: 'HTTPS://Mirror.Example.com:443/' } } } });
    expect(c.upstreams.registries['docker.io']!.url).toBe('https://mirror.example.com');
  });

  it('accepts IPv6 and name listen addresses, and port 0', () => {
    expect(parseConfig({ registry: { listen: '[::1]:5000' } }).registry.listen).toBe('[::1]:5000');
    expect(parseConfig({ registry: { listen: 'localhost:0' } }).registry.listen).toBe('localhost:0');
    expect(parseConfig({ registry: { listen: '0.0.0.0:30020' } }).registry.listen).toBe('0.0.0.0:30020');
  });

  it('accepts credentials in each allowed form', () => {
    const c = parseConfig({
      upstreams: {
        registries: {
          'docker.io': {},
          'a.example': { username: 'u', passwordFile: '/run/secrets/a' },
          'b.example': { dockerConfig: '/root/.docker/config.json' },
          'c.example': { url: 'https://c.example', insecure: true },
        },
      },
    });
    expect(c.upstreams.registries['a.example']!.passwordFile).toBe('/run/secrets/a');
    expect(c.upstreams.registries['b.example']!.dockerConfig).toBe('/root/.docker/config.json');
    expect(c.upstreams.registries['c.example']!.insecure).toBe(true);
  });

  it('accepts an empty p2p section and every log level', () => {
    expect(parseConfig({ p2p: {} }).p2p.zone).toBe('default');
    for (const level of ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']) {
      expect(parseConfig({ log: { level } }).log.level).toBe(level);
    }
  });
});

describe('parseConfig errors', () => {
  it('names the full path of an unknown key', () => {
    const e = errorOf({ upstreams: { bogus: 1 } });
    expect(e.path).toBe('upstreams.bogus');
    expect(e.message).toBe('upstreams.bogus: unknown key');
  });

  it('names unknown keys at the top level, in registries and in p2p', () => {
    expect(errorOf({ extra: true }).message).toBe('extra: unknown key');
    expect(errorOf({ upstreams: { registries: { 'ghcr.io': { token: 'x' } } } }).message).toBe(
      'upstreams.registries.ghcr.io.token: unknown key',
    );
    expect(errorOf({ p2p: { peers: [] } }).message).toBe('p2p.peers: unknown key');
  });

  it('takes rate limits as sizes a second', () => {
    const c = parseConfig({ upstreams: { maxRate: '20MiB' }, p2p: { maxUploadRate: '100MB' } });
    expect(c.upstreams.maxRate).toBe(20 * 2 ** 20);
    expect(c.p2p.maxUploadRate).toBe(100_000_000);
    expect(parseConfig({}).upstreams.maxRate).toBeUndefined();
    expect(errorOf({ upstreams: { maxRate: 'fast' } }).message).toMatch(/^upstreams\.maxRate: must be a size/);
  });

  it('checks the p2p section', () => {
    const c = parseConfig({
      p2p: {
        listen: ['/ip4/127.0.0.1/tcp/0'],
        bootstrap: ['/ip4/127.0.0.1/tcp/4001', 'shoal.kube-system.svc.cluster.local:30021'],
        pskFile: 'swarm.key',
        zone: 'eu-west-1a',
      },
    }, { baseDir: '/etc/shoal' });
    expect(c.p2p.pskFile).toBe('/etc/shoal/swarm.key');
    expect(c.p2p.bootstrap).toHaveLength(2);
    expect(errorOf({ p2p: { listen: ['127.0.0.1:4001'] } }).message).toMatch(/^p2p\.listen\.0: must be a TCP multiaddr/);
    expect(errorOf({ p2p: { bootstrap: ['http://x'] } }).message).toMatch(/^p2p\.bootstrap\.0: must be a multiaddr or host\[:port\]/);
    expect(errorOf({ p2p: { zone: 'a b' } }).message).toMatch(/^p2p\.zone: must be/);
    expect(errorOf({ p2p: { maxUploadStreams: 0 } }).message).toBe('p2p.maxUploadStreams: must be an integer from 1 to 1024');
    expect(errorOf({ p2p: { providerLookupTimeout: 'soon' } }).message).toMatch(/^p2p\.providerLookupTimeout: must be a duration/);
  });

  it('reports every unknown key in issues', () => {
    const e = errorOf({ storage: { a: 1, b: 2 } });
    expect(e.issues).toEqual(['storage.a: unknown key', 'storage.b: unknown key']);
  });

  it('says what type was expected in plain words', () => {
    expect(errorOf({ storage: { dir: 5 } }).message).toBe('storage.dir: must be a string');
    expect(errorOf({ upstreams: { retries: '3' } }).message).toBe('upstreams.retries: must be a number');
    expect(errorOf({ upstreams: { registries: { 'ghcr.io': { insecure: 'yes' } } } }).message).toBe(
      'upstreams.registries.ghcr.io.insecure: must be true or false',
    );
    expect(errorOf({ storage: 'x' }).message).toBe('storage: must be an object');
    expect(errorOf({ p2p: null }).message).toBe('p2p: must be an object');
  });

  it('refuses a root that is not an object', () => {
    const e = errorOf([1, 2]);
    expect(e.path).toBe('');
    expect(e.message).toBe('config: must be an object');
  });

  it('refuses a bad url', () => {
    const e = errorOf({ upstreams: { default: 'ghcr.io', registries: { 'ghcr.io': { url: 'not a url' } } } });
    expect(e.path).toBe('upstreams.registries.ghcr.io.url');
    expect(e.message).toBe('upstreams.registries.ghcr.io.url: must be a URL');
  });

  it('refuses urls that are not an http(s) origin', () => {
    const bad = (url: string) => errorOf({ upstreams: { registries: { 'docker.io': { url } } } }).message;
    expect(bad('ftp://x.example')).toBe('upstreams.registries.docker.io.url: must be an http:// or https:// URL');
    expect(bad('https://x.example/v2')).toMatch(/^upstreams\.registries\.docker\.io\.url: must be a registry origin without a path/);
    expect(bad('https://x.example/?a=1')).toMatch(/without a path, query/);
    expect(bad('https://u:p@x.example')).toMatch(/must not contain credentials/);
    expect(errorOf({ upstreams: { registries: { 'docker.io': { url: 5 } } } }).message).toBe(
      'upstreams.registries.docker.io.url: must be a string',
    );
  });

  it('refuses a bad listen address', () => {
    for (const listen of ['30020', ':30020', 'localhost', '1.2.3.4:70000', '::1:5000', 'a b:1', '[::1]', 30020]) {
      const e = errorOf({ registry: { listen } });
      expect(e.path).toBe('registry.listen');
      expect(e.message).toBe('registry.listen: must be host:port');
    }
  });

  it('refuses a bad size or duration with an example', () => {
    expect(errorOf({ storage: { maxSize: 'huge' } }).message).toBe('storage.maxSize: must be a size like "20GiB"');
    expect(errorOf({ storage: { maxSize: -1 } }).message).toBe('storage.maxSize: must be a size like "20GiB"');
    expect(errorOf({ storage: { maxSize: true } }).message).toBe('storage.maxSize: must be a size like "20GiB"');
    expect(errorOf({ storage: { maxSize: 0 } }).message).toBe('storage.maxSize: must be greater than 0');
    expect(errorOf({ upstreams: { timeout: 'soon' } }).message).toBe('upstreams.timeout: must be a duration like "30s"');
    expect(errorOf({ upstreams: { timeout: 0 } }).message).toBe('upstreams.timeout: must be greater than 0');
    expect(errorOf({ upstreams: { staleIfError: '1 day' } }).message).toBe(
      'upstreams.staleIfError: must be a duration like "24h"',
    );
  });

  it('refuses retries outside 0..10', () => {
    for (const retries of [-1, 11, 1.5]) {
      expect(errorOf({ upstreams: { retries } }).message).toBe('upstreams.retries: must be an integer from 0 to 10');
    }
  });

  it('refuses an unknown log level, listing the levels', () => {
    expect(errorOf({ log: { level: 'verbose' } }).message).toBe(
      'log.level: must be one of fatal, error, warn, info, debug, trace, silent',
    );
  });

  it('refuses password together with passwordFile', () => {
    const e = errorOf({
      upstreams: { registries: { 'docker.io': { username: 'u', password: 'p', passwordFile: '/f' } } },
    });
    expect(e.message).toBe('upstreams.registries.docker.io: password and passwordFile are mutually exclusive');
  });

  it('requires username with password or passwordFile', () => {
    expect(errorOf({ upstreams: { registries: { 'docker.io': { password: 'p' } } } }).message).toBe(
      'upstreams.registries.docker.io.username: is required with password',
    );
    expect(errorOf({ upstreams: { registries: { 'docker.io': { passwordFile: '/f' } } } }).message).toBe(
      'upstreams.registries.docker.io.username: is required with passwordFile',
    );
    expect(errorOf({ upstreams: { registries: { 'docker.io': { username: 'u' } } } }).message).toBe(
      'upstreams.registries.docker.io: username needs password or passwordFile',
    );
  });

  it('refuses dockerConfig together with other credentials', () => {
    for (const extra of [{ username: 'u', password: 'p' }, { username: 'u', passwordFile: '/f' }, { password: 'p' }]) {
      expect(errorOf({ upstreams: { registries: { 'docker.io': { dockerConfig: '/c.json', ...extra } } } }).message).toBe(
        'upstreams.registries.docker.io: dockerConfig cannot be combined with username, password or passwordFile',
      );
    }
  });

  it('refuses empty credential strings', () => {
    expect(errorOf({ upstreams: { registries: { 'docker.io': { username: '', password: 'p' } } } }).message).toBe(
      'upstreams.registries.docker.io.username: must not be empty',
    );
  });

  it('requires the default to be a configured registry', () => {
    const e = errorOf({ upstreams: { registries: { 'ghcr.io': {} } } });
    expect(e.path).toBe('upstreams.default');
    expect(e.message).toBe('upstreams.default: "docker.io" is not one of upstreams.registries (ghcr.io)');
    expect(errorOf({ upstreams: { default: 'quay.io' } }).message).toBe(
      'upstreams.default: "quay.io" is not one of upstreams.registries (docker.io)',
    );
  });

  it('refuses an empty registries object and bad registry host keys', () => {
    expect(errorOf({ upstreams: { registries: {} } }).message).toBe('upstreams.registries: must list at least one registry');
    const e = errorOf({ upstreams: { registries: { 'docker.io': {}, 'https://ghcr.io': {} } } });
    expect(e.path).toBe('upstreams.registries.https://ghcr.io');
    expect(e.message).toMatch(/must be a registry host like "ghcr.io"/);
    expect(errorOf({ upstreams: { registries: { 'docker.io': {}, 'x.example:0': {} } } }).path).toBe(
      'upstreams.registries.x.example:0',
    );
  });

  it('is an Error with a name and the reason on its own', () => {
    const e = errorOf({ upstreams: { bogus: 1 } });
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe('ConfigError');
    expect(e.reason).toBe('unknown key');
  });
});

describe('host helpers', () => {
  it('splits host:port in all three host forms', () => {
    expect(parseHostPort('127.0.0.1:5000')).toEqual({ host: '127.0.0.1', port: 5000 });
    expect(parseHostPort('[::1]:5000')).toEqual({ host: '::1', port: 5000 });
    expect(parseHostPort('registry.local')).toEqual({ host: 'registry.local' });
    expect(parseHostPort('999.1.1.1:5')).toBeUndefined();
    expect(parseHostPort('-bad-.example')).toBeUndefined();
  });

  it('knows a registry host', () => {
    expect(isRegistryHost('docker.io')).toBe(true);
    expect(isRegistryHost('localhost:5000')).toBe(true);
    expect(isRegistryHost('[fd00::1]:5000')).toBe(true);
    expect(isRegistryHost('ghcr.io/foo')).toBe(false);
    expect(isRegistryHost('../etc')).toBe(false);
  });

  it('listenAddress strips IPv6 brackets', () => {
    expect(listenAddress('127.0.0.1:30020')).toEqual({ host: '127.0.0.1', port: 30020 });
    expect(listenAddress('[::]:0')).toEqual({ host: '::', port: 0 });
    expect(listenAddress('node-1.local:80')).toEqual({ host: 'node-1.local', port: 80 });
    expect(() => listenAddress('nope')).toThrow('registry.listen: must be host:port');
  });
});

describe('loadConfig', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-config-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('resolves relative paths against the config file directory', async () => {
    await mkdir(join(dir, 'etc'));
    const file = join(dir, 'etc', 'agent.json');
    await writeFile(
      file,
      JSON.stringify({
        storage: { dir: 'cache' },
        upstreams: {
          registries: {
            'docker.io': { dockerConfig: '../docker/config.json' },
            'ghcr.io': { username: 'bot', passwordFile: 'secrets/ghcr' },
            'quay.io': { username: 'bot', passwordFile: '/abs/quay' },
          },
        },
      }),
    );
    const c = await loadConfig(file);
    expect(c.storage.dir).toBe(join(dir, 'etc', 'cache'));
    expect(c.upstreams.registries['docker.io']!.dockerConfig).toBe(join(dir, 'docker', 'config.json'));
    expect(c.upstreams.registries['ghcr.io']!.passwordFile).toBe(join(dir, 'etc', 'secrets', 'ghcr'));
    expect(c.upstreams.registries['quay.io']!.passwordFile).toBe('/abs/quay');
  });

  it('keeps an absolute storage dir and fills defaults', async () => {
    const file = join(dir, 'agent.json');
    await writeFile(file, '\uFEFF{"storage": {"dir": "/srv/shoal"}}');
    const c = await loadConfig(file);
    expect(c.storage.dir).toBe('/srv/shoal');
    expect(c.registry.listen).toBe('127.0.0.1:30020');
  });

  it('reports a missing file with its path', async () => {
    const file = join(dir, 'missing.json');
    const e = await loadConfig(file).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(ConfigError);
    expect((e as ConfigError).path).toBe(file);
    expect((e as ConfigError).message).toContain(`${file} not found`);
  });

  it('reports invalid JSON with the file path and a position', async () => {
    const file = join(dir, 'broken.json');
    await writeFile(file, '{\n  "storage": {\n    "dir": "/x",\n  }\n}\n');
    const e = await loadConfig(file).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(ConfigError);
    expect((e as ConfigError).message).toContain(`invalid JSON in ${file}`);
    expect((e as ConfigError).message).toMatch(/line 4/);
  });

  it('reports schema problems with the key path and the file', async () => {
    const file = join(dir, 'agent.json');
    await writeFile(file, JSON.stringify({ upstreams: { bogus: 1 } }));
    const e = await loadConfig(file).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(ConfigError);
    expect((e as ConfigError).message).toBe('upstreams.bogus: unknown key');
    expect((e as ConfigError).file).toBe(file);
  });
});
