import type { Stream } from '@libp2p/interface';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { PieceTable } from '../fetch/piece-table.js';
import { BlobProtocolError, PeerBusyError } from './errors.js';
import type { PieceAnswer, PieceWait } from './piece-protocol.js';
import { sendAll, StreamReader } from './stream-io.js';
import type { TradeCounts } from './trade-counts.js';
import { decodeBegin, decodeHashes, decodeHave, decodePeers, decodeState, Done, encodeId, encodeRequest, frame, Frame, MAX_FRAME_BYTES, MAX_PIPELINED, readFrame } from './swarm-wire.js';

/*
 * The asking side of the swarm wire: one session per peer and blob, opened on first use and
 * kept while it is used. What the peer holds arrives pushed (STATE, then HAVE), so a question
 * about it, long polls included, is answered from the session without a word on the wire; piece
 * requests are pipelined on the same stream.
 */

export interface SwarmSessionsOptions {
  /** A new stream to `peerId` on the swarm protocol. */
  open(peerId: string, signal?: AbortSignal): Promise<Stream>;
  /** Counts each range a peer answered, by peer. */
  trades?: TradeCounts;
  logger: Logger;
  /** A session unused this long is closed; default 30 s. */
  idleMs?: number;
  /** Sessions kept open at once; the least recently used idle one goes first. Default 512. */
  maxSessions?: number;
}

const DEFAULT_IDLE_MS = 30_000;
const DEFAULT_MAX_SESSIONS = 512;

export class SwarmSessions {
  private readonly sessions = new Map<string, AskerSession>();
  private readonly idleMs: number;
  private readonly maxSessions: number;
  private readonly sweep: NodeJS.Timeout;
  /** Sessions opened since start (diagnostics, and the stream-count tests). */
  opened = 0;

  constructor(private readonly opts: SwarmSessionsOptions) {
    this.idleMs = opts.idleMs ?? DEFAULT_IDLE_MS;
    this.maxSessions = opts.maxSessions ?? DEFAULT_MAX_SESSIONS;
    this.sweep = setInterval(() => this.closeIdle(this.idleMs), Math.max(1000, this.idleMs / 2));
    this.sweep.unref();
  }

  /**
   * What `peerId` holds of `digest`, as its session last heard. With `wait`, resolves once the
   * peer holds more than `wait.known` pieces or after `wait.waitMs`, whichever comes first.
   * `timeoutMs` bounds the wait for the session's first STATE.
   */
  async info(peerId: string, digest: string, opts: { signal?: AbortSignal; wait?: PieceWait; timeoutMs: number }): Promise<PieceAnswer> {
    const session = await this.session(peerId, digest, opts.signal);
    return session.info(opts);
  }

  /** `length` bytes of `digest` at `offset` from `peerId`: undefined when the peer does not hold them. */
  async range(peerId: string, digest: string, offset: number, length: number, opts: { signal?: AbortSignal; timeoutMs: number }): Promise<OpenedRange | undefined> {
    const session = await this.session(peerId, digest, opts.signal);
    return session.request(offset, length, opts);
  }

  /** Closes sessions unused for `ms` (0: every idle one). */
  closeIdle(ms: number): void {
    const now = Date.now();
    for (const [key, s] of this.sessions) {
      if (s.idle() && now - s.lastUsed >= ms) {
        this.sessions.delete(key);
        s.close();
      }
    }
  }

  get size(): number {
    return this.sessions.size;
  }

  stop(): void {
    clearInterval(this.sweep);
    for (const s of this.sessions.values()) s.close();
    this.sessions.clear();
  }

