/**
 * bench:rollout — a fresh image rolled out to N nodes at once, the origin behind a thin uplink:
 * as root, the origin runs in a network namespace whose veth link is shaped with tc; otherwise
 * (or with --proxy-uplink) a throttling proxy caps the origin's total egress. Side by side in
 * one run: N plain pulls straight from the origin, then N pulls through N Shoal agents (each
 * its own process): a first image just after the agents started (cold: their code is not yet
 * compiled) and a second fresh image through the same agents (warm). Prints origin egress ÷
 * image, rollout time ÷ naive time, each agent's CPU per 100 MiB of image beside the floor for
 * the same bytes measured in the same run (bench/floor.ts), and the streams each agent answered
 * per protocol beside the number of peers it traded pieces with.
 *
 *   npm run bench:rollout [-- --agents 8 --image-mib 100 --uplink-mib 40 --runs 1 --proxy-uplink]
 */
import '../src/polyfill.js';
import { parseArgs } from 'node:util';
import { startCountingProxy } from '../test/helpers/counting-proxy.js';
import { makeImage, pushImage } from '../test/helpers/images.js';
import { startRegistry } from '../test/helpers/registry.js';
import { skopeoPull } from '../test/helpers/skopeo.js';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../test/helpers/tmp.js';
import { AgentProcess } from './agent-process.js';
import { canShape, shapedNamespace } from './uplink.js';
import { cpuSeconds, median, MiB, rss } from './lib.js';
import { run as runProcess } from '../test/helpers/proc.js';
import type { FloorPart } from './floor.js';

const { values } = parseArgs({
  options: {
    agents: { type: 'string', default: '8' },
    'image-mib': { type: 'string', default: '100' },
    'uplink-mib': { type: 'string', default: '40' },
    runs: { type: 'string', default: '1' },
    'proxy-uplink': { type: 'boolean', default: false },
  },
});
const n = Number(values.agents);
const imageBytes = Number(values['image-mib']) * MiB;
const uplink = Number(values['uplink-mib']) * MiB;
const runs = Number(values.runs);

const work = await makeTempDir('shoal-bench-rollout-');
const shaped = !values['proxy-uplink'] && (await canShape()) ? await shapedNamespace(uplink) : undefined;
const registry = await startRegistry(shaped ? { netns: { name: shaped.name, address: shaped.address } } : {});
// The counting proxy measures origin egress; it throttles only when no shaped link does.
const origin = await startCountingProxy(registry);
const throttle = (on: boolean) => origin.setRateLimit(on && !shaped ? uplink : null);
const uplinkKind = shaped ? 'network namespace + tc tbf' : 'throttling proxy';

async function pullAll(hosts: string[], ref: string): Promise<number> {
  const started = performance.now();
  const results = await Promise.all(hosts.map((h) => skopeoPull(`${h}/${ref}`, { timeoutMs: 600_000 })));
  const seconds = (performance.now() - started) / 1000;
  for (const r of results) {
    await r.remove();
    if (!r.ok) throw new Error(`a pull failed: ${r.stderr}`);
  }
  return seconds;
}

/**
 * N agents, each its own process (as on N nodes), each given one bootstrap address (the first
 * agent's), as a hand-written config has; waits until every agent's membership lists the whole
 * fleet (not for connections, which stay bounded).
 */
async function startFleet(count: number, run: number): Promise<{ host: string; url: string; process: AgentProcess }[]> {
  const fleet: { host: string; url: string; addrs: string[]; process: AgentProcess }[] = [];
  for (let i = 0; i < count; i++) {
    const agent = await AgentProcess.start({
      registry: { listen: '127.0.0.1:0' },
      storage: { dir: join(work, `run${run}-agent${i}`) },
      upstreams: { default: origin.host, registries: { [origin.host]: { url: origin.url } } },
      p2p: { listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: fleet[0]?.addrs ?? [] },
      log: { level: process.env.BENCH_LOG ?? 'warn' },
    });
    const info = await agent.call<{ url: string; addrs: string[] }>({ cmd: 'info' });
    fleet.push({ host: info.url.replace('http://', ''), url: info.url, addrs: info.addrs, process: agent });
  }
  for (const agent of fleet) {
    let known = await zoneMembers(agent.url);
    for (let i = 0; i < 300 && known < count; i++) {
      await new Promise((r) => setTimeout(r, 100));
      known = await zoneMembers(agent.url);
    }
    if (known < count) throw new Error(`agent ${agent.url} knows ${known} of ${count} members after 30 s`);
  }
  return fleet;
}

