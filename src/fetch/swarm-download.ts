import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { givePieceBuffer, takePieceBuffer } from './piece-buffers.js';
import { consistentTables, isComplete, pieceCount, pieceRange, validatePieceTable, type PieceTable } from './piece-table.js';

/*
 * The piece scheduler: downloads one blob's pieces from several providers at once into a temp
 * file. Peers are untrusted: every piece is checked against the piece table before it is
 * written (and reported), and the caller still checks the whole blob against its digest.
 *
 * Scheduling, and why:
 * - Rarest first among the providers' bitfields, ties broken at random: a piece only one peer
 *   has is taken while that peer is still there, and downloaders that see the same bitfields
 *   pick different pieces, so they can trade them with each other instead of all queueing at
 *   the same seed (the swarming effect).
 * - Slots are handed out round-robin by rank (one per peer, then a second, …) so every provider
 *   works and the best-ranked gets first choice.
 * - Endgame: once every missing piece someone holds is in flight, idle peers duplicate the
 *   oldest outstanding requests (at most two per piece) and the first verified copy cancels the
 *   others, so one slow peer cannot hold up the end of the download.
 * - Failures back a peer off exponentially; a peer that keeps failing is dropped, one that sends
 *   a bad piece is dropped at once. Bitfields are re-read every refreshMs because providers are
 *   downloading too.
 * - Memory: each request holds at most one piece, and requests are capped per peer and overall.
 *   Piece buffers are reused within a download: allocating a fresh multi-MiB buffer per piece
 *   made garbage collection the largest single cost of a transfer (measured).
 */

export interface PieceSource {
  /**
   * 'pending': the peer is fetching the blob and has no verified piece yet (treated as none
   * held). `peers`: others the peer knows to be after the blob too; they join the download.
   * With `wait`, the peer may hold its answer until it has more than `wait.known` verified
   * pieces, for up to `wait.waitMs` (a long poll; a peer may also answer at once).
   */
  pieceInfo(peerId: string, digest: string, signal: AbortSignal, wait?: { known: number; waitMs: number }): Promise<{ table: PieceTable; have: boolean[]; peers?: string[] } | 'pending' | undefined>;
  openRange(peerId: string, digest: string, offset: number, length: number, signal: AbortSignal): Promise<Readable | undefined>;
}

export interface SwarmDownloadOptions {
  digest: string;
  /** Ranked best first (zone, rtt). */
  providers: string[];
  source: PieceSource;
  /** Temp file; pieces are written at their offsets. */
  file: FileHandle;
  /** Known already (e.g. from the store); else taken from the first provider that answers. */
  table?: PieceTable;
  /** Pieces already verified in `file` (resume); needs `table`. */
  have?: boolean[];
  /** Default 2. */
  maxInFlightPerPeer?: number;
  /** Requests in flight over all peers; default 32 MiB worth of pieces (at least 2). */
  maxInFlight?: number;
  /** Re-ask providers' bitfields this often (they are downloading too); default 500 ms. */
  refreshMs?: number;
  /**
   * A provider with nothing more for us is asked to answer once it has (a long poll) within
   * this long; default 2 s. 0: ask and answer at once.
   */
  pollWaitMs?: number;
  /** A piece request that receives no bytes for this long fails; default 10 s. */
  pieceIdleTimeoutMs?: number;
  /** A pieceInfo call that takes longer fails; default 5 s. */
  infoTimeoutMs?: number;
  signal: AbortSignal;
  /**
   * Checks a piece against its table entry (sha256 hex); default: hashed inline. The buffer is
   * backed by a SharedArrayBuffer, so a worker thread can read it in place.
   */
  verifyPiece?(index: number, bytes: Uint8Array, expected: string): Promise<boolean>;
  /** The table was learnt from a provider (not called for `opts.table`). */
  onTable?(table: PieceTable): void;
  /**
   * A piece was verified and written. `data` holds its bytes only during the call (the buffer
   * is reused for the next piece): a caller that needs them later must copy them.
   */
  onPiece?(index: number, bytes: number, peerId: string, data: Uint8Array): void;
  /** The peer sent a piece that failed its hash, or a table that differs from the trusted one; it is dropped from this download. */
  onBadPeer?(peerId: string, reason: string): void;
  onPeerFailed?(peerId: string, error: unknown): void;
  /** When no provider holds a still-missing piece (and nothing is in flight) for this long, give up; default 3000 ms. */
  stallMs?: number;
}

