import { describe, expect, it } from 'vitest';
import { supersedes } from '../../src/p2p/membership/member-table.js';
import { parseFrame, encodeFrame } from '../../src/p2p/membership/member-wire.js';
import type { Frame } from '../../src/p2p/membership/membership.js';
import { MemberNet } from '../helpers/member-net.js';

const opts = { targetLinks: 4, maxLinks: 6, pingIntervalMs: 1_000, linkTimeoutMs: 5_000, suspicionMs: 5_000 };

/** `n` agents in `zones` zones, each given the first one's address, joining 50 ms apart. */
async function fleet(n: number, zones = 2, options: ConstructorParameters<typeof MemberNet>[1] = opts): Promise<MemberNet> {
  const net = new MemberNet(1, options);
  for (let i = 0; i < n; i++) {
    const m = net.add(`a${String(i).padStart(3, '0')}`, `z${i % zones}`);
    if (i > 0) void m.join({ addrs: ['/mem/a000'] });
    await net.clock.advance(50);
  }
  return net;
}

/** The type of every frame delivered from now on. */
function recordFrames(net: MemberNet): string[] {
  const types: string[] = [];
  const deliver = net.deliver.bind(net);
  net.deliver = (link, frame) => {
    types.push(frame.t);
    deliver(link, frame);
  };
  return types;
}

function liveViews(net: MemberNet): number[] {
  return [...net.nodes.entries()].filter(([, n]) => n.up).map(([, n]) => n.membership.members().length);
}

