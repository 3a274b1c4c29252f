import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { createHash } from 'node:crypto';
import { FlushBehind } from '../store/flush-behind.js';
import { openReadStream } from '../store/read-stream.js';
import type { HashSession, HashWorker } from './hash-worker.js';
import { Partials, type Partial } from './partials.js';
import { isComplete, pieceCount, pieceRange, type PieceTable } from './piece-table.js';
import { swarmDownload, type PieceSource } from './swarm-download.js';
import type { BlobRequest, BlobSource, SourceBody } from './source.js';

export interface SwarmSourceEvents {
  /** The assembled blob failed its digest: every peer whose pieces went into it lied with its table. */
  penalised(peerId: string, reason: string): void;
  /** First verified piece: the agent can serve it, so it announces the blob. */
  firstPiece(digest: string): void;
  badPeer(peerId: string, reason: string): void;
  peerFailed(peerId: string, error: unknown): void;
  piece(peerId: string, bytes: number): void;
  /** A blob was assembled whole from the swarm, in this many seconds. */
  transferred(seconds: number): void;
  /** Bytes that went into an assembly, by where they came from. */
  bytes(kind: 'peer' | 'origin', count: number): void;
  /** Bytes were taken from the origin by an agent that is not the blob's fetcher. */
  originFallback?(reason: string): void;
}

/** Where pieces the swarm could not provide come from: the origin, one range each. */
export interface RangeSource {
  readRange(request: BlobRequest, offset: number, length: number, signal: AbortSignal): Promise<Buffer>;
}

/**
 * The swarm as one source: pieces from every listed provider at once, each checked against
 * the piece table, assembled in a partial file that peers can read verified pieces from
 * meanwhile. What it hands the orchestrator is the assembled file (or its verified prefix when
 * the swarm could not finish: the orchestrator then fetches the rest from the origin); the
 * orchestrator still checks the whole digest before anything is committed.
 */
export interface SwarmSourceOptions {
  /** Peers holding pieces of the blob, best first. */
  providers: string[];
  pieces: PieceSource;
  partials: Partials;
  events: SwarmSourceEvents;
  logger: Logger;
  /** Where the pieces no peer could provide come from. */
  fallback?: RangeSource;
  /**
   * Asked when the swarm could not finish (its peers failed, were busy or at their connection
   * limits): fresh holders of this zone to go on with, or none to give up on the swarm. So a
   * slow swarm sends an agent back to its zone before it sends it to the origin. `missing`:
   * the pieces still wanted (once a table is known), so peers that hold only what this agent
   * has already are not handed back as holders.
   */
  more?(signal: AbortSignal, missing?: ReadonlySet<number>): Promise<string[]>;
  /** Hashes off the event loop; without it, pieces and the whole blob are hashed inline. */
  hashing?: HashWorker;
}

/** Rounds of fresh holders a stalled swarm download tries before the origin. */
const MORE_ROUNDS = 4;
const RETRY_PAUSE_MS = 500;

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(t);
      reject(signal.reason as Error);
    }, { once: true });
  });
}

export class SwarmSource implements BlobSource {
  readonly kind = 'peer' as const;
  readonly name: string;
  /** Bytes are counted here as they arrive, by their real source; the copy is local. */
  readonly countsOwnBytes = true;
  /** Peers whose pieces went into the last assembly. */
  private contributors = new Set<string>();
  constructor(private readonly opts: SwarmSourceOptions) {
    this.name = `swarm(${opts.providers.length})`;
  }

  penalise(_request: BlobRequest, reason: string): void {
    for (const peer of this.contributors) this.opts.events.penalised(peer, reason);
  }

