import { isLive, MemberTable, type Member, type MemberInfo, type MemberUpdate } from './member-table.js';

/*
 * Zone membership, SWIM-style, over a bounded random overlay instead of a full mesh.
 *
 * Each agent keeps long-lived links (one stream each) to a few random members: at least
 * `targetLinks`, at most `maxLinks`, half of them in its own zone when it can. News about a
 * member (alive / suspect / dead / left, with its incarnation) is flooded along the links: an
 * agent forwards only what changed its own table, so each piece of news crosses each link at
 * most once each way and reaches everyone in a few hops. Failure detection is the links
 * themselves: a link that closes without a goodbye, or stays silent past `linkTimeoutMs` (each
 * side of an idle link sends a one-way heartbeat every `pingIntervalMs`; nothing answers it, as
 * each side watches its own receipt), makes its peer a suspect; a suspect that does not
 * refute (by raising its incarnation) within `suspicionMs` is declared dead. A join is one full
 * state exchange with any agent (a bootstrap address), after which the joiner links to random
 * members; full exchanges with a random neighbour repeat at an interval that grows with log N
 * (as memberlist's push-pull does), to heal whatever flooding missed.
 *
 * Everything here is driven through a clock and a link transport so the simulator can run it in
 * virtual time; the libp2p side is member-wire.ts.
 */

export type Timer = unknown;

export type Liveness = 'alive' | 'suspect' | 'dead' | 'gone';

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): Timer;
  clearTimeout(timer: Timer): void;
}

export const realClock: Clock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (t) => clearTimeout(t as NodeJS.Timeout),
};

export type Frame =
  | { t: 'hello'; member: MemberUpdate; join: boolean }
  | { t: 'sync'; members: MemberUpdate[]; reply: boolean }
  | { t: 'gossip'; updates: MemberUpdate[] }
  | { t: 'ping' }
  /** Sent by agents before 2026-12: a ping's answer. Accepted and ignored. */
  | { t: 'pong' }
  | { t: 'bye'; reason: 'trim' | 'leave' };

/** One link to a neighbour. The transport reports its frames and its end to the Membership. */
export interface Link {
  readonly peer: string;
  /** This agent dialled it. */
  readonly outbound: boolean;
  send(frame: Frame): void;
  close(): void;
}

export interface LinkTransport {
  /**
   * Opens a link to `target` (a member, or a bootstrap address whose peer is not known yet).
   * The transport must call `membership.opened(link)` before it delivers any frame of the link.
   */
  dial(target: { id?: string; addrs: string[] }): Promise<Link>;
}

export interface MembershipOptions {
  self: MemberInfo;
  clock: Clock;
  transport: LinkTransport;
  /** Starting incarnation; the agent passes the wall clock (ms) so a restart outranks its past. */
  incarnation: number;
  random?: () => number;
  targetLinks?: number;
  maxLinks?: number;
  pingIntervalMs?: number;
  linkTimeoutMs?: number;
  suspicionMs?: number;
  /** Full state exchange interval for a fleet of up to 32; scaled up with log2 N beyond. */
  syncIntervalMs?: number;
  /** How long dead and left members are remembered (so stale news cannot revive them). */
  tombstoneMs?: number;
  /** Updates are batched for this long before they are sent. */
  gossipDelayMs?: number;
  /** A member that could not be dialled is not tried again for this long. */
  dialBackoffMs?: number;
  /** Called whenever the live membership changed. */
  onChange?(): void;
  onDebug?(msg: string, detail: Record<string, unknown>): void;
}

interface LinkState {
  link: Link;
  opened: number;
  lastHeard: number;
  lastSent: number;
  queue: MemberUpdate[];
  /** Closed on purpose (a trim, a duplicate, a goodbye): its end says nothing about the peer. */
  graceful: boolean;
}

/** Largest number of updates per gossip frame (frames stay well below the wire's limit). */
const MAX_UPDATES_PER_FRAME = 512;

