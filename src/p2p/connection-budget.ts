/*
 * p2p.maxConnections as a hard bound. libp2p refuses inbound connections beyond its limit but
 * lets outbound dials through and prunes afterwards (and never prunes a connection with an open
 * stream), so alone it overshoots. This gate counts connections plus dials and handshakes in
 * flight: a new connection at the limit first closes an idle one (no stream, not a membership
 * link, a few seconds old), and is refused if there is none.
 */

export interface BudgetConnection {
  readonly id: string;
  readonly peer: string;
  readonly streams: number;
  readonly openedAt: number;
  close(): Promise<void>;
}

export interface ConnectionBudgetOptions {
  max: number;
  connections(): BudgetConnection[];
  /** Peers whose connections are kept (membership links). */
  keep(peer: string): boolean;
  now?: () => number;
  /** A dial admitted but not yet connected holds its place this long at most. */
  reserveMs?: number;
  /** A connection younger than this is never closed as idle (identify may not have run yet). */
  minIdleAgeMs?: number;
}

export class ConnectionBudget {
  private readonly reserved = new Map<string, number>();
  private peakSeen = 0;
  private idleBefore = new Set<string>();
  /** Expiry times of inbound handshakes admitted but not yet open. */
  private readonly pendingInbound: number[] = [];
  private readonly now: () => number;

  constructor(private readonly o: ConnectionBudgetOptions) {
    this.now = o.now ?? (() => performance.now());
  }

  get max(): number {
    return this.o.max;
  }

  /** The most connections seen open at once. */
  get peak(): number {
    return this.peakSeen;
  }

  /** Call on every opened connection. */
  opened(peer: string, inbound = false): void {
    this.reserved.delete(peer);
    if (inbound) this.pendingInbound.shift();
    this.peakSeen = Math.max(this.peakSeen, this.o.connections().length);
  }

  /** Whether an inbound connection may be accepted now. */
  async admitInbound(): Promise<boolean> {
    if (this.used() >= this.o.max) {
      // An idle connection (a joiner a seed has answered, a finished DHT query) makes room.
      const idle = this.idle();
      if (idle === undefined) return false;
      await idle.close().catch(() => {});
      if (this.used() >= this.o.max) return false;
    }
    // Handshakes in progress hold their place too: many arrive at once in a rollout.
    this.pendingInbound.push(this.now() + (this.o.reserveMs ?? 15_000));
    return true;
  }

  /** Whether a dial to `peer` may start; may close an idle connection to make room. */
  async admitOutbound(peer: string): Promise<boolean> {
    if (this.o.connections().some((c) => c.peer === peer) || this.reserved.has(peer)) return true;
    if (this.used() >= this.o.max) {
      const idle = this.idle();
      if (idle === undefined) return false;
      await idle.close().catch(() => {});
      if (this.used() >= this.o.max) return false;
    }
    this.reserved.set(peer, this.now() + (this.o.reserveMs ?? 15_000));
    return true;
  }

  /**
   * Closes connections found idle (no stream, not kept) at this call and at the one before, so
   * one between two requests is not taken for idle; answers how many.
   */
  async reap(): Promise<number> {
    const idleNow = this.o.connections().filter((c) => c.streams === 0 && !this.o.keep(c.peer));
    const victims = idleNow.filter((c) => this.idleBefore.has(c.id));
    this.idleBefore = new Set(idleNow.filter((c) => !victims.includes(c)).map((c) => c.id));
    await Promise.all(victims.map((c) => c.close().catch(() => {})));
    return victims.length;
  }

  private used(): number {
    const now = this.now();
    for (const [peer, until] of this.reserved) if (until <= now) this.reserved.delete(peer);
    while (this.pendingInbound.length > 0 && this.pendingInbound[0]! <= now) this.pendingInbound.shift();
    const open = this.o.connections();
    const peers = new Set(open.map((c) => c.peer));
    return open.length + this.pendingInbound.length + [...this.reserved.keys()].filter((p) => !peers.has(p)).length;
  }

  private idle(): BudgetConnection | undefined {
    const now = this.now();
    const minAge = this.o.minIdleAgeMs ?? 2_000;
    return this.o
      .connections()
      .filter((c) => c.streams === 0 && !this.o.keep(c.peer) && now - c.openedAt >= minAge)
      .sort((a, b) => a.openedAt - b.openedAt)[0];
  }
}
