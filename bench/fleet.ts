/**
 * bench:fleet — a fleet larger than a mesh: N agents (each its own process, as on N nodes) in
 * Z zones, every agent bound to its own loopback address (127.0.0.2, .3, …) and the same p2p
 * port, as pods of a DaemonSet are. How they find each other is the one thing that varies:
 *   --bootstrap one   every agent is given the first agent's address (a hand-written config)
 *   --bootstrap dns   every agent is given one name that resolves to every agent's address
 *                     (a headless Service; here a private lookup table, not the system resolver)
 *   --bootstrap all   every agent is given the whole list
 * The origin sits behind a thin uplink (a throttling proxy); each zone reaches it through its own
 * counting proxy, so origin egress is measured per zone. Side by side in one run: N plain pulls
 * straight from the origin (naive), then a rollout of a fresh image to the fleet at once. Prints
 * per zone: origin egress ÷ image, membership convergence time (last agent started → every agent
 * of the zone knows every member of it), rollout time ÷ naive, the largest connection count of any
 * agent against p2p.maxConnections, the agents' total CPU and largest RSS, and membership's idle
 * cost per agent.
 *
 *   npm run bench:fleet [-- --agents 64 --zones 2 --bootstrap one --image-mib 8 --max-connections 32 --uplink-mib 40 --runs 1]
 */
import '../src/polyfill.js';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startCountingProxy, type CountingProxy } from '../test/helpers/counting-proxy.js';
import { makeImage, pushImage } from '../test/helpers/images.js';
import { startRegistry } from '../test/helpers/registry.js';
import { skopeoPull } from '../test/helpers/skopeo.js';
import { makeTempDir, removeTempDir } from '../test/helpers/tmp.js';
import { AgentProcess } from './agent-process.js';
import { cpuSeconds, median, MiB, rss } from './lib.js';

const { values } = parseArgs({
  options: {
    agents: { type: 'string', default: '64' },
    zones: { type: 'string', default: '2' },
    bootstrap: { type: 'string', default: 'one' },
    'image-mib': { type: 'string', default: '8' },
    'max-connections': { type: 'string', default: '32' },
    'uplink-mib': { type: 'string', default: '40' },
    'idle-seconds': { type: 'string', default: '10' },
    runs: { type: 'string', default: '1' },
    // Every agent listens on its own loopback address and this one port, as pods of a DaemonSet do.
    port: { type: 'string', default: '30021' },
  },
});
const n = Number(values.agents);
const zones = Number(values.zones);
const mode = values.bootstrap!;
const imageBytes = Number(values['image-mib']) * MiB;
const maxConnections = Number(values['max-connections']);
const uplink = Number(values['uplink-mib']) * MiB;
const idleSeconds = Number(values['idle-seconds']);
const runs = Number(values.runs);
if (!['one', 'dns', 'all'].includes(mode)) throw new Error(`--bootstrap must be one, dns or all, not ${mode}`);
if (!(n >= 2 && n <= 250 && zones >= 1 && zones <= n)) throw new Error('need 2 ≤ --agents ≤ 250 and 1 ≤ --zones ≤ --agents');

const P2P_PORT = Number(values.port);
const FLEET_NAME = 'shoal-fleet.bench';
const ip = (i: number) => `127.0.0.${i + 2}`;
const zoneOf = (i: number) => `zone-${i % zones}`;
const zoneNames = Array.from({ length: zones }, (_, z) => `zone-${z}`);
const zoneSize = (zone: string) => Array.from({ length: n }, (_, i) => zoneOf(i)).filter((z) => z === zone).length;

interface FleetView {
  zoneMembers: number;
  allMembers: number;
  connections: { open: number; peak: number; max: number; opened: number };
  /** Dial attempts since start, by cause, and connections dialled (`connected`). */
  dials: Record<string, number>;
  traffic: { framesSent: number; framesReceived: number; bytesSent: number; bytesReceived: number };
  fallbacks: Record<string, number>;
  /** Event-loop delay since the previous view (ms). */
  loop: { p99: number; max: number };
  /** Streams the agent answered since start, by protocol. */
  streams: Record<string, number>;
}

interface Member {
  index: number;
  zone: string;
  host: string;
  process: AgentProcess;
}

