import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseDigest } from '../../src/oci/digest.js';
import { startAgent, type TestAgent } from '../helpers/agent.js';
import { makeImage, pushImage, type PushedImage } from '../helpers/images.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { skopeoPull } from '../helpers/skopeo.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp.js';
import { ANONYMOUS, startTokenIssuer, type TokenIssuer } from '../helpers/token-issuer.js';

const agents: TestAgent[] = [];
let secrets: string;

async function agent(host: string, url: string, credentials: Record<string, unknown> = {}): Promise<TestAgent> {
  const a = await startAgent({ registries: { [host]: { url, ...credentials } }, upstreams: { retries: 0 } });
  agents.push(a);
  return a;
}

async function errorCode(res: Response): Promise<string> {
  return ((await res.json()) as { errors: { code: string }[] }).errors[0]!.code;
}

beforeAll(async () => {
  secrets = await makeTempDir('shoal-secrets-');
});
afterAll(async () => {
  for (const a of agents) await a.close();
  await removeTempDir(secrets);
});

describe('an origin with Basic auth (htpasswd)', () => {
  let registry: Registry;
  let image: PushedImage;
  beforeAll(async () => {
    registry = await startRegistry({ auth: { kind: 'htpasswd', users: { alice: 's3cret' } } });
    const local = await makeImage({ layers: [300_000] });
    image = await pushImage(local, registry, 'private/app:v1', { creds: 'alice:s3cret' });
    await local.remove();
  });
  afterAll(async () => registry?.close());

  it('pulls with the right credentials', async () => {
    const a = await agent(registry.host, registry.url, { username: 'alice', password: 's3cret' });
    const pull = await skopeoPull(`${a.host}/private/app:v1`);
    expect(pull.stderr).toBe('');
    expect(pull.ok).toBe(true);
    await pull.remove();
  });

  it('answers a clear 401 without credentials, or with wrong ones', async () => {
    for (const creds of [{}, { username: 'alice', password: 'wrong' }]) {
      const a = await agent(registry.host, registry.url, creds);
      const manifest = await fetch(`${a.url}/v2/private/app/manifests/v1`);
      expect(manifest.status).toBe(401);
      expect(await errorCode(manifest)).toBe('UNAUTHORIZED');
      const blob = await fetch(`${a.url}/v2/private/app/blobs/${image.layerDigests[0]}`);
      expect(blob.status).toBe(401);
      expect(await errorCode(blob)).toBe('UNAUTHORIZED');
      const pull = await skopeoPull(`${a.host}/private/app:v1`);
      expect(pull.ok).toBe(false);
    }
  });

  it('reads the password from a file, and picks up a rotated one without a restart', async () => {
    const file = join(secrets, 'password');
    await writeFile(file, 'wrong\n');
    const a = await agent(registry.host, registry.url, { username: 'alice', passwordFile: file });
    expect((await fetch(`${a.url}/v2/private/app/manifests/v1`)).status).toBe(401);
    await writeFile(file, 's3cret\n');
    // Credentials files are checked at most once a second.
    await new Promise((r) => setTimeout(r, 1100));
    const res = await fetch(`${a.url}/v2/private/app/manifests/v1`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(image.manifestDigest);
  });
});

describe('an origin with token auth', () => {
  let issuer: TokenIssuer;
  let registry: Registry;
  let priv: PushedImage;
  let pub: PushedImage;
  beforeAll(async () => {
    issuer = await startTokenIssuer({
      users: { pusher: 'pushpw', reader: 'readpw' },
      acl: [
        { user: 'pusher', repos: ['*'], actions: ['pull', 'push'] },
        { user: 'reader', repos: ['private/*'], actions: ['pull'] },
        { user: ANONYMOUS, repos: ['public/*'], actions: ['pull'] },
      ],
    });
    registry = await startRegistry({ auth: { kind: 'token', issuer } });
    const local = await makeImage({ layers: [400_000] });
    priv = await pushImage(local, registry, 'private/app:v1', { creds: 'pusher:pushpw' });
    await local.remove();
    const other = await makeImage({ layers: [100_000] });
    pub = await pushImage(other, registry, 'public/app:v1', { creds: 'pusher:pushpw' });
    await other.remove();
  });
  afterAll(async () => {
    await registry?.close();
    await issuer?.stop();
  });

  it('pulls a private image with credentials, reusing a cached token', async () => {
    const a = await agent(registry.host, registry.url, { username: 'reader', password: 'readpw' });
    issuer.reset();
    const pull = await skopeoPull(`${a.host}/private/app:v1`);
    expect(pull.stderr).toBe('');
    expect(pull.ok).toBe(true);
    await pull.remove();
    // One token for the repository's pull scope serves the HEAD, the GETs and every blob.
    expect(issuer.requests).toBe(1);
    expect(issuer.log[0]!.user).toBe('reader');
    expect(issuer.log[0]!.scopes).toEqual(['repository:private/app:pull']);
  });

  it('pulls a public image anonymously, but refuses the private one with a 401', async () => {
    const a = await agent(registry.host, registry.url);
    const pull = await skopeoPull(`${a.host}/public/app:v1`);
    expect(pull.ok).toBe(true);
    await pull.remove();
    expect(await a.agent.store.get(parseDigest(pub.layerDigests[0]!))).toBeDefined();
    const manifest = await fetch(`${a.url}/v2/private/app/manifests/v1`);
    expect(manifest.status).toBe(401);
    expect(await errorCode(manifest)).toBe('UNAUTHORIZED');
    // A private-only blob the agent does not hold is asked of the origin, which refuses.
    const privateLayer = await fetch(`${a.url}/v2/private/app/blobs/${priv.layerDigests[0]}`);
    expect(privateLayer.status).toBe(401);
    expect(await errorCode(privateLayer)).toBe('UNAUTHORIZED');
  });

  it('takes credentials from a Docker config.json', async () => {
    const config = join(secrets, 'config.json');
    const auth = Buffer.from('reader:readpw').toString('base64');
    await writeFile(config, JSON.stringify({ auths: { [registry.host]: { auth } } }));
    const a = await agent(registry.host, registry.url, { dockerConfig: config });
    const pull = await skopeoPull(`${a.host}/private/app:v1`);
    expect(pull.stderr).toBe('');
    expect(pull.ok).toBe(true);
    await pull.remove();
  });

  it('answers 401 when the token server refuses the credentials', async () => {
    const a = await agent(registry.host, registry.url, { username: 'reader', password: 'nope' });
    const res = await fetch(`${a.url}/v2/private/app/manifests/v1`);
    expect(res.status).toBe(401);
    expect(await errorCode(res)).toBe('UNAUTHORIZED');
  });
});
