import { describe, expect, it } from 'vitest';
import { ConnectionBudget, workStreams, type BudgetConnection } from '../../src/p2p/connection-budget.js';

function setup(max: number, keep: string[] = [], inboundReserve = 0) {
  let now = 10_000;
  const open: BudgetConnection[] = [];
  const add = (peer: string, streams = 0, openedAt = 0): void => {
    const c: BudgetConnection = {
      id: `c-${peer}`,
      peer,
      streams,
      openedAt,
      close: async () => {
        open.splice(open.indexOf(c), 1);
      },
    };
    open.push(c);
  };
  const budget = new ConnectionBudget({ max, connections: () => open, keep: (p) => keep.includes(p), now: () => now, reserveMs: 1_000, inboundReserve });
  return { budget, open, add, advance: (ms: number) => (now += ms) };
}

describe('ConnectionBudget: p2p.maxConnections as a hard bound', () => {
  it('refuses inbound at the limit, counting handshakes in progress', async () => {
    const { budget, add } = setup(3);
    add('a', 1);
    expect(await budget.admitInbound()).toBe(true);
    expect(await budget.admitInbound()).toBe(true);
    // Two handshakes in progress and one busy connection: full.
    expect(await budget.admitInbound()).toBe(false);
  });

  it('an inbound connection at the limit closes an idle one to make room', async () => {
    const { budget, add, open } = setup(2);
    add('busy', 1);
    add('idle', 0, 0);
    expect(await budget.admitInbound()).toBe(true);
    expect(open.map((c) => c.peer)).toEqual(['busy']);
  });

  it('an outbound dial at the limit closes the oldest idle connection that is not a membership link', async () => {
    const { budget, add, open } = setup(3, ['member']);
    add('member', 0, 0);
    add('busy', 2, 0);
    add('idle', 0, 100);
    expect(await budget.admitOutbound('new')).toBe(true);
    expect(open.map((c) => c.peer)).toEqual(['member', 'busy']);
  });

  it('refuses an outbound dial at the limit when every connection is busy or kept', async () => {
    const { budget, add } = setup(2, ['member']);
    add('member');
    add('busy', 1);
    expect(await budget.admitOutbound('new')).toBe(false);
    // libp2p asks only for a new connection: one to a peer already connected counts too.
    expect(await budget.admitOutbound('busy')).toBe(false);
  });

  it('a dial in flight keeps its place when the same peer connects inbound meanwhile', async () => {
    const { budget, add } = setup(3);
    add('a', 1);
    expect(await budget.admitOutbound('b')).toBe(true);
    // b dials us at the same moment: its inbound connection opens first.
    expect(await budget.admitInbound()).toBe(true);
    add('b', 1);
    budget.opened('b', true);
    // Our dial to b is still in flight and will be a second connection: the budget is full.
    expect(await budget.admitInbound()).toBe(false);
    add('b', 1);
    budget.opened('b', false);
    expect(budget.peak).toBe(3);
    expect(await budget.admitOutbound('c')).toBe(false);
  });

  it('a dial admitted holds its place until it connects or its reservation expires', async () => {
    const { budget, add, advance } = setup(2);
    add('a', 1);
    expect(await budget.admitOutbound('b')).toBe(true);
    expect(await budget.admitInbound()).toBe(false);
    advance(1_001);
    expect(await budget.admitInbound()).toBe(true);
  });

  it('reaps connections idle at two checks in a row, never membership links', async () => {
    const { budget, add, open } = setup(10, ['member']);
    add('member');
    add('idle');
    add('busy', 1);
    expect(await budget.reap()).toBe(0);
    expect(await budget.reap()).toBe(1);
    expect(open.map((c) => c.peer)).toEqual(['member', 'busy']);
  });

  it('an admitted inbound handshake that fails gives its place back at once', async () => {
    const { budget, add } = setup(2);
    add('a', 1);
    expect(await budget.admitInbound('/ip4/127.0.0.9/tcp/4001')).toBe(true);
    // Full until the handshake ends: a joiner that gave up must not hold the seed for reserveMs.
    expect(await budget.admitInbound('/ip4/127.0.0.10/tcp/4001')).toBe(false);
    budget.handshakeEnded('/ip4/127.0.0.9/tcp/4001');
    expect(budget.usage()).toMatchObject({ open: 1, handshakes: 0, dials: 0 });
    expect(await budget.admitInbound('/ip4/127.0.0.10/tcp/4001')).toBe(true);
  });

  it('an inbound connection that opens takes the handshake admitted under its address', async () => {
    const { budget, add } = setup(3);
    expect(await budget.admitInbound('/ip4/127.0.0.9/tcp/1')).toBe(true);
    expect(await budget.admitInbound('/ip4/127.0.0.10/tcp/2')).toBe(true);
    add('late', 1);
    budget.opened('late', true, '/ip4/127.0.0.10/tcp/2');
    // The other handshake still holds its place, and ends on its own.
    budget.handshakeEnded('/ip4/127.0.0.9/tcp/1');
    expect(budget.usage()).toMatchObject({ open: 1, handshakes: 0, dials: 0 });
  });

  it('remembers the most connections seen open at once', () => {
    const { budget, add, open } = setup(10);
    add('a');
    add('b');
    budget.opened('b');
    open.pop();
    budget.opened('a');
    expect(budget.peak).toBe(2);
  });

  it('counts as work every stream but identify, ping and the DHT, so those never pin a connection', () => {
    const dht = '/shoal/kad/1.0.0';
    expect(workStreams(['/ipfs/id/1.0.0', '/ipfs/ping/1.0.0', '/ipfs/id/push/1.0.0', dht], dht)).toBe(0);
    expect(workStreams(['/shoal/blob/1.0.0', '/shoal/members/1.0.0', dht], dht)).toBe(2);
    // A stream still negotiating may become anything: it counts.
    expect(workStreams([undefined, ''], dht)).toBe(2);
    // Another prefix's DHT is not ours to discount.
    expect(workStreams(['/ipfs/kad/1.0.0'], dht)).toBe(1);
  });

  it('keeps its inbound reserve from its own dials: a seed full of them still admits a joiner', async () => {
    const { budget, add } = setup(4, [], 1);
    add('a', 1);
    add('b', 1);
    expect(await budget.admitOutbound('c')).toBe(true);
    // Three of four places used: the last is for inbound only.
    expect(await budget.admitOutbound('d')).toBe(false);
    expect(await budget.admitInbound('/ip4/127.0.0.9/tcp/1')).toBe(true);
    expect(await budget.admitInbound('/ip4/127.0.0.10/tcp/1')).toBe(false);
  });

  it('two admissions at the limit never evict the same idle connection: the second is refused while the first closes it', async () => {
    const { budget, add, open } = setup(2);
    add('busy', 1);
    add('idle', 0, 0);
    // An eviction takes time (libp2p waits for the remote's close), and admissions arrive meanwhile.
    const idle = open[1]!;
    let closed!: () => void;
    const closing = new Promise<void>((resolve) => (closed = resolve));
    idle.close = async () => {
      await closing;
      open.splice(open.indexOf(idle), 1);
    };
    const first = budget.admitInbound('/ip4/127.0.0.2/tcp/1');
    const second = budget.admitInbound('/ip4/127.0.0.3/tcp/1');
    const third = budget.admitOutbound('peer-x');
    closed();
    expect(await Promise.all([first, second, third])).toEqual([true, false, false]);
    // One busy connection and one handshake admitted: the limit, never above it.
    expect(budget.usage()).toMatchObject({ open: 1, handshakes: 1, dials: 0 });
  });

  it('a dial that failed gives its place back at once, not when its reservation expires', async () => {
    const inFlight = new Set<string>();
    const budget = new ConnectionBudget({ max: 2, connections: () => [], keep: () => false, reserveMs: 60_000, dialing: (p) => inFlight.has(p) });
    for (const p of ['a', 'b']) {
      expect(await budget.admitOutbound(p)).toBe(true);
      inFlight.add(p);
    }
    expect(await budget.admitInbound('/ip4/127.0.0.2/tcp/1')).toBe(false);
    // The dial to 'a' was refused by a full peer: libp2p's dial queue no longer holds it.
    inFlight.delete('a');
    expect(budget.usage()).toMatchObject({ dials: 1 });
    expect(await budget.admitInbound('/ip4/127.0.0.2/tcp/1')).toBe(true);
  });

  it('the idle twin of a membership link (both sides dialled at once) makes room; the link does not', async () => {
    const { budget, open } = setup(2, ['linked']);
    const conn = (id: string, streams: number, openedAt: number): BudgetConnection => ({
      id,
      peer: 'linked',
      streams,
      openedAt,
      close: async () => {
        open.splice(open.indexOf(open.find((c) => c.id === id)!), 1);
      },
    });
    open.push(conn('link', 1, 0), conn('twin', 0, 100));
    expect(await budget.admitInbound('/ip4/127.0.0.2/tcp/1')).toBe(true);
    expect(open.map((c) => c.id)).toEqual(['link']);
    // The link's own connection, idle or not, is never closed for room.
    open[0] = conn('link', 0, 0);
    expect(await budget.admitInbound('/ip4/127.0.0.3/tcp/1')).toBe(false);
  });
});
