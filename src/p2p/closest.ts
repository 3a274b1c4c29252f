import { createHash } from 'node:crypto';

function key(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** XOR distance of two 32-byte keys, compared as big-endian numbers. */
function compareDistance(target: Buffer, a: Buffer, b: Buffer): number {
  for (let i = 0; i < target.length; i++) {
    const da = target[i]! ^ a[i]!;
    const db = target[i]! ^ b[i]!;
    if (da !== db) return da - db;
  }
  return 0;
}

/**
 * The `count` peers (self included) closest to a blob in Kademlia's XOR metric over sha256 of
 * peer ids and digest. Every agent that knows the same peers picks the same ones, so a zone
 * elects its origin fetchers for each blob without a tracker.
 */
export function closestPeers(digest: string, candidates: readonly string[], count: number): string[] {
  const target = key(digest);
  return [...new Set(candidates)]
    .map((id) => ({ id, key: key(id) }))
    .sort((a, b) => compareDistance(target, a.key, b.key))
    .slice(0, count)
    .map((c) => c.id);
}
