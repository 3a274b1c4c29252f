/**
 * A Shoal agent in its own process for benchmarks, driven over IPC by the parent: it reports its
 * addresses and its view of the fleet, and on request times a raw libp2p stream from itself to a
 * peer (the bench protocol), so both measurements run between the same two processes.
 *
 * argv[2]: the agent's config (JSON). argv[3], optional: `{"hosts": {name: [ip, ...]}}`, names
 * the agent's bootstrap lookup resolves (a private /etc/hosts: the bench's stand-in for a headless
 * Service's DNS name, without touching the machine's resolver).
 */
import '../src/polyfill.js';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Agent } from '../src/agent.js';
import { parseConfig } from '../src/config/load.js';
import type { Lookup } from '../src/p2p/bootstrap.js';
import { rawStreamThroughput } from '../src/p2p/bench-protocol.js';

type Command =
  | { id: number; cmd: 'info' }
  | { id: number; cmd: 'fleet' }
  | { id: number; cmd: 'connections' }
  | { id: number; cmd: 'members' }
  | { id: number; cmd: 'raw'; peerId: string; bytes: number }
  | { id: number; cmd: 'stop' };

const config = parseConfig(JSON.parse(process.argv[2] ?? '{}'));
const hosts = (JSON.parse(process.argv[3] ?? '{}') as { hosts?: Record<string, string[]> }).hosts;
const lookup: Lookup | undefined =
  hosts &&
  (async (name) => {
    const ips = hosts[name];
    if (ips === undefined) throw new Error(`bench lookup: no such name ${name}`);
    return ips;
  });
// How late this agent's event loop runs (a starved or blocked loop answers peers late).
const loopDelay = monitorEventLoopDelay({ resolution: 20 });
loopDelay.enable();
const agent = await Agent.start(config, { benchProtocol: true, ...(lookup && { lookup }) });

process.on('message', (message: Command) => {
  void (async () => {
    try {
      switch (message.cmd) {
        case 'info':
          return reply(message.id, { url: agent.url, peerId: agent.p2p!.peerId, addrs: agent.p2p!.multiaddrs(), pid: process.pid });
        case 'fleet': {
          // What this agent knows of the fleet: live members of its zone (itself included).
          const zone = config.p2p.zone;
          const members = agent.p2p!.members();
          return reply(message.id, {
            zoneMembers: 1 + members.filter((m) => m.zone === zone).length,
            allMembers: 1 + members.length,
            connections: agent.p2p!.connectionStats(),
            dials: agent.p2p!.dialsByCause(),
            traffic: agent.p2p!.membershipTraffic(),
            // Why this agent went to the origin for blobs it was not elected for.
            fallbacks: Object.fromEntries((await agent.metrics.originFallbacks.get()).values.map((v) => [String(v.labels.reason), v.value])),
            // Streams this agent answered, by protocol: the fleet's control traffic.
            // Event-loop delay since the last view (ms): p99 and max.
            loop: takeLoopDelay(),
            streams: { ...agent.p2p!.streamsAnswered(), ...(await dhtRequestsAnswered()), 'dht walks': await providerLookups() },
            // Piece ranges traded with each peer on the swarm wire, both ways.
            traded: agent.p2p!.rangesTraded(),
          });
        }
        case 'members':
          // Diagnostics: whom this agent knows, and its membership links.
          return reply(message.id, { members: agent.p2p!.members().map((m) => m.id), neighbours: agent.p2p!.membership.neighbours() });
        case 'connections':
          // Diagnostics: every open connection and the protocols of its streams.
          return reply(message.id, {
            budget: agent.p2p!.connectionUsage(),
            neighbours: agent.p2p!.membership.neighbours().length,
            joined: agent.p2p!.membership.joined(),
            members: agent.p2p!.members().length,
            bootstrapError: agent.p2p!.bootstrapError(),
            dialQueue: agent.p2p!.libp2p.getDialQueue().map((d) => ({ status: d.status, peer: d.peerId?.toString(), addrs: d.multiaddrs.map(String) })),
            open: agent.p2p!.libp2p.getConnections().map((c) => ({
              peer: c.remotePeer.toString(),
              direction: c.direction,
              ageMs: Math.round(Date.now() - c.timeline.open),
              streams: c.streams.map((s) => s.protocol ?? '?'),
            })),
          });
        case 'raw':
          return reply(message.id, await rawStreamThroughput(agent.p2p!, message.peerId, message.bytes));
        case 'stop':
          await agent.stop();
          reply(message.id, {});
          process.exit(0);
      }
    } catch (err) {
      process.send?.({ id: message.id, error: String((err as Error).stack ?? err) });
    }
  })();
});
process.send?.({ ready: true });

/** DHT requests this agent answered by message type ('dht FIND_NODE', …), from libp2p's metric. */
async function dhtRequestsAnswered(): Promise<Record<string, number>> {
  const all = await agent.metrics.libp2p.getMetricsAsJSON();
  const counts: Record<string, number> = {};
  for (const v of all.filter((m) => m.name.endsWith('_inbound_rpc_requests_total')).flatMap((m) => m.values)) {
    const type = `dht ${String(Object.values(v.labels)[0] ?? 'other')}`;
    counts[type] = (counts[type] ?? 0) + v.value;
  }
  return counts;
}

/** Provider lookups (DHT walks) this agent made. */
async function providerLookups(): Promise<number> {
  return (await agent.metrics.providerLookup.get()).values.filter((v) => v.metricName?.endsWith('_count')).reduce((sum, v) => sum + v.value, 0);
}

function takeLoopDelay(): { p99: number; max: number } {
  const delay = { p99: loopDelay.percentile(99) / 1e6, max: loopDelay.max / 1e6 };
  loopDelay.reset();
  return delay;
}

function reply(id: number, result: unknown): void {
  process.send?.({ id, result });
}