describe('membership: SWIM-style over a bounded overlay (virtual time, modelled links)', () => {
  it('60 agents bootstrapped from one address each learn all 59 others within a second, with bounded links', async () => {
    const net = await fleet(60);
    await net.clock.advance(1_000);
    expect(liveViews(net)).toEqual(new Array(60).fill(59));
    for (const id of net.nodes.keys()) {
      expect(net.linksOf(id)).toBeGreaterThanOrEqual(1);
      expect(net.linksOf(id)).toBeLessThanOrEqual(opts.maxLinks);
    }
    // Zones are learnt with the members.
    expect(net.get('a001').members().filter((m) => m.zone === 'z1')).toHaveLength(29);
  });

  it('with the default heartbeat, an idle link carries one one-way ping each way every 2 s, never an answer, and no one is suspected', async () => {
    const net = await fleet(12, 2, { targetLinks: 4, maxLinks: 6 });
    await net.clock.advance(5_000);
    const types = recordFrames(net);
    const links = [...net.nodes.keys()].reduce((sum, id) => sum + net.linksOf(id), 0) / 2;
    await net.clock.advance(60_000);
    const pings = types.filter((t) => t === 'ping').length;
    // 30 heartbeats per link direction in 60 s (a ping and its pong each second made 120 per link).
    expect(pings).toBeGreaterThanOrEqual(links * 2 * 28);
    expect(pings).toBeLessThanOrEqual(links * 2 * 31);
    expect(types).not.toContain('pong');
    expect(types).not.toContain('gossip'); // nothing changed: no one was suspected
    expect(liveViews(net)).toEqual(new Array(12).fill(11));
  });

  it('a killed agent is suspected, then forgotten after the suspicion time, not before', async () => {
    const net = await fleet(30);
    await net.clock.advance(2_000);
    net.kill('a007');
    // Its links closed: suspected within a moment, still counted live while it may refute.
    await net.clock.advance(opts.suspicionMs - 500);
    const others = [...net.nodes.keys()].filter((id) => id !== 'a007');
    for (const id of others) expect(net.get(id).isLive('a007')).toBe(true);
    await net.clock.advance(3_000);
    for (const id of others) expect(net.get(id).isLive('a007')).toBe(false);
    expect(liveViews(net)).toEqual(new Array(29).fill(28));
  });

  it('a hung agent (links open, silent) is forgotten within link timeout + suspicion', async () => {
    const net = await fleet(20);
    await net.clock.advance(2_000);
    net.hang('a011');
    await net.clock.advance(opts.linkTimeoutMs + opts.suspicionMs + 3_000);
    for (const id of net.nodes.keys()) if (id !== 'a011') expect(net.get(id).isLive('a011')).toBe(false);
    // Declared dead, which the planner tells apart from a goodbye (it fails over a leaver at once).
    for (const id of net.nodes.keys()) if (id !== 'a011') expect(net.get(id).liveness('a011')).toBe('dead');
  });

  it('an agent starved of CPU for longer than the link timeout accuses none of its neighbours, and is not declared dead', async () => {
    const net = await fleet(20);
    await net.clock.advance(3_000);
    const accused = new Set<string>();
    const deliver = net.deliver.bind(net);
    net.deliver = (link, frame) => {
      if (frame.t === 'gossip') for (const u of frame.updates) if (u.state === 'suspect' || u.state === 'dead') accused.add(u.id);
      deliver(link, frame);
    };
    net.starve('a007', 6_000);
    await net.clock.advance(6_000 + opts.suspicionMs + 3_000);
    // Its neighbours rightly suspected it (it sent nothing for 6 s), and it refuted. Before, its
    // own late tick, run before it read the heartbeats queued meanwhile, found every link silent
    // and suspected all of them; and a neighbour that dropped the silent link without a word
    // was suspected for that too.
    expect([...accused]).toEqual(['a007']);
    for (const id of net.nodes.keys()) expect(net.get(id).liveness('a007')).toBe('alive');
  });

  it('an agent that leaves is forgotten at once, without suspicion', async () => {
    const net = await fleet(20);
    await net.clock.advance(2_000);
    await net.get('a005').leave();
    net.nodes.get('a005')!.up = false;
    await net.clock.advance(200);
    for (const id of net.nodes.keys()) if (id !== 'a005') expect(net.get(id).table.get('a005')?.state).toBe('left');
  });

  it('a false suspicion is refuted: the suspect raises its incarnation and stays a member', async () => {
    const net = await fleet(20);
    await net.clock.advance(2_000);
    const victim = net.get('a003');
    const before = victim.selfUpdate().incarnation;
    // One neighbour wrongly suspects it (its connection was pruned, a reset) and says so.
    const neighbour = net.get(net.get('a003').neighbours()[0]!);
    neighbour.table.apply({ ...victim.selfUpdate(), state: 'suspect' }, net.clock.now());
    (neighbour as unknown as { broadcast(u: unknown): void }).broadcast({ ...victim.selfUpdate(), state: 'suspect' });
    await net.clock.advance(opts.suspicionMs + 2_000);
    expect(victim.selfUpdate().incarnation).toBeGreaterThan(before);
    for (const id of net.nodes.keys()) if (id !== 'a003') expect(net.get(id).table.get('a003')?.state).toBe('alive');
  });

  it('a restarted agent (same id, a later incarnation) comes back after it was declared dead', async () => {
    const net = await fleet(10);
    await net.clock.advance(2_000);
    net.kill('a004');
    await net.clock.advance(15_000);
    expect(net.get('a001').isLive('a004')).toBe(false);
    const again = net.add('a004', 'z0', 2);
    void again.join({ addrs: ['/mem/a000'] });
    await net.clock.advance(1_000);
    for (const id of net.nodes.keys()) if (id !== 'a004') expect(net.get(id).isLive('a004')).toBe(true);
    expect(again.members()).toHaveLength(9);
  });

  it('a joiner linked to its seed still wants the bootstrap address until the seed\'s full state arrives', async () => {
    const net = await fleet(4);
    await net.clock.advance(2_000);
    // The seed's answer to the next joiner's hello is lost (a trimmed, aborted stream under load).
    const deliver = net.deliver.bind(net);
    net.deliver = (link, frame) => {
      if (frame.t !== 'sync') deliver(link, frame);
    };
    const joiner = net.add('late', 'z0');
    void joiner.join({ addrs: ['/mem/a000'] });
    await net.clock.advance(100);
    expect(joiner.neighbours()).toEqual(['a000']);
    expect(joiner.members()).toEqual([]);
    expect(joiner.needsBootstrap()).toBe(true);
    net.deliver = deliver;
    void joiner.join({ addrs: ['/mem/a000'] });
    await net.clock.advance(100);
    expect(joiner.members().length).toBe(4);
    expect(joiner.needsBootstrap()).toBe(false);
  });

  it('an agent cut off from every link asks its next neighbour for the whole state, so it misses nothing', async () => {
    const net = await fleet(20);
    await net.clock.advance(2_000);
    // a005 loses every link and cannot dial for a moment; meanwhile an agent joins.
    const a005 = net.get('a005');
    const dial = (a005 as unknown as { o: { transport: { dial: unknown } } }).o.transport;
    const real = dial.dial;
    dial.dial = async () => {
      throw new Error('unreachable for now');
    };
    net.isolate('a005');
    void net.add('late', 'z0').join({ addrs: ['/mem/a000'] });
    await net.clock.advance(500);
    expect(a005.isLive('late')).toBe(false);
    dial.dial = real;
    // Well within one anti-entropy interval (20 s): the first new link carries a full exchange.
    await net.clock.advance(12_000);
    expect(a005.isLive('late')).toBe(true);
  });

  it('an agent that joins later is learnt by everyone', async () => {
    const net = await fleet(30);
    await net.clock.advance(2_000);
    void net.add('late', 'z1').join({ addrs: ['/mem/a017'] });
    await net.clock.advance(500);
    for (const id of net.nodes.keys()) if (id !== 'late') expect(net.get(id).isLive('late')).toBe(true);
    expect(net.get('late').members()).toHaveLength(30);
  });

  it.each([
    [16, 3, 5],
    [64, 6, 10],
  ])('at rest, %i agents with %i–%i links each dial and trim nothing: the last joiners do not livelock against full members', async (n, targetLinks, maxLinks) => {
    const net = await fleet(n, 2, { targetLinks, maxLinks });
    await net.clock.advance(30_000);
    const types = recordFrames(net);
    await net.clock.advance(60_000);
    // Before: the last joiners, below their target, dialled full members that trimmed them at
    // once, ≈40,000 hellos and goodbyes a minute.
    expect(types.filter((t) => t === 'hello' || t === 'bye')).toEqual([]);
    expect(liveViews(net)).toEqual(new Array(n).fill(n - 1));
    for (const id of net.nodes.keys()) {
      expect(net.linksOf(id)).toBeGreaterThanOrEqual(1);
      expect(net.linksOf(id)).toBeLessThanOrEqual(maxLinks);
    }
  });
});

