import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { OriginClient, type OriginOptions } from '../../src/origin/client.js';
import { OriginError } from '../../src/origin/errors.js';
import { basic, json, registryError, silentLogger, startServer, type TestServer } from './origin-helpers.js';

const MANIFEST = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', layers: [] }));

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

function client(opts: Partial<OriginOptions> & { url: string }): OriginClient {
  const c = new OriginClient({ host: 'reg.test', retries: 0, retryBaseMs: 1, logger: silentLogger, ...opts });
  cleanups.push(() => c.close());
  return c;
}

async function server(handler: Parameters<typeof startServer>[0]): Promise<TestServer> {
  const s = await startServer(handler);
  cleanups.push(() => s.close());
  return s;
}

interface TokenSetup {
  auth: TestServer;
  registry: TestServer;
  /** Tokens the registry currently accepts, with the repository they grant. */
  valid: Map<string, string>;
  state: { users?: Record<string, string>; expiresIn?: number; field: 'token' | 'access_token'; issued: number };
}

/** A registry with a separate token server, the way Docker Hub is laid out. */
async function tokenRegistry(state: Partial<TokenSetup['state']> = {}): Promise<TokenSetup> {
  const valid = new Map<string, string>();
  const st: TokenSetup['state'] = { field: 'token', issued: 0, ...state };
  const auth = await server((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (st.users) {
      const ok = Object.entries(st.users).some(([u, p]) => req.headers.authorization === basic(u, p));
      if (!ok) return json(res, 401, { details: 'incorrect username or password' });
    }
    const scope = url.searchParams.get('scope') ?? '';
    const token = `tok-${++st.issued}`;
    valid.set(token, scope.replace(/^repository:/, '').replace(/:pull$/, ''));
    const body: Record<string, unknown> = { [st.field]: token };
    if (st.expiresIn !== undefined) body.expires_in = st.expiresIn;
    json(res, 200, body);
  });
  const registry = await server((req, res) => {
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(req.url ?? '');
    const repo = m?.[1] ?? '';
    const header = req.headers.authorization ?? '';
    const granted = header.startsWith('Bearer ') ? valid.get(header.slice(7)) : undefined;
    if (granted !== repo) {
      return registryError(res, 401, 'UNAUTHORIZED', 'authentication required', {
        'www-authenticate': `Bearer realm="${auth.url}/token",service="test-registry",scope="repository:${repo}:pull"`,
      });
    }
    res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'content-length': MANIFEST.length });
    res.end(MANIFEST);
  });
  return { auth, registry, valid, state: st };
}

