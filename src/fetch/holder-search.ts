import type { Liveness } from '../p2p/membership/membership.js';

/*
 * Where a local miss gets its bytes, as a state machine. The planner does the I/O (asks peers
 * what they hold, asks the DHT, asks a fetcher to fetch) and feeds what it saw to `observe`;
 * this module alone decides. Its states:
 *
 *   asking      asking the zone's fetcher(s) and known providers what they hold
 *   requesting  the fetcher holds nothing and fetches nothing: ask it to fetch from the origin
 *   waiting     a fetcher is downloading: long-poll it until it holds pieces (up to fetchWaitMs)
 *   retrying    the fetcher is a live member but did not answer (busy, at its connection
 *               limit, slow): keep trying with backoff, looking up other holders meanwhile
 *   relayed     the fetcher is out of this agent's reach, but peers of the zone say the blob
 *               is being fetched (they heard it from the fetcher, or are downloading it): long-
 *               poll them (up to fetchWaitMs); they hold pieces soon
 *   found       peers of this zone hold pieces: take them from there            (final)
 *   origin      fetch it oneself (with other zones' holders, if any, as sources) (final)
 *
 * No stampede: an agent goes to the origin itself only when it is the fetcher (elected, or
 * asked by a peer), when the fetchers of `maxFailovers + 1` consecutive ranks failed it (left,
 * refused, or silent while membership doubts them), or after `fetchWaitMs`. A live fetcher's
 * silence moves the zone to the next rank, never past the last one (nor a suspected one's: only
 * a fetcher membership declares dead or gone sends the last rank to the origin).
 * A fetcher that does not answer is failed over only after `fetcherTimeoutMs` without any
 * answer (three times that while membership holds it alive: it is busy, not gone), and to the
 * next-ranked member of the same deterministic order every agent of the zone computes, so a
 * slow fetcher costs at most one extra origin fetch, not one per waiting agent. One that said
 * it is downloading is not failed over for silence at all while membership holds it alive (only
 * after `fetchWaitMs`). A fetcher that left membership is failed over at once.
 */

/** How many fetcher timeouts a fetcher that membership holds alive may go without answering. */
export const ALIVE_PATIENCE = 3;

export type SearchStateName = 'asking' | 'requesting' | 'waiting' | 'retrying' | 'relayed' | 'found' | 'origin';

export interface SearchContext {
  self: string;
  /** The zone's live members, this agent included, closest to the blob first. */
  ranked: string[];
  /** p2p.originFetchers: how many of the first ranks fetch from the origin. */
  fetchers: number;
  /** A peer asked this agent to fetch the blob: it is a fetcher whatever the ranking says. */
  askedToFetch: boolean;
  fetcherTimeoutMs: number;
  fetchWaitMs: number;
  /** Ranks given up on before the agent fetches itself. */
  maxFailovers: number;
}

/** What one round of asking saw. */
export interface Observation {
  /** ms since the search began. */
  now: number;
  /** Peers of this zone that hold verified pieces. */
  local: string[];
  /** Peers of other zones that hold verified pieces. */
  remote: string[];
  /**
   * Peers of this zone that said the blob is being fetched: a fetcher downloading it, or any
   * other peer that heard so from its fetcher or is downloading it itself (a relay).
   */
  pending: string[];
  /** Peers that answered that they neither hold nor fetch it. */
  refused: string[];
  /** Peers asked that gave no answer. */
  unreachable: string[];
  /** Whether the DHT has been asked for providers yet. */
  consulted: boolean;
  /** What membership says of a peer now. */
  liveness(peer: string): Liveness;
}

export type Step =
  | { state: 'found'; holders: string[] }
  | { state: 'origin'; holders: string[]; reason: string }
  | { state: 'requesting'; fetchers: string[] }
  | { state: 'asking' | 'waiting' | 'retrying'; fetchers: string[] }
  | { state: 'relayed'; fetchers: string[]; relays: string[] };

export class HolderSearch {
  private current: SearchStateName = 'asking';
  private rank = 0;
  private requested = false;
  /** When the current fetchers last answered at all (ms since start). */
  private heard = 0;
  private waitingSince: number | undefined;
  /** When relays first spoke for the fetchers (ms since start). */
  private relayedSince: number | undefined;

  constructor(private readonly ctx: SearchContext) {}

  /** How many ranks of fetchers were given up on (diagnostics). */
  get failovers(): number {
    return this.rank;
  }

  get state(): SearchStateName {
    return this.current;
  }

  /** True when this agent fetches the blob from the origin itself (after asking for holders). */
  get isFetcher(): boolean {
    return this.ctx.askedToFetch || this.targets().includes(this.ctx.self) || this.targets().length === 0;
  }

  /** The fetchers relied on now (never this agent). */
  fetchers(): string[] {
    return this.targets().filter((id) => id !== this.ctx.self);
  }

