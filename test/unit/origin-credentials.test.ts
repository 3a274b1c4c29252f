import { mkdtemp, rename, rm, symlink, unlink, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CredentialSource, credentialSource, dockerConfigCredentials } from '../../src/origin/credentials.js';
import { OriginError } from '../../src/origin/errors.js';

const b64 = (s: string): string => Buffer.from(s).toString('base64');

describe('dockerConfigCredentials', () => {
  it('decodes `auth` for an exact host key', () => {
    const doc = { auths: { 'ghcr.io': { auth: b64('alice:s3:cret') } } };
    expect(dockerConfigCredentials(doc, 'ghcr.io')).toEqual({ username: 'alice', password: 's3:cret' });
  });

  it('uses username/password fields', () => {
    const doc = { auths: { '127.0.0.1:5000': { username: 'bob', password: 'pw' } } };
    expect(dockerConfigCredentials(doc, '127.0.0.1:5000')).toEqual({ username: 'bob', password: 'pw' });
  });

  it('finds https://host and https://host/v1/ style keys', () => {
    expect(dockerConfigCredentials({ auths: { 'https://quay.io': { auth: b64('q:1') } } }, 'quay.io')).toEqual({ username: 'q', password: '1' });
    expect(dockerConfigCredentials({ auths: { 'https://Quay.io/v1/': { auth: b64('q:2') } } }, 'quay.io')).toEqual({ username: 'q', password: '2' });
  });

  it('maps docker.io to the Hub keys', () => {
    for (const key of ['https://index.docker.io/v1/', 'index.docker.io', 'registry-1.docker.io', 'docker.io']) {
      expect(dockerConfigCredentials({ auths: { [key]: { auth: b64('hub:pw') } } }, 'docker.io')).toEqual({ username: 'hub', password: 'pw' });
    }
  });

  it('prefers the exact key over looser matches', () => {
    const doc = { auths: { 'https://ghcr.io/v1/': { auth: b64('loose:1') }, 'ghcr.io': { auth: b64('exact:2') } } };
    expect(dockerConfigCredentials(doc, 'ghcr.io')?.username).toBe('exact');
  });

  it('returns identitytoken as an identity token (and password)', () => {
    const doc = { auths: { 'myacr.azurecr.io': { auth: b64('00000000-0000-0000-0000-000000000000:'), identitytoken: 'refresh-me' } } };
    expect(dockerConfigCredentials(doc, 'myacr.azurecr.io')).toEqual({
      username: '00000000-0000-0000-0000-000000000000',
      password: 'refresh-me',
      identityToken: 'refresh-me',
    });
    expect(dockerConfigCredentials({ auths: { h: { identitytoken: 't' } } }, 'h')).toEqual({ username: '<token>', password: 't', identityToken: 't' });
  });

  it('returns undefined for other hosts, empty entries and junk', () => {
    expect(dockerConfigCredentials({ auths: { 'ghcr.io': { auth: b64('a:b') } } }, 'quay.io')).toBeUndefined();
    expect(dockerConfigCredentials({ auths: { 'ghcr.io': {} } }, 'ghcr.io')).toBeUndefined();
    expect(dockerConfigCredentials({ credsStore: 'desktop' }, 'ghcr.io')).toBeUndefined();
    expect(dockerConfigCredentials(null, 'ghcr.io')).toBeUndefined();
    expect(dockerConfigCredentials({ auths: { 'ghcr.io': { auth: b64('nocolon') } } }, 'ghcr.io')).toBeUndefined();
  });

  it('does not treat ghcr.io.evil.com as ghcr.io', () => {
    expect(dockerConfigCredentials({ auths: { 'https://ghcr.io.evil.com/': { auth: b64('a:b') } } }, 'ghcr.io')).toBeUndefined();
  });
});

