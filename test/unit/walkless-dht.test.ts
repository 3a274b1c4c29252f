import { createHash } from 'node:crypto';
import { generateKeyPair } from '@libp2p/crypto/keys';
import type { PeerId } from '@libp2p/interface';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { beforeAll, describe, expect, it } from 'vitest';
import { cidForDigest } from '../../src/p2p/cid.js';
import { closestWithoutWalk, dhtInternals, providersWithoutWalk, type DhtInternals } from '../../src/p2p/walkless-dht.js';

async function peers(n: number): Promise<PeerId[]> {
  return Promise.all(Array.from({ length: n }, async () => peerIdFromPrivateKey(await generateKeyPair('Ed25519'))));
}

/**
 * A routing table holding `held`, ordering by kad distance as kad-dht does; a provider store
 * holding `local`; peers answering GET_PROVIDERS from `remote` (and recorded in `asked`).
 */
function fakeDht(held: PeerId[], local: PeerId[] = [], remote = new Map<string, PeerId[]>(), asked: string[] = []): DhtInternals {
  const kad = (p: PeerId) => createHash('sha256').update(p.toMultihash().bytes).digest();
  return {
    routingTable: {
      size: held.length,
      find: async (p) => held.find((h) => h.equals(p)),
      closestPeers: (kadId, options) => {
        const dist = (p: PeerId) => Buffer.from(kad(p).map((byte, i) => byte ^ kadId[i]!));
        return [...held].sort((x, y) => Buffer.compare(dist(x), dist(y))).slice(0, options?.count ?? 20);
      },
    },
    providers: { addProvider: async () => {}, getProviders: async () => local },
    network: {
      sendMessage: async function* () {},
      sendRequest: async function* (to) {
        asked.push(to.toString());
        yield { name: 'PEER_RESPONSE', providers: (remote.get(to.toString()) ?? []).map((id) => ({ id })) };
      },
    },
  };
}

describe('closestWithoutWalk', () => {
  const cid = cidForDigest(`sha256:${'ab'.repeat(32)}`);

  it('answers from the routing table when it holds every member, the K closest of them', async () => {
    const all = await peers(6);
    const closest = await closestWithoutWalk(fakeDht(all), cid, all.map(String), 4);
    expect(closest).toHaveLength(4);
    const target = createHash('sha256').update(cid.multihash.bytes).digest();
    const distance = (p: PeerId) => Buffer.from(createHash('sha256').update(p.toMultihash().bytes).digest().map((b, i) => b ^ target[i]!));
    const expected = [...all].sort((x, y) => Buffer.compare(distance(x), distance(y))).slice(0, 4);
    expect(closest!.map(String)).toEqual(expected.map(String));
  });

  it('walks (undefined) when a member is missing from the routing table, or there are no members', async () => {
    const all = await peers(5);
    const held = all.slice(0, 4);
    // Same size, one different peer: the size alone does not decide.
    const other = (await peers(1))[0]!;
    expect(await closestWithoutWalk(fakeDht([...held, other]), cid, all.map(String), 20)).toBeUndefined();
    expect(await closestWithoutWalk(fakeDht(held), cid, all.map(String), 20)).toBeUndefined();
    expect(await closestWithoutWalk(fakeDht(all), cid, [], 20)).toBeUndefined();
  });

  it('finds the internals it needs on a kad-dht, and nothing on something else', () => {
    expect(dhtInternals(fakeDht([]))).toBeDefined();
    expect(dhtInternals({ routingTable: {} })).toBeUndefined();
    expect(dhtInternals(undefined)).toBeUndefined();
  });
});

describe('providersWithoutWalk', () => {
  const cid = cidForDigest(`sha256:${'cd'.repeat(32)}`);
  const signal = new AbortController().signal;
  let self: PeerId;
  beforeAll(async () => {
    self = (await peers(1))[0]!;
  });

  it('answers from its own store, asking nobody, when every member holds every record', async () => {
    const all = await peers(5);
    const asked: string[] = [];
    const found = await providersWithoutWalk(fakeDht(all, [all[0]!], new Map(), asked), cid, all.map(String), { k: 20, ask: 2, signal, self });
    expect(found!.map(String)).toEqual([all[0]!.toString()]);
    expect(asked).toEqual([]);
  });

  it('does not take its own record for an answer: it asks the closest peers', async () => {
    const all = await peers(4);
    const remote = new Map(all.map((p) => [p.toString(), [all[0]!]]));
    const asked: string[] = [];
    const found = await providersWithoutWalk(fakeDht(all, [self], remote, asked), cid, all.map(String), { k: 20, ask: 2, signal, self });
    expect(found!.map(String)).toEqual([all[0]!.toString()]);
    expect(asked).toHaveLength(2);
  });

  it('asks only the `ask` closest peers when its own store knows none (it joined late)', async () => {
    const all = await peers(6);
    const provider = all[5]!;
    const remote = new Map(all.map((p) => [p.toString(), [provider]]));
    const asked: string[] = [];
    const dht = fakeDht(all, [], remote, asked);
    const found = await providersWithoutWalk(dht, cid, all.map(String), { k: 20, ask: 2, signal, self });
    expect(found!.map(String)).toEqual([provider.toString()]);
    const closest = await closestWithoutWalk(dht, cid, all.map(String), 2);
    expect(asked.sort()).toEqual(closest!.map(String).sort());
  });

  it('walks (undefined) in a fleet larger than K, or with a member missing from the routing table', async () => {
    const all = await peers(5);
    expect(await providersWithoutWalk(fakeDht(all, all), cid, all.map(String), { k: 5, ask: 2, signal, self })).toBeUndefined();
    expect(await providersWithoutWalk(fakeDht(all.slice(1), all), cid, all.map(String), { k: 20, ask: 2, signal, self })).toBeUndefined();
  });
});