export interface SwarmDownloadResult {
  /** Undefined only when no provider ever answered with a table (and none was given). */
  table: PieceTable | undefined;
  complete: boolean;
  /** Pieces verified in the file (including those given in `opts.have`). */
  have: boolean[];
}

const DEFAULT_MAX_IN_FLIGHT_PER_PEER = 2;
const MAX_BUFFERED_BYTES = 32 * 1024 * 1024;
const DEFAULT_REFRESH_MS = 500;
/**
 * A long poll returns at the provider's next piece, so a longer one costs no latency; it only
 * spares the stream each way that every empty return costs (at 64 agents an idle provider's
 * polls every 2 s were much of the 220 pieces streams each agent answered per rollout). Under
 * the protocol's cap (MAX_WAIT_MS); a stall is judged by its own timer, not by these.
 */
const DEFAULT_POLL_WAIT_MS = 8000;
/** Peers one download asks at most (those it started with, and those it was told of). */
const MAX_PEERS = 32;
/** However few its pieces, a download may take on this many peers (alternatives when some fail). */
const MIN_NAMED_PEERS = 4;
const DEFAULT_STALL_MS = 3000;
const DEFAULT_PIECE_IDLE_TIMEOUT_MS = 10_000;
const DEFAULT_INFO_TIMEOUT_MS = 5000;
/** pieceInfo calls in flight at once (start-up asks every provider). */
const INFO_CONCURRENCY = 8;
/** Consecutive failures after which a peer is dropped from the download. */
const MAX_FAILURES = 3;
/**
 * Busy answers are not the peer's fault: a peer is dropped for them only after this many in a
 * row (~20 s of asking), so a download falls back to the origin rather than wait forever.
 */
const MAX_BUSY = 100;
const BUSY_BACKOFF_MS = 200;
const BACKOFF_BASE_MS = 200;
const BACKOFF_MAX_MS = 2000;
/** Endgame: requests for one piece at once. */
const MAX_REQUESTS_PER_PIECE = 2;
/** Endgame: a request younger than this (or than twice the usual piece time) is not duplicated. */
const ENDGAME_MIN_AGE_MS = 500;

function newPeer(id: string): Peer {
  return { id, bitfield: undefined, inFlight: new Map(), dropped: false, failures: 0, busy: 0, backoffLevel: 0, backoffUntil: 0, infoBusy: false, answered: false };
}

export async function swarmDownload(opts: SwarmDownloadOptions): Promise<SwarmDownloadResult> {
  return new SwarmDownload(opts).run();
}

interface Peer {
  id: string;
  bitfield: boolean[] | undefined;
  inFlight: Map<number, Request>;
  dropped: boolean;
  /** Consecutive failures (busy answers excluded), reset by a verified piece. */
  failures: number;
  busy: number;
  /** Grows with every failure (busy answers excluded); drives the backoff. */
  backoffLevel: number;
  backoffUntil: number;
  infoBusy: boolean;
  /** The first pieceInfo call has finished (whatever its outcome). */
  answered: boolean;
}

interface Request {
  peer: Peer;
  index: number;
  controller: AbortController;
  /** Cancelled by the scheduler (endgame loser, peer dropped, download over): not a failure. */
  cancelled: boolean;
  startedAt: number;
}

class PieceTimeoutError extends Error {
  override readonly name = 'PieceTimeoutError';
}

class SwarmDownload {
  private table: PieceTable | undefined;
  private tableTrusted = false;
  private have: boolean[] = [];
  private missing = 0;
  private readonly peers: Peer[];
  private readonly requests = new Map<number, Set<Request>>();
  /** Pieces verified and being written: never requested again. */
  private readonly writing = new Set<number>();
  private readonly tasks = new Set<Promise<void>>();
  private readonly infoQueue: Peer[] = [];
  private infoActive = 0;
  private readonly controller = new AbortController();
  private finished = false;
  private resolve!: (r: SwarmDownloadResult) => void;
  private reject!: (err: unknown) => void;
  private refreshTimer: NodeJS.Timeout | undefined;

