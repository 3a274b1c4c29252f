/*
 * p2p.maxConnections as a hard bound. libp2p refuses inbound connections beyond its limit but
 * lets outbound dials through and prunes afterwards (and never prunes a connection with an open
 * stream), so alone it overshoots. This gate counts connections plus dials and handshakes in
 * flight: a new connection at the limit first closes an idle one (no stream, not a membership
 * link, a few seconds old), and is refused if there is none.
 */

/** libp2p's own housekeeping: identify, its push, ping. */
const HOUSEKEEPING = ['/ipfs/id/1.0.0', '/ipfs/id/push/1.0.0', '/ipfs/ping/1.0.0'];

/**
 * How many of a connection's streams carry work that closing it would lose (blob bytes, piece
 * news, a fetch request, a membership exchange). Identify, ping and DHT streams do not: they
 * are retried elsewhere, and counting them let a seed fill up with connections that only
 * pinged or answered a DHT query, refusing every joiner. A stream still negotiating counts.
 */
export function workStreams(protocols: ReadonlyArray<string | undefined>, dhtProtocol: string): number {
  return protocols.filter((p) => p === undefined || p === '' || !(HOUSEKEEPING.includes(p) || p === dhtProtocol)).length;
}

export interface BudgetConnection {
  readonly id: string;
  readonly peer: string;
  /** Streams carrying work (see workStreams): a connection with none is idle. */
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
  /**
   * Whether a dial admitted under `peer` (a peer id, or `addr:<multiaddr>`) is still under way.
   * libp2p tells nobody when a dial fails: without this, a failed dial held its place until
   * reserveMs, and in a rollout at the limit dials refused by full peers held half an agent's
   * budget, so it refused joiners and fetchers meanwhile.
   */
  dialing?(peer: string): boolean;
  /** A connection younger than this is never closed as idle (identify may not have run yet). */
  minIdleAgeMs?: number;
  /**
   * Places only inbound connections may take. Without them an agent's own dials (DHT pings,
   * providers) can fill its budget, and a seed then turns every joiner away.
   */
  inboundReserve?: number;
}

export class ConnectionBudget {
  /**
   * One entry per admitted dial (peer, expiry). libp2p asks the gate only for a dial that will
   * make a new connection (it reuses an open one and joins a dial in flight first), so each
   * admission holds its own place, even to a peer already connected: both sides dialling at once
   * ends in two connections, and both count.
   */
  private reserved: Array<{ peer: string; until: number }> = [];
  private peakSeen = 0;
  private idleBefore = new Set<string>();
  /** Connections being closed to make room, by id. */
  private readonly evicting = new Set<string>();
  /**
   * Inbound handshakes admitted but not yet open, by the remote socket address, with their
   * expiry. One that fails (the dialler gave up, the upgrade timed out) must give its place back
   * at once: a seed full of dead handshakes refuses every joiner.
   */
  private readonly pendingInbound = new Map<string, number>();
  private anonymous = 0;
  /** Admissions refused since start, each way (diagnostics). */
  private readonly refused = { inbound: 0, outbound: 0 };
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

  /** What holds the budget now: open connections, inbound handshakes admitted, dials admitted. */
  usage(): { open: number; handshakes: number; dials: number; refusedInbound: number; refusedOutbound: number } {
    this.used();
    return {
      open: this.o.connections().length,
      handshakes: this.pendingInbound.size,
      dials: this.reserved.length,
      refusedInbound: this.refused.inbound,
      refusedOutbound: this.refused.outbound,
    };
  }

  /** What each open connection is, for the log line of a refusal: age (s), work streams, kept. */
  describe(): string[] {
    const now = this.now();
    const all = this.o.connections();
    return all.map((c) => `${c.peer.slice(-6)} ${((now - c.openedAt) / 1000).toFixed(1)}s ${c.streams}w${this.kept(c, all) ? ' link' : ''}${this.evicting.has(c.id) ? ' evicting' : ''}`);
  }

  private openedTotal = 0;
  private dialledTotal = 0;

  /** Connections opened since start, both ways (diagnostics: the churn at rest). */
  get openedCount(): number {
    return this.openedTotal;
  }

  /** Of those, the ones this agent dialled. */
  get dialledCount(): number {
    return this.dialledTotal;
  }

