import type { Connection, Stream } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import type { Logger } from 'pino';
import { Uint8ArrayList } from 'uint8arraylist';
import { consistentTables, decodeBitfield, encodeBitfield, pieceCount, validatePieceTable, type PieceTable } from '../fetch/piece-table.js';
import { tryParseDigest } from '../oci/digest.js';
import type { Askers } from './askers.js';
import type { LocalBlobs } from './blob-protocol.js';
import { DEFAULT_PROTOCOL_PREFIX, protocolIds } from './config.js';
import { BlobProtocolError } from './errors.js';
import { encodePeers as encodePeerSection, MAX_EXCHANGED_PEERS, MAX_TABLE_BYTES, type LocalPieces, type PieceAnswer } from './piece-protocol.js';
import { sendAll, StreamReader } from './stream-io.js';
import type { TradeCounts } from './trade-counts.js';
import type { UploadGate } from './upload-gate.js';

/*
 * Wire format of `${prefix}/swarm/1.0.0`: one stream per pair of agents and blob, for as long
 * as they trade it. Control traffic then grows with neither the fleet nor the pieces: the
 * holder says what it holds once and pushes news; the asker pipelines piece requests on the
 * same stream. (The pieces and blob protocols, one question per stream, still answer, so a
 * fleet halfway through an upgrade keeps trading.)
 *
 * Every frame: u8 type | u32be n | n bytes.
 *
 * Asker → holder
 *   OPEN     1   UTF-8 JSON {"digest": "sha256:…"}: the first frame, once
 *   REQUEST  2   u32be id | u32be length | f64be offset: bytes of the blob, answered in order
 *   CANCEL   3   u32be id: a request no longer wanted (queued or in progress)
 *   The asker ends the session by closing its writable end; the holder then closes its own.
 *
 * Holder → asker
 *   STATE   16   u8 status: 0 OK | u32be n | n bytes of JSON piece table | bitfield of the
 *                pieces held verified; 1 NOT_FOUND; 4 PENDING (fetching, no verified piece
 *                yet). First, and again whenever what is held changes in a way HAVE cannot say.
 *                The table may be provisional (the first wave: the holder's origin download is
 *                still streaming in): then it lists the hashes of a prefix of the pieces only.
 *                A piece held always has its hash in the table.
 *   HASHES  22   u32be first | k × 32 bytes: the next k piece hashes of a provisional table,
 *                `first` being how many it had; sent before the HAVE of those pieces
 *   HAVE    17   k × u32be piece index: pieces verified since the last STATE or HAVE
 *   PEERS   18   u8 k | k × (u8 n | n bytes of a peer id): others after the blob (peer exchange)
 *   BEGIN   21   u32be id | u32be n | f64be size: request id's answer starts; n bytes follow in
 *                DATA frames (the length asked for, cut at the blob's end), size is the blob's
 *   DATA    19   u32be id | bytes: the next bytes of request id
 *   DONE    20   u32be id | u8 result: 0 every byte sent; 1 not held; 2 cancelled; 3 refused
 *                (the holder's upload queue is full: ask elsewhere); 4 failed
 *
 * Statuses are the blob protocol's. DATA of one request never interleaves with another's, so an
 * asker reads a request's bytes in order and a DONE closes it.
 */

export const Frame = {
  OPEN: 1,
  REQUEST: 2,
  CANCEL: 3,
  STATE: 16,
  HAVE: 17,
  PEERS: 18,
  DATA: 19,
  DONE: 20,
  BEGIN: 21,
  HASHES: 22,
} as const;

export const StateStatus = { OK: 0, NOT_FOUND: 1, PENDING: 4 } as const;
export const Done = { OK: 0, NOT_HELD: 1, CANCELLED: 2, REFUSED: 3, FAILED: 4 } as const;

/** Bytes of one DATA frame (one Yamux frame, cut by Noise into a few messages). */
export const DATA_FRAME_BYTES = 256 * 1024;
/** Largest frame either side accepts: a full DATA frame, or a STATE with the longest table. */
export const MAX_FRAME_BYTES = Math.max(DATA_FRAME_BYTES + 4, MAX_TABLE_BYTES + 4096);
/** Requests an asker may have outstanding on one session; more is a protocol error. */
export const MAX_PIPELINED = 16;
const OPEN_TIMEOUT_MS = 10_000;

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