  /** Feeds one round of answers; returns the state entered and whom to deal with next. */
  observe(o: Observation): Step {
    if (o.local.length > 0) return this.enter({ state: 'found', holders: o.local });
    if (this.isFetcher) {
      // A fetcher asks the DHT once before the origin: another zone may hold it already.
      if (!o.consulted) return this.enter({ state: 'asking', fetchers: this.fetchers() });
      return this.enter({ state: 'origin', holders: o.remote, reason: this.fetcherReason() });
    }
    const fetchers = this.fetchers();
    // A fetcher that left the fleet is replaced at once: every agent sees the same ranking. One
    // declared dead gets the plain timeout below instead: death is an inference, and under load
    // members declared each other dead by the dozen and refuted it seconds later.
    if (fetchers.every((f) => o.liveness(f) === 'gone')) return this.failover(o, 'fetcher left');
    const answered = fetchers.filter((f) => o.pending.includes(f) || o.refused.includes(f));
    if (answered.length > 0) this.heard = o.now;
    if (fetchers.some((f) => o.pending.includes(f))) {
      this.waitingSince ??= o.now;
      return this.wait(o, this.waitingSince, 'waiting', 'fetcher too slow');
    }
    if (fetchers.every((f) => o.refused.includes(f))) {
      // It holds nothing and fetches nothing: ask it to, once per rank; then it is trusted to say.
      if (!this.requested) return this.enter({ state: 'requesting', fetchers });
      return this.failover(o, 'fetcher stopped fetching');
    }
    // Peers of the zone say it is being fetched while the fetchers do not answer this agent: at
    // a fetcher's connection limit a third of its zone could not reach it, and each of those
    // once failed it over for silence (at 64 agents, every blob of a zone fetched two or three
    // times). The silence is this agent's, not the fetcher's: wait for the relays, which hold
    // pieces soon. Only peers that heard the fetcher themselves (or download it) relay, so
    // relays cannot keep each other waiting, and it ends at fetchWaitMs.
    const relays = o.pending.filter((p) => !fetchers.includes(p) && p !== this.ctx.self);
    if (answered.length === 0 && relays.length > 0) {
      this.heard = o.now;
      this.relayedSince ??= o.now;
      if (o.now - this.relayedSince >= this.ctx.fetchWaitMs) return this.enter({ state: 'origin', holders: o.remote, reason: 'fetcher too slow' });
      return this.enter({ state: 'relayed', fetchers, relays });
    }
    const alive = fetchers.some((f) => o.liveness(f) === 'alive');
    // It said it is downloading, and membership still hears from it: an unanswered poll means a
    // loaded peer, not a lost one. Failing it over here was the stampede under load (each
    // failover is one more origin fetch of the blob); its death shows in membership instead.
    if (this.waitingSince !== undefined && alive) return this.wait(o, this.waitingSince, 'retrying', 'fetcher too slow');
    // A fetcher membership holds alive is busy (slow, at its connection limit), not gone: it
    // gets three times as long; a suspected one the plain timeout.
    if (o.now - this.heard >= this.ctx.fetcherTimeoutMs * (alive ? ALIVE_PATIENCE : 1)) {
      // At the last rank a live fetcher that does not answer is at its connection limit or
      // loaded, like every fetcher of a zone in a rollout: going to the origin oneself then made
      // each waiting agent an origin client (277 of 64 agents' fallbacks in bench:fleet). It is
      // waited for, while other holders are sought, up to fetchWaitMs. A suspected one too:
      // under load suspicion is common and mostly refuted; one that is really gone is declared
      // dead within the suspicion time, and then the origin it is.
      if (this.rank >= this.ctx.maxFailovers && fetchers.some((f) => ['alive', 'suspect'].includes(o.liveness(f)))) return this.wait(o, 0, 'retrying', 'fetchers too slow');
      return this.failover(o, 'fetcher did not answer');
    }
    return this.enter({ state: 'retrying', fetchers });
  }

  /** The outcome of asking the fetchers to fetch. `failed`: no answer at all. */
  requestAnswered(now: number, accepted: string[], failed: boolean): Step {
    this.requested = true;
    if (accepted.length > 0) {
      this.heard = now;
      this.waitingSince = now;
      return this.enter({ state: 'waiting', fetchers: this.fetchers() });
    }
    if (failed) return this.enter({ state: 'retrying', fetchers: this.fetchers() });
    return this.nextRank(now, 'fetcher declined');
  }

  /** Goes on waiting for the fetchers, in `state`, until fetchWaitMs after `since`; then the origin. */
  private wait(o: Observation, since: number, state: 'waiting' | 'retrying', reason: string): Step {
    if (o.now - since >= this.ctx.fetchWaitMs) return this.enter({ state: 'origin', holders: o.remote, reason });
    return this.enter({ state, fetchers: this.fetchers() });
  }

  private failover(o: Observation, reason: string): Step {
    const step = this.nextRank(o.now, reason);
    return step.state === 'origin' ? { ...step, holders: o.remote } : step;
  }

  private nextRank(now: number, reason: string): Step {
    if (this.rank >= this.ctx.maxFailovers) return this.enter({ state: 'origin', holders: [], reason: `${reason}; no fetcher left to try` });
    this.rank++;
    this.requested = false;
    this.heard = now;
    this.waitingSince = undefined;
    this.relayedSince = undefined;
    // If this agent is next, the next observation makes it the fetcher (after the DHT's say).
    return this.enter({ state: 'asking', fetchers: this.fetchers() });
  }

  /** Why this agent fetches: 'elected' is the rule; the others are fallbacks worth counting. */
  private fetcherReason(): string {
    if (this.ctx.ranked.slice(0, this.ctx.fetchers).includes(this.ctx.self)) return 'elected';
    if (this.rank > 0 && this.targets().includes(this.ctx.self)) return 'failed over to this agent';
    return this.ctx.askedToFetch ? 'asked by a peer' : 'elected';
  }

  private targets(): string[] {
    return this.ctx.ranked.slice(this.rank, this.rank + this.ctx.fetchers);
  }

  private enter(step: Step): Step {
    this.current = step.state;
    return step;
  }
}