describe('CredentialSource', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-creds-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('is undefined when nothing is configured', () => {
    expect(credentialSource(undefined, 'h')).toBeUndefined();
    expect(credentialSource({}, 'h')).toBeUndefined();
  });

  it('rejects inconsistent configuration', () => {
    expect(() => new CredentialSource({ password: 'x' }, 'h')).toThrow(/needs a username/);
    expect(() => new CredentialSource({ username: 'u' }, 'h')).toThrow(/no password/);
    expect(() => new CredentialSource({ username: 'u', password: 'p', passwordFile: '/f' }, 'h')).toThrow(/not both/);
  });

  it('returns inline credentials', async () => {
    const s = new CredentialSource({ username: 'u', password: 'p' }, 'h');
    expect(await s.get()).toEqual({ credentials: { username: 'u', password: 'p' }, generation: 0 });
  });

  it('reads a password file, trims the trailing newline, and re-reads it when it changes', async () => {
    const file = join(dir, 'password');
    await writeFile(file, 'first\n');
    const s = new CredentialSource({ username: 'u', passwordFile: file }, 'h', { checkIntervalMs: 0 });
    const a = await s.get();
    expect(a.credentials).toEqual({ username: 'u', password: 'first' });
    // Unchanged file: same generation.
    expect((await s.get()).generation).toBe(a.generation);
    await writeFile(file, 'second-longer\r\n');
    const b = await s.get();
    expect(b.credentials?.password).toBe('second-longer');
    expect(b.generation).toBeGreaterThan(a.generation);
  });

  it('checks the file at most once per interval unless forced', async () => {
    const file = join(dir, 'password');
    await writeFile(file, 'one');
    const s = new CredentialSource({ username: 'u', passwordFile: file }, 'h', { checkIntervalMs: 60_000 });
    expect((await s.get()).credentials?.password).toBe('one');
    await writeFile(file, 'two!');
    expect((await s.get()).credentials?.password).toBe('one');
    expect((await s.get(true)).credentials?.password).toBe('two!');
  });

  it('follows a Kubernetes-style ..data symlink swap', async () => {
    // <dir>/password -> ..data/password, ..data -> ..v1 ; rotation swaps ..data to ..v2.
    await mkdir(join(dir, '..v1'));
    await mkdir(join(dir, '..v2'));
    await writeFile(join(dir, '..v1', 'password'), 'old');
    await writeFile(join(dir, '..v2', 'password'), 'new');
    await symlink('..v1', join(dir, '..data'));
    await symlink(join('..data', 'password'), join(dir, 'password'));
    const s = new CredentialSource({ username: 'u', passwordFile: join(dir, 'password') }, 'h', { checkIntervalMs: 0 });
    expect((await s.get()).credentials?.password).toBe('old');
    await symlink('..v2', join(dir, '..data_tmp'));
    await rename(join(dir, '..data_tmp'), join(dir, '..data'));
    expect((await s.get()).credentials?.password).toBe('new');
  });

  it('fails with an unauthorized OriginError naming a missing file, and recovers', async () => {
    const file = join(dir, 'missing');
    const s = new CredentialSource({ username: 'u', passwordFile: file }, 'reg.example', { checkIntervalMs: 60_000 });
    const err = await s.get().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OriginError);
    expect((err as OriginError).kind).toBe('unauthorized');
    expect((err as OriginError).message).toContain(file);
    await writeFile(file, 'now-here');
    // A failed source re-checks on every use, without waiting for the interval.
    expect((await s.get()).credentials?.password).toBe('now-here');
    await unlink(file);
    await expect(s.get(true)).rejects.toMatchObject({ kind: 'unauthorized' });
  });

  it('reads a Docker config, and reports invalid JSON naming the file', async () => {
    const file = join(dir, 'config.json');
    await writeFile(file, JSON.stringify({ auths: { 'ghcr.io': { auth: b64('a:b') } } }));
    const s = new CredentialSource({ dockerConfig: file }, 'ghcr.io', { checkIntervalMs: 0 });
    expect((await s.get()).credentials).toEqual({ username: 'a', password: 'b' });
    await writeFile(file, '{not json');
    await expect(s.get()).rejects.toThrow(new RegExp(`docker config ${file}.*not valid JSON`));
  });

  it('is anonymous when the Docker config has no entry for the host, and warns once', async () => {
    const file = join(dir, 'config.json');
    await writeFile(file, JSON.stringify({ auths: {} }));
    const warnings: unknown[] = [];
    const s = new CredentialSource({ dockerConfig: file }, 'ghcr.io', {
      checkIntervalMs: 0,
      logger: { debug: () => {}, warn: (o) => warnings.push(o) },
    });
    expect((await s.get()).credentials).toBeUndefined();
    await writeFile(file, JSON.stringify({ auths: { other: {} } }));
    expect((await s.get()).credentials).toBeUndefined();
    expect(warnings).toHaveLength(1);
  });
});
