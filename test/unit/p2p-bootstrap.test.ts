import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KEEP_ALIVE } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseBootstrapEntry, resolveEntry, type Lookup } from '../../src/p2p/bootstrap.js';
import { MemoryBlobs } from '../../src/p2p/memory-blobs.js';
import { P2PNode, type P2PStartOptions } from '../../src/p2p/node.js';

const logger = pino({ level: process.env.P2P_TEST_LOG ?? 'silent' });

async function until(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A TCP port free on both hosts (so two nodes can share it on different loopback IPs). */
async function freePortOn(hosts: string[]): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 30_000);
    const ok = await Promise.all(
      hosts.map(
        (host) =>
          new Promise<boolean>((resolve) => {
            const srv = createServer();
            srv.once('error', () => resolve(false));
            srv.listen({ port, host, exclusive: true }, () => srv.close(() => resolve(true)));
          }),
      ),
    );
    if (ok.every(Boolean)) return port;
  }
  throw new Error('no free port');
}

describe('parseBootstrapEntry', () => {
  it('takes multiaddrs with and without /p2p', () => {
    const id = '12D3KooWPBZegFApgJGfubYY5s69XRuNQsBjETXH5QHPs7ACagia';
    expect(parseBootstrapEntry('/ip4/10.0.0.5/tcp/4001')).toMatchObject({ kind: 'addr' });
    const withId = parseBootstrapEntry(`/ip4/10.0.0.5/tcp/4001/p2p/${id}`);
    expect(withId.kind === 'addr' && withId.addr.toString()).toBe(`/ip4/10.0.0.5/tcp/4001/p2p/${id}`);
    expect(parseBootstrapEntry('/ip6/::1/tcp/4001')).toMatchObject({ kind: 'addr' });
  });

  it('takes DNS multiaddrs and host:port names', () => {
    expect(parseBootstrapEntry('/dns4/shoal.ns.svc.cluster.local/tcp/4001')).toEqual({
      kind: 'dns',
      source: '/dns4/shoal.ns.svc.cluster.local/tcp/4001',
      host: 'shoal.ns.svc.cluster.local',
      port: 4001,
      family: 4,
    });
    expect(parseBootstrapEntry('/dns6/x.local/tcp/9')).toMatchObject({ kind: 'dns', family: 6, port: 9 });
    expect(parseBootstrapEntry('/dns/x.local/tcp/9')).toMatchObject({ kind: 'dns', family: 0 });
    expect(parseBootstrapEntry('shoal.ns.svc.cluster.local:4001')).toMatchObject({ kind: 'dns', host: 'shoal.ns.svc.cluster.local', port: 4001, family: 0 });
    expect(parseBootstrapEntry('shoal-peers')).toMatchObject({ kind: 'dns', host: 'shoal-peers', port: 30021 });
    expect(parseBootstrapEntry('localhost:5001')).toMatchObject({ kind: 'dns', host: 'localhost', port: 5001 });
  });

  it('turns IP host:port forms into multiaddrs', () => {
    const v4 = parseBootstrapEntry('10.1.2.3:4002');
    expect(v4.kind === 'addr' && v4.addr.toString()).toBe('/ip4/10.1.2.3/tcp/4002');
    const v6 = parseBootstrapEntry('[fd00::1]:4003');
    expect(v6.kind === 'addr' && v6.addr.toString()).toBe('/ip6/fd00::1/tcp/4003');
    const bare = parseBootstrapEntry('fd00::1');
    expect(bare.kind === 'addr' && bare.addr.toString()).toBe('/ip6/fd00::1/tcp/30021');
  });

  it('refuses what it cannot dial', () => {
    expect(() => parseBootstrapEntry('/ip4/10.0.0.1/udp/4001/quic-v1')).toThrow(/must be/);
    expect(() => parseBootstrapEntry('/dnsaddr/bootstrap.libp2p.io/tcp/1')).toThrow(/not supported/);
    expect(() => parseBootstrapEntry('/not/a/multiaddr')).toThrow(/invalid p2p bootstrap multiaddr/);
    expect(() => parseBootstrapEntry('host:99999')).toThrow(/port/);
    expect(() => parseBootstrapEntry('bad host!:4001')).toThrow();
    expect(() => parseBootstrapEntry('http://x:1')).toThrow();
  });

  it('resolves a name to one address per record, keeping a given peer id', async () => {
    const lookup: Lookup = async (host, family) => {
      expect(host).toBe('peers.local');
      expect(family).toBe(4);
      return ['10.0.0.1', '10.0.0.2', '10.0.0.1'];
    };
    const id = '12D3KooWPBZegFApgJGfubYY5s69XRuNQsBjETXH5QHPs7ACagia';
    const addrs = await resolveEntry(parseBootstrapEntry(`/dns4/peers.local/tcp/4001/p2p/${id}`), lookup);
    expect(addrs.map(String)).toEqual([`/ip4/10.0.0.1/tcp/4001/p2p/${id}`, `/ip4/10.0.0.2/tcp/4001/p2p/${id}`]);
  });
});