  private stallTimer: NodeJS.Timeout | undefined;
  private wakeTimer: NodeJS.Timeout | undefined;
  private wakeAt = Infinity;
  private readonly maxPerPeer: number;
  private readonly refreshMs: number;
  private readonly stallMs: number;
  private readonly pieceIdleMs: number;
  private readonly infoTimeoutMs: number;
  /** Moving average of how long a piece took, for the endgame. */
  private pieceMs: number | undefined;

  constructor(private readonly opts: SwarmDownloadOptions) {
    this.maxPerPeer = Math.max(1, opts.maxInFlightPerPeer ?? DEFAULT_MAX_IN_FLIGHT_PER_PEER);
    this.refreshMs = Math.max(10, opts.refreshMs ?? DEFAULT_REFRESH_MS);
    this.stallMs = Math.max(0, opts.stallMs ?? DEFAULT_STALL_MS);
    this.pieceIdleMs = opts.pieceIdleTimeoutMs ?? DEFAULT_PIECE_IDLE_TIMEOUT_MS;
    this.infoTimeoutMs = opts.infoTimeoutMs ?? DEFAULT_INFO_TIMEOUT_MS;
    this.peers = [...new Set(opts.providers)].map(newPeer);
  }

  async run(): Promise<SwarmDownloadResult> {
    const { signal } = this.opts;
    signal.throwIfAborted();
    if (this.opts.table !== undefined) {
      // A provisional table carried over from an earlier round (the first wave) has hashes only
      // for a prefix: it grows from the providers' answers, and as a peer's claim it is not
      // trusted over theirs. Strictly validated it failed the round, and the pull went to the
      // origin (bench:rollout: 1.48 × the image).
      const provisional = !isComplete(this.opts.table);
      this.setTable(validatePieceTable(this.opts.table, undefined, { provisional }), !provisional);
      if (this.opts.have !== undefined) {
        if (this.opts.have.length !== this.have.length) {
          throw new Error(`have lists ${this.opts.have.length} pieces, the table ${this.have.length}`);
        }
        this.have = this.opts.have.map((h) => h === true);
        this.missing = this.have.filter((h) => !h).length;
      }
      if (this.missing === 0) return this.result(true);
    } else if (this.opts.have !== undefined) {
      throw new Error('swarmDownload: `have` needs the `table` it refers to');
    }

    const done = new Promise<SwarmDownloadResult>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    const onAbort = (): void => this.fail(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      for (const peer of this.peers) this.queueInfo(peer);
      this.refreshTimer = setInterval(() => this.refresh(), this.refreshMs);

      this.evaluate();
      return await done;
    } finally {
      signal.removeEventListener('abort', onAbort);
      this.finished = true;
      clearInterval(this.refreshTimer);

      clearTimeout(this.stallTimer);
      clearTimeout(this.wakeTimer);
      for (const set of this.requests.values()) for (const req of set) this.cancel(req);
      this.controller.abort(new Error('swarm download over'));
      // No write may land in the file after we return: the caller closes or renames it.
      while (this.tasks.size > 0) await Promise.allSettled([...this.tasks]);
    }
  }

  // --- state transitions -----------------------------------------------------------------------

  private setTable(table: PieceTable, trusted: boolean): void {
    this.table = table;
    this.tableTrusted = trusted;
    this.have = new Array<boolean>(pieceCount(table)).fill(false);
    this.missing = this.have.length;
  }

  private result(complete: boolean): SwarmDownloadResult {
    return { table: this.table, complete, have: [...this.have] };
  }

  private finish(complete: boolean): void {
    if (this.finished) return;
    this.finished = true;
    this.resolve(this.result(complete));
  }

  private fail(err: unknown): void {
    if (this.finished) return;
    this.finished = true;
    this.reject(err);
  }

  /** Runs after every event: finishes, hands out requests, watches for a stall. */
  private evaluate(): void {
    if (this.finished) return;
    if (this.table !== undefined && this.missing === 0 && this.writing.size === 0) {
      this.finish(true);
      return;
    }
    if (this.peers.every((p) => p.dropped) && this.writing.size === 0) {
      this.finish(false); // every provider is gone (or none was given)
      return;
    }
    this.schedule();
    this.watchStall();
  }

