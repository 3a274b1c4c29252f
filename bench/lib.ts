import { createHash, randomFillSync } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { request } from 'node:http';
import { once } from 'node:events';
import { run } from '../test/helpers/proc.js';

export const MiB = 1024 * 1024;

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Writes `size` random bytes to `file`, returning their sha256 digest. */
export async function randomFile(file: string, size: number): Promise<string> {
  const hash = createHash('sha256');
  const out = createWriteStream(file);
  const chunk = Buffer.alloc(4 * MiB);
  for (let left = size; left > 0; left -= chunk.length) {
    const piece = randomFillSync(chunk).subarray(0, Math.min(chunk.length, left));
    hash.update(piece);
    if (!out.write(piece)) await once(out, 'drain');
  }
  out.end();
  await once(out, 'finish');
  return `sha256:${hash.digest('hex')}`;
}

/** Uploads a file as a blob of `repo` with the registry's monolithic upload (POST, then PUT). */
export async function uploadBlob(registryUrl: string, repo: string, file: string, digest: string, size: number): Promise<void> {
  const start = await fetch(`${registryUrl}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  if (start.status !== 202) throw new Error(`upload start: ${start.status}`);
  const location = new URL(start.headers.get('location')!, registryUrl);
  location.searchParams.set('digest', digest);
  await new Promise<void>((resolve, reject) => {
    const req = request(
      location,
      { method: 'PUT', headers: { 'content-length': String(size), 'content-type': 'application/octet-stream' } },
      (res) => {
        res.resume();
        res.on('end', () => (res.statusCode === 201 ? resolve() : reject(new Error(`upload: ${res.statusCode}`))));
      },
    );
    req.on('error', reject);
    createReadStream(file).pipe(req);
  });
}

/** Downloads a URL with curl (a fast C client, the same for every side), returning MiB/s. */
export async function curlSpeed(url: string, expectedBytes: number): Promise<number> {
  const r = await run('curl', ['-sS', '-o', '/dev/null', '-w', '%{size_download} %{speed_download}', url], {
    timeoutMs: 600_000,
  });
  const [size, speed] = r.stdout.trim().split(' ').map(Number);
  if (r.code !== 0 || size !== expectedBytes) throw new Error(`curl ${url}: code ${r.code}, ${size} bytes: ${r.stderr}`);
  return speed! / MiB;
}

/** Resident set size of a process now, and its peak so far (VmHWM), in MiB. */
export async function rss(pid: number): Promise<{ now: number; peak: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN);
  return { now: kb('VmRSS') / 1024, peak: kb('VmHWM') / 1024 };
}

/** CPU seconds (user + system) a process has used so far, from /proc (clock ticks of 1/100 s). */
export async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may contain spaces) start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}
