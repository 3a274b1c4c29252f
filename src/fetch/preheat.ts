import { parseDigest } from '../oci/digest.js';
import { INDEX_MEDIA_TYPES } from '../oci/media-types.js';
import { parseImageReference, type ImageReference } from '../oci/reference.js';
import { RegistryError } from '../oci/errors.js';
import type { BlobFetcher } from './blob-fetcher.js';
import type { ManifestService } from './manifests.js';

export interface PreheatProgress {
  /** Blobs of the image(s) in all, and how many are now held. */
  blobs: number;
  done: number;
  bytes: number;
  doneBytes: number;
  /** The blob just finished, if any. */
  digest?: string;
}

interface Descriptor {
  digest: string;
  size: number;
  mediaType?: string;
  platform?: { os?: string; architecture?: string; variant?: string };
}

/**
 * Fetches every blob of an image (or of one platform of an index) ahead of a rollout, through
 * the same path as a pull: tag at the origin, manifests by digest, blobs from peers or origin.
 */
export class Preheater {
  constructor(
    private readonly manifests: ManifestService,
    private readonly blobs: BlobFetcher,
    private readonly registries: { has(host: string): boolean; readonly defaultRegistry: string },
  ) {}

  /** Parses a user's reference; a bad one or an unconfigured registry is a RegistryError. */
  reference(input: string): ImageReference {
    let ref: ImageReference;
    try {
      ref = parseImageReference(input, this.registries.defaultRegistry);
    } catch (err) {
      throw new RegistryError('NAME_INVALID', (err as Error).message);
    }
    if (!this.registries.has(ref.registry)) {
      throw new RegistryError('NAME_UNKNOWN', `registry ${ref.registry} is not configured on this agent`);
    }
    return ref;
  }

  async run(ref: ImageReference, platform: string | undefined, onProgress: (p: PreheatProgress) => void): Promise<PreheatProgress> {
    const top = await this.manifests.resolve(ref);
    const images: Descriptor[] = [];
    if (INDEX_MEDIA_TYPES.has(top.mediaType)) {
      const index = JSON.parse(top.bytes.toString('utf8')) as { manifests?: Descriptor[] };
      const wanted = (index.manifests ?? []).filter((m) => matches(m, platform));
      if (wanted.length === 0) throw new RegistryError('MANIFEST_UNKNOWN', `no manifest for platform ${platform} in ${ref.repository}`);
      images.push(...wanted);
    } else {
      images.push({ digest: top.digest, size: top.size });
    }
    const blobs = new Map<string, number>();
    for (const image of images) {
      const manifest = await this.manifests.resolve({ ...ref, reference: image.digest });
      const doc = JSON.parse(manifest.bytes.toString('utf8')) as { config?: Descriptor; layers?: Descriptor[] };
      for (const d of [doc.config, ...(doc.layers ?? [])]) if (d) blobs.set(d.digest, d.size);
    }
    const progress: PreheatProgress = {
      blobs: blobs.size,
      done: 0,
      bytes: [...blobs.values()].reduce((a, b) => a + b, 0),
      doneBytes: 0,
    };
    onProgress({ ...progress });
    const queue = [...blobs.entries()];
    // A few blobs at a time: enough to keep links busy, few enough to finish some early.
    const worker = async () => {
      for (let next = queue.shift(); next; next = queue.shift()) {
        const [digest, size] = next;
        await this.blobs.ensure({ digest: parseDigest(digest), registry: ref.registry, repository: ref.repository });
        progress.done++;
        progress.doneBytes += size;
        onProgress({ ...progress, digest });
      }
    };
    await Promise.all(Array.from({ length: 3 }, worker));
    return progress;
  }
}

function matches(descriptor: Descriptor, platform: string | undefined): boolean {
  if (!platform) return true;
  const [os, architecture, variant] = platform.split('/');
  const p = descriptor.platform ?? {};
  return p.os === os && p.architecture === architecture && (variant === undefined || p.variant === variant);
}