describe('bearer token flow', () => {
  it('fetches an anonymous token with service and scope, then retries with it', async () => {
    const { auth, registry } = await tokenRegistry();
    const c = client({ url: registry.url });
    const m = await c.getManifest('library/app', 'latest');
    expect(m.bytes.equals(MANIFEST)).toBe(true);
    expect(auth.requests).toHaveLength(1);
    const tokenUrl = new URL(auth.requests[0]!.url, 'http://x');
    expect(tokenUrl.pathname).toBe('/token');
    expect(tokenUrl.searchParams.get('service')).toBe('test-registry');
    expect(tokenUrl.searchParams.getAll('scope')).toEqual(['repository:library/app:pull']);
    expect(auth.requests[0]!.headers.authorization).toBeUndefined();
    expect(registry.requests.map((r) => r.headers.authorization)).toEqual([undefined, 'Bearer tok-1']);
  });

  it('caches the token per scope and sends it preemptively', async () => {
    const { auth, registry } = await tokenRegistry({ expiresIn: 300 });
    const c = client({ url: registry.url });
    await c.getManifest('library/app', 'latest');
    await c.headManifest('library/app', 'latest');
    await c.getManifest('library/app', 'v2');
    expect(auth.requests).toHaveLength(1);
    // One 401 to learn the scheme, then every request carries the token.
    expect(registry.requests.filter((r) => !r.headers.authorization)).toHaveLength(1);
    expect(registry.requests).toHaveLength(4);

    // Another repository: a token for its scope is fetched up front, without a 401 round trip.
    await c.getManifest('team/other', 'latest');
    expect(auth.requests).toHaveLength(2);
    expect(new URL(auth.requests[1]!.url, 'http://x').searchParams.get('scope')).toBe('repository:team/other:pull');
    expect(registry.requests).toHaveLength(5);
    expect(registry.requests[4]!.headers.authorization).toBe('Bearer tok-2');
  });

  it('shares one token request between concurrent pulls', async () => {
    const { auth, registry } = await tokenRegistry();
    const c = client({ url: registry.url });
    await Promise.all(Array.from({ length: 5 }, () => c.getManifest('library/app', 'latest')));
    expect(auth.requests).toHaveLength(1);
  });

  it('accepts access_token and renews after expires_in (minus a margin)', async () => {
    const { auth, registry } = await tokenRegistry({ field: 'access_token', expiresIn: 1 });
    const c = client({ url: registry.url });
    await c.getManifest('library/app', 'latest');
    await c.getManifest('library/app', 'latest');
    expect(auth.requests).toHaveLength(1);
    await new Promise((r) => setTimeout(r, 800));
    await c.getManifest('library/app', 'latest');
    expect(auth.requests).toHaveLength(2);
  });

  it('sends configured credentials to the realm as Basic auth', async () => {
    const { auth, registry } = await tokenRegistry({ users: { alice: 'pw' } });
    const c = client({ url: registry.url, credentials: { username: 'alice', password: 'pw' } });
    await c.getManifest('private/app', 'latest');
    expect(auth.requests[0]!.headers.authorization).toBe(basic('alice', 'pw'));
    // Credentials go to the token server only; the registry sees the token.
    expect(registry.requests.every((r) => !r.headers.authorization?.startsWith('Basic'))).toBe(true);
  });

  it('reports a realm 401 as unauthorized with a clear message', async () => {
    const { registry } = await tokenRegistry({ users: { alice: 'pw' } });
    const c = client({ url: registry.url, credentials: { username: 'alice', password: 'wrong' } });
    const err = (await c.getManifest('private/app', 'latest').catch((e: unknown) => e)) as OriginError;
    expect(err).toBeInstanceOf(OriginError);
    expect(err.kind).toBe('unauthorized');
    expect(err.message).toMatch(/token server .* rejected the credentials \(user alice\)/);
    expect(err.message).toContain('incorrect username or password');

    const anon = client({ url: registry.url });
    await expect(anon.getManifest('private/app', 'latest')).rejects.toMatchObject({
      kind: 'unauthorized',
      message: expect.stringMatching(/refused anonymous access to repository:private\/app:pull/),
    });
  });

  it('drops a token the registry rejects and fetches a fresh one', async () => {
    const { auth, registry, valid } = await tokenRegistry({ expiresIn: 300 });
    const c = client({ url: registry.url });
    await c.getManifest('library/app', 'latest');
    valid.clear(); // the registry revokes every token
    await c.getManifest('library/app', 'latest');
    expect(auth.requests).toHaveLength(2);
    expect(registry.requests.map((r) => r.headers.authorization)).toEqual([undefined, 'Bearer tok-1', 'Bearer tok-1', 'Bearer tok-2']);
  });

  it('gives up with unauthorized when a fresh token is rejected too', async () => {
    const auth = await server((_req, res) => json(res, 200, { token: 'useless' }));
    const registry = await server((_req, res) =>
      registryError(res, 401, 'UNAUTHORIZED', 'nope', {
        'www-authenticate': `Bearer realm="${auth.url}/token",service="s",error="insufficient_scope"`,
      }),
    );
    const c = client({ url: registry.url, retries: 3 });
    await expect(c.getManifest('library/app', 'latest')).rejects.toMatchObject({
      kind: 'unauthorized',
      status: 401,
      message: expect.stringMatching(/insufficient_scope.*may not exist/),
    });
    expect(registry.requests).toHaveLength(2);
    expect(auth.requests).toHaveLength(1);
  });

  it('retries a token server that answers 503', async () => {
    let calls = 0;
    const auth = await server((_req, res) => (++calls === 1 ? json(res, 503, {}) : json(res, 200, { token: 't' })));
    const registry = await server((req, res) => {
      if (req.headers.authorization === 'Bearer t') return json(res, 200, {}, { 'content-type': 'application/vnd.oci.image.index.v1+json' });
      res.writeHead(401, { 'www-authenticate': `Bearer realm="${auth.url}/token"` }).end();
    });
    const c = client({ url: registry.url, retries: 2 });
    await c.getManifest('library/app', 'latest');
    expect(calls).toBe(2);
    // No service in the challenge: none is sent.
    expect(new URL(auth.requests[1]!.url, 'http://x').searchParams.has('service')).toBe(false);
  });

  it('uses the OAuth2 refresh_token grant for an identity token', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-auth-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const auth = await server((req, res) => {
      if (req.method !== 'POST') return json(res, 405, {});
      const form = new URLSearchParams(req.body);
      if (form.get('grant_type') !== 'refresh_token' || form.get('refresh_token') !== 'refresh-xyz') return json(res, 401, {});
      json(res, 200, { access_token: 'acc', expires_in: 300 });
    });
    const registry = await server((req, res) => {
      if (req.headers.authorization === 'Bearer acc') return json(res, 200, {}, { 'content-type': 'application/vnd.oci.image.index.v1+json' });
      res.writeHead(401, { 'www-authenticate': `Bearer realm="${auth.url}/oauth2/token",service="acr"` }).end();
    });
    const file = join(dir, 'config.json');
    await writeFile(file, JSON.stringify({ auths: { [registry.host]: { identitytoken: 'refresh-xyz' } } }));
    const c = client({ url: registry.url, host: registry.host, credentials: { dockerConfig: file } });
    await c.getManifest('team/app', 'latest');
    const form = new URLSearchParams(auth.requests[0]!.body);
    expect(auth.requests[0]!.method).toBe('POST');
    expect(form.get('service')).toBe('acr');
    expect(form.get('scope')).toBe('repository:team/app:pull');
    expect(form.get('client_id')).toBe('shoal');
  });
  it('falls back to GET with the identity token as Basic password when OAuth2 is not supported', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-auth-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const auth = await server((req, res) => {
      if (req.method === 'POST') return json(res, 404, {});
      if (req.headers.authorization !== basic('<token>', 'idt')) return json(res, 401, {});
      json(res, 200, { token: 'tk' });
    });
    const registry = await server((req, res) => {
      if (req.headers.authorization === 'Bearer tk') return json(res, 200, {}, { 'content-type': 'application/vnd.oci.image.index.v1+json' });
      res.writeHead(401, { 'www-authenticate': `Bearer realm="${auth.url}/token",service="svc"` }).end();
    });
    const file = join(dir, 'config.json');
    await writeFile(file, JSON.stringify({ auths: { [`https://${registry.host}`]: { identitytoken: 'idt' } } }));
    const c = client({ url: registry.url, host: registry.host, credentials: { dockerConfig: file } });
    await c.getManifest('team/app', 'latest');
    expect(auth.requests.map((r) => r.method)).toEqual(['POST', 'GET']);
  });
});

