import { Readable } from 'node:stream';
import type { Stream, StreamCloseEvent, StreamMessageEvent } from '@libp2p/interface';
import type { Uint8ArrayList } from 'uint8arraylist';
import { BlobProtocolError } from './errors.js';

/**
 * libp2p 3 streams are event emitters ('message', 'end', 'close') whose async iterator buffers
 * without limit, so reading goes through this class instead. Flow control with Yamux works by
 * `pause()`: a paused stream stops granting window updates and the sender stalls once the
 * window it already has (at most the max stream window) is spent.
 *
 * Two phases: small headers are read with `readExactly`, then `body(n)` hands the next n bytes
 * to a Node Readable that pauses the libp2p stream whenever the Readable's buffer is full.
 */
export class StreamReader {
  private readonly chunks: Uint8Array[] = [];
  private buffered = 0;
  private eof = false;
  private failure: Error | undefined;
  private wake: (() => void) | undefined;
  private sink: BodyReadable | undefined;

  constructor(
    readonly stream: Stream,
    /** Header-phase buffer above which the stream is paused until the reader catches up. */
    private readonly maxHeaderBuffer = 1 << 20,
  ) {
    stream.addEventListener('message', this.onMessage);
    stream.addEventListener('end', this.onEnd);
    stream.addEventListener('close', this.onClose);
    if (stream.readableEnded) this.eof = true;
  }

  /** Stops listening to the stream; anything still buffered is dropped. */
  dispose(): void {
    this.stream.removeEventListener('message', this.onMessage);
    this.stream.removeEventListener('end', this.onEnd);
    this.stream.removeEventListener('close', this.onClose);
    this.chunks.length = 0;
    this.buffered = 0;
  }

  /** True once the stream has ended with nothing left to read; false as soon as a byte is there. */
  async ended(signal?: AbortSignal): Promise<boolean> {
    for (;;) {
      signal?.throwIfAborted();
      if (this.buffered > 0) return false;
      if (this.failure !== undefined) throw this.failure;
      if (this.eof) return true;
      await this.waitForData(signal);
    }
  }

  /** The next n bytes; throws BlobProtocolError if the stream ends first. */
  async readExactly(n: number, signal?: AbortSignal): Promise<Uint8Array> {
    await this.fill(n, 'header bytes', signal);
    const out = new Uint8Array(n);
    let filled = 0;
    for (const chunk of this.splice(n)) {
      out.set(chunk, filled);
      filled += chunk.byteLength;
    }
    return out;
  }

  /**
   * The next n bytes as the chunks they arrived in (views, no copy): for payloads passed on
   * whole, where `readExactly` would copy every byte into a new buffer.
   */
  async readChunks(n: number, signal?: AbortSignal): Promise<Uint8Array[]> {
    await this.fill(n, 'bytes', signal);
    return this.splice(n);
  }

  /** Waits until n bytes are buffered; throws if the stream fails or ends first. */
  private async fill(n: number, what: string, signal?: AbortSignal): Promise<void> {
    for (;;) {
      signal?.throwIfAborted();
      if (this.buffered >= n) return;
      if (this.failure !== undefined) throw this.failure;
      if (this.eof) throw new BlobProtocolError(`stream ended after ${this.buffered} of ${n} ${what}`);
      await this.waitForData(signal);
    }
  }

  /** Takes the first n buffered bytes (n ≤ buffered) as views of the chunks they are in. */
  private splice(n: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    let left = n;
    while (left > 0) {
      const head = this.chunks[0]!;
      if (head.byteLength <= left) {
        out.push(head);
        left -= head.byteLength;
        this.chunks.shift();
      } else {
        out.push(head.subarray(0, left));
        this.chunks[0] = head.subarray(left);
        left = 0;
      }
    }
    this.buffered -= n;
    if (this.buffered < this.maxHeaderBuffer) this.resume();
    return out;
  }

  /**
   * Hands the next `length` bytes to a Readable and detaches this reader from header reading.
   * The Readable errors if the stream ends early or carries more than `length` bytes.
   */
  body(length: number, highWaterMark = 1 << 20): Readable {
    const sink = new BodyReadable(this, length, highWaterMark);
    this.sink = sink;
    const pending = this.chunks.splice(0);
    this.buffered = 0;
    for (const chunk of pending) sink.deliver(chunk);
    if (this.failure !== undefined) sink.inputFailed(this.failure);
    else if (this.eof) sink.inputEnded();
    if (length === 0) sink.deliver(new Uint8Array(0));
    return sink;
  }

  pause(): void {
    // A pause asked for while resume() hands over buffered data must wait until resume()
    // returns: the stream's resume() re-enables window updates after that hand-over, which
    // would otherwise leave it paused for reading but granting the sender ever more window.
    if (this.resuming) {
      this.pauseAfterResume = true;
      return;
    }
    if (this.stream.readStatus === 'readable') this.stream.pause();
  }