export class Membership {
  readonly table: MemberTable;
  private incarnation: number;
  private readonly links = new Map<string, LinkState>();
  private readonly dialing = new Set<string>();
  private readonly backoff = new Map<string, number>();
  private tickTimer: Timer | undefined;
  private lastTick: number | undefined;
  private flushTimer: Timer | undefined;
  private nextSync: number;
  private leaving = false;
  private stopped = false;
  private synced = false;
  /** Cut off from every link since the last full exchange: news may have passed it by. */
  private stale = false;
  private readonly o: Required<Omit<MembershipOptions, 'onChange' | 'onDebug' | 'random'>> & Pick<MembershipOptions, 'onChange' | 'onDebug'>;
  private readonly random: () => number;
  /** Messages (frames) sent and received, for the README's cost figures and the simulator. */
  readonly counters = { framesSent: 0, framesReceived: 0, updatesSent: 0 };

  constructor(opts: MembershipOptions) {
    this.o = {
      targetLinks: 6,
      maxLinks: 10,
      // A heartbeat each way every 2 s: 2.5 of them fit in the silence that makes a suspect.
      pingIntervalMs: 2_000,
      linkTimeoutMs: 5_000,
      suspicionMs: 5_000,
      syncIntervalMs: 20_000,
      tombstoneMs: 60_000,
      gossipDelayMs: 20,
      dialBackoffMs: 10_000,
      ...opts,
    };
    this.random = opts.random ?? Math.random;
    this.incarnation = opts.incarnation;
    this.table = new MemberTable(opts.self.id);
    this.nextSync = opts.clock.now() + this.o.syncIntervalMs;
  }

  get selfId(): string {
    return this.o.self.id;
  }

  /** Checks run twice per heartbeat interval, so a heartbeat goes out at most half of one late. */
  private get tickMs(): number {
    return this.o.pingIntervalMs / 2;
  }

  /** This agent as its news. */
  selfUpdate(): MemberUpdate {
    return { ...this.o.self, state: this.leaving ? 'left' : 'alive', incarnation: this.incarnation };
  }

  start(): void {
    const tick = (): void => {
      if (this.stopped) return;
      this.tick();
      this.tickTimer = this.o.clock.setTimeout(tick, this.tickMs);
    };
    this.tickTimer = this.o.clock.setTimeout(tick, this.tickMs);
  }

  /** Joins through an address: a full state exchange with whoever answers there. */
  async join(target: { id?: string; addrs: string[] }): Promise<string> {
    const link = await this.o.transport.dial(target);
    this.send(link.peer, { t: 'hello', member: this.selfUpdate(), join: true });
    return link.peer;
  }

  /**
   * Whether a bootstrap address should be dialled (again): no link, or no full state received
   * yet. A link alone is not enough: a full seed trims a joiner right after its hello, and under
   * load the state it sent first could be lost with the closing stream; judged by links, the
   * joiner's bootstrap round then counted as done, and it waited 30 s for the next, knowing no one.
   */
  needsBootstrap(): boolean {
    return !this.synced || this.links.size === 0;
  }

  /** True once a full state exchange with some member has completed. */
  joined(): boolean {
    return this.synced || this.links.size > 0;
  }

  /** Live members, this agent excluded. */
  members(): Member[] {
    return this.table.live();
  }

  /**
   * `alive`; `suspect` (may yet refute); `dead` (declared so after a suspicion: an inference,
   * which a loaded member refutes when it runs again); `gone` (left, or never heard of).
   */
  liveness(id: string): Liveness {
    if (id === this.o.self.id) return 'alive';
    const state = this.table.get(id)?.state;
    return state === 'alive' || state === 'suspect' || state === 'dead' ? state : 'gone';
  }

  isLive(id: string): boolean {
    if (id === this.o.self.id) return true;
    const m = this.table.get(id);
    return m !== undefined && isLive(m.state);
  }

