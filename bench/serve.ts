/**
 * bench:serve — a cached blob served by the agent vs. the same blob straight from the
 * docker-registry it mirrors, alternating, with curl as the client for both; then the agent's
 * peak RSS while four clients read the blob at once.
 *
 *   npm run bench:serve [-- --size-mib 1024 --runs 5]
 */
import '../src/polyfill.js';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startAgentProcess } from '../test/helpers/cli.js';
import { startRegistry } from '../test/helpers/registry.js';
import { makeTempDir, removeTempDir } from '../test/helpers/tmp.js';
import { curlSpeed, median, MiB, randomFile, rss, uploadBlob } from './lib.js';

const { values } = parseArgs({
  options: { 'size-mib': { type: 'string', default: '1024' }, runs: { type: 'string', default: '5' } },
});
const size = Number(values['size-mib']) * MiB;
const runs = Number(values.runs);

// The agent runs with the Node.js flags the Dockerfile and the systemd unit set.
process.env.SHOAL_AGENT_NODE_ARGS ??= '--max-semi-space-size=4';
const work = await makeTempDir('shoal-bench-serve-');
const registry = await startRegistry();
const agent = await startAgentProcess({
  upstreams: { default: registry.host, registries: { [registry.host]: { url: registry.url } } },
  storage: { dir: join(work, 'store'), maxSize: '20GiB' },
});
try {
  const file = join(work, 'blob');
  const digest = await randomFile(file, size);
  await uploadBlob(registry.url, 'bench/blob', file, digest, size);
  const viaAgent = `${agent.url}/v2/bench/blob/blobs/${digest}`;
  const direct = `${registry.url}/v2/bench/blob/blobs/${digest}`;
  // The first read fills the agent's cache from the registry; only cached reads are timed.
  await curlSpeed(viaAgent, size);
  await curlSpeed(direct, size);

  const agentSpeeds: number[] = [];
  const registrySpeeds: number[] = [];
  for (let i = 0; i < runs; i++) {
    // Alternate which side goes first, so neither always meets a warmer page cache.
    const order = i % 2 === 0 ? ['agent', 'registry'] : ['registry', 'agent'];
    for (const side of order) {
      if (side === 'agent') agentSpeeds.push(await curlSpeed(viaAgent, size));
      else registrySpeeds.push(await curlSpeed(direct, size));
    }
  }

  // Four clients at once, sampling the agent's resident memory as they read.
  let sampledPeak = 0;
  const sampler = setInterval(() => {
    void rss(agent.pid).then((m) => (sampledPeak = Math.max(sampledPeak, m.now)));
  }, 25);
  const parallel = await Promise.all(Array.from({ length: 4 }, () => curlSpeed(viaAgent, size)));
  clearInterval(sampler);
  const memory = await rss(agent.pid);

  const a = median(agentSpeeds);
  const r = median(registrySpeeds);
  const fmt = (n: number) => n.toFixed(0).padStart(6);
  console.log(`blob: ${size / MiB} MiB, ${runs} alternating runs, client: curl, medians`);
  console.log(`  agent     ${fmt(a)} MiB/s   (runs: ${agentSpeeds.map((s) => s.toFixed(0)).join(', ')})`);
  console.log(`  registry  ${fmt(r)} MiB/s   (runs: ${registrySpeeds.map((s) => s.toFixed(0)).join(', ')})`);
  console.log(`  ratio agent/registry: ${(a / r).toFixed(2)}   (target ≥ 0.9)`);
  console.log(`4 concurrent clients: ${parallel.map((s) => s.toFixed(0)).join(', ')} MiB/s each`);
  console.log(`  agent RSS peak while serving them: ${sampledPeak.toFixed(0)} MiB (sampled every 25 ms)`);
  console.log(`  agent RSS high-water mark over the whole run (incl. the cache fill): ${memory.peak.toFixed(0)} MiB   (target ≤ 150)`);
} finally {
  if (process.env.BENCH_AGENT_LOG) console.error(agent.stderr().slice(0, 3000));
  await agent.close();
  await registry.close();
  await removeTempDir(work);
}