  private async session(peerId: string, digest: string, signal?: AbortSignal): Promise<AskerSession> {
    const key = `${peerId} ${digest}`;
    const existing = this.sessions.get(key);
    if (existing !== undefined && !existing.failed) {
      existing.lastUsed = Date.now();
      // A caller that arrives while the stream is being opened waits for it, not a second stream.
      await existing.ready;
      return existing;
    }
    if (this.sessions.size >= this.maxSessions) this.evictOne();
    const session = new AskerSession(peerId, digest, this.opts.logger, this.opts.trades, () => {
      if (this.sessions.get(key) === session) this.sessions.delete(key);
    });
    this.sessions.set(key, session);
    session.ready = (async () => {
      try {
        await session.start(await this.opts.open(peerId, signal));
        this.opened++;
      } catch (err) {
        session.fail(err as Error);
        throw err;
      }
    })();
    await session.ready;
    return session;
  }

  private evictOne(): void {
    let oldest: [string, AskerSession] | undefined;
    for (const entry of this.sessions) {
      if (entry[1].idle() && (oldest === undefined || entry[1].lastUsed < oldest[1].lastUsed)) oldest = entry;
    }
    if (oldest === undefined) return; // all busy: allow one more rather than cut a transfer
    this.sessions.delete(oldest[0]);
    oldest[1].close();
  }
}

/** A range as the holder announced it: the blob's size, the bytes that follow, and them. */
export interface OpenedRange {
  size: number;
  length: number;
  body: Readable;
}

/** A piece request on a session, from REQUEST to DONE. */
interface Pending {
  id: number;
  /** Asked for; then as announced by BEGIN. */
  length: number;
  received: number;
  body: PieceBody | undefined;
  /** Settles the request() call: at BEGIN (the body) or at a DONE without one. */
  resolve(opened: OpenedRange | undefined): void;
  reject(err: Error): void;
  settled: boolean;
}

class AskerSession {
  private stream: Stream | undefined;
  private reader: StreamReader | undefined;
  private answer: PieceAnswer;
  private heard = false;
  private held = 0;
  private peers: string[] = [];
  private readonly waiters = new Set<() => void>();
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  failed: Error | undefined;
  lastUsed = Date.now();
  /** Settles once the stream is open and OPEN sent (rejects if that failed). */
  ready: Promise<void> = Promise.resolve();

  constructor(
    private readonly peerId: string,
    private readonly digest: string,
    private readonly log: Logger,
    private readonly trades: TradeCounts | undefined,
    private readonly onGone: () => void,
  ) {}

  async start(stream: Stream): Promise<void> {
    this.stream = stream;
    this.reader = new StreamReader(stream, MAX_FRAME_BYTES + 5);
    await sendAll(stream, frame(Frame.OPEN, new TextEncoder().encode(JSON.stringify({ digest: this.digest }))));
    void this.readLoop();
  }

  idle(): boolean {
    return this.pending.size === 0 && this.waiters.size === 0;
  }

  async info(opts: { signal?: AbortSignal; wait?: PieceWait; timeoutMs: number }): Promise<PieceAnswer> {
    if (!this.heard) await this.until(() => this.heard, opts.timeoutMs, opts.signal, true);
    if (opts.wait !== undefined && this.held <= opts.wait.known) {
      await this.until(() => this.held > opts.wait!.known, opts.wait.waitMs, opts.signal, false);
    }
    this.lastUsed = Date.now();
    const answer = this.answer;
    if (typeof answer !== 'object') return answer;
    const peers = this.peers;
    this.peers = [];
    // Copies: a provisional table grows in place as HASHES arrive.
    const copy: { table: PieceTable; have: boolean[]; peers?: string[] } = { table: { ...answer.table, hashes: answer.table.hashes.slice() }, have: answer.have.slice() };
    if (peers.length > 0) copy.peers = peers;
    return copy;
  }