  /** Peers this agent holds a membership link to. */
  neighbours(): string[] {
    return [...this.links.keys()];
  }

  /** Says goodbye to everyone (flooded), then closes the links. */
  async leave(): Promise<void> {
    if (this.leaving || this.stopped) return;
    this.leaving = true;
    this.broadcast(this.selfUpdate());
    this.flush();
    for (const [peer, state] of this.links) {
      state.graceful = true;
      this.send(peer, { t: 'bye', reason: 'leave' });
    }
    this.stop();
  }

  stop(): void {
    this.stopped = true;
    if (this.tickTimer !== undefined) this.o.clock.clearTimeout(this.tickTimer);
    if (this.flushTimer !== undefined) this.o.clock.clearTimeout(this.flushTimer);
    for (const state of this.links.values()) {
      state.graceful = true;
      state.link.close();
    }
    this.links.clear();
  }

  // ---- transport events ----------------------------------------------------------------------

  /** A link opened (either way). A second link between the same two agents is closed. */
  opened(link: Link): void {
    const now = this.o.clock.now();
    if (this.stopped || link.peer === this.o.self.id) {
      link.close();
      return;
    }
    const existing = this.links.get(link.peer);
    if (existing !== undefined) {
      // Both dialled at once: both sides keep the link dialled by the smaller peer id.
      const dialer = (l: Link): string => (l.outbound ? this.o.self.id : l.peer);
      const keepNew = dialer(link) < dialer(existing.link);
      const loser = keepNew ? existing.link : link;
      this.o.onDebug?.('membership: duplicate link closed', { peer: link.peer });
      loser.send({ t: 'bye', reason: 'trim' });
      this.dropLater(loser);
      if (!keepNew) return;
      this.links.delete(link.peer);
    }
    this.links.set(link.peer, { link, opened: now, lastHeard: now, lastSent: now, queue: [], graceful: false });
  }

  received(link: Link, frame: Frame): void {
    const state = this.links.get(link.peer);
    if (state === undefined || state.link !== link || this.stopped) return;
    this.counters.framesReceived++;
    state.lastHeard = this.o.clock.now();
    switch (frame.t) {
      case 'hello':
        if (frame.member.id !== link.peer) return this.drop(link.peer, 'hello names another member');
        this.learn([frame.member], link.peer, true);
        if (frame.join) this.send(link.peer, { t: 'sync', members: this.snapshot(), reply: true });
        // A seed answers every joiner, and anyone may link to anyone, but each keeps its share.
        if (this.links.size > this.o.maxLinks) this.trim(link.peer);
        return;
      case 'sync':
        this.learn(frame.members, link.peer, false);
        if (!frame.reply) this.send(link.peer, { t: 'sync', members: this.snapshot(), reply: true });
        this.stale = false;
        if (!this.synced) {
          this.synced = true;
          this.fill();
        }
        return;
      case 'gossip':
        this.learn(frame.updates, link.peer, true);
        return;
      case 'ping':
      case 'pong':
        return;
      case 'bye':
        state.graceful = true;
        if (frame.reason === 'leave') {
          const m = this.table.get(link.peer);
          if (m !== undefined) this.learn([{ ...m, state: 'left' }], link.peer, true);
        } else {
          // A full member turned us away: asking it again at once, or the next full one, was a
          // livelock (the last joiners of a fleet dialled and were trimmed thousands of times a
          // minute at rest). It is left alone for a while, and the next tick dials one other.
          this.backoff.set(link.peer, this.o.clock.now() + this.o.dialBackoffMs);
        }
        this.links.delete(link.peer);
        link.close();
        this.o.onChange?.();
        if (frame.reason === 'leave' || this.links.size === 0) this.fill();
        return;
    }
  }

  /** A link ended. Unless it ended on purpose, its peer is suspected. */
  closed(link: Link): void {
    const state = this.links.get(link.peer);
    if (state === undefined || state.link !== link) return;
    this.links.delete(link.peer);
    if (!state.graceful && !this.stopped) this.suspect(link.peer);
    this.fill();
  }