export function swarmProtocolId(prefix = DEFAULT_PROTOCOL_PREFIX): string {
  return protocolIds(prefix).blob.replace(/\/blob\/1\.0\.0$/, '/swarm/1.0.0');
}

// ---------------------------------------------------------------------------------------------
// Frames

export function frame(type: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(5 + payload.byteLength);
  out[0] = type;
  new DataView(out.buffer).setUint32(1, payload.byteLength);
  out.set(payload, 5);
  return out;
}

/** A frame as read: DATA's bytes come as the chunks they arrived in, every other payload whole. */
export type ReadFrame =
  | { type: number; payload: Uint8Array; data?: undefined }
  | { type: number; payload?: undefined; data: { id: number; chunks: Uint8Array[] } };

/** Reads one frame; undefined at a clean end of the stream between frames. */
export async function readFrame(reader: StreamReader, signal?: AbortSignal): Promise<ReadFrame | undefined> {
  if (await reader.ended(signal)) return undefined;
  const head = await reader.readExactly(5, signal);
  const type = head[0]!;
  const n = new DataView(head.buffer, head.byteOffset, 5).getUint32(1);
  if (n > MAX_FRAME_BYTES) throw new BlobProtocolError(`frame of ${n} bytes is too long`);
  if (type === Frame.DATA) {
    // The bytes of a piece go on to its body uncopied: a copy here was a fresh buffer per frame.
    if (n < 4) throw new BlobProtocolError('short DATA');
    const id = view(await reader.readExactly(4, signal)).getUint32(0);
    return { type, data: { id, chunks: n === 4 ? [] : await reader.readChunks(n - 4, signal) } };
  }
  return { type, payload: n === 0 ? new Uint8Array(0) : await reader.readExactly(n, signal) };
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** REQUEST and BEGIN share one layout: u32be id | u32be length | f64be a byte count. */
function encodeIdLengthCount(type: number, id: number, length: number, count: number): Uint8Array {
  const payload = new Uint8Array(16);
  const v = view(payload);
  v.setUint32(0, id);
  v.setUint32(4, length);
  v.setFloat64(8, count);
  return frame(type, payload);
}

function decodeIdLengthCount(payload: Uint8Array, name: string, peerId?: string): { id: number; length: number; count: number } {
  if (payload.byteLength !== 16) throw new BlobProtocolError(`${name} of ${payload.byteLength} bytes`, peerId);
  const v = view(payload);
  const count = v.getFloat64(8);
  if (!Number.isSafeInteger(count) || count < 0) throw new BlobProtocolError(`${name} names ${count} bytes`, peerId);
  return { id: v.getUint32(0), length: v.getUint32(4), count };
}

export function encodeRequest(id: number, offset: number, length: number): Uint8Array {
  return encodeIdLengthCount(Frame.REQUEST, id, length, offset);
}

export function decodeRequest(payload: Uint8Array): { id: number; offset: number; length: number } {
  const { id, length, count } = decodeIdLengthCount(payload, 'REQUEST');
  return { id, length, offset: count };
}

export function encodeId(type: number, id: number, extra?: number): Uint8Array {
  const payload = new Uint8Array(extra === undefined ? 4 : 5);
  view(payload).setUint32(0, id);
  if (extra !== undefined) payload[4] = extra;
  return frame(type, payload);
}

export function encodeState(answer: PieceAnswer): Uint8Array {
  if (answer === undefined) return frame(Frame.STATE, Uint8Array.of(StateStatus.NOT_FOUND));
  if (answer === 'pending') return frame(Frame.STATE, Uint8Array.of(StateStatus.PENDING));
  const count = pieceCount(answer.table);
  if (answer.have.length !== count) throw new Error(`have lists ${answer.have.length} pieces, the table ${count}`);
  const table = encoder.encode(JSON.stringify({ size: answer.table.size, pieceSize: answer.table.pieceSize, hashes: answer.table.hashes }));
  const bits = encodeBitfield((i) => answer.have[i] === true, count);
  const payload = new Uint8Array(5 + table.byteLength + bits.byteLength);
  payload[0] = StateStatus.OK;
  view(payload).setUint32(1, table.byteLength);
  payload.set(table, 5);
  payload.set(bits, 5 + table.byteLength);
  return frame(Frame.STATE, payload);
}

/** A STATE frame's answer; throws BlobProtocolError when it is malformed or its table invalid. */
export function decodeState(payload: Uint8Array, peerId: string): Exclude<PieceAnswer, undefined> | undefined {
  switch (payload[0]) {
    case StateStatus.NOT_FOUND:
      return undefined;
    case StateStatus.PENDING:
      return 'pending';
    case StateStatus.OK: {
      if (payload.byteLength < 5) throw new BlobProtocolError('short STATE', peerId);
      const n = view(payload).getUint32(1);
      if (5 + n > payload.byteLength) throw new BlobProtocolError(`STATE table of ${n} bytes overruns its frame`, peerId);
      let table: PieceTable;
      try {
        table = validatePieceTable(JSON.parse(decoder.decode(payload.subarray(5, 5 + n))), undefined, { provisional: true });
      } catch (err) {
        throw new BlobProtocolError(`bad piece table: ${(err as Error).message}`, peerId);
      }
      const count = pieceCount(table);
      const bits = payload.subarray(5 + n);
      if (bits.byteLength !== Math.ceil(count / 8)) throw new BlobProtocolError(`bitfield of ${bits.byteLength} bytes for ${count} pieces`, peerId);
      let have: boolean[];
      try {
        have = decodeBitfield(bits, count);
      } catch (err) {
        throw new BlobProtocolError(`bad bitfield: ${(err as Error).message}`, peerId);
      }
      if (have.lastIndexOf(true) >= table.hashes.length) throw new BlobProtocolError('STATE holds a piece its table has no hash for', peerId);
      return { table, have };
    }
    default:
      throw new BlobProtocolError(`unknown STATE status ${payload[0]}`, peerId);
  }
}

export function encodeHashes(first: number, hashes: readonly string[]): Uint8Array {
  const payload = new Uint8Array(4 + 32 * hashes.length);
  view(payload).setUint32(0, first);
  hashes.forEach((h, i) => payload.set(Buffer.from(h, 'hex'), 4 + 32 * i));
  return frame(Frame.HASHES, payload);
}

/** The hashes a HASHES frame adds to `table` (provisional), as hex; throws on a frame that does not fit it. */
export function decodeHashes(payload: Uint8Array, table: PieceTable, peerId: string): string[] {
  if (payload.byteLength < 4 || (payload.byteLength - 4) % 32 !== 0) throw new BlobProtocolError(`HASHES of ${payload.byteLength} bytes`, peerId);
  const first = view(payload).getUint32(0);
  const k = (payload.byteLength - 4) / 32;
  if (first !== table.hashes.length) throw new BlobProtocolError(`HASHES from piece ${first}, the table has ${table.hashes.length}`, peerId);
  if (first + k > pieceCount(table)) throw new BlobProtocolError(`HASHES past the table's ${pieceCount(table)} pieces`, peerId);
  const out: string[] = [];
  for (let i = 0; i < k; i++) out.push(Buffer.from(payload.buffer, payload.byteOffset + 4 + 32 * i, 32).toString('hex'));
  return out;
}

export function encodeHave(indices: readonly number[]): Uint8Array {
  const payload = new Uint8Array(4 * indices.length);
  const v = view(payload);
  indices.forEach((index, i) => v.setUint32(4 * i, index));
  return frame(Frame.HAVE, payload);
}

export function decodeHave(payload: Uint8Array, count: number, peerId: string): number[] {
  if (payload.byteLength % 4 !== 0) throw new BlobProtocolError(`HAVE of ${payload.byteLength} bytes`, peerId);
  const v = view(payload);
  const out: number[] = [];
  for (let at = 0; at < payload.byteLength; at += 4) {
    const index = v.getUint32(at);
    if (index >= count) throw new BlobProtocolError(`HAVE names piece ${index} of ${count}`, peerId);
    out.push(index);
  }
  return out;
}

export function encodePeers(peers: readonly string[]): Uint8Array {
  return frame(Frame.PEERS, encodePeerSection(peers));
}

export function decodePeers(payload: Uint8Array, peerId: string): string[] {
  const count = payload[0] ?? 0;
  if (count > MAX_EXCHANGED_PEERS) throw new BlobProtocolError(`PEERS names ${count} peers`, peerId);
  const peers: string[] = [];
  let at = 1;
  for (let i = 0; i < count; i++) {
    const n = payload[at++];
    if (n === undefined || at + n > payload.byteLength) throw new BlobProtocolError('PEERS overruns its frame', peerId);
    try {
      peers.push(peerIdFromString(decoder.decode(payload.subarray(at, at + n))).toString());
    } catch {
      throw new BlobProtocolError('PEERS names an invalid peer id', peerId);
    }
    at += n;
  }
  return peers;
}

// ---------------------------------------------------------------------------------------------
// Holder side

export interface SwarmWireServerOptions {
  /** Absent: every session is told NOT_FOUND. */
  pieces?: LocalPieces;
  blobs: LocalBlobs;
  /** Who asked about what (shared with the pieces protocol), for peer exchange. */
  askers?: Askers;
  uploads: UploadGate;
  /** Counts each range served, by peer. */
  trades?: TradeCounts;
  logger: Logger;
}

/** Handler for inbound swarm sessions. */
export function swarmWireHandler(opts: SwarmWireServerOptions): (stream: Stream, connection: Connection) => Promise<void> {
  return async (stream, connection) => {
    const session = new HolderSession(stream, connection.remotePeer.toString(), opts);
    await session.run();
  };
}

interface Upload {
  id: number;
  offset: number;
  length: number;
  controller: AbortController;
}

/** One inbound session: pushes what this agent holds of the blob, serves its requests in order. */
class HolderSession {
  private readonly reader: StreamReader;
  private readonly controller = new AbortController();
  private readonly queue: Upload[] = [];
  private current: Upload | undefined;
  private wakeServe: (() => void) | undefined;
  private digest = '';
  /** What the asker was last told. */
  private told: PieceAnswer | null = null;
  private readonly toldPeers = new Set<string>();
  private readonly log: Logger;

  constructor(
    private readonly stream: Stream,
    private readonly peer: string,
    private readonly opts: SwarmWireServerOptions,
  ) {
    this.reader = new StreamReader(stream, MAX_FRAME_BYTES + 5);
    this.log = opts.logger;
  }

  async run(): Promise<void> {
    const signal = this.controller.signal;
    try {
      const first = await readFrame(this.reader, AbortSignal.any([signal, AbortSignal.timeout(OPEN_TIMEOUT_MS)]));
      if (first === undefined) return;
      if (first.payload === undefined || first.type !== Frame.OPEN) throw new BlobProtocolError(`first frame is ${first.type}, not OPEN`);
      this.digest = parseOpen(first.payload);
      const watching = this.watch(signal);
      const serving = this.serve(signal);
      await this.readRequests(signal);
      // The asker closed its end: nothing more is wanted.
      this.controller.abort();
      await Promise.allSettled([watching, serving]);
      if (this.stream.status === 'open') await this.stream.close().catch(() => undefined);
    } catch (err) {
      this.log.debug({ peer: this.peer, digest: this.digest, err: (err as Error).message }, 'p2p swarm session failed');
      if (this.stream.status === 'open') this.stream.abort(err as Error);
    } finally {
      this.controller.abort();
      this.reader.dispose();
      this.wakeServe?.();
    }
  }

  private async readRequests(signal: AbortSignal): Promise<void> {
    for (;;) {
      const f = await readFrame(this.reader, signal);
      if (f === undefined) return;
      if (f.data !== undefined) throw new BlobProtocolError('DATA from the asking side');
      switch (f.type) {
        case Frame.REQUEST: {
          const { id, offset, length } = decodeRequest(f.payload);
          if (this.queue.length + (this.current ? 1 : 0) >= MAX_PIPELINED) {
            throw new BlobProtocolError(`more than ${MAX_PIPELINED} requests outstanding`);
          }
          this.queue.push({ id, offset, length, controller: new AbortController() });
          this.wakeServe?.();
          break;
        }
        case Frame.CANCEL: {
          const id = view(f.payload).getUint32(0);
          const at = this.queue.findIndex((u) => u.id === id);
          if (at >= 0) {
            this.queue.splice(at, 1);
            await this.send(encodeId(Frame.DONE, id, Done.CANCELLED));
          } else if (this.current?.id === id) {
            this.current.controller.abort();
          }
          break;
        }
        default:
          throw new BlobProtocolError(`unexpected frame ${f.type}`);
      }
    }
  }

  private send(bytes: Uint8Array | Uint8ArrayList): Promise<void> {
    return sendAll(this.stream, bytes, this.controller.signal);
  }

  /** Tells the asker what is held now, then pushes each change. */
  private async watch(signal: AbortSignal): Promise<void> {
    const pieces = this.opts.pieces;
    try {
      for (;;) {
        // Waiting starts before the read, so a change while it is read is not missed: the
        // asker has no other way to learn of it.
        const next = pieces?.changed?.(this.digest, signal);
        const answer = pieces === undefined ? undefined : await pieces.info(this.digest);
        await this.tell(answer);
        if (next === undefined) return;
        await next;
        if (signal.aborted) return;
      }
    } catch (err) {
      if (signal.aborted) return;
      this.log.warn({ peer: this.peer, digest: this.digest, err }, 'p2p swarm session: piece info failed');
      this.controller.abort(err);
      if (this.stream.status === 'open') this.stream.abort(err as Error);
    }
  }

  private async tell(answer: PieceAnswer): Promise<void> {
    const told = this.told;
    if (
      typeof answer === 'object' &&
      typeof told === 'object' &&
      told !== null &&
      consistentTables(answer.table, told.table) &&
      answer.table.hashes.length >= told.table.hashes.length
    ) {
      // The same table, or a provisional one grown: its new hashes first, then the pieces.
      const known = told.table.hashes.length;
      if (answer.table.hashes.length > known) await this.send(encodeHashes(known, answer.table.hashes.slice(known)));
      const news: number[] = [];
      answer.have.forEach((held, i) => {
        if (held && !told.have[i]) news.push(i);
      });
      if (news.length > 0) await this.send(encodeHave(news));
    } else if (answer !== told || typeof answer === 'object') {
      await this.send(encodeState(answer));
    }
    // A copy: a provisional table may grow in place.
    this.told = typeof answer === 'object' ? { table: { ...answer.table, hashes: answer.table.hashes.slice() }, have: answer.have.slice() } : answer;
    const others = this.opts.askers?.ask(this.digest, this.peer).filter((p) => !this.toldPeers.has(p)) ?? [];
    if (others.length > 0) {
      for (const p of others) this.toldPeers.add(p);
      await this.send(encodePeers(others));
    }
  }

  /** Answers requests one at a time, in order, each within the agent's upload limit. */
  private async serve(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const upload = this.queue.shift();
      if (upload === undefined) {
        await new Promise<void>((resolve) => (this.wakeServe = resolve));
        this.wakeServe = undefined;
        continue;
      }
      this.current = upload;
      try {
        await this.upload(upload, signal);
      } catch (err) {
        if (signal.aborted) return;
        this.log.debug({ peer: this.peer, digest: this.digest, err: (err as Error).message }, 'p2p swarm upload failed');
        await this.send(encodeId(Frame.DONE, upload.id, Done.FAILED)).catch(() => undefined);
      } finally {
        this.current = undefined;
      }
    }
  }

  private async upload(upload: Upload, session: AbortSignal): Promise<void> {
    const signal = AbortSignal.any([session, upload.controller.signal]);
    const release = await this.opts.uploads.acquire(signal).catch((err: unknown) => {
      if (upload.controller.signal.aborted && !session.aborted) return 'cancelled' as const;
      throw err;
    });
    if (release === 'cancelled') {
      await this.send(encodeId(Frame.DONE, upload.id, Done.CANCELLED));
      return;
    }
    if (release === undefined) {
      await this.send(encodeId(Frame.DONE, upload.id, Done.REFUSED));
      return;
    }
    try {
      const opened = await this.opts.blobs.open(this.digest, upload.offset, upload.length);
      if (opened === undefined) {
        await this.send(encodeId(Frame.DONE, upload.id, Done.NOT_HELD));
        return;
      }
      const { body, size } = opened;
      if (upload.offset > size) {
        body.destroy();
        await this.send(encodeId(Frame.DONE, upload.id, Done.FAILED));
        return;
      }
      const length = Math.min(upload.length, size - upload.offset);
      // BEGIN travels in the same send as the first bytes.
      let head: Uint8Array | undefined = encodeBegin(upload.id, length, size);
      this.opts.trades?.traded(this.peer);
      let sent = 0;
      // Chunks are gathered without copying into DATA frames of DATA_FRAME_BYTES: one send,
      // one Yamux frame each, with backpressure from the stream.
      let batch = new Uint8ArrayList();
      try {
        for await (const chunk of (length === 0 ? [] : body) as AsyncIterable<Uint8Array>) {
          if (upload.controller.signal.aborted) break;
          let part = chunk;
          if (part.byteLength > length - sent) part = part.subarray(0, length - sent);
          while (part.byteLength > 0) {
            const take = Math.min(part.byteLength, DATA_FRAME_BYTES - batch.byteLength);
            batch.append(part.subarray(0, take));
            part = part.subarray(take);
            sent += take;
            if (batch.byteLength >= DATA_FRAME_BYTES || sent >= length) {
              await this.send(dataFrame(upload.id, batch, head));
              head = undefined;
              batch = new Uint8ArrayList();
            }
          }
          if (sent >= length) break;
        }
      } finally {
        body.destroy();
        this.opts.blobs.sent?.(this.digest, sent - batch.byteLength);
      }
      if (upload.controller.signal.aborted) {
        await this.send(encodeId(Frame.DONE, upload.id, Done.CANCELLED));
        return;
      }
      if (sent < length) throw new Error(`blob body ended after ${sent} of ${length} bytes`);
      if (head !== undefined) await this.send(head);
      await this.send(encodeId(Frame.DONE, upload.id, Done.OK));
    } finally {
      release();
    }
  }
}

