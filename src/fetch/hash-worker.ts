import { Worker } from 'node:worker_threads';
import type { Algorithm } from '../oci/digest.js';
import { pieceCount, type PieceTable } from './piece-table.js';

/*
 * Hashing for swarm downloads, in a worker thread. The event loop that decrypts peer streams
 * was the bottleneck of a peer transfer, and SHA-256 over every byte twice (each piece against
 * its table entry, the whole blob against its digest) was its largest share after the
 * decryption itself; here it runs beside it.
 *
 * Per download the worker keeps the whole-blob hash over the verified prefix: a piece that
 * passes its check while it is the next one in order is fed to it from memory at once; the
 * others are read back from the file once the main thread says they were written and the
 * prefix reaches them. So the digest is ready when the last piece lands, with no second pass.
 *
 * Piece buffers should be backed by a SharedArrayBuffer: the worker then reads them in place
 * (an ordinary buffer is copied by postMessage, which works but costs a copy).
 *
 * The worker is plain JavaScript evaluated from a string, so it runs the same from the compiled
 * agent, under tsx and under vitest (none of which it would need to load TypeScript for).
 */
const WORKER_SOURCE = String.raw`
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { openSync, readSync, closeSync } = require('node:fs');
const sessions = new Map();

function close(s) {
  sessions.delete(s.id);
  if (s.fd !== undefined) closeSync(s.fd);
  s.fd = undefined;
}

// Feeds the whole-blob hash from the file while the next piece is present there.
function catchUp(s) {
  while (s.failure === undefined && s.next < s.count && s.written[s.next] === 1) {
    const start = s.next * s.pieceSize;
    const length = Math.min(s.pieceSize, s.size - start);
    if (s.scratch === undefined) s.scratch = Buffer.allocUnsafeSlow(s.pieceSize);
    if (s.fd === undefined) s.fd = openSync(s.path, 'r');
    let got = 0;
    while (got < length) {
      const n = readSync(s.fd, s.scratch, got, length - got, start + got);
      if (n === 0) throw new Error('piece ' + s.next + ' ends early in the file');
      got += n;
    }
    s.hash.update(s.scratch.subarray(0, length));
    s.next++;
  }
}

parentPort.on('message', (m) => {
  const s = sessions.get(m.session);
  try {
    switch (m.op) {
      case 'open':
        sessions.set(m.session, {
          id: m.session, path: m.path, hash: createHash(m.algorithm), pieceSize: m.pieceSize,
          size: m.size, count: m.count, next: 0, written: new Uint8Array(m.count),
          fd: undefined, scratch: undefined, failure: undefined,
        });
        return;
      case 'piece': {
        const ok = createHash('sha256').update(m.bytes).digest('hex') === m.expected;
        if (ok && s !== undefined && s.failure === undefined && m.index === s.next) {
          s.hash.update(m.bytes);
          s.next++;
        }
        parentPort.postMessage({ id: m.id, value: ok });
        return;
      }
      case 'written':
        if (s === undefined) return;
        s.written[m.index] = 1;
        try {
          catchUp(s);
        } catch (err) {
          s.failure = String(err && err.message || err);
        }
        return;
      case 'digest': {
        if (s === undefined) throw new Error('no such hashing session');
        close(s);
        if (s.failure !== undefined) throw new Error(s.failure);
        parentPort.postMessage({ id: m.id, value: s.next === s.count ? s.hash.digest('hex') : null });
        return;
      }
      case 'close':
        if (s !== undefined) close(s);
        return;
    }
  } catch (err) {
    if (m.id !== undefined) parentPort.postMessage({ id: m.id, error: String(err && err.message || err) });
  }
});
`;

interface Pending {
  resolve(value: unknown): void;
  reject(err: Error): void;
}

/** One worker thread, started on first use and shared by every download of the process. */
export class HashWorker {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private nextSession = 1;

  /** A hashing session for one download into `path`, whose pieces follow `table`. */
  session(path: string, table: PieceTable, algorithm: Algorithm): HashSession {
    const id = this.nextSession++;
    this.post({ op: 'open', session: id, path, algorithm, pieceSize: table.pieceSize, size: table.size, count: pieceCount(table) });
    return new HashSession(this, id);
  }

  /** Stops the worker; requests still pending fail. A later session starts a new one. */
  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    await worker?.terminate();
  }

  /** @internal */
  post(message: Record<string, unknown>): void {
    this.ensure().postMessage(message);
  }

  /** @internal */
  call<T>(message: Record<string, unknown>): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject });
      try {
        this.post({ ...message, id });
      } catch (err) {
        this.pending.delete(id);
        reject(err as Error);
      }
    });
  }

  private ensure(): Worker {
    if (this.worker !== undefined) return this.worker;
    const worker = new Worker(WORKER_SOURCE, { eval: true });
    worker.unref(); // an idle hasher must not keep the process alive
    worker.on('message', (m: { id: number; value?: unknown; error?: string }) => {
      const waiter = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (m.error !== undefined) waiter?.reject(new Error(`hash worker: ${m.error}`));
      else waiter?.resolve(m.value);
    });
    const fail = (err: Error): void => {
      if (this.worker === worker) this.worker = undefined;
      for (const waiter of this.pending.values()) waiter.reject(err);
      this.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`hash worker exited (${code})`)));
    this.worker = worker;
    return worker;
  }
}

/** The hashing of one download: piece checks, and the whole-blob digest as the prefix grows. */
export class HashSession {
  private closed = false;

  constructor(
    private readonly worker: HashWorker,
    private readonly id: number,
  ) {}

  /** True when `bytes` hash (sha256) to `expected`, the piece table's entry for piece `index`. */
  verifyPiece(index: number, bytes: Uint8Array, expected: string): Promise<boolean> {
    // A plain Uint8Array view: postMessage handles it several times faster than a Buffer (measured).
    const view = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return this.worker.call<boolean>({ op: 'piece', session: this.id, index, bytes: view, expected });
  }

  /** Piece `index` was verified and written to the file (call only once it is there). */
  written(index: number): void {
    if (!this.closed) this.worker.post({ op: 'written', session: this.id, index });
  }

  /**
   * The hex digest of the whole file if every piece was written, else undefined. Ends the
   * session: the worker has closed its descriptor of the file when this resolves.
   */
  async digest(): Promise<string | undefined> {
    if (this.closed) throw new Error('hash session is closed');
    this.closed = true;
    const hex = await this.worker.call<string | null>({ op: 'digest', session: this.id });
    return hex ?? undefined;
  }

  /** Ends the session without a digest (the download failed). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.worker.post({ op: 'close', session: this.id });
    } catch {
      // the worker is gone, and the session with it
    }
  }
}