  request(offset: number, length: number, opts: { signal?: AbortSignal; timeoutMs: number }): Promise<OpenedRange | undefined> {
    if (this.failed !== undefined) return Promise.reject(this.failed);
    if (this.pending.size >= MAX_PIPELINED) return Promise.reject(new PeerBusyError(this.peerId, this.digest));
    const id = this.nextId++;
    this.lastUsed = Date.now();
    return new Promise<OpenedRange | undefined>((resolve, reject) => {
      const p: Pending = { id, length, received: 0, body: undefined, resolve, reject, settled: false };
      this.pending.set(id, p);
      const signal = opts.signal;
      const onAbort = (): void => this.cancel(p, signal!.reason instanceof Error ? signal!.reason : new Error('aborted'));
      signal?.addEventListener('abort', onAbort, { once: true });
      const cleanup = (): void => signal?.removeEventListener('abort', onAbort);
      p.resolve = (opened) => {
        p.settled = true;
        if (opened === undefined) cleanup();
        else opened.body.once('close', cleanup);
        resolve(opened);
      };
      p.reject = (err) => {
        p.settled = true;
        cleanup();
        reject(err);
      };
      sendAll(this.stream!, encodeRequest(id, offset, length)).catch((err: unknown) => this.fail(err as Error));
    });
  }

  /** The asker no longer wants request `p`: tell the holder, and end its body or promise. */
  private cancel(p: Pending, reason: Error): void {
    if (!this.pending.has(p.id)) return;
    if (this.stream?.status === 'open') sendAll(this.stream, encodeId(Frame.CANCEL, p.id)).catch(() => undefined);
    // Its DONE (cancelled) will find nothing pending; late DATA for it is dropped.
    this.pending.delete(p.id);
    if (!p.settled) p.reject(reason);
    else p.body?.destroy(reason);
    this.lastUsed = Date.now();
  }

  close(): void {
    if (this.stream?.status === 'open') this.stream.close().catch(() => undefined);
    this.fail(new Error('session closed'));
  }

  fail(err: Error): void {
    if (this.failed !== undefined) return;
    this.failed = err;
    this.onGone();
    this.reader?.dispose();
    if (this.stream?.status === 'open' && err.message !== 'session closed') this.stream.abort(err);
    for (const p of this.pending.values()) {
      if (!p.settled) p.reject(err);
      else p.body?.fail(err);
    }
    this.pending.clear();
    for (const wake of [...this.waiters]) wake();
  }

