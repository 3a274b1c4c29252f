import type { Readable } from 'node:stream';
import type { Connection, Stream } from '@libp2p/interface';
import type { Logger } from 'pino';
import { Uint8ArrayList } from 'uint8arraylist';
import { tryParseDigest } from '../oci/digest.js';
import { BlobProtocolError, PeerBusyError } from './errors.js';
import { resetOnError, sendAll, StreamReader } from './stream-io.js';

/*
 * Wire format of `${prefix}/blob/1.0.0` (one request per stream):
 *
 *   request   u32be n | n bytes of UTF-8 JSON {"digest": "sha256:…", "offset": 0, "length"?: 10}
 *             then the requester closes its writable end.
 *   response  u8 status
 *               0 OK         u64be total size of the blob | u64be n | n raw bytes (offset..offset+n)
 *               1 NOT_FOUND  (nothing follows)
 *               2 BUSY       (nothing follows; the peer is at its upload limit)
 *               3 ERROR      u16be n | n bytes of UTF-8 message
 *
 * The OK header carries the exact body length so a body cut short is an error, never a silently
 * shorter blob. The JSON request keeps the format easy to extend (a piece id, say) without a
 * new protocol version.
 */

/** PENDING (pieces protocol only): the node is fetching the blob and holds no verified piece yet. */
export const Status = { OK: 0, NOT_FOUND: 1, BUSY: 2, ERROR: 3, PENDING: 4 } as const;
export type Status = (typeof Status)[keyof typeof Status];

export interface BlobRequest {
  digest: string;
  offset: number;
  length?: number;
}

/** Longest request accepted; a digest and two numbers fit in far less. */
export const MAX_REQUEST_BYTES = 4096;
/** Bytes gathered from the blob body before one send (see BlobServer.serve). */
const SEND_BATCH = 1024 * 1024;
/** A peer that opens a stream must send its request within this time. */
export const REQUEST_TIMEOUT_MS = 10_000;

/** The serving side: opens only verified blobs (implemented by the agent over its store). */
export interface LocalBlobs {
  /**
   * `size` is the blob's total size; `body` yields the bytes from `offset` (to offset+length,
   * or the end). Undefined when the blob is not held (or not verified).
   */
  open(digest: string, offset: number, length?: number): Promise<{ size: number; body: Readable } | undefined>;
  /**
   * Bytes of a blob that left for a peer. Counted by the sender, not from the body: a body
   * read up to the range's end is destroyed before it emits 'end'.
   */
  sent?(digest: string, bytes: number): void;
}

