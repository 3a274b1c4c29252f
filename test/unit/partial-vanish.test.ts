import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Partials } from '../../src/fetch/partials.js';
import { PieceHasher } from '../../src/fetch/piece-table.js';
import { openReadStream } from '../../src/store/read-stream.js';

// A peer asks for verified pieces of a blob just as its download finishes and the partial file
// is removed. The read must either answer with the bytes or say "not here", never leave a
// stream behind that fails later with ENOENT (an unheard 'error' event ends the agent).
let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shoal-partials-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function drain(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function assembled(partials: Partials, bytes: Buffer) {
  const partial = await partials.start(`sha256:${'ab'.repeat(32)}`);
  await partial.file.write(bytes, 0, bytes.length, 0);
  const hasher = new PieceHasher(bytes.length);
  hasher.update(bytes);
  partial.table = hasher.finish();
  partial.table.hashes.forEach((_, i) => partials.markHave(partial, i));
  return partial;
}

describe('reading a partial that finishes meanwhile', () => {
  it('a stream handed out keeps its bytes when the file is removed before it is read', async () => {
    const partials = new Partials(dir);
    const bytes = randomBytes(64 * 1024);
    const partial = await assembled(partials, bytes);
    const read = (await partials.read(partial.digest, 1000, 5000))!;
    // The download completes and the partial goes away before the peer's stream has read a byte.
    rmSync(partial.path);
    expect(await drain(read.body)).toEqual(bytes.subarray(1000, 6000));
  });

  it('a partial whose file is already gone answers "not here"', async () => {
    const partials = new Partials(dir);
    const partial = await assembled(partials, randomBytes(1024));
    rmSync(partial.path);
    expect(await partials.read(partial.digest, 0, 1024)).toBeUndefined();
  });

  it('openReadStream: a missing file is undefined, other failures are errors', async () => {
    expect(await openReadStream(join(dir, 'missing'))).toBeUndefined();
    const file = join(dir, 'file');
    await writeFile(file, 'x');
    await expect(openReadStream(join(file, 'below'))).rejects.toThrow(/ENOTDIR/);
  });
});