  resume(): void {
    if (this.stream.readStatus !== 'paused' || this.resuming) return;
    this.resuming = true;
    this.pauseAfterResume = false;
    try {
      this.stream.resume();
    } catch {
      // closed meanwhile: the 'close' handler reports it
    } finally {
      this.resuming = false;
    }
    if (this.pauseAfterResume) {
      this.pauseAfterResume = false;
      this.pause();
    }
  }

  private resuming = false;
  private pauseAfterResume = false;

  private waitForData(signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        this.wake = undefined;
        reject(signal!.reason);
      };
      this.wake = () => {
        this.wake = undefined;
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private readonly onMessage = (evt: StreamMessageEvent): void => {
    const data = evt.data;
    const parts: Iterable<Uint8Array> = data instanceof Uint8Array ? [data] : data;
    for (const part of parts) {
      if (part.byteLength === 0) continue;
      if (this.sink !== undefined) {
        this.sink.deliver(part);
      } else {
        this.chunks.push(part);
        this.buffered += part.byteLength;
      }
    }
    if (this.sink === undefined && this.buffered >= this.maxHeaderBuffer) this.pause();
    this.wake?.();
  };

  private readonly onEnd = (): void => {
    this.eof = true;
    this.sink?.inputEnded();
    this.wake?.();
  };

  private readonly onClose = (evt: StreamCloseEvent): void => {
    if (evt.error !== undefined) {
      this.failure = evt.error;
      this.sink?.inputFailed(evt.error);
    } else {
      // A clean close can come while we are paused with bytes still queued in the stream:
      // resuming hands them over synchronously (no more can arrive), then the input is over.
      this.resume();
      this.eof = true;
      this.sink?.inputEnded();
    }
    this.wake?.();
  };
}

class BodyReadable extends Readable {
  private remaining: number;
  private finished = false;

  constructor(
    private readonly reader: StreamReader,
    private readonly length: number,
    highWaterMark: number,
  ) {
    super({ highWaterMark });
    this.remaining = length;
  }

  deliver(chunk: Uint8Array): void {
    if (this.finished || this.destroyed) return;
    if (chunk.byteLength > this.remaining) {
      this.fail(new BlobProtocolError(`peer sent more than the ${this.length} bytes it announced`));
      return;
    }
    this.remaining -= chunk.byteLength;
    const more = chunk.byteLength === 0 ? true : this.push(chunk);
    if (this.remaining === 0) {
      this.finished = true;
      this.reader.dispose();
      this.push(null);
    } else if (!more) {
      this.reader.pause();
    }
  }

  inputEnded(): void {
    if (this.finished || this.destroyed) return;
    if (this.remaining > 0) {
      this.fail(new BlobProtocolError(`body ended after ${this.length - this.remaining} of ${this.length} bytes`));
    }
  }

  inputFailed(err: Error): void {
    if (this.finished || this.destroyed) return;
    this.fail(err);
  }

  override _read(): void {
    this.reader.resume();
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    if (!this.finished) {
      this.finished = true;
      this.reader.dispose();
      // The consumer gave up (or the peer failed): reset the stream so the peer stops sending.
      const stream = this.reader.stream;
      if (stream.status === 'open') stream.abort(err ?? new Error('blob body closed by the reader'));
    }
    cb(err);
  }

  private fail(err: Error): void {
    this.destroy(err);
  }
}

/**
 * Writes with backpressure: when the stream's send buffer is full, waits for its 'drain' event.
 * (Not `stream.onDrain()`: in @libp2p/utils 7.4 its promise is created once per stream and stays
 * resolved after the first drain, so later waits return at once and the writer queues without
 * limit — a 1 GiB blob would be read into memory.)
 */
export async function sendAll(stream: Stream, data: Uint8Array | Uint8ArrayList, signal?: AbortSignal): Promise<void> {
  if (stream.send(data)) return;
  await waitForDrain(stream, signal);
}

export function waitForDrain(stream: Stream, signal?: AbortSignal): Promise<void> {
  if (!stream.writableNeedsDrain) {
    if (stream.writeStatus !== 'writable') return Promise.reject(new Error(`stream is ${stream.writeStatus}`));
    return Promise.resolve();
  }
  return new Promise<void>((resolve, reject) => {
    const cleanup = (): void => {
      stream.removeEventListener('drain', onDrain);
      stream.removeEventListener('close', onClose);
      signal?.removeEventListener('abort', onAbort);
    };
    const onDrain = (): void => {
      cleanup();
      resolve();
    };
    const onClose = (evt: StreamCloseEvent): void => {
      cleanup();
      reject(evt.error ?? new Error('stream closed while waiting to send'));
    };
    const onAbort = (): void => {
      cleanup();
      reject(signal!.reason);
    };
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    stream.addEventListener('drain', onDrain);
    stream.addEventListener('close', onClose);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** A request that failed: stop reading, reset the stream so the peer stops sending, rethrow. */
export function resetOnError(reader: StreamReader, stream: Stream, err: unknown): never {
  reader.dispose();
  if (stream.status === 'open') stream.abort(err instanceof Error ? err : new Error(String(err)));
  throw err;
}