  /** Call on every opened connection; an inbound one with the remote address its handshake was admitted under. */
  opened(peer: string, inbound = false, remote?: string): void {
    this.openedTotal++;
    if (inbound) {
      // Without the address (or under another), the oldest handshake is taken for it.
      const key = remote !== undefined && this.pendingInbound.has(remote) ? remote : this.pendingInbound.keys().next().value;
      if (key !== undefined) this.pendingInbound.delete(key);
    } else {
      this.dialledTotal++;
      const i = this.reserved.findIndex((r) => r.peer === peer);
      if (i >= 0) this.reserved.splice(i, 1);
    }
    this.peakSeen = Math.max(this.peakSeen, this.o.connections().length);
  }

  /** An admitted inbound handshake ended (its socket closed), whether or not it opened. */
  handshakeEnded(remote: string): void {
    this.pendingInbound.delete(remote);
  }

  /** Whether an inbound connection from `remote` (its socket address) may be accepted now. */
  async admitInbound(remote = `anonymous:${this.anonymous++}`): Promise<boolean> {
    // An idle connection (a joiner a seed has answered, a finished DHT query) makes room.
    // Handshakes in progress hold their place too: many arrive at once in a rollout.
    const claimed = this.claim(this.o.max, () => this.pendingInbound.set(remote, this.now() + (this.o.reserveMs ?? 15_000)));
    if (claimed === false) return this.refuse('inbound');
    await claimed;
    return true;
  }

  /** Whether a new connection to `peer` may be dialled; may close an idle connection to make room. */
  async admitOutbound(peer: string): Promise<boolean> {
    const claimed = this.claim(this.o.max - (this.o.inboundReserve ?? 0), () =>
      this.reserved.push({ peer, until: this.now() + (this.o.reserveMs ?? 15_000) }),
    );
    if (claimed === false) return this.refuse('outbound');
    await claimed;
    return true;
  }

  /**
   * Closes connections found idle (no stream, not kept) at this call and at the one before, so
   * one between two requests is not taken for idle; answers how many.
   */
  async reap(): Promise<number> {
    const all = this.o.connections();
    const idleNow = all.filter((c) => c.streams === 0 && !this.kept(c, all));
    const victims = idleNow.filter((c) => this.idleBefore.has(c.id));
    this.idleBefore = new Set(idleNow.filter((c) => !victims.includes(c)).map((c) => c.id));
    await Promise.all(victims.map((c) => c.close().catch(() => {})));
    return victims.length;
  }

  /**
   * Takes a place under `limit` at once, or refuses. At the limit it picks the oldest idle
   * connection, takes that one's place, and resolves when it has closed, so the new connection
   * never opens beside it. Checking and taking happen in one synchronous step, and a connection
   * being closed is neither counted nor picked again: admissions arriving during an eviction
   * (which waits on the remote) once all took the one place it freed.
   */
  private claim(limit: number, take: () => void): Promise<void> | false {
    if (this.used() < limit) {
      take();
      return Promise.resolve();
    }
    const victim = this.idle();
    if (victim === undefined) return false;
    this.evicting.add(victim.id);
    take();
    return victim
      .close()
      .catch(() => {})
      .finally(() => this.evicting.delete(victim.id));
  }

  private refuse(way: 'inbound' | 'outbound'): false {
    this.refused[way]++;
    return false;
  }

  private used(): number {
    const now = this.now();
    this.reserved = this.reserved.filter((r) => r.until > now && (this.o.dialing?.(r.peer) ?? true));
    for (const [remote, until] of this.pendingInbound) if (until <= now) this.pendingInbound.delete(remote);
    return this.live().length + this.pendingInbound.size + this.reserved.length;
  }

  /** Open connections, less those being closed to make room (their places are taken already). */
  private live(): BudgetConnection[] {
    return this.o.connections().filter((c) => !this.evicting.has(c.id));
  }

  /**
   * Whether a connection is kept open: it is a membership link's, i.e. the busiest connection to
   * a linked peer (the oldest among equals). Both sides dialling at once leaves two connections,
   * and the idle twin of a link, once kept with it, held a place for the link's whole life.
   */
  private kept(c: BudgetConnection, all: BudgetConnection[]): boolean {
    if (!this.o.keep(c.peer)) return false;
    const twins = all.filter((o) => o.peer === c.peer);
    if (twins.length === 1) return true;
    return twins.sort((a, b) => b.streams - a.streams || a.openedAt - b.openedAt || (a.id < b.id ? -1 : 1))[0] === c;
  }

  private idle(): BudgetConnection | undefined {
    const now = this.now();
    const minAge = this.o.minIdleAgeMs ?? 2_000;
    const live = this.live();
    return live
      .filter((c) => c.streams === 0 && !this.kept(c, live) && now - c.openedAt >= minAge)
      .sort((a, b) => a.openedAt - b.openedAt)[0];
  }
}
