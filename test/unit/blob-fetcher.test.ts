import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlobFetcher } from '../../src/fetch/blob-fetcher.js';
import { BlobNotFoundError, BlobUnavailableError } from '../../src/fetch/errors.js';
import { fixedPlan, type BlobRequest, type BlobSource, type SourceBody } from '../../src/fetch/source.js';
import { digestOf } from '../../src/oci/digest.js';
import { BlobStore } from '../../src/store/blob-store.js';

// Sources here are fakes on purpose: they inject faults (lies, deaths mid-stream) that a
// real registry does not produce on demand. The store and the orchestrator are real.
const logger = pino({ level: 'silent' });
const blob = Buffer.from(Array.from({ length: 256 * 1024 }, (_, i) => (i * 7) % 251));
const digest = digestOf(blob);
const request: BlobRequest = { digest, registry: 'r.example', repository: 'team/app' };

class ScriptedSource implements BlobSource {
  readonly kind = 'peer' as const;
  opens: number[] = [];
  penalised: string[] = [];
  constructor(
    readonly name: string,
    private readonly behaviour: { bytes?: Buffer; dieAfter?: number; absent?: boolean; size?: number; delayMs?: number },
  ) {}
  async open(_r: BlobRequest, offset: number): Promise<SourceBody | undefined> {
    this.opens.push(offset);
    if (this.behaviour.delayMs) await new Promise((r) => setTimeout(r, this.behaviour.delayMs));
    if (this.behaviour.absent) return undefined;
    const bytes = this.behaviour.bytes ?? blob;
    const end = this.behaviour.dieAfter ?? bytes.length;
    const dieAfter = this.behaviour.dieAfter;
    async function* body() {
      for (let at = offset; at < end; at += 16 * 1024) yield bytes.subarray(at, Math.min(end, at + 16 * 1024));
      if (dieAfter !== undefined) throw new Error('connection reset');
    }
    return { size: this.behaviour.size ?? bytes.length, body: Readable.from(body()) };
  }
  penalise(_r: BlobRequest, reason: string) {
    this.penalised.push(reason);
  }
}

let dir: string;
let store: BlobStore;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shoal-fetch-'));
  store = await BlobStore.open({ dir, maxSize: 1 << 30 });
});
afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

describe('BlobFetcher', () => {
  it('stores a blob from the first source that has it', async () => {
    const absent = new ScriptedSource('peer', { absent: true });
    const origin = new ScriptedSource('origin', {});

    const stored = await new BlobFetcher(store, fixedPlan([absent, origin]), logger).ensure(request);

    expect((await readFile(stored.path)).equals(blob)).toBe(true);
    expect(absent.opens).toEqual([0]);
  });

  it('answers from the store without asking any source', async () => {
    const origin = new ScriptedSource('origin', {});
    const fetcher = new BlobFetcher(store, fixedPlan([origin]), logger);
    await fetcher.ensure(request);
    await fetcher.ensure(request);
    expect(origin.opens).toEqual([0]);
  });

  it('shares one download among concurrent requests', async () => {
    const origin = new ScriptedSource('origin', { delayMs: 50 });
    const fetcher = new BlobFetcher(store, fixedPlan([origin]), logger);
    const results = await Promise.all(Array.from({ length: 5 }, () => fetcher.ensure(request)));
    expect(origin.opens).toEqual([0]);
    expect(new Set(results.map((r) => r.path)).size).toBe(1);
  });

  it('resumes from the byte reached when a source dies mid-stream', async () => {
    const dying = new ScriptedSource('peer', { dieAfter: 96 * 1024 });
    const origin = new ScriptedSource('origin', {});
    const stored = await new BlobFetcher(store, fixedPlan([dying, origin]), logger).ensure(request);
    expect(origin.opens).toEqual([96 * 1024]);
    expect((await readFile(stored.path)).equals(blob)).toBe(true);
  });

  it('discards wrong bytes, penalises their source, and completes from another source', async () => {
    const wrong = Buffer.from(blob);
    wrong.writeUInt8(wrong.readUInt8(1000) ^ 0xff, 1000);
    const liar = new ScriptedSource('liar', { bytes: wrong });
    const origin = new ScriptedSource('origin', {});
    const stored = await new BlobFetcher(store, fixedPlan([liar, origin]), logger).ensure(request);
    expect(liar.penalised).toHaveLength(1);
    expect(origin.opens).toEqual([0]);
    expect((await readFile(stored.path)).equals(blob)).toBe(true);
  });

  it('stores nothing when the only source lies', async () => {
    const wrong = Buffer.from(blob);
    wrong.writeUInt8(wrong.readUInt8(5) ^ 1, 5);
    const origin = new ScriptedSource('origin', { bytes: wrong });
    const error = await new BlobFetcher(store, fixedPlan([origin]), logger).ensure(request).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BlobUnavailableError);
    expect(String((error as Error).message)).toMatch(/digest mismatch/);
    expect(await store.get(digest)).toBeUndefined();
    expect(await readdir(join(dir, 'tmp'))).toEqual([]);
    expect(await readdir(join(dir, 'blobs', 'sha256'))).toEqual([]);
  });

  it('refuses a source that sends more than it declared', async () => {
    const origin = new ScriptedSource('origin', { size: 1000 });
    const error = await new BlobFetcher(store, fixedPlan([origin]), logger).ensure(request).catch((e: unknown) => e);
    expect(String((error as Error).message)).toMatch(/more than the 1000 bytes/);
    expect(await store.get(digest)).toBeUndefined();
  });

  it('says not found when no source has the blob', async () => {
    const error = await new BlobFetcher(store, fixedPlan([new ScriptedSource('origin', { absent: true })]), logger)
      .ensure(request)
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BlobNotFoundError);
  });
});
