import { describe, expect, it } from 'vitest';
import { parseRegistryPath, type UpstreamNames } from '../../src/http/registry-path.js';
import { RegistryError } from '../../src/oci/errors.js';

const hosts = new Set(['docker.io', 'ghcr.io', '127.0.0.1:5000']);
const upstreams: UpstreamNames = { has: (h) => hosts.has(h), defaultRegistry: 'ghcr.io' };
const D = `sha256:${'a'.repeat(64)}`;

function error(url: string): RegistryError {
  try {
    parseRegistryPath(url, upstreams);
  } catch (err) {
    expect(err).toBeInstanceOf(RegistryError);
    return err as RegistryError;
  }
  throw new Error(`expected ${url} to be refused`);
}

describe('parseRegistryPath', () => {
  it('answers the API root', () => {
    expect(parseRegistryPath('/v2/', upstreams)).toEqual({ kind: 'root' });
    expect(parseRegistryPath('/v2', upstreams)).toEqual({ kind: 'root' });
  });

  it('takes the upstream from ns first', () => {
    const t = parseRegistryPath('/v2/library/nginx/manifests/latest?ns=docker.io', upstreams);
    expect(t).toMatchObject({ kind: 'manifest', registry: 'docker.io', repository: 'library/nginx', reference: 'latest' });
  });

  it('adds library/ to one-segment Docker Hub names', () => {
    const t = parseRegistryPath('/v2/nginx/manifests/1.27?ns=docker.io', upstreams);
    expect(t).toMatchObject({ registry: 'docker.io', repository: 'library/nginx' });
    const other = parseRegistryPath('/v2/nginx/manifests/1.27?ns=ghcr.io', upstreams);
    expect(other).toMatchObject({ registry: 'ghcr.io', repository: 'nginx' });
  });

  it('takes the upstream from a leading path segment naming a configured registry (CRI-O)', () => {
    const t = parseRegistryPath(`/v2/docker.io/library/nginx/blobs/${D}`, upstreams);
    expect(t).toMatchObject({ kind: 'blob', registry: 'docker.io', repository: 'library/nginx' });
    expect((t as { digest: { value: string } }).digest.value).toBe(D);
    const port = parseRegistryPath('/v2/127.0.0.1:5000/team/app/manifests/v1', upstreams);
    expect(port).toMatchObject({ registry: '127.0.0.1:5000', repository: 'team/app' });
  });

  it('falls back to upstreams.default', () => {
    expect(parseRegistryPath('/v2/team/app/manifests/v1', upstreams)).toMatchObject({ registry: 'ghcr.io', repository: 'team/app' });
  });

  it('refuses an unconfigured ns', () => {
    const e = error('/v2/team/app/manifests/v1?ns=evil.example');
    expect(e.code).toBe('NAME_UNKNOWN');
    expect(e.status).toBe(404);
  });

  it('parses manifests by digest', () => {
    const t = parseRegistryPath(`/v2/team/app/manifests/${D}`, upstreams);
    expect(t).toMatchObject({ kind: 'manifest', reference: D });
  });

  it.each([
    ['/v2/Team/app/manifests/v1', 'NAME_INVALID', 400],
    ['/v2/team/../app/manifests/v1', 'NAME_INVALID', 400],
    ['/v2/team%2Fapp/manifests/v1', 'NAME_INVALID', 400],
    ['/v2/team%2e%2e/app/manifests/v1', 'NAME_INVALID', 400],
    ['/v2/team//app/manifests/v1', 'NAME_INVALID', 400],
    [`/v2/${'a/'.repeat(200)}b/manifests/v1`, 'NAME_INVALID', 400],
    ['/v2/team/app/manifests/-bad', 'MANIFEST_UNKNOWN', 404],
    [`/v2/team/app/manifests/${'t'.repeat(129)}`, 'MANIFEST_UNKNOWN', 404],
    ['/v2/team/app/manifests/', 'MANIFEST_UNKNOWN', 404],
    ['/v2/team/app/blobs/sha256:abc', 'DIGEST_INVALID', 400],
    [`/v2/team/app/blobs/sha256:${'A'.repeat(64)}`, 'DIGEST_INVALID', 400],
    [`/v2/team/app/blobs/md5:${'a'.repeat(32)}`, 'DIGEST_INVALID', 400],
    [`/v2/team/app/blobs/sha256:${'a'.repeat(63)}%2F`, 'DIGEST_INVALID', 400],
    ['/v2/team/app/blobs/..', 'DIGEST_INVALID', 400],
    [`/v2/team/app/manifests/sha256:${'a'.repeat(65)}`, 'DIGEST_INVALID', 400],
    ['/v2/_catalog', 'UNSUPPORTED', 404],
    ['/v2/team/app/tags/list', 'UNSUPPORTED', 404],
  ])('%s → %s', (url, code, status) => {
    const e = error(url);
    expect(e.code).toBe(code);
    expect(e.status).toBe(status);
    expect(e.toJSON().errors[0]!.code).toBe(code);
  });

  it('accepts sha512 digests', () => {
    const d = `sha512:${'b'.repeat(128)}`;
    expect(parseRegistryPath(`/v2/a/blobs/${d}`, upstreams)).toMatchObject({ kind: 'blob' });
  });
});