export interface OpenedBlob {
  /** Total size of the blob. */
  size: number;
  /** Number of bytes `body` yields: min(length, size - offset). */
  length: number;
  body: Readable;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

export function encodeRequest(req: BlobRequest): Uint8Array {
  const json = encoder.encode(JSON.stringify(req));
  const out = new Uint8Array(4 + json.byteLength);
  new DataView(out.buffer).setUint32(0, json.byteLength);
  out.set(json, 4);
  return out;
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Parses and validates a request body; throws BlobProtocolError with a reason fit to send back. */
export function decodeRequest(json: Uint8Array): BlobRequest {
  let value: unknown;
  try {
    value = JSON.parse(decoder.decode(json));
  } catch {
    throw new BlobProtocolError('request is not JSON');
  }
  if (typeof value !== 'object' || value === null) throw new BlobProtocolError('request is not an object');
  const { digest, offset, length } = value as Record<string, unknown>;
  // The digest goes to the store: only a well-formed one may pass (no path tricks).
  if (typeof digest !== 'string' || tryParseDigest(digest) === undefined) throw new BlobProtocolError('invalid digest');
  if (!isCount(offset)) throw new BlobProtocolError('invalid offset');
  if (length !== undefined && length !== null && !isCount(length)) throw new BlobProtocolError('invalid length');
  return isCount(length) ? { digest, offset, length } : { digest, offset };
}

export function encodeOk(size: number, length: number): Uint8Array {
  const out = new Uint8Array(17);
  const view = new DataView(out.buffer);
  out[0] = Status.OK;
  view.setBigUint64(1, BigInt(size));
  view.setBigUint64(9, BigInt(length));
  return out;
}

/** Reads the message of an ERROR answer (after its status byte): u16 length + UTF-8 text. */
export async function readErrorAnswer(reader: StreamReader, peerId: string, signal?: AbortSignal): Promise<BlobProtocolError> {
  const n = new DataView((await reader.readExactly(2, signal)).buffer).getUint16(0);
  const message = decoder.decode(await reader.readExactly(n, signal));
  return new BlobProtocolError(`error: ${message}`, peerId);
}

export function encodeError(message: string): Uint8Array {
  const text = encoder.encode(message.slice(0, 1000));
  const out = new Uint8Array(3 + text.byteLength);
  out[0] = Status.ERROR;
  new DataView(out.buffer).setUint16(1, text.byteLength);
  out.set(text, 3);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Serving side

export interface BlobServerOptions {
  blobs: LocalBlobs;
  maxUploads: number;
  logger: Logger;
}

/** Handles inbound blob streams, at most `maxUploads` at once (the rest are answered BUSY). */
export class BlobServer {
  private active = 0;
  private readonly log: Logger;

  constructor(private readonly opts: BlobServerOptions) {
    this.log = opts.logger;
  }

  /** Uploads in progress. */
  get activeUploads(): number {
    return this.active;
  }

  readonly handle = async (stream: Stream, connection: Connection): Promise<void> => {
    const peer = connection.remotePeer.toString();
    const reader = new StreamReader(stream, MAX_REQUEST_BYTES + 4);
    let counted = false;
    try {
      const signal = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
      const n = new DataView((await reader.readExactly(4, signal)).buffer).getUint32(0);
      if (n > MAX_REQUEST_BYTES) throw new BlobProtocolError(`request of ${n} bytes is too long`);
      let req: BlobRequest;
      try {
        req = decodeRequest(await reader.readExactly(n, signal));
      } catch (err) {
        if (!(err instanceof BlobProtocolError)) throw err;
        await this.finish(stream, encodeError(err.message));
        return;
      }
      reader.dispose();

      if (this.active >= this.opts.maxUploads) {
        this.log.debug({ peer, digest: req.digest, active: this.active }, 'p2p blob request refused: busy');
        await this.finish(stream, Uint8Array.of(Status.BUSY));
        return;
      }
      this.active++;
      counted = true;
      await this.serve(stream, req, peer);
    } catch (err) {
      this.log.debug({ peer, err }, 'p2p blob upload failed');
      if (stream.status === 'open') stream.abort(err as Error);
    } finally {
      reader.dispose();
      if (counted) this.active--;
    }
  };

  private async serve(stream: Stream, req: BlobRequest, peer: string): Promise<void> {
    let opened: Awaited<ReturnType<LocalBlobs['open']>>;
    try {
      opened = await this.opts.blobs.open(req.digest, req.offset, req.length);
    } catch (err) {
      this.log.warn({ peer, digest: req.digest, err }, 'p2p blob open failed');
      await this.finish(stream, encodeError('could not open blob'));
      return;
    }
    if (opened === undefined) {
      await this.finish(stream, Uint8Array.of(Status.NOT_FOUND));
      return;
    }
    const { size, body } = opened;
    try {
      if (req.offset > size) {
        await this.finish(stream, encodeError(`offset ${req.offset} is beyond the blob's ${size} bytes`));
        return;
      }
      const length = Math.min(req.length ?? Number.MAX_SAFE_INTEGER, size - req.offset);
      await sendAll(stream, encodeOk(size, length));
      let sent = 0;
      // Pulling from `body` one chunk at a time and waiting for 'drain' keeps at most a batch
      // plus the stream's send buffer in memory, however large the blob. Chunks are batched
      // (without copying) into sends of ~256 KiB: each send becomes one Yamux frame, which Noise
      // cuts into 64 KiB messages, so 64 KiB file chunks sent one by one would cost two
      // encryptions and two socket writes each (a full message and a 12-byte remainder).
      let batch = new Uint8ArrayList();
      try {
        for await (const chunk of body as AsyncIterable<Uint8Array | string>) {
          if (typeof chunk === 'string') throw new Error('blob body yielded a string');
          const part = chunk.byteLength > length - sent ? chunk.subarray(0, length - sent) : chunk;
          if (part.byteLength > 0) batch.append(part);
          sent += part.byteLength;
          if (batch.byteLength >= SEND_BATCH || sent >= length) {
            await sendAll(stream, batch);
            batch = new Uint8ArrayList();
          }
          if (sent >= length) break;
        }
      } finally {
        // What was handed to the stream, batched bytes not yet sent excluded.
        this.opts.blobs.sent?.(req.digest, sent - batch.byteLength);
      }
      if (sent < length) throw new Error(`blob body ended after ${sent} of ${length} bytes`);
      await stream.close();
      this.log.debug({ peer, digest: req.digest, offset: req.offset, bytes: sent }, 'p2p blob served');
    } finally {
      body.destroy();
    }
  }

  private async finish(stream: Stream, bytes: Uint8Array): Promise<void> {
    await sendAll(stream, bytes);
    await stream.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Requesting side

/**
 * Sends a request on an open blob stream and reads the response header. Resolves undefined on
 * NOT_FOUND, throws PeerBusyError on BUSY and BlobProtocolError on ERROR or a malformed answer.
 * The stream is reset on any failure, and when `signal` aborts before the body is consumed;
 * `headerTimeoutMs` bounds the wait for the response header only.
 */
export async function requestBlob(
  stream: Stream,
  peerId: string,
  req: BlobRequest,
  opts: { signal?: AbortSignal; headerTimeoutMs?: number } = {},
): Promise<OpenedBlob | undefined> {
  const reader = new StreamReader(stream, 64 * 1024);
  const { signal: bodySignal } = opts;
  // The header must come within headerTimeoutMs; the body may take as long as it takes.
  const timeouts = opts.headerTimeoutMs === undefined ? [] : [AbortSignal.timeout(opts.headerTimeoutMs)];
  const signal = AbortSignal.any([...timeouts, ...(bodySignal === undefined ? [] : [bodySignal])]);
  try {
    await sendAll(stream, encodeRequest(req), signal);
    await stream.close({ signal });
    const status = (await reader.readExactly(1, signal))[0];
    switch (status) {
      case Status.OK: {
        const header = new DataView((await reader.readExactly(16, signal)).buffer);
        const size = Number(header.getBigUint64(0));
        const length = Number(header.getBigUint64(8));
        if (!Number.isSafeInteger(size) || !Number.isSafeInteger(length) || length > size - req.offset) {
          throw new BlobProtocolError(`bad OK header (size ${size}, length ${length})`, peerId);
        }
        if (req.length !== undefined && length > req.length) {
          throw new BlobProtocolError(`peer announced ${length} bytes, ${req.length} were asked for`, peerId);
        }
        const body = reader.body(length);
        if (bodySignal !== undefined) {
          const onAbort = (): void => {
            body.destroy(bodySignal.reason instanceof Error ? bodySignal.reason : new Error('aborted'));
          };
          bodySignal.addEventListener('abort', onAbort, { once: true });
          body.once('close', () => bodySignal.removeEventListener('abort', onAbort));
        }
        return { size, length, body };
      }
      case Status.NOT_FOUND:
        reader.dispose();
        return undefined;
      case Status.BUSY:
        throw new PeerBusyError(peerId, req.digest);
      case Status.ERROR:
        throw await readErrorAnswer(reader, peerId, signal);
      default:
        throw new BlobProtocolError(`unknown status ${status}`, peerId);
    }
  } catch (err) {
    resetOnError(reader, stream, err);
  }
}