const work = await makeTempDir('shoal-bench-fleet-');
const registry = await startRegistry();
// The origin's uplink, shared by everyone; behind it, one counting proxy per zone.
const origin = await startCountingProxy(registry);
const zoneProxies = new Map<string, CountingProxy>();
for (const zone of zoneNames) zoneProxies.set(zone, await startCountingProxy(origin.url));

/** BENCH_CPU_PROF_AGENTS=0,1,33: with BENCH_CPU_PROF, only these agents are profiled. */
const profiled = process.env.BENCH_CPU_PROF_AGENTS ? new Set(process.env.BENCH_CPU_PROF_AGENTS.split(',').map(Number)) : undefined;

function bootstrapFor(i: number): { bootstrap: string[]; hosts?: Record<string, string[]> } {
  if (mode === 'one') return { bootstrap: i === 0 ? [] : [`${ip(0)}:${P2P_PORT}`] };
  if (mode === 'all') return { bootstrap: Array.from({ length: n }, (_, j) => `${ip(j)}:${P2P_PORT}`) };
  return { bootstrap: [`${FLEET_NAME}:${P2P_PORT}`], hosts: { [FLEET_NAME]: Array.from({ length: n }, (_, j) => ip(j)) } };
}

async function startAgent(i: number, run: number): Promise<Member> {
  const zone = zoneOf(i);
  const { bootstrap, hosts } = bootstrapFor(i);
  const agent = await AgentProcess.start(
    {
      registry: { listen: `${ip(i)}:0` },
      storage: { dir: join(work, `run${run}-agent${i}`) },
      upstreams: { default: origin.host, registries: { [origin.host]: { url: zoneProxies.get(zone)!.url } } },
      p2p: { listen: [`/ip4/${ip(i)}/tcp/${P2P_PORT}`], bootstrap, zone, maxConnections },
      log: { level: process.env.BENCH_LOG ?? 'warn' },
    },
    { ...(hosts && { hosts }), profile: profiled === undefined || profiled.has(i) },
  );
  const info = await agent.call<{ url: string }>({ cmd: 'info' });
  return { index: i, zone, host: info.url.replace('http://', ''), process: agent };
}

/**
 * Starts the fleet as a DaemonSet rollout would: the first agent, then the rest a few at a time
 * (each start costs a process and a module load; two cores cannot do 63 at once without skewing
 * what is measured). Resolves with the fleet and the moment the last agent was up.
 */
async function startFleet(run: number, fleet: Member[]): Promise<number> {
  fleet.push(await startAgent(0, run));
  const batch = 8;
  for (let i = 1; i < n; i += batch) {
    const started = await Promise.all(Array.from({ length: Math.min(batch, n - i) }, (_, k) => startAgent(i + k, run)));
    fleet.push(...started);
  }
  return performance.now();
}

/** With BENCH_CPU_PROF: the monotonic clock (µs, the agents' profiles' timebase) at each phase, to cut the profiles by. */
const mark = (phase: string) => {
  if (process.env.BENCH_CPU_PROF) console.error(`${phase} at ${process.hrtime.bigint() / 1000n} µs (monotonic)`);
};

const view = (m: Member) => m.process.call<FleetView>({ cmd: 'fleet' });

