/**
 * The floor: the CPU an agent cannot avoid spending on the bytes of a rollout, measured on this
 * machine in the bench's own run. For each part of the unavoidable work this process does just
 * that work, in the sizes the agent does it, and reports CPU-seconds per MiB:
 *
 *   decrypt   ChaCha20-Poly1305 (Noise's cipher) of what arrives from peers, in Noise messages;
 *   encrypt   the same, of what is sent to peers;
 *   hash      SHA-256 twice over every byte received (the piece check, the whole-digest check);
 *   write     one write of it to a file (the page cache, as the store writes it);
 *   send      one send of it over a loopback TCP socket (to the local runtime).
 *
 * The receiving end of the socket is another process, so its CPU is not counted here. Buffers
 * are reused: this is the cost of the work, not of any allocation strategy.
 *
 *   tsx bench/floor.ts [MiB]   prints one JSON object: { "perMiB": { part: cpu-s } }
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { fork } from 'node:child_process';
import { openSync, writeSync, closeSync, rmSync, mkdtempSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';

const MiB = 1024 * 1024;
/** Noise's largest message: 65535 bytes with its 16-byte tag. */
const NOISE_PLAINTEXT = 65535 - 16;

export type FloorPart = 'decrypt' | 'encrypt' | 'hash' | 'write' | 'send';

function cpu(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

function timed(work: () => void): number {
  const t0 = cpu();
  work();
  return cpu() - t0;
}

async function timedAsync(work: () => Promise<void>): Promise<number> {
  const t0 = cpu();
  await work();
  return cpu() - t0;
}

/** CPU-seconds per MiB of each part, measured over `mib` MiB. */
export async function measureFloor(mib: number): Promise<Record<FloorPart, number>> {
  const bytes = mib * MiB;
  const key = randomBytes(32);
  const nonce = Buffer.alloc(12);
  const plain = randomBytes(NOISE_PLAINTEXT);
  const messages = Math.ceil(bytes / NOISE_PLAINTEXT);

  const seal = (): Buffer => {
    const c = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: 16 });
    const out = c.update(plain);
    c.final();
    c.getAuthTag();
    return out;
  };
  const sealed = seal();
  const tag = (() => {
    const c = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: 16 });
    c.update(plain);
    c.final();
    return c.getAuthTag();
  })();
  const encrypt = timed(() => {
    for (let i = 0; i < messages; i++) seal();
  });
  const decrypt = timed(() => {
    for (let i = 0; i < messages; i++) {
      const d = createDecipheriv('chacha20-poly1305', key, nonce, { authTagLength: 16 });
      d.setAuthTag(tag);
      d.update(sealed);
      d.final();
    }
  });

  const block = randomBytes(MiB);
  const hash = timed(() => {
    for (let pass = 0; pass < 2; pass++) {
      const h = createHash('sha256');
      for (let i = 0; i < mib; i++) h.update(block);
      h.digest();
    }
  });

  const dir = mkdtempSync(join(tmpdir(), 'shoal-floor-'));
  let write: number;
  try {
    const fd = openSync(join(dir, 'blob'), 'w');
    write = timed(() => {
      for (let i = 0; i < mib; i++) writeSync(fd, block);
    });
    closeSync(fd);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }

  const send = await timedSend(block, mib);
  const per = (s: number): number => s / mib;
  return { decrypt: per(decrypt), encrypt: per(encrypt), hash: per(hash), write: per(write), send: per(send) };
}

/** CPU of sending `mib` MiB over loopback TCP to a reader in another process. */
async function timedSend(block: Buffer, mib: number): Promise<number> {
  const sink = fork(new URL(import.meta.url), ['--sink'], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const [port] = (await once(sink, 'message')) as [number];
  try {
    const socket = connect(port, '127.0.0.1');
    await once(socket, 'connect');
    const seconds = await timedAsync(async () => {
      for (let i = 0; i < mib; i++) {
        if (!socket.write(block)) await once(socket, 'drain');
      }
      socket.end();
      await once(socket, 'close');
    });
    return seconds;
  } finally {
    sink.kill();
  }
}

if (process.argv.includes('--sink')) {
  // The other end of the loopback socket: reads and drops.
  const server = createServer((s) => s.resume());
  server.listen(0, '127.0.0.1', () => process.send?.((server.address() as { port: number }).port));
} else if (import.meta.url === new URL(process.argv[1]!, 'file:').href) {
  const mib = Number(process.argv[2] ?? 256);
  console.log(JSON.stringify({ perMiB: await measureFloor(mib) }));
}