/** Live members of the agent's zone, itself included. */
async function zoneMembers(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(/^shoal_members\{scope="zone"\} (\S+)$/m.exec(text)?.[1] ?? 0);
}

/** What an agent says of itself after a rollout (bench/agent-child.ts `fleet`). */
interface View {
  streams: Record<string, number>;
  traded: Record<string, number>;
  /** Why the agent went to the origin for blobs it was not elected for, by reason. */
  fallbacks: Record<string, number>;
}

/** Bytes an agent moved, from its metrics: received from peers and the origin, sent to peers. */
async function bytesMoved(url: string): Promise<{ peer: number; origin: number; sent: number }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const value = (re: RegExp) => Number(re.exec(text)?.[1] ?? 0);
  return {
    peer: value(/^shoal_blob_bytes_total\{source="peer"\} (\S+)$/m),
    origin: value(/^shoal_blob_bytes_total\{source="origin"\} (\S+)$/m),
    sent: value(/^shoal_peer_upload_bytes_total (\S+)$/m),
  };
}

/** The floor's CPU-s per MiB by part, measured now in its own process (bench/floor.ts). */
async function measureFloor(): Promise<Record<FloorPart, number>> {
  const r = await runProcess('npx', ['tsx', 'bench/floor.ts', '256'], { timeoutMs: 300_000 });
  if (r.code !== 0) throw new Error(`floor: ${r.stderr}`);
  return (JSON.parse(r.stdout.trim().split('\n').pop()!) as { perMiB: Record<FloorPart, number> }).perMiB;
}

interface Rollout {
  seconds: number;
  egress: number;
  /** Per agent: CPU-s, and the bytes it moved (to price the floor). */
  cpu: number[];
  moved: { peer: number; origin: number; sent: number }[];
  /** Per agent: streams answered by protocol, and peers it traded pieces with. */
  streams: Record<string, number>[];
  traded: number[];
  fallbacks: Record<string, number>;
}

/** One rollout of `ref` through the fleet, measured. */
async function rollout(fleet: { host: string; url: string; process: AgentProcess }[], ref: string, imageBytes: number): Promise<Rollout> {
  const viewsBefore = await Promise.all(fleet.map((a) => a.process.call<View>({ cmd: 'fleet' })));
  const movedBefore = await Promise.all(fleet.map((a) => bytesMoved(a.url)));
  throttle(true);
  origin.reset();
  const cpuBefore = await Promise.all(fleet.map((a) => cpuSeconds(a.process.pid)));
  const seconds = await pullAll(fleet.map((a) => a.host), ref);
  const egress = origin.blobBytes() / imageBytes;
  // Where the time goes on a small machine: the agents' CPU while the fleet pulled.
  const cpu = (await Promise.all(fleet.map((a) => cpuSeconds(a.process.pid)))).map((x, i) => x - cpuBefore[i]!);
  throttle(false);
  const views = await Promise.all(fleet.map((a) => a.process.call<View>({ cmd: 'fleet' })));
  const moved = (await Promise.all(fleet.map((a) => bytesMoved(a.url)))).map((m, i) => ({
    peer: m.peer - movedBefore[i]!.peer,
    origin: m.origin - movedBefore[i]!.origin,
    sent: m.sent - movedBefore[i]!.sent,
  }));
  const streams = views.map((v, i) => Object.fromEntries(Object.entries(v.streams).map(([p, c]) => [p, c - (viewsBefore[i]!.streams[p] ?? 0)])));
  // Peers an agent traded ranges with in this rollout (asked of them or served to them).
  const traded = views.map((v, i) => Object.entries(v.traded).filter(([peer, count]) => count > (viewsBefore[i]!.traded[peer] ?? 0)).length);
  // Fleet-wide origin fetches by agents not elected for the blob, by reason (what egress > 1 is).
  const fallbacks: Record<string, number> = {};
  views.forEach((v, i) => {
    for (const [reason, n] of Object.entries(v.fallbacks)) fallbacks[reason] = (fallbacks[reason] ?? 0) + n - (viewsBefore[i]!.fallbacks[reason] ?? 0);
  });
  return { seconds, egress, cpu, moved, streams, traded, fallbacks };
}

