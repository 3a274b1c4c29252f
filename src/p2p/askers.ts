/**
 * Who asked recently about which blob: the peers downloading it. A pieces answer names a few
 * of them, so downloaders that started together find each other without a tracker or another
 * DHT lookup (peer exchange, as in BitTorrent).
 */
export class Askers {
  private readonly byDigest = new Map<string, Map<string, number>>();

  constructor(
    private readonly ttlMs = 60_000,
    private readonly maxDigests = 1024,
    private readonly now: () => number = Date.now,
  ) {}

  /** Records that `peer` asked about `digest`; answers up to `max` others that did lately, latest first. */
  ask(digest: string, peer: string, max = 8): string[] {
    const at = this.now();
    let peers = this.byDigest.get(digest);
    if (peers === undefined) {
      if (this.byDigest.size >= this.maxDigests) this.byDigest.delete(this.byDigest.keys().next().value!);
      peers = new Map();
    } else {
      this.byDigest.delete(digest); // re-inserted below: the map stays ordered by last use
    }
    this.byDigest.set(digest, peers);
    const others: string[] = [];
    for (const [id, when] of peers) {
      if (at - when > this.ttlMs) peers.delete(id);
      else if (id !== peer) others.push(id);
    }
    peers.delete(peer);
    peers.set(peer, at); // latest last
    return others.reverse().slice(0, max);
  }
}
