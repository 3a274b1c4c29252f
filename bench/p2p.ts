/**
 * bench:p2p — a blob only agent A holds, pulled through agent B (libp2p blob protocol, hashed,
 * written, verified, then served to curl), beside a raw libp2p stream of the same size between
 * the same two agent processes. Alternating runs, medians.
 *
 *   npm run bench:p2p [-- --size-mib 256 --runs 3]
 */
import '../src/polyfill.js';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startRegistry } from '../test/helpers/registry.js';
import { makeTempDir, removeTempDir } from '../test/helpers/tmp.js';
import { AgentProcess } from './agent-process.js';
import { cpuSeconds, curlSpeed, median, MiB, randomFile, uploadBlob } from './lib.js';

const { values } = parseArgs({
  options: { 'size-mib': { type: 'string', default: '256' }, runs: { type: 'string', default: '3' } },
});
const size = Number(values['size-mib']) * MiB;
const runs = Number(values.runs);

interface Info {
  url: string;
  peerId: string;
  addrs: string[];
}

async function metric(url: string, name: string, label = ''): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}${label} `));
  return line ? Number(line.split(' ')[1]) : 0;
}

const work = await makeTempDir('shoal-bench-p2p-');
const registry = await startRegistry();
const registries = { [registry.host]: { url: registry.url } };
const base = (name: string) => ({
  registry: { listen: '127.0.0.1:0' },
  storage: { dir: join(work, name), maxSize: '20GiB' },
  upstreams: { default: registry.host, registries },
  log: { level: 'warn' },
});
const a = await AgentProcess.start({ ...base('a'), p2p: { listen: ['/ip4/127.0.0.1/tcp/0'] } });
const aInfo = await a.call<Info>({ cmd: 'info' });
let b: AgentProcess | undefined;
try {
  // One fresh blob per run: B must fetch each from A, never from its own cache.
  const digests: string[] = [];
  for (let i = 0; i < runs; i++) {
    const file = join(work, `blob${i}`);
    const digest = await randomFile(file, size);
    await uploadBlob(registry.url, 'bench/p2p', file, digest, size);
    await curlSpeed(`${aInfo.url}/v2/bench/p2p/blobs/${digest}`, size); // A caches (and provides) it
    digests.push(digest);
  }
  // B joins once A holds every blob, so B was never A's elected origin fetcher for them.
  b = await AgentProcess.start({ ...base('b'), p2p: { listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: aInfo.addrs } });
  const bInfo = await b.call<Info>({ cmd: 'info' });
  const bAgent = b;
  for (let i = 0; i < 100 && (await metric(bInfo.url, 'shoal_peers')) < 1; i++) await new Promise((r) => setTimeout(r, 100));

  const pulls: number[] = [];
  const transfers: number[] = [];
  const raws: number[] = [];
  // CPU seconds per GiB moved, for A and B, during pulls and raw streams: where the cores go.
  const cpu = { pull: { a: [] as number[], b: [] as number[] }, raw: { a: [] as number[], b: [] as number[] } };
  const measureCpu = async <T>(kind: 'pull' | 'raw', fn: () => Promise<T>): Promise<T> => {
    const [a0, b0] = [await cpuSeconds(a.pid), await cpuSeconds(bAgent.pid)];
    const out = await fn();
    cpu[kind].a.push(((await cpuSeconds(a.pid)) - a0) / (size / 1024 ** 3));
    cpu[kind].b.push(((await cpuSeconds(bAgent.pid)) - b0) / (size / 1024 ** 3));
    return out;
  };
  for (let i = 0; i < runs; i++) {
    const raw = async () => raws.push((await measureCpu('raw', () => bAgent.call<{ mibPerSec: number }>({ cmd: 'raw', peerId: aInfo.peerId, bytes: size }))).mibPerSec);
    const pull = async () => {
      const peerBytes = await metric(bInfo.url, 'shoal_blob_bytes_total', '{source="peer"}');
      const peerSeconds = await metric(bInfo.url, 'shoal_peer_transfer_seconds_sum');
      pulls.push(await measureCpu('pull', () => curlSpeed(`${bInfo.url}/v2/bench/p2p/blobs/${digests[i]}`, size)));
      const fromPeer = (await metric(bInfo.url, 'shoal_blob_bytes_total', '{source="peer"}')) - peerBytes;
      if (fromPeer !== size) throw new Error(`B took ${fromPeer} of ${size} bytes from A`);
      transfers.push(size / MiB / ((await metric(bInfo.url, 'shoal_peer_transfer_seconds_sum')) - peerSeconds));
    };
    if (i % 2 === 0) await raw().then(pull);
    else await pull().then(raw);
  }
  const p = median(pulls);
  const t = median(transfers);
  const r = median(raws);
  const list = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(', ');
  console.log(`blob: ${size / MiB} MiB held only by agent A; ${runs} alternating runs; medians`);
  console.log(`  raw libp2p stream A→B            ${r.toFixed(0).padStart(6)} MiB/s  (runs: ${list(raws)})`);
  console.log(`  pull through B (curl, end to end) ${p.toFixed(0).padStart(6)} MiB/s  (runs: ${list(pulls)})`);
  console.log(`  B's blob-protocol transfer alone  ${t.toFixed(0).padStart(6)} MiB/s  (runs: ${list(transfers)})`);
  const c = (xs: number[]) => median(xs).toFixed(1);
  console.log(`  CPU s/GiB   raw: A ${c(cpu.raw.a)}, B ${c(cpu.raw.b)}   pull: A ${c(cpu.pull.a)}, B ${c(cpu.pull.b)}`);
  console.log(`  ratio pull/raw: ${(p / r).toFixed(2)}   ratio transfer/raw: ${(t / r).toFixed(2)}   (target ≥ 0.8)`);
} finally {
  await b?.stop();
  await a.stop();
  await registry.close();
  await removeTempDir(work);
}