/** The floor for what one agent moved, in CPU-s. */
function floorOf(rates: Record<FloorPart, number>, m: { peer: number; origin: number; sent: number }): number {
  const received = (m.peer + m.origin) / MiB;
  return (m.peer / MiB) * rates.decrypt + received * (rates.hash + rates.write + rates.send) + (m.sent / MiB) * rates.encrypt;
}

interface Row {
  naive: number;
  naiveEgress: number;
  image: number;
  cold: Rollout;
  warm: Rollout;
  floor: Record<FloorPart, number>;
  peakRss: number;
}

const per100 = (cpuSeconds: number, bytes: number) => (cpuSeconds * 100 * MiB) / bytes;
const fmt = (xs: number[], digits = 1) => xs.map((x) => x.toFixed(digits)).join(', ');

function describe(name: string, r: Rollout, row: Row): string {
  const cpu = r.cpu.map((c) => per100(c, row.image));
  const floor = r.moved.map((m) => per100(floorOf(row.floor, m), row.image));
  const ratio = r.cpu.map((c, i) => c / floorOf(row.floor, r.moved[i]!));
  const protocols = [...new Set(r.streams.flatMap((s) => Object.keys(s)))].filter((p) => p !== 'dht walks').sort();
  const total = r.streams.map((s) => protocols.reduce((sum, p) => sum + (s[p] ?? 0), 0));
  const perPeer = total.map((t, i) => t / Math.max(1, r.traded[i]!));
  return (
    `  ${name}: ${r.seconds.toFixed(1)} s (÷ naive ${(r.seconds / row.naive).toFixed(2)}), origin egress ÷ image ${r.egress.toFixed(2)}${Object.values(r.fallbacks).some((n) => n > 0) ? ` (origin fallbacks: ${Object.entries(r.fallbacks).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(', ')})` : ''}; ` +
    `CPU per agent per 100 MiB of image: median ${median(cpu).toFixed(2)} s [${fmt(cpu, 2)}], floor for the same bytes median ${median(floor).toFixed(2)} s, ` +
    `CPU ÷ floor median ${median(ratio).toFixed(1)} [${fmt(ratio)}]\n` +
    `    streams answered per agent, median (max): ${protocols.map((p) => `${p} ${median(r.streams.map((s) => s[p] ?? 0))} (${Math.max(...r.streams.map((s) => s[p] ?? 0))})`).join(', ')}; ` +
    `all ${median(total)}; peers traded with ${median(r.traded)}; streams ÷ peers traded with median ${median(perPeer).toFixed(1)} (max ${Math.max(...perPeer).toFixed(1)})`
  );
}

