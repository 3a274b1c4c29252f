import type { Metadata } from '../store/metadata.js';

/**
 * Which digests this agent reached through the origin, per repository. Peers are a source of
 * bytes only for granted digests: the origin said this agent may read them (a tag it resolved
 * named them, a manifest it served led to them, or it answered a HEAD for them), so a node the
 * origin would refuse never gets private bytes from a peer.
 */
export class Grants {
  constructor(private readonly metadata: Metadata) {}

  async grant(registry: string, repository: string, digests: Iterable<string>): Promise<void> {
    await this.metadata.putGrants(
      [...digests].map((digest) => key(registry, repository, digest)),
      Date.now(),
    );
  }

  async has(registry: string, repository: string, digest: string): Promise<boolean> {
    return this.metadata.hasGrant(key(registry, repository, digest));
  }
}

function key(registry: string, repository: string, digest: string): string {
  return `${registry}/${repository}@${digest}`;
}