  private watchStall(): void {
    if (!this.isIdle()) {
      clearTimeout(this.stallTimer);
      this.stallTimer = undefined;
      return;
    }
    if (this.stallTimer !== undefined) return;
    this.stallTimer = setTimeout(() => {
      this.stallTimer = undefined;
      if (this.isIdle()) this.finish(false);
      else this.evaluate();
    }, this.stallMs);
  }

  /** Nothing in flight, no first answer awaited, and no remaining provider holds a missing piece. */
  private isIdle(): boolean {
    if (this.requests.size > 0 || this.writing.size > 0) return false;
    for (const peer of this.peers) {
      if (peer.dropped) continue;
      if (!peer.answered) return false;
      if (this.holdsMissing(peer)) return false;
    }
    return true;
  }

  private holdsMissing(peer: Peer): boolean {
    const bits = peer.bitfield;
    if (bits === undefined || this.table === undefined) return false;
    for (let i = 0; i < this.have.length; i++) if (bits[i] === true && !this.have[i]) return true;
    return false;
  }

  private dropPeer(peer: Peer): void {
    if (peer.dropped) return;
    peer.dropped = true;
    for (const req of [...peer.inFlight.values()]) this.cancel(req);
  }

  private badPeer(peer: Peer, reason: string): void {
    if (peer.dropped) return;
    this.emit(() => this.opts.onBadPeer?.(peer.id, reason));
    this.dropPeer(peer);
  }

