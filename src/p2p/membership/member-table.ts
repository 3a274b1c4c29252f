/**
 * What one agent believes about every agent of the fleet, with SWIM's precedence: a higher
 * incarnation wins, and at the same incarnation alive < suspect < dead < left. Only the member
 * itself raises its incarnation (to refute a suspicion, or when it starts: incarnations start at
 * the wall clock, so a restarted agent's news outranks the tombstone of its previous run).
 */

export type MemberState = 'alive' | 'suspect' | 'dead' | 'left';

export interface MemberInfo {
  id: string;
  zone: string;
  /** Multiaddrs it listens on, each ending in /p2p/<id>, so an agent can dial it on demand. */
  addrs: string[];
}

/** One piece of news about a member, as gossiped. */
export interface MemberUpdate extends MemberInfo {
  state: MemberState;
  incarnation: number;
}

export interface Member extends MemberUpdate {
  /** When this agent took the current state in (its own clock, ms). */
  since: number;
}

const RANK: Record<MemberState, number> = { alive: 0, suspect: 1, dead: 2, left: 3 };

/** Whether `next` replaces what is known (`current`) under SWIM's precedence. */
export function supersedes(next: Pick<MemberUpdate, 'state' | 'incarnation'>, current: Pick<MemberUpdate, 'state' | 'incarnation'> | undefined): boolean {
  if (current === undefined) return true;
  if (next.incarnation !== current.incarnation) return next.incarnation > current.incarnation;
  return RANK[next.state] > RANK[current.state];
}

/** Alive and suspect members take part (a suspect may refute); dead and left ones do not. */
export function isLive(state: MemberState): boolean {
  return state === 'alive' || state === 'suspect';
}

export class MemberTable {
  private readonly members = new Map<string, Member>();

  constructor(private readonly selfId: string) {}

  get(id: string): Member | undefined {
    return this.members.get(id);
  }

  /** Applies news about another member; true when it changed what this agent believes. */
  apply(update: MemberUpdate, now: number): boolean {
    if (update.id === this.selfId) return false;
    const current = this.members.get(update.id);
    if (!supersedes(update, current)) return false;
    // A dead member's addresses are kept from what was known: news of a death may carry none.
    const addrs = update.addrs.length > 0 || current === undefined ? update.addrs : current.addrs;
    this.members.set(update.id, { ...update, addrs, since: now });
    return true;
  }

  /** Every live member but this agent. */
  live(): Member[] {
    return [...this.members.values()].filter((m) => isLive(m.state));
  }

  /** Every entry, dead and left ones included (for a full state exchange). */
  all(): Member[] {
    return [...this.members.values()];
  }

  /** Suspects whose suspicion began before `before`. */
  suspectsSince(before: number): Member[] {
    return [...this.members.values()].filter((m) => m.state === 'suspect' && m.since <= before);
  }

  /** Forgets dead and left members whose tombstones are older than `before`. */
  sweep(before: number): void {
    for (const [id, m] of this.members) if (!isLive(m.state) && m.since <= before) this.members.delete(id);
  }
}
