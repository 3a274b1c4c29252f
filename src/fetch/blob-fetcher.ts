import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { DigestMismatchError } from '../oci/digest.js';
import type { BlobStore, StoredBlob } from '../store/blob-store.js';
import type { BlobWriter } from '../store/blob-writer.js';
import { BlobNotFoundError, BlobUnavailableError } from './errors.js';
import { SingleFlight } from './single-flight.js';
import type { BlobRequest, BlobSource, SourceBody, SourcePlanner } from './source.js';

export interface FetchObserver {
  /** Bytes that reached the store from a source (counted as written, before verification). */
  bytes?(kind: 'peer' | 'origin', count: number): void;
  failure?(source: BlobSource, error: unknown, digest: string): void;
  /** A download from the origin began (its body is about to flow). */
  originStarted?(digest: string): void;
  /** Bytes of a download failed the digest and were discarded. */
  mismatch?(digest: string, message: string): void;
  /** A download ended, committed or not. */
  finished?(digest: string): void;
  /** A blob was verified and committed to the store. */
  committed?(digest: string, size: number): void;
  /** A download's provisional piece table grew: peers may take the new pieces (the first wave). */
  pieces?(digest: string): void;
}

/**
 * The download orchestrator: makes a blob present in the store. Local store first, then
 * each source in order; a source that fails mid-stream is followed by the next one from
 * the byte reached. Nothing is committed unless the whole stream hashes to the digest.
 * Concurrent requests for one digest share one download.
 */
export class BlobFetcher {
  private readonly flights = new SingleFlight<string, StoredBlob & { afterMismatch?: boolean }>();
  /** Progress of each download in flight, for the status page. */
  private readonly progress = new Map<string, TransferProgress>();
  /** Downloads outlive the requests that started them; only shutdown stops them. */
  private readonly lifetime = new AbortController();

  constructor(
    private readonly store: BlobStore,
    private readonly planner: SourcePlanner,
    private readonly logger: Logger,
    private readonly observer: FetchObserver = {},
    /** Compute piece tables of what comes from the origin as it streams in (peers ask for them). */
    private readonly opts: { pieceTables?: boolean } = {},
  ) {}

  /** Stops every download in flight (at shutdown). */
  close(): void {
    this.lifetime.abort(new Error('agent is shutting down'));
  }

  /** Downloads in flight: digest, bytes so far (into the store's writer), size, sources tried. */
  transfers(): TransferProgress[] {
    return [...this.progress.values()].map((t) => ({ ...t, sources: [...t.sources] }));
  }

  /** How many blobs are being downloaded now. */
  get downloads(): number {
    return this.flights.size;
  }

  isDownloading(digest: string): boolean {
    return this.flights.has(digest);
  }


  /**
   * Makes the blob present. The result says `afterMismatch` when some bytes received on the way
   * failed the digest: anything streamed from them to a client must then be cut off.
   */
  async ensure(request: BlobRequest): Promise<StoredBlob & { afterMismatch?: boolean }> {
    const stored = await this.store.get(request.digest);
    if (stored) return stored;
    return this.flights.run(request.digest.value, async () => {
      try {
        // Another flight may have committed it between our check and now.
        return (await this.store.get(request.digest)) ?? (await this.download(request));
      } finally {
        this.observer.finished?.(request.digest.value);
      }
    });
  }

  private async download(request: BlobRequest): Promise<StoredBlob & { afterMismatch?: boolean }> {
    const progress: TransferProgress = { digest: request.digest.value, repository: request.repository, bytes: 0, sources: [], startedAt: Date.now() };
    this.progress.set(request.digest.value, progress);
    try {
      return await this.run(request, progress);
    } finally {
      this.progress.delete(request.digest.value);
    }
  }