  private peerFailed(peer: Peer, error: unknown): void {
    if (peer.dropped) return;
    this.emit(() => this.opts.onPeerFailed?.(peer.id, error));
    const busy = (error as { name?: unknown } | undefined)?.name === 'PeerBusyError';
    if (busy) peer.busy++;
    else peer.failures++;
    if (peer.failures >= MAX_FAILURES || peer.busy >= MAX_BUSY) {
      this.dropPeer(peer);
      return;
    }
    // A busy peer is serving others at its upload limit: a slot frees within moments, so it is
    // asked again soon (with jitter, so a wave of downloaders does not return in step).
    const delay = busy
      ? BUSY_BACKOFF_MS * (0.5 + Math.random())
      : Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** peer.backoffLevel++);
    peer.backoffUntil = Date.now() + delay;
    this.scheduleWake(peer.backoffUntil);
  }

  private scheduleWake(at: number): void {
    if (this.wakeTimer !== undefined && this.wakeAt <= at) return;
    clearTimeout(this.wakeTimer);
    this.wakeAt = at;
    this.wakeTimer = setTimeout(() => {
      this.wakeTimer = undefined;
      this.wakeAt = Infinity;
      this.evaluate();
    }, Math.max(0, at - Date.now()));
  }

  /** Callbacks are the caller's: one that throws must not derail the download. */
  private emit(fn: () => void): void {
    try {
      fn();
    } catch {
      // ignored by contract
    }
  }

  private track(fn: () => Promise<void>): void {
    const task: Promise<void> = fn()
      .catch((err: unknown) => this.fail(err)) // a bug here, not a peer fault
      .finally(() => this.tasks.delete(task));
    this.tasks.add(task);
  }

  // --- piece info ------------------------------------------------------------------------------

  private queueInfo(peer: Peer): void {
    if (peer.infoBusy || peer.dropped || this.finished) return;
    peer.infoBusy = true;
    this.infoQueue.push(peer);
    this.pumpInfo();
  }

  private pumpInfo(): void {
    while (this.infoActive < INFO_CONCURRENCY && this.infoQueue.length > 0) {
      const peer = this.infoQueue.shift()!;
      if (peer.dropped || this.finished) {
        peer.infoBusy = false;
        continue;
      }
      this.infoActive++;
      this.track(() => this.askInfo(peer));
    }
  }

  /**
   * Asks a provider with nothing more for us to answer when it has more: one request per change
   * instead of one per refresh (every ask costs a stream each way), and news arrives at once.
   * Long polls do not take the concurrency slots meant for first asks.
   */
  private poll(peer: Peer): void {
    if (peer.infoBusy || peer.dropped || this.finished) return;
    const waitMs = this.opts.pollWaitMs ?? DEFAULT_POLL_WAIT_MS;
    if (waitMs <= 0) return this.queueInfo(peer);
    peer.infoBusy = true;
    const known = peer.bitfield?.filter(Boolean).length ?? 0;
    this.track(() => this.askInfo(peer, { known, waitMs }));
  }

  private async askInfo(peer: Peer, wait?: { known: number; waitMs: number }): Promise<void> {
    let info: Awaited<ReturnType<PieceSource['pieceInfo']>>;
    let error: unknown;
    let failed = false;
    const signal = AbortSignal.any([this.controller.signal, AbortSignal.timeout(this.infoTimeoutMs + (wait?.waitMs ?? 0))]);
    try {
      info = await untilAborted(this.opts.source.pieceInfo(peer.id, this.opts.digest, signal, wait), signal);
    } catch (err) {
      failed = true;
      error = err;
    } finally {
      if (wait === undefined) this.infoActive--;
      peer.infoBusy = false;
      peer.answered = true;
    }
    if (this.finished) return;
    if (failed) this.peerFailed(peer, error);
    else this.acceptInfo(peer, info);
    this.pumpInfo();
    this.evaluate();
  }

  private acceptInfo(peer: Peer, info: { table: PieceTable; have: boolean[]; peers?: string[] } | 'pending' | undefined): void {
    if (peer.dropped) return;
    if (info === undefined || info === 'pending') {
      peer.bitfield = undefined; // holds nothing of it (yet)
      return;
    }
    let table: PieceTable;
    try {
      table = validatePieceTable(info.table, undefined, { provisional: true });
    } catch (err) {
      this.badPeer(peer, `invalid piece table: ${(err as Error).message}`);
      return;
    }
    if (!Array.isArray(info.have) || info.have.length !== pieceCount(table)) {
      this.badPeer(peer, 'bitfield does not match its piece table');
      return;
    }
    // A provisional table (the first wave) has the hashes of the pieces its holder has so far.
    if (info.have.lastIndexOf(true) >= table.hashes.length) {
      this.badPeer(peer, 'holds a piece its table has no hash for');
      return;
    }
    if (this.table === undefined) {
      this.setTable(table, false);
      this.emit(() => this.opts.onTable?.(table));
    } else if (consistentTables(this.table, table)) {
      // The same table, or one that knows more of it: grown in place, so whoever holds the
      // table (the partial peers read from) sees the new hashes too.
      if (table.hashes.length > this.table.hashes.length) this.table.hashes.push(...table.hashes.slice(this.table.hashes.length));
    } else {
      // Tables are a pure function of the bytes, so two tables for one digest cannot both be
      // right. Against a trusted table the peer is lying; against another peer's, either may be.
      if (this.tableTrusted) this.badPeer(peer, 'piece table differs from the known one');
      else {
        this.emit(() => this.opts.onPeerFailed?.(peer.id, new Error('piece table differs from the one in use')));
        this.dropPeer(peer);
      }
      return;
    }
    peer.bitfield = info.have.map((h) => h === true);
    this.addPeers(info.peers);
  }

  /** Re-reads bitfields that may still gain pieces we miss. */
  private refresh(): void {
    if (this.finished) return;
    const now = Date.now();
    for (const peer of this.peers) {
      if (peer.dropped || peer.infoBusy || now < peer.backoffUntil) continue;
      if (this.table !== undefined && peer.bitfield !== undefined && this.coversMissing(peer.bitfield)) continue;
      // A peer that still holds pieces nobody has been asked for has work already: asking
      // what else it has can wait (every ask is a stream each way, and a wave of downloaders
      // asking each other twice a second cost more CPU than the pieces they traded).
      if (peer.bitfield !== undefined && this.hasUnrequested(peer.bitfield)) continue;
      this.poll(peer);
    }
    this.evaluate();
  }

  /**
   * Adds the peers a provider named as also after the blob: in a rollout every agent starts at
   * the same moment, when only the origin fetcher holds anything, and the others begin to
   * serve pieces a moment later. Without this, a whole wave would download from the fetcher
   * alone. Dropped peers stay dropped; a download takes at most MAX_PEERS.
   */
  private addPeers(ids: readonly string[] | undefined): void {
    if (ids === undefined) return;
    const known = new Set(this.peers.map((p) => p.id));
    const limit = this.peerLimit();
    for (const id of ids) {
      if (this.peers.length >= limit) return;
      if (typeof id !== 'string' || known.has(id)) continue;
      known.add(id);
      const peer = newPeer(id);
      this.peers.push(peer);
      this.queueInfo(peer);
    }
  }

  /**
   * Peers the download takes on at most: no more than its pieces can keep busy (each piece is
   * asked of MAX_REQUESTS_PER_PIECE peers at most), and never fewer than MIN_NAMED_PEERS. A
   * one-piece layer asked of the 31 others of a zone that peer exchange named cost a dial to
   * each (108 dial attempts per agent per rollout at 64 agents, 8 MiB image).
   */
  private peerLimit(): number {
    if (this.table === undefined) return MAX_PEERS;
    return Math.min(MAX_PEERS, Math.max(MIN_NAMED_PEERS, MAX_REQUESTS_PER_PIECE * pieceCount(this.table)));
  }

  private hasUnrequested(bits: boolean[]): boolean {
    for (let i = 0; i < this.have.length; i++) {
      if (bits[i] === true && !this.have[i] && !this.writing.has(i) && !this.requests.has(i)) return true;
    }
    return false;
  }

  private coversMissing(bits: boolean[]): boolean {
    for (let i = 0; i < this.have.length; i++) if (!this.have[i] && bits[i] !== true) return false;
    return true;
  }

  // --- scheduling ------------------------------------------------------------------------------

  private inFlightTotal(): number {
    let n = 0;
    for (const set of this.requests.values()) n += set.size;
    return n;
  }

  private schedule(): void {
    const table = this.table;
    if (table === undefined) return;
    const maxTotal = this.opts.maxInFlight ?? Math.max(2, Math.floor(MAX_BUFFERED_BYTES / table.pieceSize));
    let total = this.inFlightTotal();
    if (total >= maxTotal) return;

    const now = Date.now();
    const holders = this.peers.filter((p) => !p.dropped && p.bitfield !== undefined);
    const usable = holders.filter((p) => now >= p.backoffUntil);
    if (usable.length === 0) return;

    // Availability among the remaining providers (backed-off ones still hold their pieces).
    const avail = new Uint16Array(this.have.length);
    for (const p of holders) {
      const bits = p.bitfield!;
      for (let i = 0; i < avail.length; i++) if (bits[i] === true) avail[i]!++;
    }
    const keyed: { i: number; a: number; r: number }[] = [];
    for (let i = 0; i < avail.length; i++) {
      if (!this.have[i] && !this.writing.has(i) && !this.requests.has(i) && avail[i]! > 0) keyed.push({ i, a: avail[i]!, r: Math.random() });
    }
    keyed.sort((x, y) => x.a - y.a || x.r - y.r);
    const candidates = keyed.map((k) => k.i);

    for (let level = 0; level < this.maxPerPeer; level++) {
      for (const peer of usable) {
        if (total >= maxTotal) return;
        if (peer.inFlight.size > level) continue;
        const bits = peer.bitfield!;
        const at = candidates.findIndex((i) => bits[i] === true);
        if (at >= 0) {
          this.start(peer, candidates[at]!);
          candidates.splice(at, 1);
          total++;
          continue;
        }
        // Endgame only once nothing un-requested is left that anyone could serve.
        if (candidates.length > 0) continue;
        const dup = this.endgamePick(peer);
        if (dup !== undefined) {
          this.start(peer, dup);
          total++;
        }
      }
    }
  }

  /**
   * The in-flight piece this peer could duplicate: fewest requests, then the oldest. Only a
   * request running well past the usual piece time is duplicated: with few pieces and many
   * peers the endgame starts at once, and duplicating every request would fetch the whole
   * blob twice (measured in a rollout: half again the CPU, a slower rollout).
   */
  private endgamePick(peer: Peer): number | undefined {
    const bits = peer.bitfield!;
    const now = Date.now();
    const slowAfter = this.pieceMs === undefined ? Infinity : Math.max(ENDGAME_MIN_AGE_MS, 2 * this.pieceMs);
    let best: number | undefined;
    let bestCount = Infinity;
    let bestStart = Infinity;
    for (const [i, set] of this.requests) {
      if (bits[i] !== true || peer.inFlight.has(i) || this.writing.has(i) || set.size >= MAX_REQUESTS_PER_PIECE) continue;
      let oldest = Infinity;
      for (const r of set) oldest = Math.min(oldest, r.startedAt);
      if (now - oldest < slowAfter) continue;
      if (set.size < bestCount || (set.size === bestCount && oldest < bestStart)) {
        best = i;
        bestCount = set.size;
        bestStart = oldest;
      }
    }
    return best;
  }

  private start(peer: Peer, index: number): void {
    const req: Request = { peer, index, controller: new AbortController(), cancelled: false, startedAt: Date.now() };
    peer.inFlight.set(index, req);
    let set = this.requests.get(index);
    if (set === undefined) this.requests.set(index, (set = new Set()));
    set.add(req);
    this.track(() => this.fetchPiece(req));
  }

  private cancel(req: Request): void {
    req.cancelled = true;
    req.controller.abort(new Error('piece request cancelled'));
  }

  private release(req: Request): void {
    if (req.peer.inFlight.get(req.index) === req) req.peer.inFlight.delete(req.index);
    const set = this.requests.get(req.index);
    if (set !== undefined) {
      set.delete(req);
      if (set.size === 0) this.requests.delete(req.index);
    }
  }

  // --- one piece -------------------------------------------------------------------------------

  private async fetchPiece(req: Request): Promise<void> {
    const { peer, index } = req;
    const { start, end } = pieceRange(this.table!, index);
    const length = end - start;
    const signal = req.controller.signal;
    // Idle timeout: a peer that stops sending fails the request (and the piece goes elsewhere).
    // Data only records the time; the timer looks at it (re-arming a timer per chunk cost more).
    let lastData = Date.now();
    const check = (): void => {
      const quiet = Date.now() - lastData;
      if (quiet >= this.pieceIdleMs) req.controller.abort(new PieceTimeoutError(`no data for piece ${index} in ${this.pieceIdleMs} ms`));
      else idle = setTimeout(check, this.pieceIdleMs - quiet);
    };
    let idle: NodeJS.Timeout | undefined = setTimeout(check, this.pieceIdleMs);
    const touch = (): void => {
      lastData = Date.now();
    };

    const buffer = takePieceBuffer(this.table!.pieceSize);
    const bytes = buffer.subarray(0, length);
    let notHeld = false;
    let error: unknown;
    let failed = false;
    try {
      const body = await untilAborted(this.opts.source.openRange(peer.id, this.opts.digest, start, length, signal), signal, (late) => late?.destroy());
      if (body === undefined) notHeld = true;
      else await readPiece(body, bytes, signal, touch);
    } catch (err) {
      failed = true;
      // On our own abort (a timeout) the stream's error may just say "aborted": keep the cause.
      error = signal.aborted ? signal.reason : err;
    } finally {
      clearTimeout(idle);
    }
    try {
      await this.settlePiece(req, bytes, failed, notHeld, error);
    } finally {
      givePieceBuffer(buffer);
    }
  }

  /** What a finished piece request leads to: a retry elsewhere, a dropped peer, or a written piece. */
  private async settlePiece(req: Request, bytes: Buffer, failed: boolean, notHeld: boolean, error: unknown): Promise<void> {
    const { peer, index } = req;
    const { start, end } = pieceRange(this.table!, index);
    const length = end - start;
    if (this.finished || req.cancelled) {
      this.release(req);
      return;
    }
    if (failed || notHeld) {
      this.release(req);
      if (notHeld && peer.bitfield !== undefined) peer.bitfield[index] = false; // stale until the next refresh
      this.peerFailed(peer, failed ? error : new Error(`peer does not hold piece ${index}`));
      this.evaluate();
      return;
    }
    const expected = this.table!.hashes[index]!;
    let valid: boolean;
    try {
      valid = this.opts.verifyPiece ? await this.opts.verifyPiece(index, bytes, expected) : createHash('sha256').update(bytes).digest('hex') === expected;
    } catch (err) {
      this.release(req);
      this.fail(err); // the hasher broke: not the peer's fault
      return;
    }
    if (this.finished || req.cancelled) {
      this.release(req);
      return;
    }
    if (!valid) {
      this.release(req);
      this.badPeer(peer, `piece ${index} failed its sha256 check`);
      this.evaluate();
      return;
    }
    if (this.have[index] || this.writing.has(index)) {
      this.release(req); // another copy won
      this.evaluate();
      return;
    }

    // This copy wins: cancel the endgame duplicates, then write.
    this.writing.add(index);
    for (const other of [...(this.requests.get(index) ?? [])]) if (other !== req) this.cancel(other);
    peer.failures = 0;
    peer.busy = 0;
    peer.backoffLevel = 0;
    try {
      await writeFully(this.opts.file, bytes, start);
    } catch (err) {
      this.writing.delete(index);
      this.release(req);
      this.fail(err);
      return;
    }
    this.writing.delete(index);
    this.release(req);
    if (this.finished) return;
    this.have[index] = true;
    this.missing--;
    const took = Date.now() - req.startedAt;
    this.pieceMs = this.pieceMs === undefined ? took : 0.8 * this.pieceMs + 0.2 * took;
    this.emit(() => this.opts.onPiece?.(index, length, peer.id, bytes));
    this.evaluate();
  }
}