describe('bootstrapping real nodes', () => {
  let dir: string;
  const nodes: P2PNode[] = [];

  async function start(name: string, extra: Partial<P2PStartOptions> = {}): Promise<P2PNode> {
    const node = await P2PNode.start({
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: [],
      mdns: false,
      zone: 'default',
      keyFile: join(dir, name, 'key'),
      logger,
      blobs: new MemoryBlobs(),
      ...extra,
    });
    nodes.push(node);
    return node;
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-p2p-boot-'));
  });

  afterAll(async () => {
    await Promise.all(nodes.map((n) => n.stop()));
    await rm(dir, { recursive: true, force: true });
  });

  it('bootstraps from a DNS name ("localhost:<port>"): joins the fleet through it, no keep-alive pin', async () => {
    const a = await start('dns-a');
    const port = Number(/\/tcp\/(\d+)/.exec(a.multiaddrs()[0]!)![1]);
    const b = await start('dns-b', { bootstrap: [`localhost:${port}`] });
    await until('B and A members of each other', () => b.isMember(a.peerId) && a.isMember(b.peerId) && b.members().length === 1);
    // Membership's own traffic is counted each way; A hears only B, so never more than B sent.
    await until('membership bytes both ways', () => a.membershipTraffic().bytesReceived > 0 && b.membershipTraffic().bytesReceived > 0);
    expect(a.membershipTraffic().bytesReceived).toBeLessThanOrEqual(b.membershipTraffic().bytesSent);
    expect(b.membershipTraffic().framesSent).toBeGreaterThan(0);
    // A bootstrap address is a way in, not a connection to hold forever.
    const tags = [...(await b.libp2p.peerStore.get(peerIdFromString(a.peerId))).tags.keys()];
    expect(tags).not.toContain(KEEP_ALIVE);
  });

  it('bootstraps from a /dns4 multiaddr', async () => {
    const a = await start('dns4-a');
    const port = Number(/\/tcp\/(\d+)/.exec(a.multiaddrs()[0]!)![1]);
    const b = await start('dns4-b', { bootstrap: [`/dns4/localhost/tcp/${port}`] });
    await until('B connected to A', () => b.peers().some((p) => p.id === a.peerId));
  });

  it('joins through a name listing many addresses, dead ones included; an agent that joins later is learnt through membership', async () => {
    const port = await freePortOn(['127.0.0.2', '127.0.0.3', '127.0.0.4']);
    const a = await start('multi-a', { listen: [`/ip4/127.0.0.2/tcp/${port}`] });
    // Eight addresses nobody listens on and one agent: a few are tried each round until one answers.
    let records = ['127.0.0.2', ...Array.from({ length: 8 }, (_, i) => `127.0.1.${i + 1}`)];
    const lookup: Lookup = async (host) => (host === 'shoal-peers.test' ? records : []);
    const b = await start('multi-b', { bootstrap: [`shoal-peers.test:${port}`], bootstrapIntervalMs: 200, lookup });
    await until('B a member of A', () => a.isMember(b.peerId) && b.isMember(a.peerId));

    records = ['127.0.0.2', '127.0.0.3'];
    const c = await start('multi-c', { listen: [`/ip4/127.0.0.3/tcp/${port}`], bootstrap: [`shoal-peers.test:${port}`], bootstrapIntervalMs: 200, lookup });
    await until('B knows C (gossiped)', () => b.isMember(c.peerId) && c.isMember(b.peerId));
    expect(b.members().map((m) => m.id).sort()).toEqual([a.peerId, c.peerId].sort());
  });

  it('skips its own address and does not wait for a dead one', async () => {
    const port = await freePortOn(['127.0.0.1']);
    const dead = await freePortOn(['127.0.0.1']);
    const t0 = Date.now();
    const self = await start('self', {
      listen: [`/ip4/127.0.0.1/tcp/${port}`],
      bootstrap: [`127.0.0.1:${port}`, `127.0.0.1:${dead}`],
      bootstrapIntervalMs: 100,
    });
    expect(Date.now() - t0).toBeLessThan(2_000);
    await new Promise((r) => setTimeout(r, 500));
    expect(self.peers()).toHaveLength(0);
    const other = await start('other', { bootstrap: [`127.0.0.1:${port}`] });
    await until('the other node connected', () => self.peers().some((p) => p.id === other.peerId));
  });
});