describe('basic auth', () => {
  async function basicRegistry(users: Record<string, string>): Promise<TestServer> {
    return server((req, res) => {
      const ok = Object.entries(users).some(([u, p]) => req.headers.authorization === basic(u, p));
      if (!ok) return registryError(res, 401, 'UNAUTHORIZED', 'auth required', { 'www-authenticate': 'Basic realm="Registry Realm"' });
      json(res, 200, { schemaVersion: 2, manifests: [] }, { 'content-type': 'application/vnd.oci.image.index.v1+json' });
    });
  }

  it('answers a Basic challenge and then sends credentials preemptively', async () => {
    const registry = await basicRegistry({ bob: 'secret' });
    const c = client({ url: registry.url, credentials: { username: 'bob', password: 'secret' } });
    await c.getManifest('app', 'latest');
    await c.headManifest('app', 'latest');
    await c.getManifest('other', 'v1');
    expect(registry.requests.map((r) => r.headers.authorization)).toEqual([undefined, ...Array(3).fill(basic('bob', 'secret'))]);
  });

  it('is unauthorized without credentials, or with wrong ones', async () => {
    const registry = await basicRegistry({ bob: 'secret' });
    await expect(client({ url: registry.url }).getManifest('app', 'latest')).rejects.toMatchObject({
      kind: 'unauthorized',
      message: expect.stringMatching(/requires credentials/),
    });
    await expect(client({ url: registry.url, credentials: { username: 'bob', password: 'nope' } }).getManifest('app', 'latest')).rejects.toMatchObject({
      kind: 'unauthorized',
      message: expect.stringMatching(/rejected user bob/),
    });
  });

  it('is unauthorized for a 401 without a usable challenge', async () => {
    const registry = await server((_req, res) => res.writeHead(401).end());
    await expect(client({ url: registry.url }).headBlob('app', `sha256:${'a'.repeat(64)}`)).rejects.toMatchObject({ kind: 'unauthorized' });
  });
});

describe('credential rotation', () => {
  it('uses a rotated password file on the next request and drops cached tokens', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-rot-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const file = join(dir, 'password');
    await writeFile(file, 'pw-1\n');
    const { auth, registry, state } = await tokenRegistry({ users: { alice: 'pw-1' }, expiresIn: 300 });
    const c = client({ url: registry.url, credentials: { username: 'alice', passwordFile: file }, credentialsCheckMs: 0 });
    await c.getManifest('private/app', 'latest');
    await c.getManifest('private/app', 'latest');
    expect(auth.requests).toHaveLength(1);

    state.users = { alice: 'pw-2' };
    await writeFile(file, 'pw-2\n');
    await c.getManifest('private/app', 'latest');
    // The token got with the old password is not reused, though it had not expired.
    expect(auth.requests).toHaveLength(2);
    expect(auth.requests[1]!.headers.authorization).toBe(basic('alice', 'pw-2'));
  });

  it('notices a rotation after a Basic 401 without waiting for the check interval', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-rot-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const file = join(dir, 'password');
    await writeFile(file, 'old');
    let password = 'old';
    const registry = await server((req, res) => {
      if (req.headers.authorization === basic('u', password)) return json(res, 200, {}, { 'content-type': 'application/vnd.oci.image.index.v1+json' });
      res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' }).end();
    });
    const c = client({ url: registry.url, credentials: { username: 'u', passwordFile: file }, credentialsCheckMs: 60_000 });
    await c.getManifest('app', 'latest');
    password = 'new-one';
    await writeFile(file, 'new-one\n');
    await c.getManifest('app', 'latest');
    expect(registry.requests.at(-1)!.headers.authorization).toBe(basic('u', 'new-one'));
  });

  it('names a missing password file in an unauthorized error', async () => {
    const registry = await server((_req, res) => res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' }).end());
    const c = client({ url: registry.url, credentials: { username: 'u', passwordFile: '/nonexistent/shoal/pw' } });
    await expect(c.getManifest('app', 'latest')).rejects.toMatchObject({
      kind: 'unauthorized',
      message: expect.stringContaining('/nonexistent/shoal/pw'),
    });
  });
});
