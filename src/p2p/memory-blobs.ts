import { Readable } from 'node:stream';
import type { LocalBlobs } from './blob-protocol.js';

/** Fills `chunk` with the bytes of a generated blob starting at `offset`. */
export type BlobGenerator = (offset: number, chunk: Uint8Array) => void;

type Entry = { kind: 'bytes'; bytes: Uint8Array } | { kind: 'generated'; size: number; fill: BlobGenerator };

const CHUNK = 64 * 1024; // like fs.createReadStream

/**
 * A LocalBlobs over memory, for tests and benchmarks of the p2p layer. Generated blobs are
 * produced chunk by chunk as the body is read, so a multi-GiB blob costs no memory and
 * `produced` shows how far the serving side has read ahead of the requester.
 */
export class MemoryBlobs implements LocalBlobs {
  private readonly entries = new Map<string, Entry>();
  /** Bytes handed out by bodies so far (all opens). */
  produced = 0;
  opens = 0;
  /** Delay before each chunk, to hold uploads open (tests of maxUploads). */
  chunkDelayMs = 0;

  set(digest: string, bytes: Uint8Array): void {
    this.entries.set(digest, { kind: 'bytes', bytes });
  }

  setGenerated(digest: string, size: number, fill: BlobGenerator = patternFill): void {
    this.entries.set(digest, { kind: 'generated', size, fill });
  }

  delete(digest: string): void {
    this.entries.delete(digest);
  }

  async open(digest: string, offset: number, length?: number): Promise<{ size: number; body: Readable } | undefined> {
    const entry = this.entries.get(digest);
    if (entry === undefined) return undefined;
    this.opens++;
    const size = entry.kind === 'bytes' ? entry.bytes.byteLength : entry.size;
    const start = Math.min(offset, size);
    const end = length === undefined ? size : Math.min(size, start + length);
    let pos = start;
    const self = this;
    const body = new Readable({
      highWaterMark: CHUNK,
      read() {
        const next = (): void => {
          if (pos >= end) {
            this.push(null);
            return;
          }
          const n = Math.min(CHUNK, end - pos);
          let chunk: Uint8Array;
          if (entry.kind === 'bytes') {
            chunk = entry.bytes.subarray(pos, pos + n);
          } else {
            chunk = new Uint8Array(n);
            entry.fill(pos, chunk);
          }
          pos += n;
          self.produced += n;
          this.push(chunk);
        };
        if (self.chunkDelayMs > 0) setTimeout(next, self.chunkDelayMs);
        else next();
      },
    });
    return { size, body };
  }
}

/** Byte i of a generated blob is i mod 251: cheap to produce and to check, never periodic in 2^k. */
export function patternFill(offset: number, chunk: Uint8Array): void {
  let v = offset % 251;
  for (let i = 0; i < chunk.length; i++) {
    chunk[i] = v;
    v = v === 250 ? 0 : v + 1;
  }
}
