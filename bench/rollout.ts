/**
 * bench:rollout — a fresh image rolled out to N nodes at once, the origin behind a thin uplink:
 * as root, the origin runs in a network namespace whose veth link is shaped with tc; otherwise
 * (or with --proxy-uplink) a throttling proxy caps the origin's total egress. Side by side in
 * one run: N plain pulls straight from the origin, then N pulls through N Shoal agents (each
 * its own process). Prints origin egress ÷ image size and rollout time ÷ naive time.
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
async function startFleet(count: number, run: number): Promise<{ host: string; process: AgentProcess }[]> {
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

const rows: { naive: number; shoal: number; naiveEgress: number; shoalEgress: number; image: number }[] = [];
try {
  for (let run = 0; run < runs; run++) {
    // Four layers, like a typical application image; fresh random content every run.
    const layers = [0.48, 0.32, 0.16, 0.04].map((f) => Math.round(f * imageBytes));
    const local = await makeImage({ layers });
    const naiveImage = await pushImage(local, registry, `bench/naive${run}:v1`);
    await local.remove();
    const local2 = await makeImage({ layers });
    const shoalImage = await pushImage(local2, registry, `bench/shoal${run}:v1`);
    await local2.remove();

    throttle(true);
    origin.reset();
    const naive = await pullAll(Array.from({ length: n }, () => origin.host), `bench/naive${run}:v1`);
    const naiveEgress = origin.blobBytes();

    throttle(false);
    const fleet = await startFleet(n, run);
    let shoal: number;
    let shoalEgress: number;
    let cpu: number[];
    let peakRss: number;
    try {
      throttle(true);
      origin.reset();
      const cpuBefore = await Promise.all(fleet.map((a) => cpuSeconds(a.process.pid)));
      shoal = await pullAll(fleet.map((a) => a.host), `bench/shoal${run}:v1`);
      shoalEgress = origin.blobBytes();
      // Where the time goes on a small machine: the agents' CPU while the fleet pulled.
      cpu = (await Promise.all(fleet.map((a) => cpuSeconds(a.process.pid)))).map((x, i) => x - cpuBefore[i]!);
      peakRss = Math.max(...(await Promise.all(fleet.map(async (a) => (await rss(a.process.pid)).peak))));
    } finally {
      // Also when a pull failed: no agent process may outlive the bench.
      await Promise.all(fleet.map((a) => a.process.stop()));
    }
    rows.push({ naive, shoal, naiveEgress: naiveEgress / naiveImage.blobBytes, shoalEgress: shoalEgress / shoalImage.blobBytes, image: shoalImage.blobBytes });
    console.log(
      `run ${run + 1}: naive ${naive.toFixed(1)} s (egress ${(naiveEgress / MiB).toFixed(0)} MiB), ` +
        `shoal ${shoal.toFixed(1)} s (egress ${(shoalEgress / MiB).toFixed(0)} MiB); ` +
        `agents' CPU meanwhile ${cpu.reduce((a, b) => a + b, 0).toFixed(1)} s (${cpu.map((x) => x.toFixed(1)).join(', ')}); ` +
        `largest agent RSS high-water mark ${peakRss.toFixed(0)} MiB`,
    );
  }
  const image = rows[0]!.image;
  console.log(`${n} nodes, image ${(image / MiB).toFixed(0)} MiB of blobs, origin uplink ${values['uplink-mib']} MiB/s (${uplinkKind}), ${runs} run(s), medians`);
  console.log(`  naive: ${median(rows.map((r) => r.naive)).toFixed(1)} s, origin egress ÷ image ${median(rows.map((r) => r.naiveEgress)).toFixed(2)}`);
  console.log(`  shoal: ${median(rows.map((r) => r.shoal)).toFixed(1)} s, origin egress ÷ image ${median(rows.map((r) => r.shoalEgress)).toFixed(2)}   (target ≤ 1.1)`);
  console.log(`  rollout time ÷ naive time: ${median(rows.map((r) => r.shoal / r.naive)).toFixed(2)}   (target ≤ 0.3)`);
} finally {
  await origin.stop();
  await registry.close();
  await shaped?.remove();
  await removeTempDir(work);
}