  private async run(request: BlobRequest, progress: TransferProgress): Promise<StoredBlob & { afterMismatch?: boolean }> {
    const mark = (stored: StoredBlob) => (mismatched ? { ...stored, afterMismatch: true } : stored);
    let mismatched = false;
    const failures: { source: string; error: string }[] = [];
    const excluded = new Set<BlobSource>();
    const sources = await this.planner.plan(request);
    const started = performance.now();
    this.logger.info({ reqId: request.requestId, digest: request.digest.value, sources: sources.map((s) => s.name) }, 'downloading blob');
    let lastError: unknown;
    // Each round starts a fresh file; a round ends in a commit or a digest mismatch, after
    // which the sources that contributed bytes are left out of the next round.
    for (;;) {
      const candidates = sources.filter((s) => !excluded.has(s));
      if (candidates.length === 0) break;
      const writer = await this.store.beginWrite(request.digest);
      const contributors = new Set<BlobSource>();
      let size: number | undefined;
      try {
        for (const source of candidates) {
          try {
            const opened = await source.open(request, writer.bytesWritten, this.lifetime.signal);
            if (!opened) continue;
            // A negative size is "not declared" (a chunked answer): the stream's end decides.
            const declared = opened.size >= 0 ? opened.size : undefined;
            if (size === undefined) size = declared;
            else if (declared !== undefined && declared !== size) {
              throw new Error(`declares size ${declared}, another source declared ${size}`);
            }
            contributors.add(source);
            progress.sources.push(source.name);
            if (size !== undefined) progress.size = size;
            if (opened.file && writer.bytesWritten === 0) {
              opened.body.destroy();
              const stored = await this.adopt(request, writer, opened.file, source.name);
              this.logger.info(
                { reqId: request.requestId, digest: stored.digest, bytes: stored.size, from: source.name, ms: Math.round(performance.now() - started) },
                'blob committed',
              );
              return mark(stored);
            }
            if (source.kind === 'origin') this.observer.originStarted?.(request.digest.value);
            if (this.opts.pieceTables === true && size !== undefined) writer.trackPieces(size);
            await this.copy(opened.body, writer, size, source, progress);
            size ??= writer.bytesWritten;
            if (writer.bytesWritten === size) break;
            throw new Error(`stream ended at byte ${writer.bytesWritten} of ${size}`);
          } catch (err) {
            // A whole assembled file that fails its digest ends the round like a bad stream does.
            if (err instanceof DigestMismatchError) throw err;
            lastError = err;
            failures.push({ source: source.name, error: String((err as Error).message ?? err) });
            this.observer.failure?.(source, err, request.digest.value);
            this.logger.warn({ reqId: request.requestId, digest: request.digest.value, source: source.name, err }, 'blob source failed');
          }
        }
        if (size === undefined || writer.bytesWritten !== size) {
          await writer.abort();
          break;
        }
        const names = [...contributors].map((s) => s.name).join('+');
        await writer.commit(this.store.pathOf(request.digest), names);
        const stored = await this.store.get(request.digest);
        if (!stored) throw new Error(`blob ${request.digest.value} vanished after commit`);
        this.observer.committed?.(stored.digest, stored.size);
        this.logger.info(
          { reqId: request.requestId, digest: stored.digest, bytes: stored.size, from: names, ms: Math.round(performance.now() - started) },
          'blob committed',
        );
        return mark(stored);
      } catch (err) {
        await writer.abort();
        if (!(err instanceof DigestMismatchError)) throw err;
        mismatched = true;
        this.logger.error({ reqId: request.requestId, digest: request.digest.value, sources: err.source, err }, 'digest mismatch: bytes discarded');
        this.observer.mismatch?.(request.digest.value, err.message);
        failures.push({ source: err.source, error: err.message });
        lastError = err;
        for (const source of contributors) {
          source.penalise?.(request, err.message);
          excluded.add(source);
        }
      }
    }
    if (failures.length === 0) throw new BlobNotFoundError(request.digest.value);
    throw new BlobUnavailableError(request.digest.value, failures, { cause: lastError });
  }

  /** Takes a blob a source assembled in a file of its own: checked, then moved into the store. */
  private async adopt(
    request: BlobRequest,
    writer: BlobWriter,
    file: NonNullable<SourceBody['file']>,
    source: string,
  ): Promise<StoredBlob> {
    await writer.abort();
    try {
      const { hashed, pieceTable } = file;
      await this.store.commitFile(request.digest, file.path, source, { ...(hashed && { hashed }), ...(pieceTable && { pieceTable }) });
    } finally {
      await file.release();
    }
    const stored = await this.store.get(request.digest);
    if (!stored) throw new Error(`blob ${request.digest.value} vanished after commit`);
    this.observer.committed?.(stored.digest, stored.size);
    return stored;
  }

  /**
   * Streams a source into the writer: chunks are gathered into batches written with one
   * vectored write each, with one write in flight while the next batch arrives. On failure,
   * what was received is still written, so the next source resumes after it.
   *
   * Chunks are taken from 'data' events: an async iterator over a byte stream calls read(),
   * which concatenates (copies) everything buffered, a measurable cost at a GiB a second.
   */
  private copy(
    body: Readable,
    writer: BlobWriter,
    size: number | undefined,
    source: BlobSource,
    progress: TransferProgress,
  ): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let batch: Uint8Array[] = [];
      let batched = 0;
      let received = writer.bytesWritten;
      let inflight: Promise<void> = Promise.resolve();
      let settled = false;
      let writing = 0;
      const flush = () => {
        const chunks = batch;
        const bytes = batched;
        batch = [];
        batched = 0;
        inflight = inflight.then(async () => {
          const whole = writer.provisionalPieces;
          await writer.write(chunks);
          if (writer.provisionalPieces > whole) this.observer.pieces?.(writer.digest.value);
          progress.bytes = writer.bytesWritten;
          if (!source.countsOwnBytes) this.observer.bytes?.(source.kind, bytes);
        });
        return inflight;
      };
      const finish = (error?: Error) => {
        if (settled) return;
        settled = true;
        body.off('data', onData).off('end', onEnd).off('error', finish).off('close', onClose);
        if (error) body.destroy();
        if (batched > 0) void flush().catch(() => undefined);
        inflight.then(
          () => (error ? reject(error) : resolve()),
          (writeError: unknown) => reject(writeError),
        );
      };
      const onData = (chunk: Buffer) => {
        if (size !== undefined && received + chunk.length > size) {
          finish(new Error(`sent more than the ${size} bytes it declared`));
          return;
        }
        received += chunk.length;
        batch.push(chunk);
        batched += chunk.length;
        if (batched < WRITE_BATCH) return;
        // Backpressure: only while an earlier batch is still being written does reading stop;
        // pausing a peer's stream costs the sender a window update round trip.
        const busy = writing > 0;
        writing++;
        const previous = inflight;
        void flush()
          .then(() => writing--)
          .catch((err: Error) => finish(err));
        if (!busy) return;
        body.pause();
        previous.then(
          () => !settled && body.resume(),
          () => undefined,
        );
      };
      const onEnd = () => finish();
      const onClose = () => finish(new Error('stream closed before its end'));
      body.on('data', onData).once('end', onEnd).once('error', finish).once('close', onClose);
    });
  }
}

export interface TransferProgress {
  digest: string;
  repository: string;
  /** Bytes in the store's writer so far (a swarm assembly reports its pieces separately). */
  bytes: number;
  size?: number;
  /** Sources used so far, in order (`origin`, `swarm(3)`). */
  sources: string[];
  startedAt: number;
}

/** Bytes gathered before one vectored write to the temporary file. */
const WRITE_BATCH = 1024 * 1024;
