import { describe, expect, it } from 'vitest';
import { closestPeers } from '../../src/p2p/closest.js';

const peers = Array.from({ length: 20 }, (_, i) => `12D3KooPeer${i}`);
const digest = `sha256:${'a'.repeat(64)}`;

describe('closestPeers', () => {
  it('picks the same peers whatever order they are known in', () => {
    const forward = closestPeers(digest, peers, 2);
    const backward = closestPeers(digest, [...peers].reverse(), 2);
    expect(forward).toHaveLength(2);
    expect(backward).toEqual(forward);
  });

  it('spreads different blobs over different peers', () => {
    const chosen = new Set<string>();
    for (let i = 0; i < 40; i++) chosen.add(closestPeers(`sha256:${i.toString(16).padStart(64, '0')}`, peers, 1)[0]!);
    expect(chosen.size).toBeGreaterThan(5);
  });

  it('returns everyone when asked for more than there are', () => {
    expect(closestPeers(digest, ['a', 'b', 'a'], 5).sort()).toEqual(['a', 'b']);
  });
});
