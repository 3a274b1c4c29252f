import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { PieceHasher } from '../../src/fetch/piece-table.js';
import { digestOf, DigestMismatchError } from '../../src/oci/digest.js';
import { BlobStore } from '../../src/store/blob-store.js';

let dir: string;
let clock = 1_000;
const now = () => clock++;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shoal-store-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function put(store: BlobStore, bytes: Buffer) {
  const digest = digestOf(bytes);
  const writer = await store.beginWrite(digest);
  await writer.write(bytes);
  await writer.commit(store.pathOf(digest), 'test');
  return digest;
}

async function drain(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('BlobStore', () => {
  it('commits a verified blob and serves ranges of it', async () => {
    const store = await BlobStore.open({ dir, maxSize: 1 << 20, now });
    const bytes = Buffer.from('hello, shoal');
    const digest = await put(store, bytes);
    expect((await store.get(digest))?.size).toBe(bytes.length);
    expect(store.size).toBe(bytes.length);
    expect(await drain((await store.createReadStream(digest, { start: 7, end: 11 }))!)).toEqual(Buffer.from('shoal'));
    expect(await readFile(store.pathOf(digest))).toEqual(bytes);
    await store.close();
  });

  it('stores nothing when the bytes do not match the digest', async () => {
    const store = await BlobStore.open({ dir, maxSize: 1 << 20, now });
    const digest = digestOf(Buffer.from('expected'));
    const writer = await store.beginWrite(digest);
    await writer.write(Buffer.from('something else'));
    await expect(writer.commit(store.pathOf(digest), 'liar')).rejects.toBeInstanceOf(DigestMismatchError);
    expect(await store.get(digest)).toBeUndefined();
    expect(await readdir(join(dir, 'tmp'))).toEqual([]);
    expect(await readdir(join(dir, 'blobs', 'sha256'))).toEqual([]);
    // The digest can be written again after a failed attempt.
    await put(store, Buffer.from('expected'));
    expect(await store.get(digest)).toBeDefined();
    await store.close();
  });

  it('verifies sha512 digests', async () => {
    const store = await BlobStore.open({ dir, maxSize: 1 << 20, now });
    const bytes = Buffer.from('sha512 content');
    const digest = digestOf(bytes, 'sha512');
    const writer = await store.beginWrite(digest);
    await writer.write(bytes);
    await writer.commit(store.pathOf(digest), 'test');
    expect((await store.get(digest))?.size).toBe(bytes.length);
    await store.close();
  });

  it('allows one writer per digest', async () => {
    const store = await BlobStore.open({ dir, maxSize: 1 << 20, now });
    const digest = digestOf(Buffer.from('x'));
    const writer = await store.beginWrite(digest);
    await expect(store.beginWrite(digest)).rejects.toThrow(/already being written/);
    await writer.abort();
    await (await store.beginWrite(digest)).abort();
    await store.close();
  });

  it('keeps blobs and metadata across a restart and removes leftovers of interrupted writes', async () => {
    let store = await BlobStore.open({ dir, maxSize: 1 << 20, now });
    const digest = await put(store, Buffer.from('survives'));
    const interrupted = await store.beginWrite(digestOf(Buffer.from('never finished')));
    await interrupted.write(Buffer.from('never'));
    await store.close();
    await writeFile(join(dir, 'tmp', 'stray'), 'junk');

    store = await BlobStore.open({ dir, maxSize: 1 << 20, now });
    expect(await readdir(join(dir, 'tmp'))).toEqual([]);
    expect((await store.get(digest))?.size).toBe(8);
    expect(store.size).toBe(8);
    await store.close();
  });

  it('adopts a verified file whose record was lost, and forgets a record whose file is gone', async () => {
    let store = await BlobStore.open({ dir, maxSize: 1 << 20, now });
    const kept = await put(store, Buffer.from('kept'));
    const lost = await put(store, Buffer.from('lost'));
    await store.metadata.deleteBlob(kept.value);
    await store.close();
    await rm(join(dir, 'blobs', 'sha256', lost.hex));
    await writeFile(join(dir, 'blobs', 'sha256', 'not-a-digest'), 'x');

    store = await BlobStore.open({ dir, maxSize: 1 << 20, now });
    expect((await store.get(kept))?.size).toBe(4);
    expect(await store.get(lost)).toBeUndefined();
    expect(store.size).toBe(4);
    expect(await readdir(join(dir, 'blobs', 'sha256'))).toEqual([kept.hex]);
    await store.close();
  });

  it('evicts least recently used blobs above maxSize, sparing blobs being read', async () => {
    const evicted: string[] = [];
    const store = await BlobStore.open({ dir, maxSize: 250, now, onEvict: (d) => evicted.push(d) });
    const a = await put(store, Buffer.alloc(100, 1));
    const b = await put(store, Buffer.alloc(100, 2));
    // a is read (and so used more recently than b); b is held open by a reader.
    await store.touch(a);
    const reader = (await store.createReadStream(b))!;
    const c = await put(store, Buffer.alloc(100, 3));
    await store.evict();
    // b is the least recently used of a, c but is being read, so a goes.
    expect(evicted).toEqual([a.value]);
    expect(await store.get(a)).toBeUndefined();
    expect(await store.get(b)).toBeDefined();
    expect(store.size).toBe(200);
    await drain(reader);
    await new Promise((r) => setTimeout(r, 20));
    expect(await store.get(c)).toBeDefined();
    await store.close();
  });

  it('evicts after commits push it over the cap', async () => {
    const store = await BlobStore.open({ dir, maxSize: 150, now });
    const a = await put(store, Buffer.alloc(100, 1));
    const b = await put(store, Buffer.alloc(100, 2));
    await new Promise((r) => setTimeout(r, 50));
    expect(await store.get(a)).toBeUndefined();
    expect(await store.get(b)).toBeDefined();
    expect(store.size).toBe(100);
    await store.close();
  });

  it('commits an assembled file, checking it by reading it or by the digest its writer computed', async () => {
    const store = await BlobStore.open({ dir, maxSize: 1 << 20, now });
    const bytes = Buffer.from('assembled from pieces');
    const digest = digestOf(bytes);
    const temp = join(dir, 'tmp', 'assembled');
    // Read and hashed: a file with other bytes is refused and left in place.
    await writeFile(temp, Buffer.from('assembled from lies!!'));
    await expect(store.commitFile(digest, temp, 'peers')).rejects.toBeInstanceOf(DigestMismatchError);
    expect(await readFile(temp, 'utf8')).toBe('assembled from lies!!');
    // A computed digest that differs is refused the same way.
    await writeFile(temp, bytes);
    await expect(store.commitFile(digest, temp, 'peers', { hashed: digestOf(Buffer.from('x')).value })).rejects.toBeInstanceOf(DigestMismatchError);
    expect(await store.get(digest)).toBeUndefined();
    // A matching one commits, with the size taken from the file and the piece table kept.
    const table = { size: bytes.length, pieceSize: 4 * 1024 * 1024, hashes: [digest.hex] };
    await store.commitFile(digest, temp, 'peers', { hashed: digest.value, pieceTable: table });
    expect((await store.get(digest))?.size).toBe(bytes.length);
    expect(await readFile(store.pathOf(digest))).toEqual(bytes);
    expect(await store.metadata.getPieceTable(digest.value)).toEqual(table);
    await store.close();
  });

  it('computes a piece table while writing when asked to, and keeps it only for a blob of the announced size', async () => {
    const store = await BlobStore.open({ dir, maxSize: 64 << 20, now });
    const bytes = randomBytes(5 * 1024 * 1024);
    const digest = digestOf(bytes);
    const writer = await store.beginWrite(digest);
    writer.trackPieces(bytes.length);
    await writer.write([bytes.subarray(0, 3 << 20), bytes.subarray(3 << 20)]);
    await writer.commit(store.pathOf(digest), 'origin');
    const hasher = new PieceHasher(bytes.length);
    hasher.update(bytes);
    expect(await store.metadata.getPieceTable(digest.value)).toEqual(hasher.finish());

    // Announced wrong (the source said more bytes than it sent): no table.
    const other = Buffer.from('short');
    const otherDigest = digestOf(other);
    const short = await store.beginWrite(otherDigest);
    short.trackPieces(other.length + 1);
    await short.write(other);
    await short.commit(store.pathOf(otherDigest), 'origin');
    expect(await store.get(otherDigest)).toBeDefined();
    expect(await store.metadata.getPieceTable(otherDigest.value)).toBeUndefined();
    await store.close();
  });

  it('offers the pieces of a download in flight under a provisional table, as they are written (the first wave)', async () => {
    const store = await BlobStore.open({ dir, maxSize: 64 << 20, now });
    const MIB = 1 << 20;
    const bytes = randomBytes(9 * MIB); // pieces of 4, 4 and 1 MiB
    const digest = digestOf(bytes);
    const hasher = new PieceHasher(bytes.length);
    hasher.update(bytes);
    const table = hasher.finish();
    const writer = await store.beginWrite(digest);
    expect(store.writerOf(digest.value)).toBe(writer);
    writer.trackPieces(bytes.length);
    await writer.write(bytes.subarray(0, 3 * MIB));
    // Not a whole piece yet: nothing to offer.
    expect(writer.provisional()).toBeUndefined();
    expect(await writer.openProvisional(0, 1)).toBeUndefined();
    await writer.write(bytes.subarray(3 * MIB, 6 * MIB));
    expect(writer.provisional()).toEqual({ ...table, hashes: table.hashes.slice(0, 1) });
    expect((await drain((await writer.openProvisional(MIB, 2 * MIB))!.body)).equals(bytes.subarray(MIB, 3 * MIB))).toBe(true);
    // Bytes of the second piece are partly written only.
    expect(await writer.openProvisional(3 * MIB, 2 * MIB)).toBeUndefined();
    // The shorter last piece counts as soon as the blob is whole, before the commit.
    await writer.write(bytes.subarray(6 * MIB));
    expect(writer.provisional()).toEqual(table);
    const tail = await writer.openProvisional(8 * MIB, 4 * MIB);
    expect(tail?.size).toBe(bytes.length);
    expect((await drain(tail!.body)).equals(bytes.subarray(8 * MIB))).toBe(true);
    await writer.commit(store.pathOf(digest), 'origin');
    expect(writer.provisional()).toBeUndefined();
    expect(store.writerOf(digest.value)).toBeUndefined();
    await store.close();
  });
});
