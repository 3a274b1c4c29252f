import type { Logger } from 'pino';
import { digestOf, DigestMismatchError, parseDigest, tryParseDigest, type Digest } from '../oci/digest.js';
import { mediaTypeOf } from '../oci/media-types.js';
import { OriginError } from '../origin/errors.js';
import type { BlobStore } from '../store/blob-store.js';
import { SingleFlight } from './single-flight.js';
import { readFile } from 'node:fs/promises';
import type { Grants } from './grants.js';
import { referencedDigests } from '../oci/manifest.js';

/** The part of an origin client that manifests need. */
export interface ManifestOrigin {
  headManifest(repo: string, ref: string, signal?: AbortSignal): Promise<{ digest?: string; mediaType?: string; size?: number }>;
  getManifest(repo: string, ref: string, signal?: AbortSignal): Promise<{ bytes: Buffer; mediaType?: string; digest?: string }>;
}

export interface ManifestRequest {
  registry: string;
  repository: string;
  /** A tag or a digest. */
  reference: string;
}

export interface ResolvedManifest {
  digest: string;
  mediaType: string;
  size: number;
  bytes: Buffer;
  /** True when the origin could not be reached and a cached tag answered. */
  stale: boolean;
  /** True when these bytes came from the origin just now. */
  fromOrigin: boolean;
}

export interface ManifestServiceOptions {
  store: BlobStore;
  /** Records what the origin let this agent reach, for taking those digests from peers. */
  grants?: Grants;
  origin: (registry: string) => ManifestOrigin;
  staleIfErrorMs: number;
  logger: Logger;
  now?: () => number;
}

const FALLBACK_MEDIA_TYPE = 'application/vnd.oci.image.manifest.v1+json';

/**
 * Resolves manifests. A tag is always asked of the origin (HEAD, GET only when the origin
 * names no digest); the bytes are then found by digest in the store or fetched and checked
 * against the digest, and kept exactly as the origin sent them.
 */
export class ManifestService {
  private readonly flights = new SingleFlight<string, ResolvedManifest>();
  private readonly now: () => number;

  constructor(private readonly opts: ManifestServiceOptions) {
    this.now = opts.now ?? Date.now;
  }

  async resolve(request: ManifestRequest): Promise<ResolvedManifest> {
    const digest = tryParseDigest(request.reference);
    const manifest = digest ? await this.byDigest(request, digest) : await this.byTag(request);
    await this.grantReferences(request, manifest, digest === undefined);
    return manifest;
  }

  /**
   * A manifest the origin led this agent to (by a tag it resolved, by serving it, or through a
   * granted index) grants the digests it references, for this repository.
   */
  private async grantReferences(request: ManifestRequest, manifest: ResolvedManifest, viaTag: boolean): Promise<void> {
    const grants = this.opts.grants;
    if (!grants) return;
    const reached =
      viaTag || manifest.fromOrigin || (await grants.has(request.registry, request.repository, manifest.digest));
    if (!reached) return;
    await grants.grant(request.registry, request.repository, [manifest.digest, ...referencedDigests(manifest.bytes)]);
  }

  private async byTag(request: ManifestRequest): Promise<ResolvedManifest> {
    const origin = this.opts.origin(request.registry);
    const tagKey = `${request.registry}/${request.repository}:${request.reference}`;
    try {
      const head = await origin.headManifest(request.repository, request.reference);
      const headDigest = head.digest ? tryParseDigest(head.digest) : undefined;
      let manifest: ResolvedManifest;
      if (headDigest) {
        manifest = await this.byDigest(request, headDigest, head.mediaType);
      } else {
        manifest = await this.fetchByTag(request, origin);
      }
      await this.opts.store.metadata.putTag(tagKey, {
        digest: manifest.digest,
        mediaType: manifest.mediaType,
        size: manifest.size,
        resolvedAt: this.now(),
      });
      return manifest;
    } catch (err) {
      if (!isOriginOutage(err)) throw err;
      const cached = await this.opts.store.metadata.getTag(tagKey);
      if (!cached || this.now() - cached.resolvedAt > this.opts.staleIfErrorMs) throw err;
      const local = await this.fromStore(parseDigest(cached.digest), cached.mediaType);
      if (!local) throw err;
      this.opts.logger.warn(
        { tag: tagKey, digest: cached.digest, resolvedAt: new Date(cached.resolvedAt).toISOString(), err },
        'origin unreachable: answering tag from cache',
      );
      return { ...local, stale: true };
    }
  }

  /** When the origin's HEAD names no digest: GET by tag and name the bytes ourselves. */
  private async fetchByTag(request: ManifestRequest, origin: ManifestOrigin): Promise<ResolvedManifest> {
    const response = await origin.getManifest(request.repository, request.reference);
    const claimed = response.digest ? tryParseDigest(response.digest) : undefined;
    const digest = digestOf(response.bytes, claimed?.algorithm ?? 'sha256');
    if (claimed && claimed.value !== digest.value) {
      throw new DigestMismatchError(claimed.value, digest.value, `origin ${request.registry}`);
    }
    return this.keep(digest, response.bytes, response.mediaType);
  }

  private byDigest(request: ManifestRequest, digest: Digest, mediaTypeHint?: string): Promise<ResolvedManifest> {
    return this.flights.run(digest.value, async () => {
      const local = await this.fromStore(digest, mediaTypeHint);
      if (local) return local;
      const response = await this.opts.origin(request.registry).getManifest(request.repository, digest.value);
      const actual = digestOf(response.bytes, digest.algorithm);
      if (actual.value !== digest.value) {
        throw new DigestMismatchError(digest.value, actual.value, `origin ${request.registry}`);
      }
      return this.keep(digest, response.bytes, response.mediaType ?? mediaTypeHint);
    });
  }

  private async fromStore(digest: Digest, mediaTypeHint?: string): Promise<ResolvedManifest | undefined> {
    const stored = await this.opts.store.get(digest);
    if (!stored) return undefined;
    const bytes = await readFile(stored.path);
    void this.opts.store.touch(digest).catch(() => undefined);
    const mediaType = stored.mediaType ?? usableMediaType(mediaTypeHint) ?? mediaTypeOf(bytes) ?? FALLBACK_MEDIA_TYPE;
    return { digest: digest.value, mediaType, size: bytes.length, bytes, stale: false, fromOrigin: false };
  }

  private async keep(digest: Digest, bytes: Buffer, originMediaType?: string): Promise<ResolvedManifest> {
    const mediaType = usableMediaType(originMediaType) ?? mediaTypeOf(bytes) ?? FALLBACK_MEDIA_TYPE;
    const existing = await this.opts.store.get(digest);
    if (!existing) {
      const writer = await this.opts.store.beginWrite(digest, mediaType);
      try {
        await writer.write(bytes);
        await writer.commit(this.opts.store.pathOf(digest), 'origin');
      } catch (err) {
        await writer.abort();
        throw err;
      }
    }
    return { digest: digest.value, mediaType, size: bytes.length, bytes, stale: false, fromOrigin: true };
  }
}

/** The origin could not answer at all (as opposed to answering "no"). */
export function isOriginOutage(err: unknown): boolean {
  return err instanceof OriginError && (err.kind === 'unavailable' || err.kind === 'toomanyrequests');
}

function usableMediaType(contentType: string | undefined): string | undefined {
  if (!contentType) return undefined;
  const base = contentType.split(';')[0]!.trim();
  // Registries answer text/plain or application/json for schema1 and odd manifests; the
  // body's own mediaType is then the better name.
  return base.startsWith('application/vnd.') ? base : undefined;
}