  // ---- the protocol ---------------------------------------------------------------------------

  private snapshot(): MemberUpdate[] {
    return [this.selfUpdate(), ...this.table.all().map(({ since: _since, ...u }) => u)];
  }

  /** Applies news; forwards what was new when `forward`; refutes news of this agent's death. */
  private learn(updates: MemberUpdate[], from: string, forward: boolean): void {
    const now = this.o.clock.now();
    let changed = false;
    for (const u of updates) {
      if (u.id === this.o.self.id) {
        if (u.state !== 'alive' && u.incarnation >= this.incarnation && !this.leaving) {
          this.incarnation = u.incarnation + 1;
          this.o.onDebug?.('membership: refuting', { state: u.state, incarnation: this.incarnation });
          this.broadcast(this.selfUpdate());
        }
        continue;
      }
      if (!this.table.apply(u, now)) continue;
      changed = true;
      if (forward) this.broadcast(u, from);
    }
    if (changed) this.o.onChange?.();
  }

  private suspect(peer: string): void {
    const m = this.table.get(peer);
    if (m === undefined || m.state !== 'alive') return;
    const update: MemberUpdate = { id: m.id, zone: m.zone, addrs: m.addrs, state: 'suspect', incarnation: m.incarnation };
    this.learn([update], this.o.self.id, true);
  }

  private broadcast(update: MemberUpdate, except?: string): void {
    for (const [peer, state] of this.links) if (peer !== except) state.queue.push(update);
    if (this.flushTimer === undefined && !this.stopped) {
      this.flushTimer = this.o.clock.setTimeout(() => {
        this.flushTimer = undefined;
        this.flush();
      }, this.o.gossipDelayMs);
    }
  }

  private flush(): void {
    for (const [peer, state] of this.links) {
      while (state.queue.length > 0) {
        const updates = state.queue.splice(0, MAX_UPDATES_PER_FRAME);
        this.counters.updatesSent += updates.length;
        this.send(peer, { t: 'gossip', updates });
      }
    }
  }

  private send(peer: string, frame: Frame): void {
    const state = this.links.get(peer);
    if (state === undefined) return;
    state.lastSent = this.o.clock.now();
    this.counters.framesSent++;
    state.link.send(frame);
  }

  private tick(): void {
    const now = this.o.clock.now();
    // A tick that runs late means this process had no CPU (a loaded node) and has not yet read
    // what arrived meanwhile: timers run before sockets are polled. That time is not the peers'
    // silence (Lifeguard's lesson: a slow member must not accuse healthy ones). Under load the
    // whole fleet once suspected and declared dead one another's elected fetchers, and each
    // agent then fetched the blob from the origin itself.
    const late = this.lastTick === undefined ? 0 : Math.max(0, now - this.lastTick - this.tickMs);
    this.lastTick = now;
    for (const [peer, state] of [...this.links]) {
      state.lastHeard = Math.min(now, state.lastHeard + late);
      if (now - state.lastHeard > this.o.linkTimeoutMs) {
        this.o.onDebug?.('membership: link silent, peer suspected', { peer, silentMs: Math.round(now - state.lastHeard) });
        // Said, so that a peer that was only slow learns it was dropped rather than suspecting us.
        this.send(peer, { t: 'bye', reason: 'trim' });
        this.links.delete(peer);
        state.link.close();
        this.suspect(peer);
      } else if (now - state.lastSent >= this.o.pingIntervalMs) {
        this.send(peer, { t: 'ping' });
      }
    }
    const expired = this.table.suspectsSince(now - this.o.suspicionMs - late);
    if (expired.length > 0) {
      this.learn(
        expired.map(({ since: _since, ...m }) => ({ ...m, state: 'dead' as const })),
        this.o.self.id,
        true,
      );
    }
    this.table.sweep(now - this.o.tombstoneMs);
    for (const [peer, until] of this.backoff) if (until <= now) this.backoff.delete(peer);
    if (this.links.size > this.o.maxLinks) this.trim();
    // Linked already: news reaches this agent, so more links can come one per tick.
    this.fill(this.links.size > 0 ? 1 : Infinity);
    if (now >= this.nextSync && this.links.size > 0) {
      const peers = [...this.links.keys()];
      const peer = peers[Math.floor(this.random() * peers.length)]!;
      this.send(peer, { t: 'sync', members: this.snapshot(), reply: false });
      this.nextSync = now + this.o.syncIntervalMs * syncScale(this.table.live().length + 1);
    }
  }

