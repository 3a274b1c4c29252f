/** What the agent has learnt of each peer as a source of bytes. */
interface PeerRecord {
  failures: number;
  penalisedUntil: number;
}

export interface RankedPeer {
  id: string;
  zone?: string;
  rttMs?: number;
}

/**
 * Failures and penalties per peer, and the ranking of providers: same zone first, then lower
 * round-trip time, then fewer failures. A peer whose bytes failed verification is left out
 * until its penalty ends.
 */
export class PeerBook {
  private readonly records = new Map<string, PeerRecord>();

  constructor(
    private readonly zone: string,
    private readonly penaltyMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** A transfer from the peer failed (unreachable, busy, reset): ranks it lower. */
  failed(peerId: string): void {
    this.record(peerId).failures++;
  }

  /** The peer sent bytes that failed verification: it is not asked again for a while. */
  penalise(peerId: string): void {
    const record = this.record(peerId);
    record.failures++;
    record.penalisedUntil = this.now() + this.penaltyMs;
  }

  isPenalised(peerId: string): boolean {
    return (this.records.get(peerId)?.penalisedUntil ?? 0) > this.now();
  }

  failures(peerId: string): number {
    return this.records.get(peerId)?.failures ?? 0;
  }

  /** Drops penalised peers and orders the rest, best first. */
  rank(candidates: readonly RankedPeer[]): RankedPeer[] {
    return candidates
      .filter((peer) => !this.isPenalised(peer.id))
      .sort((a, b) => {
        const zoneA = a.zone === this.zone ? 0 : 1;
        const zoneB = b.zone === this.zone ? 0 : 1;
        if (zoneA !== zoneB) return zoneA - zoneB;
        const rttA = a.rttMs ?? Number.POSITIVE_INFINITY;
        const rttB = b.rttMs ?? Number.POSITIVE_INFINITY;
        if (rttA !== rttB) return rttA - rttB;
        return this.failures(a.id) - this.failures(b.id);
      });
  }

  private record(peerId: string): PeerRecord {
    let record = this.records.get(peerId);
    if (!record) {
      record = { failures: 0, penalisedUntil: 0 };
      this.records.set(peerId, record);
    }
    return record;
  }
}