export function encodeBegin(id: number, length: number, size: number): Uint8Array {
  return encodeIdLengthCount(Frame.BEGIN, id, length, size);
}

export function decodeBegin(payload: Uint8Array, peerId: string): { id: number; length: number; size: number } {
  const { id, length, count } = decodeIdLengthCount(payload, 'BEGIN', peerId);
  return { id, length, size: count };
}

function dataFrame(id: number, data: Uint8ArrayList, before?: Uint8Array): Uint8ArrayList {
  const head = new Uint8Array(9);
  head[0] = Frame.DATA;
  const v = new DataView(head.buffer);
  v.setUint32(1, 4 + data.byteLength);
  v.setUint32(5, id);
  const out = before === undefined ? new Uint8ArrayList<ArrayBufferLike>(head) : new Uint8ArrayList<ArrayBufferLike>(before, head);
  out.append(data);
  return out;
}

function parseOpen(payload: Uint8Array): string {
  let value: unknown;
  try {
    value = JSON.parse(decoder.decode(payload));
  } catch {
    throw new BlobProtocolError('OPEN is not JSON');
  }
  const digest = (value as { digest?: unknown } | null)?.digest;
  // The digest goes to the store: only a well-formed one may pass.
  if (typeof digest !== 'string' || tryParseDigest(digest) === undefined) throw new BlobProtocolError('OPEN names no valid digest');
  return digest;
}