/** Per zone, seconds from `since` until every agent of the zone knows every member of it. */
async function convergence(fleet: Member[], since: number, timeoutMs = Number(process.env.BENCH_CONVERGE_TIMEOUT_MS ?? 120_000)): Promise<Map<string, number>> {
  const done = new Map<string, number>();
  let reported = false;
  while (done.size < zones) {
    const views = await Promise.all(fleet.map(view));
    const now = performance.now();
    for (const zone of zoneNames) {
      if (done.has(zone)) continue;
      const members = fleet.filter((m) => m.zone === zone);
      if (members.every((m) => views[m.index]!.zoneMembers >= zoneSize(zone))) done.set(zone, (now - since) / 1000);
    }
    if (!reported && now - since > 10_000 && done.size < zones) {
      // Past the target: who is behind, whom each misses, and its links (printed once).
      reported = true;
      const ids = await Promise.all(fleet.map(async (m) => (await m.process.call<{ peerId: string }>({ cmd: 'info' })).peerId));
      const indexOf = new Map(ids.map((id, i) => [id, i]));
      for (const m of fleet.filter((f) => !done.has(f.zone) && views[f.index]!.zoneMembers < zoneSize(f.zone))) {
        const known = await m.process.call<{ members: string[]; neighbours: string[] }>({ cmd: 'members' });
        const knownSet = new Set(known.members);
        const missing = fleet.filter((o) => o.zone === m.zone && o.index !== m.index && !knownSet.has(ids[o.index]!)).map((o) => o.index);
        console.error(`after 10 s agent ${m.index} misses agents ${missing.join(',')}; links to ${known.neighbours.map((id) => indexOf.get(id) ?? id).join(',')}`);
      }
    }
    if (now - since > timeoutMs) {
      const behind = fleet.filter((m) => views[m.index]!.zoneMembers < zoneSize(m.zone)).map((m) => `agent ${m.index}: ${views[m.index]!.zoneMembers}`);
      // Where joiners got stuck: what the seed was holding.
      console.error('the first agent\'s connections:', JSON.stringify(await fleet[0]!.process.call({ cmd: 'connections' })));
      const stuck = fleet.find((m) => views[m.index]!.zoneMembers <= 1);
      if (stuck !== undefined) console.error(`agent ${stuck.index} (knows no one):`, JSON.stringify(await stuck.process.call({ cmd: 'connections' })));
      throw new Error(`membership did not converge in ${timeoutMs / 1000} s; behind: ${behind.join(', ')}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return done;
}

interface Row {
  naive: number;
  naiveEgress: number;
  image: number;
  converge: Map<string, number>;
  egress: Map<string, number>;
  rollout: Map<string, number>;
  peakConnections: Map<string, number>;
  cpu: Map<string, number>;
  peakRss: Map<string, number>;
  idleFrames: number[];
  idleBytes: number[];
  /** Connections opened per second, the whole fleet, at rest (each counted at both ends). */
  idleOpens: number;
  /** CPU-seconds per second of each agent at rest (after convergence, before the rollout). */
  idleCpu: number[];
}

const rows: Row[] = [];
try {
  for (let run = 0; run < runs; run++) {
    // Four layers, like a typical application image; fresh random content for each side.
    const layers = [0.48, 0.32, 0.16, 0.04].map((f) => Math.round(f * imageBytes));
    const images = [];
    for (const name of [`bench/fleet-naive${run}:v1`, `bench/fleet${run}:v1`]) {
      const local = await makeImage({ layers });
      images.push(await pushImage(local, registry, name));
      await local.remove();
    }
    const [naiveImage, image] = images as [(typeof images)[0], (typeof images)[0]];

    // Naive: every node pulls straight from the origin.
    origin.setRateLimit(uplink);
    origin.reset();
    const naiveStart = performance.now();
    const naivePulls = await Promise.all(Array.from({ length: n }, () => skopeoPull(`${origin.host}/bench/fleet-naive${run}:v1`, { timeoutMs: 900_000 })));
    const naive = (performance.now() - naiveStart) / 1000;
    for (const p of naivePulls) {
      await p.remove();
      if (!p.ok) throw new Error(`a naive pull failed: ${p.stderr}`);
    }
    const naiveEgress = origin.blobBytes() / naiveImage.blobBytes;
    origin.setRateLimit(null);

    const fleet: Member[] = [];
    try {
      console.error(`naive pulls took ${naive.toFixed(1)} s; starting ${n} agents`);
      const startedAt = performance.now();
      const lastStarted = await startFleet(run, fleet);
      console.error(`${n} agents started in ${((lastStarted - startedAt) / 1000).toFixed(1)} s; waiting for membership`);
      const converge = await convergence(fleet, lastStarted);

      // Membership's cost at rest: frames and bytes each agent sends per second.
      const before = await Promise.all(fleet.map(view));
      mark('idle start');
      const idleCpuBefore = await Promise.all(fleet.map((m) => cpuSeconds(m.process.pid)));
      await new Promise((r) => setTimeout(r, idleSeconds * 1000));
      const after = await Promise.all(fleet.map(view));
      mark('idle end');
      const idleCpu = (await Promise.all(fleet.map((m) => cpuSeconds(m.process.pid)))).map((c, i) => (c - idleCpuBefore[i]!) / idleSeconds);
      const idleFrames = after.map((v, i) => (v.traffic.framesSent - before[i]!.traffic.framesSent) / idleSeconds);
      const idleBytes = after.map((v, i) => (v.traffic.bytesSent - before[i]!.traffic.bytesSent) / idleSeconds);
      const idleOpens = after.reduce((sum, v, i) => sum + v.connections.opened - before[i]!.connections.opened, 0) / idleSeconds;

      // The rollout: every node pulls the fresh image through its own agent, at once.
      origin.setRateLimit(uplink);
      for (const proxy of zoneProxies.values()) proxy.reset();
      const cpuBefore = await Promise.all(fleet.map((m) => cpuSeconds(m.process.pid)));
      const start = performance.now();
      mark('rollout start');
      const finished = new Map<string, number>();
      const pulls = await Promise.all(
        fleet.map(async (m) => {
          const r = await skopeoPull(`${m.host}/bench/fleet${run}:v1`, { timeoutMs: 900_000 });
          finished.set(m.zone, Math.max(finished.get(m.zone) ?? 0, (performance.now() - start) / 1000));
          return r;
        }),
      );
      mark('rollout end');
      const cpuAfter = await Promise.all(fleet.map((m) => cpuSeconds(m.process.pid)));
      const failed = pulls.filter((p) => !p.ok);
      for (const p of pulls) await p.remove();
      if (failed.length > 0) throw new Error(`${failed.length} of ${n} pulls failed; first: ${failed[0]!.stderr}`);
      origin.setRateLimit(null);

      const views = await Promise.all(fleet.map(view));
      // Origin fetches beyond the elected ones, fleet-wide, by reason (a stampede shows here).
      const fallbacks = new Map<string, number>();
      for (const [i, v] of views.entries()) {
        for (const [reason, count] of Object.entries(v.fallbacks)) fallbacks.set(reason, (fallbacks.get(reason) ?? 0) + count - (before[i]!.fallbacks[reason] ?? 0));
      }
      // Streams answered per agent during the rollout, by protocol (each stream counted once, where it was answered).
      const protocols = [...new Set(views.flatMap((v) => Object.keys(v.streams)))].sort();
      const perAgent = (p: string) => views.map((v, i) => (v.streams[p] ?? 0) - (before[i]!.streams[p] ?? 0));
      const streamLine = protocols.map((p) => `${p} ${median(perAgent(p)).toFixed(0)} (max ${Math.max(...perAgent(p))})`).join(', ');
      const opened = views.map((v, i) => v.connections.opened - before[i]!.connections.opened);
      // Dial attempts per agent during the rollout, by cause, and the connections it did dial.
      const causes = [...new Set(views.flatMap((v) => Object.keys(v.dials)))].sort();
      const dialsOf = (c: string) => views.map((v, i) => (v.dials[c] ?? 0) - (before[i]!.dials[c] ?? 0));
      const dialLine = causes.map((c) => `${c} ${median(dialsOf(c)).toFixed(0)} (max ${Math.max(...dialsOf(c))})`).join(', ');
      // Event-loop delay over the rollout (the view before it reset the monitors).
      const loopP99 = views.map((v) => v.loop.p99);
      const loopMax = views.map((v) => v.loop.max);
      const rsses = await Promise.all(fleet.map(async (m) => (await rss(m.process.pid)).peak));
      const perZone = (f: (members: Member[]) => number) => new Map(zoneNames.map((z) => [z, f(fleet.filter((m) => m.zone === z))]));
      const row: Row = {
        naive,
        naiveEgress,
        image: image.blobBytes,
        converge,
        egress: new Map(zoneNames.map((z) => [z, zoneProxies.get(z)!.blobBytes() / image.blobBytes])),
        rollout: new Map(zoneNames.map((z) => [z, finished.get(z)! / naive])),
        peakConnections: perZone((ms) => Math.max(...ms.map((m) => views[m.index]!.connections.peak))),
        cpu: perZone((ms) => ms.reduce((sum, m) => sum + cpuAfter[m.index]! - cpuBefore[m.index]!, 0)),
        peakRss: perZone((ms) => Math.max(...ms.map((m) => rsses[m.index]!))),
        idleFrames,
        idleBytes,
        idleOpens,
        idleCpu,
      };
      rows.push(row);
      console.log(
        `run ${run + 1}: naive ${naive.toFixed(1)} s (egress ÷ image ${naiveEgress.toFixed(2)}); ` +
          zoneNames
            .map(
              (z) =>
                `${z}: converged ${row.converge.get(z)!.toFixed(1)} s, egress ÷ image ${row.egress.get(z)!.toFixed(2)}, ` +
                `rollout ÷ naive ${row.rollout.get(z)!.toFixed(2)}, peak connections ${row.peakConnections.get(z)}, ` +
                `CPU ${row.cpu.get(z)!.toFixed(1)} s, largest RSS ${row.peakRss.get(z)!.toFixed(0)} MiB`,
            )
            .join('; ') +
          `; idle membership per agent: median ${median(idleFrames).toFixed(1)} frames/s, ${median(idleBytes).toFixed(0)} B/s (max ${Math.max(...idleBytes).toFixed(0)} B/s), CPU ${(1000 * median(idleCpu)).toFixed(0)} ms/s (max ${(1000 * Math.max(...idleCpu)).toFixed(0)}); connections opened at rest, fleet-wide: ${idleOpens.toFixed(1)}/s; ` +
          `origin fallbacks (fetches by agents not elected): ${[...fallbacks].map(([r, c]) => `${r} ${c}`).join(', ') || 'none'}; ` +
          `streams answered per agent in the rollout, median (max): ${streamLine}; connections opened per agent in the rollout: ${median(opened)} (max ${Math.max(...opened)}), dial attempts by cause: ${dialLine}; ` +
          `event-loop delay in the rollout, p99 per agent: median ${median(loopP99).toFixed(0)} ms (max ${Math.max(...loopP99).toFixed(0)}), longest stall ${Math.max(...loopMax).toFixed(0)} ms`,
      );
    } finally {
      // Also when something failed: no agent process may outlive the bench.
      await Promise.all(fleet.map((m) => m.process.stop()));
    }
  }

  const med = (f: (r: Row) => number) => median(rows.map(f));
  const spread = (f: (r: Row) => number) => (rows.length > 1 ? ` [${Math.min(...rows.map(f)).toFixed(2)}–${Math.max(...rows.map(f)).toFixed(2)}]` : '');
  console.log(
    `${n} agents in ${zones} zone(s), bootstrap ${mode}, p2p.maxConnections ${maxConnections}, image ${(rows[0]!.image / MiB).toFixed(1)} MiB of blobs, ` +
      `origin uplink ${values['uplink-mib']} MiB/s (throttling proxy), ${runs} run(s), medians [min–max]`,
  );
  console.log(`  naive: ${med((r) => r.naive).toFixed(1)} s, origin egress ÷ image ${med((r) => r.naiveEgress).toFixed(2)}`);
  for (const z of zoneNames) {
    const size = zoneSize(z);
    console.log(
      `  ${z} (${size} agents): origin egress ÷ image ${med((r) => r.egress.get(z)!).toFixed(2)}${spread((r) => r.egress.get(z)!)} (target ≤ 1.1), ` +
        `convergence ${med((r) => r.converge.get(z)!).toFixed(1)} s${spread((r) => r.converge.get(z)!)} (target ≤ 10), ` +
        `rollout ÷ naive ${med((r) => r.rollout.get(z)!).toFixed(2)}${spread((r) => r.rollout.get(z)!)}, ` +
        `largest connection count ${Math.max(...rows.map((r) => r.peakConnections.get(z)!))} (limit ${maxConnections}), ` +
        `agents' CPU ${med((r) => r.cpu.get(z)!).toFixed(1)} s, largest RSS ${Math.max(...rows.map((r) => r.peakRss.get(z)!)).toFixed(0)} MiB`,
    );
  }
  console.log(
    `  every pull verified (skopeo checks each blob's digest); membership at rest per agent: ` +
      `${med((r) => median(r.idleFrames)).toFixed(1)} frames/s, ${med((r) => median(r.idleBytes)).toFixed(0)} B/s sent, agent CPU at rest ${(1000 * med((r) => median(r.idleCpu))).toFixed(0)} ms/s (median agent)`,
  );
} finally {
  for (const proxy of zoneProxies.values()) await proxy.stop();
  await origin.stop();
  await registry.close();
  await removeTempDir(work);
}
