import { describe, expect, it } from 'vitest';
import { HolderSearch, type Observation, type SearchContext } from '../../src/fetch/holder-search.js';

// Ranked as every agent of the zone ranks them for one blob: f1 first, then f2, then self.
const ctx: SearchContext = { self: 'me', ranked: ['f1', 'f2', 'me', 'x'], fetchers: 1, askedToFetch: false, fetcherTimeoutMs: 10_000, fetchWaitMs: 60_000, maxFailovers: 2 };
const seen = (o: Partial<Observation> = {}): Observation => ({
  now: 0,
  local: [],
  remote: [],
  pending: [],
  refused: [],
  unreachable: [],
  consulted: true,
  liveness: () => 'alive',
  ...o,
});

describe('HolderSearch: the planner decision, one transition at a time', () => {
  it('starts asking, relying on the first-ranked member', () => {
    const s = new HolderSearch(ctx);
    expect(s.state).toBe('asking');
    expect(s.fetchers()).toEqual(['f1']);
    expect(s.isFetcher).toBe(false);
  });

  it('asking → found: a peer of the zone holds pieces', () => {
    expect(new HolderSearch(ctx).observe(seen({ local: ['p'] }))).toEqual({ state: 'found', holders: ['p'] });
  });

  it('asking → waiting: the fetcher says it is downloading', () => {
    expect(new HolderSearch(ctx).observe(seen({ pending: ['f1'] }))).toEqual({ state: 'waiting', fetchers: ['f1'] });
  });

  it('waiting → origin only after fetchWaitMs of downloading without a piece', () => {
    const s = new HolderSearch(ctx);
    s.observe(seen({ now: 0, pending: ['f1'] }));
    expect(s.observe(seen({ now: 59_999, pending: ['f1'] })).state).toBe('waiting');
    expect(s.observe(seen({ now: 60_000, pending: ['f1'], remote: ['r'] }))).toEqual({ state: 'origin', holders: ['r'], reason: 'fetcher too slow' });
  });

  it('asking → requesting: the fetcher holds nothing and fetches nothing', () => {
    expect(new HolderSearch(ctx).observe(seen({ refused: ['f1'] }))).toEqual({ state: 'requesting', fetchers: ['f1'] });
  });

  it('requesting → waiting: the fetcher accepted', () => {
    const s = new HolderSearch(ctx);
    s.observe(seen({ refused: ['f1'] }));
    expect(s.requestAnswered(5, ['f1'], false)).toEqual({ state: 'waiting', fetchers: ['f1'] });
  });

  it('requesting → asking the next rank: the fetcher declined', () => {
    const s = new HolderSearch(ctx);
    s.observe(seen({ refused: ['f1'] }));
    expect(s.requestAnswered(5, [], false)).toEqual({ state: 'asking', fetchers: ['f2'] });
  });

  it('requesting → retrying: the request got no answer at all', () => {
    const s = new HolderSearch(ctx);
    s.observe(seen({ refused: ['f1'] }));
    expect(s.requestAnswered(5, [], true)).toEqual({ state: 'retrying', fetchers: ['f1'] });
  });

  it('a fetcher that accepted and then says it fetches nothing is failed over', () => {
    const s = new HolderSearch(ctx);
    s.observe(seen({ refused: ['f1'] }));
    s.requestAnswered(5, ['f1'], false);
    expect(s.observe(seen({ now: 10, refused: ['f1'] }))).toEqual({ state: 'asking', fetchers: ['f2'] });
  });

  it('asking → retrying: a live fetcher did not answer (busy, at its connection limit)', () => {
    expect(new HolderSearch(ctx).observe(seen({ now: 100, unreachable: ['f1'] }))).toEqual({ state: 'retrying', fetchers: ['f1'] });
  });

  it('retrying → asking the next rank after fetcherTimeoutMs without any answer from a suspected fetcher, never the origin', () => {
    const s = new HolderSearch(ctx);
    const suspect = { liveness: () => 'suspect' as const };
    expect(s.observe(seen({ now: 9_999, unreachable: ['f1'], ...suspect })).state).toBe('retrying');
    expect(s.observe(seen({ now: 10_000, unreachable: ['f1'], ...suspect }))).toEqual({ state: 'asking', fetchers: ['f2'] });
  });

  it('a fetcher membership holds alive is busy, not gone: it gets three timeouts', () => {
    const s = new HolderSearch(ctx);
    expect(s.observe(seen({ now: 29_999, unreachable: ['f1'] })).state).toBe('retrying');
    expect(s.observe(seen({ now: 30_000, unreachable: ['f1'] }))).toEqual({ state: 'asking', fetchers: ['f2'] });
  });

  it('an answer from the fetcher restarts its timeout', () => {
    const s = new HolderSearch(ctx);
    const suspect = { liveness: () => 'suspect' as const };
    s.observe(seen({ now: 9_000, pending: ['f1'] }));
    expect(s.observe(seen({ now: 18_999, unreachable: ['f1'], ...suspect })).state).toBe('retrying');
    expect(s.observe(seen({ now: 19_000, unreachable: ['f1'], ...suspect })).state).toBe('asking');
  });

  it('a fetcher that said it is downloading and that membership holds alive is never failed over for silence, only after fetchWaitMs', () => {
    // A loaded machine: its long polls time out. Failing it over was one more origin fetch.
    const s = new HolderSearch(ctx);
    s.observe(seen({ now: 1_000, pending: ['f1'] }));
    expect(s.observe(seen({ now: 40_000, unreachable: ['f1'] }))).toEqual({ state: 'retrying', fetchers: ['f1'] });
    expect(s.observe(seen({ now: 60_999, unreachable: ['f1'] })).state).toBe('retrying');
    expect(s.observe(seen({ now: 61_000, unreachable: ['f1'] }))).toEqual({ state: 'origin', holders: [], reason: 'fetcher too slow' });
  });

  it('a fetcher that accepted a request is waited for in the same way', () => {
    const s = new HolderSearch(ctx);
    s.observe(seen({ refused: ['f1'] }));
    s.requestAnswered(5, ['f1'], false);
    expect(s.observe(seen({ now: 45_000, unreachable: ['f1'] })).state).toBe('retrying');
    // Once membership suspects it, the plain timeout counts from its last answer.
    expect(s.observe(seen({ now: 45_001, unreachable: ['f1'], liveness: () => 'suspect' }))).toEqual({ state: 'asking', fetchers: ['f2'] });
  });

  it('a fetcher declared dead is not failed over at once: death is inferred, and a loaded member refutes it', () => {
    const s = new HolderSearch(ctx);
    const dead = { liveness: (id: string) => (id === 'f1' ? ('dead' as const) : ('alive' as const)) };
    s.observe(seen({ now: 1_000, pending: ['f1'] }));
    expect(s.observe(seen({ now: 2_000, unreachable: ['f1'], ...dead })).state).toBe('retrying');
    // The plain timeout from its last answer, as for a suspect.
    expect(s.observe(seen({ now: 11_000, unreachable: ['f1'], ...dead }))).toEqual({ state: 'asking', fetchers: ['f2'] });
  });

  it('retrying → relayed: the fetcher does not answer this agent, but a peer of the zone says it is being fetched', () => {
    // At the fetcher's connection limit: this agent's silence, not the fetcher's.
    const s = new HolderSearch(ctx);
    expect(s.observe(seen({ now: 100, unreachable: ['f1'] })).state).toBe('retrying');
    expect(s.observe(seen({ now: 200, unreachable: ['f1'], pending: ['n'] }))).toEqual({ state: 'relayed', fetchers: ['f1'], relays: ['n'] });
  });

  it('relayed: no failover for the fetcher\'s silence while relays speak for it, even a suspected one', () => {
    const s = new HolderSearch(ctx);
    const suspect = { liveness: () => 'suspect' as const };
    for (let t = 0; t <= 50_000; t += 5_000) expect(s.observe(seen({ now: t, unreachable: ['f1'], pending: ['n'], ...suspect })).state).toBe('relayed');
  });

  it('relayed → retrying when the relays fall silent, the fetcher timeout counting from their last word', () => {
    const s = new HolderSearch(ctx);
    const suspect = { liveness: () => 'suspect' as const };
    s.observe(seen({ now: 20_000, unreachable: ['f1'], pending: ['n'], ...suspect }));
    expect(s.observe(seen({ now: 29_999, unreachable: ['f1', 'n'], ...suspect })).state).toBe('retrying');
    expect(s.observe(seen({ now: 30_000, unreachable: ['f1', 'n'], ...suspect }))).toEqual({ state: 'asking', fetchers: ['f2'] });
  });

  it('relayed → origin after fetchWaitMs of relays without a piece', () => {
    const s = new HolderSearch(ctx);
    s.observe(seen({ now: 1_000, unreachable: ['f1'], pending: ['n'] }));
    expect(s.observe(seen({ now: 60_999, unreachable: ['f1'], pending: ['n'] })).state).toBe('relayed');
    expect(s.observe(seen({ now: 61_000, unreachable: ['f1'], pending: ['n'] }))).toEqual({ state: 'origin', holders: [], reason: 'fetcher too slow' });
  });

  it('the fetcher\'s own word outranks a relay: one that fetches nothing is asked to', () => {
    expect(new HolderSearch(ctx).observe(seen({ refused: ['f1'], pending: ['n'] }))).toEqual({ state: 'requesting', fetchers: ['f1'] });
  });

  it('a fetcher that left membership is failed over at once', () => {
    expect(new HolderSearch(ctx).observe(seen({ now: 1, unreachable: ['f1'], liveness: (id) => (id === 'f1' ? 'gone' : 'alive') }))).toEqual({ state: 'asking', fetchers: ['f2'] });
  });

  it('when the ranks reach this agent it becomes the fetcher: the DHT first, then the origin', () => {
    const s = new HolderSearch(ctx);
    s.observe(seen({ refused: ['f1'] }));
    s.requestAnswered(1, [], false); // f2 next
    s.observe(seen({ refused: ['f2'] }));
    expect(s.requestAnswered(2, [], false)).toEqual({ state: 'asking', fetchers: [] });
    expect(s.isFetcher).toBe(true);
    expect(s.observe(seen({ consulted: false })).state).toBe('asking');
    expect(s.observe(seen({ consulted: true, remote: ['r'] }))).toEqual({ state: 'origin', holders: ['r'], reason: 'failed over to this agent' });
  });

  it('after maxFailovers ranks failed, it fetches from the origin itself', () => {
    const s = new HolderSearch({ ...ctx, ranked: ['f1', 'f2', 'f3', 'me'] });
    for (const [i, f] of ['f1', 'f2'].entries()) {
      s.observe(seen({ refused: [f] }));
      s.requestAnswered(i, [], false);
    }
    s.observe(seen({ refused: ['f3'] }));
    expect(s.requestAnswered(3, [], false)).toEqual({ state: 'origin', holders: [], reason: 'fetcher declined; no fetcher left to try' });
  });

  it('at the last rank, a live fetcher that does not answer is waited for, not replaced by the origin, until fetchWaitMs', () => {
    // Each rank silent for three timeouts (alive: at its connection limit, loaded).
    const longer = new HolderSearch({ ...ctx, ranked: ['f1', 'f2', 'f3', 'me'], fetchWaitMs: 600_000 });
    expect(longer.observe(seen({ now: 30_000, unreachable: ['f1'] }))).toEqual({ state: 'asking', fetchers: ['f2'] });
    expect(longer.observe(seen({ now: 60_000, unreachable: ['f2'] }))).toEqual({ state: 'asking', fetchers: ['f3'] });
    expect(longer.observe(seen({ now: 90_000, unreachable: ['f3'] }))).toEqual({ state: 'retrying', fetchers: ['f3'] });
    expect(longer.observe(seen({ now: 599_999, unreachable: ['f3'] })).state).toBe('retrying');
    expect(longer.observe(seen({ now: 600_000, unreachable: ['f3'] }))).toEqual({ state: 'origin', holders: [], reason: 'fetchers too slow' });
    // One membership suspects is waited for too (under load suspicion is common, and mostly
    // refuted); one it declared dead is given up on after the plain timeout.
    const doubted = new HolderSearch({ ...ctx, ranked: ['f1', 'f2', 'f3', 'me'], fetchWaitMs: 600_000 });
    doubted.observe(seen({ now: 30_000, unreachable: ['f1'] }));
    doubted.observe(seen({ now: 60_000, unreachable: ['f2'] }));
    expect(doubted.observe(seen({ now: 70_000, unreachable: ['f3'], liveness: () => 'suspect' })).state).toBe('retrying');
    expect(doubted.observe(seen({ now: 75_000, unreachable: ['f3'], liveness: () => 'dead' }))).toEqual({
      state: 'origin',
      holders: [],
      reason: 'fetcher did not answer; no fetcher left to try',
    });
  });

  it('the elected fetcher asks the DHT before the origin', () => {
    const s = new HolderSearch({ ...ctx, ranked: ['me', 'f1'] });
    expect(s.isFetcher).toBe(true);
    expect(s.observe(seen({ consulted: false })).state).toBe('asking');
    expect(s.observe(seen({ consulted: true })).state).toBe('origin');
  });

  it('an agent a peer asked to fetch is a fetcher whatever its rank', () => {
    const s = new HolderSearch({ ...ctx, askedToFetch: true });
    expect(s.observe(seen())).toEqual({ state: 'origin', holders: [], reason: 'asked by a peer' });
  });

  it('an agent alone in its zone is its fetcher', () => {
    expect(new HolderSearch({ ...ctx, ranked: ['me'] }).isFetcher).toBe(true);
  });
});