  /** Dials random members until the link target is met, half of them in this agent's zone. */
  private fill(atMost = Infinity): void {
    if (this.stopped || this.leaving) return;
    if (this.links.size === 0 && this.synced) this.stale = true;
    let wanted = Math.min(atMost, this.o.targetLinks - this.links.size - this.dialing.size);
    if (wanted <= 0) return;
    const candidates = this.table.live().filter((m) => !this.links.has(m.id) && !this.dialing.has(m.id) && !this.backoff.has(m.id) && m.addrs.length > 0);
    const zone = this.o.self.zone;
    const linkedInZone = [...this.links.keys()].filter((p) => this.table.get(p)?.zone === zone).length;
    const local = shuffle(candidates.filter((m) => m.zone === zone), this.random);
    const remote = shuffle(candidates.filter((m) => m.zone !== zone), this.random);
    const picks: Member[] = [];
    let localWanted = Math.max(0, Math.ceil(this.o.targetLinks / 2) - linkedInZone);
    while (wanted > 0 && (local.length > 0 || remote.length > 0)) {
      const fromLocal = local.length > 0 && (localWanted > 0 || remote.length === 0);
      picks.push((fromLocal ? local : remote).shift()!);
      if (fromLocal) localWanted--;
      wanted--;
    }
    for (const m of picks) void this.link(m);
  }

  private async link(m: Member): Promise<void> {
    this.dialing.add(m.id);
    try {
      const link = await this.o.transport.dial({ id: m.id, addrs: m.addrs });
      // An agent that was cut off asks its new neighbour for the whole state, not just news.
      this.send(link.peer, { t: 'hello', member: this.selfUpdate(), join: !this.synced || this.stale });
    } catch (err) {
      this.backoff.set(m.id, this.o.clock.now() + this.o.dialBackoffMs);
      this.o.onDebug?.('membership: dial failed', { peer: m.id, err: (err as Error).message });
    } finally {
      this.dialing.delete(m.id);
    }
  }

  /** Closes links beyond maxLinks (the newest links this agent did not ask for go first), or `peer`'s. */
  private trim(peer?: string): void {
    const victims = peer !== undefined ? [peer] : [...this.links.entries()].sort((a, b) => b[1].opened - a[1].opened).slice(0, this.links.size - this.o.maxLinks).map(([p]) => p);
    for (const p of victims) {
      const state = this.links.get(p);
      if (state === undefined) continue;
      this.send(p, { t: 'bye', reason: 'trim' });
      state.graceful = true;
      this.links.delete(p);
      this.dropLater(state.link);
    }
  }

  private drop(peer: string, why: string): void {
    const state = this.links.get(peer);
    this.o.onDebug?.('membership: link dropped', { peer, why });
    if (state === undefined) return;
    state.graceful = true;
    this.links.delete(peer);
    state.link.close();
  }

  /** Closes a link once what was just sent on it has had a moment to leave. */
  private dropLater(link: Link): void {
    this.o.clock.setTimeout(() => link.close(), 1_000);
  }
}

/** memberlist's push-pull scale: 1 up to 32 members, then +1 per doubling. */
export function syncScale(n: number): number {
  return n <= 32 ? 1 : Math.ceil(Math.log2(n) - Math.log2(32)) + 1;
}

function shuffle<T>(items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}