  /** Waits until `done()` or `ms` passes; `mustHold`: the timeout is an error. */
  private until(done: () => boolean, ms: number, signal: AbortSignal | undefined, mustHold: boolean): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const finish = (err?: Error): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
        signal?.removeEventListener('abort', onAbort);
        if (err === undefined) resolve();
        else reject(err);
      };
      const check = (): void => {
        if (this.failed !== undefined) finish(this.failed);
        else if (done()) finish();
      };
      const onAbort = (): void => finish(signal!.reason instanceof Error ? signal!.reason : new Error('aborted'));
      const timer = setTimeout(() => (mustHold ? finish(new BlobProtocolError(`no STATE within ${ms} ms`, this.peerId)) : finish()), ms);
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.add(check);
      check();
    });
  }

  private notify(): void {
    for (const wake of [...this.waiters]) wake();
  }

  private async readLoop(): Promise<void> {
    try {
      for (;;) {
        const f = await readFrame(this.reader!);
        if (f === undefined) throw new BlobProtocolError('the holder ended the session', this.peerId);
        if (f.data !== undefined) this.onData(f.data.id, f.data.chunks);
        else this.onFrame(f.type, f.payload);
      }
    } catch (err) {
      this.fail(err as Error);
    }
  }

  private onData(id: number, chunks: Uint8Array[]): void {
    const p = this.pending.get(id);
    if (p === undefined) return; // cancelled
    if (p.body === undefined) throw new BlobProtocolError(`DATA before BEGIN for request ${id}`, this.peerId);
    for (const bytes of chunks) {
      p.received += bytes.byteLength;
      if (p.received > p.length) throw new BlobProtocolError(`more than the ${p.length} bytes announced`, this.peerId);
      p.body.push(bytes);
    }
  }

  private onFrame(type: number, payload: Uint8Array): void {
    switch (type) {
      case Frame.STATE: {
        this.answer = decodeState(payload, this.peerId);
        this.heard = true;
        this.held = typeof this.answer === 'object' ? this.answer.have.filter(Boolean).length : 0;
        this.notify();
        return;
      }
      case Frame.HASHES: {
        const answer = this.answer;
        if (typeof answer !== 'object') throw new BlobProtocolError('HASHES before a piece table', this.peerId);
        answer.table.hashes.push(...decodeHashes(payload, answer.table, this.peerId));
        return;
      }
      case Frame.HAVE: {
        const answer = this.answer;
        if (typeof answer !== 'object') throw new BlobProtocolError('HAVE before a piece table', this.peerId);
        for (const index of decodeHave(payload, answer.have.length, this.peerId)) {
          if (index >= answer.table.hashes.length) throw new BlobProtocolError(`HAVE of piece ${index} before its hash`, this.peerId);
          if (!answer.have[index]) {
            answer.have[index] = true;
            this.held++;
          }
        }
        this.notify();
        return;
      }
      case Frame.PEERS: {
        for (const p of decodePeers(payload, this.peerId)) if (!this.peers.includes(p)) this.peers.push(p);
        return;
      }
      case Frame.BEGIN: {
        const { id, length, size } = decodeBegin(payload, this.peerId);
        const p = this.pending.get(id);
        if (p === undefined) return; // cancelled
        if (p.body !== undefined) throw new BlobProtocolError(`a second BEGIN for request ${id}`, this.peerId);
        if (length > p.length) throw new BlobProtocolError(`BEGIN announces ${length} bytes, ${p.length} were asked for`, this.peerId);
        p.length = length;
        this.trades?.traded(this.peerId);
        p.body = new PieceBody(() => this.cancel(p, new Error('piece body closed by the reader')));
        p.resolve({ size, length, body: p.body });
        return;
      }
      case Frame.DONE: {
        if (payload.byteLength !== 5) throw new BlobProtocolError('bad DONE', this.peerId);
        const id = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0);
        const result = payload[4];
        const p = this.pending.get(id);
        if (p === undefined) return; // cancelled by us
        this.pending.delete(id);
        this.lastUsed = Date.now();
        if (result === Done.OK) {
          if (p.body === undefined || p.received !== p.length) throw new BlobProtocolError(`DONE after ${p.received} of ${p.length} bytes`, this.peerId);
          p.body.end();
          return;
        }
        const err =
          result === Done.REFUSED ? new PeerBusyError(this.peerId, this.digest)
          : new BlobProtocolError(result === Done.CANCELLED ? 'request cancelled' : 'the holder failed the request', this.peerId);
        if (result === Done.NOT_HELD && !p.settled) p.resolve(undefined);
        else if (!p.settled) p.reject(err);
        else p.body?.fail(err);
        return;
      }
      default:
        throw new BlobProtocolError(`unexpected frame ${type}`, this.peerId);
    }
  }
}

/**
 * A request's bytes as a Readable. Not paused by the consumer: a request is at most a piece and
 * a session holds at most MAX_PIPELINED of them, so what it buffers is bounded.
 */
class PieceBody extends Readable {
  private ended = false;

  constructor(private readonly onDestroyEarly: () => void) {
    super({ highWaterMark: 1 << 20 });
  }

  override _read(): void {}

  end(): void {
    this.ended = true;
    this.push(null);
  }

  fail(err: Error): void {
    this.ended = true;
    // A body handed out at BEGIN may not have a consumer yet: an 'error' with no listener would
    // crash the agent. The error stays on the stream (`errored`) for a consumer that comes later.
    if (this.listenerCount('error') === 0) this.once('error', () => undefined);
    this.destroy(err);
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    if (!this.ended) {
      this.ended = true;
      this.onDestroyEarly();
    }
    cb(err);
  }
}
