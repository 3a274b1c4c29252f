import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { atExit } from './cleanup.js';

// Every temp dir made here is removed at exit too, so a test that throws half-way (or forgets
// its cleanup) still leaves nothing behind.
const live = new Map<string, () => void>();

/** Creates a fresh temp dir under the OS temp dir. Kept short: unix socket paths max ~107 bytes. */
export async function makeTempDir(prefix = 'shoal-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  live.set(dir, atExit(() => rmSync(dir, { recursive: true, force: true }), 1));
  return dir;
}

export async function removeTempDir(dir: string): Promise<void> {
  live.get(dir)?.();
  live.delete(dir);
  // Retries: a just-stopped daemon may still be closing files.
  await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
}

/** Runs fn with a temp dir that is removed afterwards, whatever happens. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>, prefix?: string): Promise<T> {
  const dir = await makeTempDir(prefix);
  try {
    return await fn(dir);
  } finally {
    await removeTempDir(dir);
  }
}