describe('membership news precedence and frames', () => {
  it('a higher incarnation wins; at the same one alive < suspect < dead < left', () => {
    expect(supersedes({ state: 'alive', incarnation: 2 }, { state: 'dead', incarnation: 1 })).toBe(true);
    expect(supersedes({ state: 'alive', incarnation: 1 }, { state: 'suspect', incarnation: 1 })).toBe(false);
    expect(supersedes({ state: 'suspect', incarnation: 1 }, { state: 'alive', incarnation: 1 })).toBe(true);
    expect(supersedes({ state: 'dead', incarnation: 1 }, { state: 'suspect', incarnation: 1 })).toBe(true);
    expect(supersedes({ state: 'left', incarnation: 1 }, { state: 'dead', incarnation: 1 })).toBe(true);
    expect(supersedes({ state: 'dead', incarnation: 1 }, { state: 'alive', incarnation: 2 })).toBe(false);
  });

  it('frames round-trip; malformed ones are refused field by field', () => {
    const hello: Frame = { t: 'hello', join: true, member: { id: 'p', zone: 'z', addrs: ['/ip4/127.0.0.1/tcp/1/p2p/p'], state: 'alive', incarnation: 5 } };
    const bytes = encodeFrame(hello);
    expect(new DataView(bytes.buffer).getUint32(0)).toBe(bytes.byteLength - 4);
    expect(parseFrame(bytes.subarray(4))).toEqual(hello);
    const enc = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v));
    const member = (hello as Extract<Frame, { t: 'hello' }>).member;
    expect(parseFrame(enc({ ...hello, member: { ...member, state: 'zombie' } }))).toBeUndefined();
    expect(parseFrame(enc({ ...hello, member: { ...member, incarnation: -1 } }))).toBeUndefined();
    expect(parseFrame(enc({ t: 'gossip', updates: [{ id: 'x' }] }))).toBeUndefined();
    expect(parseFrame(enc({ t: 'bye', reason: 'because' }))).toBeUndefined();
    expect(parseFrame(enc({ t: 'nope' }))).toBeUndefined();
    expect(parseFrame(new Uint8Array([0xff, 0xfe]))).toBeUndefined();
  });
});
