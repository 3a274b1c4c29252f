import { createHash } from 'node:crypto';
import type { PeerId } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import type { Multiaddr } from '@multiformats/multiaddr';
import type { CID } from 'multiformats/cid';

/**
 * The parts of a running kad-dht (16.x) a walk-less announcement or lookup needs. They are not
 * its public API: `dhtInternals` checks their shape before each use (missing: walk), and the
 * p2p-node tests that count DHT messages fail if an upgrade changes them.
 */
export interface DhtInternals {
  routingTable: {
    size: number;
    find(peer: PeerId): Promise<PeerId | undefined>;
    closestPeers(kadId: Uint8Array, options?: { count?: number }): PeerId[];
  };
  providers: {
    addProvider(cid: CID, provider: PeerId): Promise<void>;
    getProviders(cid: CID): Promise<PeerId[]>;
  };
  network: {
    sendMessage(to: PeerId, msg: object, options: SendOptions): AsyncGenerator<{ name: string }>;
    sendRequest(to: PeerId, msg: object, options: SendOptions): AsyncGenerator<{ name: string; providers?: { id: PeerId }[] }>;
  };
}

type SendOptions = { signal?: AbortSignal; path: { index: number; queued: number; running: number; total: number } };

const path = (index: number) => ({ index, queued: 0, running: 0, total: 0 });

/** The DHT's internals, or undefined when this kad-dht does not have them (then: walk). */
export function dhtInternals(dht: unknown): DhtInternals | undefined {
  const d = dht as Partial<DhtInternals> | undefined;
  const ok =
    typeof d?.routingTable?.find === 'function' &&
    typeof d.routingTable.closestPeers === 'function' &&
    typeof d.providers?.addProvider === 'function' &&
    typeof d.providers.getProviders === 'function' &&
    typeof d.network?.sendMessage === 'function' &&
    typeof d.network.sendRequest === 'function';
  return ok ? (d as DhtInternals) : undefined;
}

/**
 * The peers the DHT's walk would end at, known without walking: when the routing table holds
 * every live member, the K closest to the key among them are in it, so asking peers for closer
 * ones (a FIND_NODE to each, on a stream of its own) would only confirm what the table says.
 * Undefined when some member is missing from the table: then only a walk finds the closest.
 */
export async function closestWithoutWalk(dht: DhtInternals, cid: CID, members: readonly string[], count: number): Promise<PeerId[] | undefined> {
  if (members.length === 0 || dht.routingTable.size < members.length) return undefined;
  for (const id of members) {
    if ((await dht.routingTable.find(peerIdFromString(id))) === undefined) return undefined;
  }
  // kad-dht's key for content: sha256 of the CID's multihash bytes.
  const kadId = createHash('sha256').update(cid.multihash.bytes).digest();
  return dht.routingTable.closestPeers(kadId, { count });
}

/**
 * Writes this node's provider record locally and sends it to each of `peers` (one ADD_PROVIDER
 * each, as the DHT's own provide does after its walk). Resolves to the number that took it.
 */
export async function sendProviderRecords(
  dht: DhtInternals,
  cid: CID,
  self: { id: PeerId; addrs: Multiaddr[] },
  peers: readonly PeerId[],
  signal: AbortSignal,
): Promise<number> {
  await dht.providers.addProvider(cid, self.id);
  const msg = {
    type: 'ADD_PROVIDER',
    key: cid.multihash.bytes,
    providers: [{ id: self.id.toMultihash().bytes, multiaddrs: self.addrs.map((a) => a.bytes) }],
  };
  const sent = await Promise.all(
    peers.map(async (peer, index) => {
      try {
        for await (const event of dht.network.sendMessage(peer, msg, { signal, path: path(index) })) {
          if (event.name === 'PEER_RESPONSE') return 1;
        }
      } catch {
        // Unreachable or slow: the others hold the record, and the DHT re-provides it later.
      }
      return 0;
    }),
  );
  return sent.reduce<number>((a, b) => a + b, 0);
}

/**
 * Providers of `cid` when every member holds every provider record: the routing table holds
 * all live members and they are at most K (self included), so each is among the K closest to
 * any key and was sent each announcement. This node's own store answers; only when it knows
 * none (it joined after the announcements) are the `ask` closest peers asked, one GET_PROVIDERS
 * each. Undefined when the fleet is larger or not all known: then only a walk finds them.
 */
export async function providersWithoutWalk(
  dht: DhtInternals,
  cid: CID,
  members: readonly string[],
  opts: { k: number; ask: number; signal: AbortSignal; self: PeerId },
): Promise<PeerId[] | undefined> {
  if (members.length + 1 > opts.k) return undefined;
  const closest = await closestWithoutWalk(dht, cid, members, opts.ask);
  if (closest === undefined) return undefined;
  // This node's own record (it provides the blob, or did until a failed download) is no answer.
  const local = (await dht.providers.getProviders(cid)).filter((p) => !p.equals(opts.self));
  if (local.length > 0) return local;
  const msg = { type: 'GET_PROVIDERS', key: cid.multihash.bytes };
  const answers = await Promise.all(
    closest.map(async (peer, index) => {
      const found: PeerId[] = [];
      try {
        for await (const event of dht.network.sendRequest(peer, msg, { signal: opts.signal, path: path(index) })) {
          if (event.name === 'PEER_RESPONSE') found.push(...(event.providers ?? []).map((p) => p.id));
        }
      } catch {
        // The other peers asked may answer.
      }
      return found;
    }),
  );
  const seen = new Map<string, PeerId>();
  for (const id of answers.flat()) seen.set(id.toString(), id);
  return [...seen.values()];
}