  async open(request: BlobRequest, offset: number, signal: AbortSignal): Promise<SourceBody | undefined> {
    const digest = request.digest.value;
    this.contributors = new Set();
    const partial = await this.opts.partials.start(digest);
    let handedOver = false;
    const started = performance.now();
    const flush = new FlushBehind(partial.file);
    let hashing: HashSession | undefined;
    try {
      let announced = false;
      const download = (providers: string[], known?: { table: PieceTable; have: boolean[] }) => swarmDownload({
        digest,
        providers,
        ...(known && { table: known.table, have: known.have }),
        source: this.opts.pieces,
        file: partial.file,
        signal,
        // Four pieces in flight per peer keep a single provider's stream busy (measured).
        maxInFlightPerPeer: 4,
        onTable: (table) => {
          partial.table = table;
          partial.provisional = !isComplete(table);
          partial.have = new Array<boolean>(pieceCount(table)).fill(false);
          hashing = this.opts.hashing?.session(partial.path, table, request.digest.algorithm);
        },
        ...(this.opts.hashing && { verifyPiece: (index, bytes, expected) => hashing!.verifyPiece(index, bytes, expected) }),
        onPiece: (index, bytes, peerId) => {
          this.opts.partials.markHave(partial, index);
          hashing?.written(index);
          flush.wrote(bytes);
          this.contributors.add(peerId);
          this.opts.events.piece(peerId, bytes);
          this.opts.events.bytes('peer', bytes);
          if (!announced) {
            announced = true;
            this.opts.events.firstPiece(digest);
          }
        },
        onBadPeer: (peerId, reason) => this.opts.events.badPeer(peerId, reason),
        onPeerFailed: (peerId, error) => this.opts.events.peerFailed(peerId, error),
      });
      let result = await download(this.opts.providers);
      for (let round = 1; !result.complete && this.opts.more !== undefined && round <= MORE_ROUNDS; round++) {
        await sleep(RETRY_PAUSE_MS * (0.5 + Math.random()), signal);
        const missing = result.table && new Set(result.have.flatMap((held, index) => (held ? [] : [index])));
        const providers = await this.opts.more(signal, missing);
        if (providers.length === 0) break;
        this.opts.logger.debug({ digest, round, providers: providers.length }, 'swarm stalled: going on with fresh holders of the zone');
        result = await download(providers, result.table && { table: result.table, have: result.have });
      }
      if (!result.table) {
        this.opts.events.originFallback?.('no peer answered');
        return undefined;
      }
      partial.table = result.table;
      partial.have = result.have;
      if (result.complete) this.opts.events.transferred((performance.now() - started) / 1000);
      else if (this.opts.fallback) await this.fillFromOrigin(request, partial, signal, hashing);
      const available = partial.have.every(Boolean) ? result.table.size : Partials.prefix(partial);
      if (available <= offset) {
        throw new Error(`the swarm delivered ${available} contiguous bytes of ${result.table.size}`);
      }
      if (available === result.table.size && offset === 0) {
        // Whole: the orchestrator checks the file's digest and moves it into the store.
        // A worker that failed leaves the check to the store, which then reads the file again.
        const digestHex = await hashing?.digest().catch(() => undefined);
        hashing = undefined;
        await flush.settle();
        handedOver = true;
        return {
          size: available,
          body: Readable.from([]),
          file: {
            path: partial.path,
            ...(digestHex === undefined ? {} : { hashed: `${request.digest.algorithm}:${digestHex}` }),
            ...(isComplete(result.table) && { pieceTable: result.table }),
            release: () => this.opts.partials.finish(partial),
          },
        };
      }
      hashing?.close();
      hashing = undefined;
      await flush.settle();
      // Only a prefix: the orchestrator streams it into its writer and resumes after it.
      const body = await openReadStream(partial.path, { start: offset, end: available - 1 });
      if (body === undefined) throw new Error(`the partial file of ${request.digest} vanished`);
      handedOver = true;
      body.once('close', () => void this.opts.partials.finish(partial));
      return { size: result.table.size, body };
    } finally {
      if (!handedOver) {
        hashing?.close();
        await flush.settle();
        await this.opts.partials.finish(partial);
      }
    }
  }

  /**
   * Fetches the pieces the swarm could not provide from the origin, each checked against the
   * table like a peer's: what peers already delivered is never fetched again.
   */
  private async fillFromOrigin(request: BlobRequest, partial: Partial, signal: AbortSignal, hashing: HashSession | undefined): Promise<void> {
    const table = partial.table!;
    const missing = partial.have.flatMap((held, index) => (held ? [] : [index]));
    this.opts.logger.info({ digest: partial.digest, pieces: missing.length }, 'swarm stalled: missing pieces come from the origin');
    this.opts.events.originFallback?.('swarm stalled');
    for (const index of missing) {
      const { start, end } = pieceRange(table, index);
      const bytes = await this.opts.fallback!.readRange(request, start, end - start, signal);
      const hash = createHash('sha256').update(bytes).digest('hex');
      if (index === table.hashes.length) {
        // Past a provisional table's end (missing pieces come in order): the origin's bytes
        // give the hash, and the whole digest checks them.
        table.hashes.push(hash);
      } else if (hash !== table.hashes[index]) {
        // The origin is the authority: a table its bytes contradict came from a liar.
        throw new Error(`piece ${index} from the origin does not match the swarm's piece table`);
      }
      await partial.file.write(bytes, 0, bytes.length, start);
      this.opts.partials.markHave(partial, index);
      hashing?.written(index);
      this.opts.events.bytes('origin', bytes.length);
    }
  }
}

export type { Partial };
