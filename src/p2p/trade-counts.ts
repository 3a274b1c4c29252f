/**
 * Piece ranges traded with each peer since start, both ways (asked of it, served to it): the
 * denominator of the wire's stream budget (streams per rollout ÷ peers traded with). Bounded:
 * beyond MAX_PEERS a new peer replaces the one counted longest ago.
 */
const MAX_PEERS = 4096;

export class TradeCounts {
  private readonly counts = new Map<string, number>();

  traded(peerId: string): void {
    const n = this.counts.get(peerId);
    if (n === undefined && this.counts.size >= MAX_PEERS) this.counts.delete(this.counts.keys().next().value!);
    this.counts.set(peerId, (n ?? 0) + 1);
  }

  snapshot(): Record<string, number> {
    return Object.fromEntries(this.counts);
  }
}
