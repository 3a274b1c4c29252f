import { parseDigest, type Digest, InvalidDigestError } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import { isValidName, isValidTag, normaliseRepository } from '../oci/reference.js';

export type RegistryTarget =
  | { kind: 'root' }
  | { kind: 'manifest'; registry: string; repository: string; reference: string; digest?: Digest }
  | { kind: 'blob'; registry: string; repository: string; digest: Digest };

export interface UpstreamNames {
  /** Registry hosts the config names (`docker.io`, `ghcr.io`, `127.0.0.1:5000`). */
  has(host: string): boolean;
  readonly defaultRegistry: string;
}

const ROUTE = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]*)$/;

/**
 * Parses a registry request from the raw URL, without percent-decoding: nothing that is
 * valid in a name, tag or digest is ever encoded, so an encoded byte (`%2F`, `%2e`) is
 * simply invalid and can never smuggle a slash or `..` into a name.
 */
export function parseRegistryPath(rawUrl: string, upstreams: UpstreamNames): RegistryTarget {
  const q = rawUrl.indexOf('?');
  const path = q >= 0 ? rawUrl.slice(0, q) : rawUrl;
  const query = new URLSearchParams(q >= 0 ? rawUrl.slice(q + 1) : '');
  if (path === '/v2' || path === '/v2/') return { kind: 'root' };
  const match = ROUTE.exec(path);
  if (!match) throw new RegistryError('UNSUPPORTED', 'this mirror serves only manifests and blobs (pull)', undefined, 404);
  const [, rawName, kind, reference] = match as unknown as [string, string, string, string];

  const { registry, name } = upstreamOf(rawName, query.get('ns'), upstreams);
  if (!isValidName(name)) {
    throw new RegistryError('NAME_INVALID', 'invalid repository name', { name: name.slice(0, 300) });
  }
  const repository = normaliseRepository(registry, name);

  if (kind === 'blobs') return { kind: 'blob', registry, repository, digest: digestOrThrow(reference) };
  if (reference.includes(':')) {
    return { kind: 'manifest', registry, repository, reference, digest: digestOrThrow(reference) };
  }
  if (!isValidTag(reference)) {
    // The spec's answer for a tag that cannot exist is "unknown", not "bad request".
    throw new RegistryError('MANIFEST_UNKNOWN', 'manifest unknown: invalid tag', { tag: reference.slice(0, 200) });
  }
  return { kind: 'manifest', registry, repository, reference };
}

function upstreamOf(rawName: string, ns: string | null, upstreams: UpstreamNames): { registry: string; name: string } {
  if (ns !== null) {
    if (!upstreams.has(ns)) {
      throw new RegistryError('NAME_UNKNOWN', `registry ${JSON.stringify(ns.slice(0, 200))} is not configured on this agent`);
    }
    return { registry: ns, name: rawName };
  }
  const slash = rawName.indexOf('/');
  if (slash > 0 && upstreams.has(rawName.slice(0, slash))) {
    return { registry: rawName.slice(0, slash), name: rawName.slice(slash + 1) };
  }
  return { registry: upstreams.defaultRegistry, name: rawName };
}

function digestOrThrow(input: string): Digest {
  try {
    return parseDigest(input);
  } catch (err) {
    const reason = err instanceof InvalidDigestError ? err.message : 'invalid digest';
    throw new RegistryError('DIGEST_INVALID', reason);
  }
}