/** Positional write of the whole buffer (a write may in principle take fewer bytes than asked). */
async function writeFully(file: FileHandle, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.byteLength) {
    const { bytesWritten } = await file.write(buf, done, buf.byteLength - done, position + done);
    if (!(bytesWritten > 0)) throw new Error(`file write at ${position + done} wrote nothing`);
    done += bytesWritten;
  }
}

/**
 * Fills `buf` with the body's bytes, which must be exactly as many. The body is destroyed when
 * `signal` aborts and after the read (either way), which resets a peer stream that has more to
 * send. Chunks are taken from 'data' events: async iteration would concatenate (copy) whatever
 * the stream has buffered before this copies it again.
 */
async function readPiece(body: Readable, buf: Uint8Array, signal: AbortSignal, onData: () => void): Promise<void> {
  const length = buf.byteLength;
  let got = 0;
  try {
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => finish(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
      const onChunk = (chunk: Uint8Array | string): void => {
        if (typeof chunk === 'string') return finish(new Error('piece body yielded a string'));
        if (got + chunk.byteLength > length) return finish(new Error(`peer sent more than the piece's ${length} bytes`));
        buf.set(chunk, got);
        got += chunk.byteLength;
        onData();
      };
      const onEnd = (): void => finish(got === length ? undefined : new Error(`piece body ended after ${got} of ${length} bytes`));
      const onClose = (): void => finish(new Error(`piece body closed after ${got} of ${length} bytes`));
      const finish = (err?: Error): void => {
        signal.removeEventListener('abort', onAbort);
        body.off('data', onChunk).off('end', onEnd).off('error', finish).off('close', onClose);
        body.on('error', ignore); // a late error (the reset that follows an abort) is expected
        if (err === undefined) resolve();
        else reject(err);
      };
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      body.on('data', onChunk).once('end', onEnd).once('error', finish).once('close', onClose);
    });
  } finally {
    body.destroy();
    // Until it has closed, a source may still count it as in flight.
    await finished(body).catch(ignore);
  }
  signal.throwIfAborted();
}

function ignore(): void {}

/**
 * `promise`, or a rejection as soon as `signal` aborts (sources are not trusted to honour it).
 * A value that arrives after the abort goes to `late` (to close a stream nobody will read).
 */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal, late?: (value: T) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const onAbort = (): void => {
      if (settled) return;
      settled = true;
      reject(signal.reason);
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        if (settled) {
          if (late !== undefined) {
            try {
              late(value);
            } catch {
              // nothing more to do with it
            }
          }
          return;
        }
        settled = true;
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        if (settled) return;
        settled = true;
        reject(err);
      },
    );
  });
}