const rows: Row[] = [];
try {
  for (let run = 0; run < runs; run++) {
    // Four layers, like a typical application image; fresh random content for every pull.
    const layers = [0.48, 0.32, 0.16, 0.04].map((f) => Math.round(f * imageBytes));
    const images = [];
    for (const name of ['naive', 'cold', 'warm']) {
      const local = await makeImage({ layers });
      images.push(await pushImage(local, registry, `bench/${name}${run}:v1`));
      await local.remove();
    }
    const image = images[1]!.blobBytes;

    throttle(true);
    origin.reset();
    const naive = await pullAll(Array.from({ length: n }, () => origin.host), `bench/naive${run}:v1`);
    const naiveEgress = origin.blobBytes() / images[0]!.blobBytes;
    throttle(false);

    const fleet = await startFleet(n, run);
    let row: Row;
    try {
      const cold = await rollout(fleet, `bench/cold${run}:v1`, image);
      const warm = await rollout(fleet, `bench/warm${run}:v1`, image);
      const peakRss = Math.max(...(await Promise.all(fleet.map(async (a) => (await rss(a.process.pid)).peak))));
      // The floor, measured while the agents are idle: the same machine, the same run.
      const floor = await measureFloor();
      row = { naive, naiveEgress, image, cold, warm, floor, peakRss };
    } finally {
      // Also when a pull failed: no agent process may outlive the bench.
      await Promise.all(fleet.map((a) => a.process.stop()));
    }
    rows.push(row);
    const f = row.floor;
    console.log(
      `run ${run + 1}: naive ${naive.toFixed(1)} s (egress ÷ image ${naiveEgress.toFixed(2)}); largest agent RSS high-water mark ${row.peakRss.toFixed(0)} MiB; ` +
        `floor per 100 MiB: decrypt ${(100 * f.decrypt).toFixed(3)}, encrypt ${(100 * f.encrypt).toFixed(3)}, SHA-256 ×2 ${(100 * f.hash).toFixed(3)}, write ${(100 * f.write).toFixed(3)}, send ${(100 * f.send).toFixed(3)} CPU-s\n` +
        describe('cold (first rollout after start)', row.cold, row) +
        '\n' +
        describe('warm (a second fresh image)', row.warm, row),
    );
  }
  const image = rows[0]!.image;
  const med = (f: (r: Row) => number) => median(rows.map(f));
  const spread = (f: (r: Row) => number) => (rows.length > 1 ? ` [${Math.min(...rows.map(f)).toFixed(2)}–${Math.max(...rows.map(f)).toFixed(2)}]` : '');
  const ratioOf = (r: Rollout, row: Row) => median(r.cpu.map((c, i) => c / floorOf(row.floor, r.moved[i]!)));
  const streamsPerPeer = (r: Rollout) => median(r.streams.map((s, i) => Object.entries(s).filter(([p]) => p !== 'dht walks').reduce((sum, [, c]) => sum + c, 0) / Math.max(1, r.traded[i]!)));
  console.log(`${n} nodes, image ${(image / MiB).toFixed(0)} MiB of blobs, origin uplink ${values['uplink-mib']} MiB/s (${uplinkKind}), ${runs} run(s), medians [spread]`);
  console.log(`  naive: ${med((r) => r.naive).toFixed(1)} s${spread((r) => r.naive)}, origin egress ÷ image ${med((r) => r.naiveEgress).toFixed(2)}; image ÷ uplink ${(image / uplink).toFixed(1)} s`);
  for (const [name, pick] of [['cold', (r: Row) => r.cold], ['warm', (r: Row) => r.warm]] as const) {
    console.log(
      `  shoal ${name}: ${med((r) => pick(r).seconds).toFixed(1)} s${spread((r) => pick(r).seconds)}; ÷ naive ${med((r) => pick(r).seconds / r.naive).toFixed(2)}${spread((r) => pick(r).seconds / r.naive)} (target ≤ 0.35 at 40 MiB/s); ` +
        `÷ (image ÷ uplink) ${med((r) => pick(r).seconds / (image / uplink)).toFixed(2)} (target ≤ 1.3 at 10 MiB/s); origin egress ÷ image ${med((r) => pick(r).egress).toFixed(2)} (target ≤ 1.1); ` +
        `agent CPU ÷ floor ${med((r) => ratioOf(pick(r), r)).toFixed(1)}${spread((r) => ratioOf(pick(r), r))} (target warm ≤ 2); streams ÷ peers traded with ${med((r) => streamsPerPeer(pick(r))).toFixed(1)} (target ≤ 4)`,
    );
  }
} finally {
  await origin.stop();
  await registry.close();
  await shaped?.remove();
  await removeTempDir(work);
}
