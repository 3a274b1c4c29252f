import type { Connection, Stream } from '@libp2p/interface';
import type { Logger } from 'pino';
import { decodeBitfield, encodeBitfield, isComplete, pieceCount, validatePieceTable, type PieceTable } from '../fetch/piece-table.js';
import { peerIdFromString } from '@libp2p/peer-id';
import { tryParseDigest } from '../oci/digest.js';
import type { Askers } from './askers.js';
import { encodeError, readErrorAnswer, Status } from './blob-protocol.js';
import { DEFAULT_PROTOCOL_PREFIX, protocolIds } from './config.js';
import { BlobProtocolError } from './errors.js';
import { resetOnError, sendAll, StreamReader } from './stream-io.js';

/*
 * Wire format of `${prefix}/pieces/1.0.0` (one request per stream):
 *
 *   request   u32be n | n bytes of UTF-8 JSON {"digest": "sha256:…"[, "known": k, "waitMs": w]}
 *             then the requester closes its writable end. With `waitMs`, the server holds the
 *             answer until it holds more than `known` verified pieces or `waitMs` (at most
 *             MAX_WAIT_MS) passes, whichever comes first: a downloader waiting for news of a
 *             peer asks once instead of polling. Older agents ignore both fields and answer
 *             at once, which an asker must accept.
 *   response  u8 status
 *               0 OK         u32be n | n bytes of UTF-8 JSON piece table {size, pieceSize, hashes}
 *                            | ceil(pieces / 8) bytes of bitfield (the pieces the server holds
 *                              verified, most significant bit first; all set for a whole blob)
 *                            [| u8 k | k × (u8 n | n bytes of a peer id)]  other peers that asked
 *                              about the blob lately (peer exchange; absent from older agents,
 *                              which end the answer after the bitfield)
 *               1 NOT_FOUND  (nothing follows)
 *               3 ERROR      u16be n | n bytes of UTF-8 message
 *
 * Status codes are the blob protocol's. The bitfield's length follows from the table, so it needs
 * no length of its own. Piece bytes travel over the blob protocol as ranges.
 */

export function pieceProtocolId(prefix = DEFAULT_PROTOCOL_PREFIX): string {
  // protocolIds validates and normalises the prefix; the pieces id sits beside the blob id.
  return protocolIds(prefix).blob.replace(/\/blob\/1\.0\.0$/, '/pieces/1.0.0');
}

/** What this node holds of a blob, for the pieces protocol (implemented by the agent over its store). */
export interface LocalPieces {
  /**
   * The blob's table and which pieces are held verified; 'pending' while it is being fetched
   * with no verified piece yet (the asker should wait rather than go to the origin);
   * undefined when nothing of it is held.
   */
  info(digest: string): Promise<PieceAnswer>;
  /**
   * Resolves at the next change of what is held of `digest` (a piece verified, a download
   * started or ended, the blob committed), or when `signal` aborts. Absent: long polls are
   * answered at once.
   */
  changed?(digest: string, signal: AbortSignal): Promise<void>;
}

/** A long poll: answer once more than `known` pieces are held, or after `waitMs`. */
export interface PieceWait {
  known: number;
  waitMs: number;
}

/** What a node answers about a blob: its pieces, that it is fetching it, or nothing. */
export type PieceAnswer = PieceInfo | 'pending' | undefined;

export interface PieceInfo {
  table: PieceTable;
  have: boolean[];
  /** Other peers that asked about the blob lately: likely downloading it too. */
  peers?: string[];
}

const MAX_REQUEST_BYTES = 4096;
/** Peers named in one answer, and the longest id accepted (base58 ids are ~52 characters). */
export const MAX_EXCHANGED_PEERS = 16;
const MAX_PEER_ID_BYTES = 128;
/**
 * Longest table accepted: 1024 hashes of 64 hex characters with quotes and commas are ~68 KiB,
 * plus two numbers. Anything longer is not a valid table.
 */
export const MAX_TABLE_BYTES = 128 * 1024;
const REQUEST_TIMEOUT_MS = 10_000;
/**
 * The longest a server holds a long poll: well inside the asker's answer timeout. An older
 * server holds 4 s at most, which an asker must accept (it asks again).
 */
export const MAX_WAIT_MS = 10_000;

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

function withLength32(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + bytes.byteLength);
  new DataView(out.buffer).setUint32(0, bytes.byteLength);
  out.set(bytes, 4);
  return out;
}

export function encodePieceInfo(info: PieceInfo): Uint8Array {
  const count = pieceCount(info.table);
  if (info.have.length !== count) throw new Error(`have lists ${info.have.length} pieces, the table ${count}`);
  const table = encoder.encode(JSON.stringify({ size: info.table.size, pieceSize: info.table.pieceSize, hashes: info.table.hashes }));
  const bits = encodeBitfield((i) => info.have[i] === true, count);
  const peers = encodePeers(info.peers);
  const out = new Uint8Array(1 + 4 + table.byteLength + bits.byteLength + peers.byteLength);
  out[0] = Status.OK;
  out.set(withLength32(table), 1);
  out.set(bits, 5 + table.byteLength);
  out.set(peers, 5 + table.byteLength + bits.byteLength);
  return out;
}

/** The peer-exchange section (empty without peers to name); the swarm wire's PEERS frame too. */
export function encodePeers(peers: readonly string[] | undefined): Uint8Array {
  if (peers === undefined) return new Uint8Array(0);
  const ids = peers
    .map((p) => encoder.encode(p))
    .filter((b) => b.byteLength > 0 && b.byteLength <= MAX_PEER_ID_BYTES)
    .slice(0, MAX_EXCHANGED_PEERS);
  const out = new Uint8Array(1 + ids.reduce((n, b) => n + 1 + b.byteLength, 0));
  out[0] = ids.length;
  let at = 1;
  for (const id of ids) {
    out[at++] = id.byteLength;
    out.set(id, at);
    at += id.byteLength;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Serving side

export interface PieceServerOptions {
  /** Absent: every request is answered NOT_FOUND. */
  pieces?: LocalPieces;
  /** Records who asks about what, and names other askers in answers (peer exchange). */
  askers?: Askers;
  logger: Logger;
}

/** Handler for inbound pieces streams. Answers are small (≤ ~70 KiB), so no upload limit applies. */
export function pieceInfoHandler(opts: PieceServerOptions): (stream: Stream, connection: Connection) => Promise<void> {
  const log = opts.logger;
  const finish = async (stream: Stream, bytes: Uint8Array): Promise<void> => {
    await sendAll(stream, bytes);
    await stream.close();
  };
  return async (stream, connection) => {
    const peer = connection.remotePeer.toString();
    const reader = new StreamReader(stream, MAX_REQUEST_BYTES + 4);
    try {
      const signal = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
      const n = new DataView((await reader.readExactly(4, signal)).buffer).getUint32(0);
      if (n > MAX_REQUEST_BYTES) throw new BlobProtocolError(`request of ${n} bytes is too long`);
      const request = parseRequest(await reader.readExactly(n, signal));
      reader.dispose();
      if (request === undefined) {
        await finish(stream, encodeError('invalid request'));
        return;
      }
      const { digest, wait } = request;
      let others = opts.askers?.ask(digest, peer);
      let info: PieceAnswer;
      try {
        info = opts.pieces === undefined ? undefined : await opts.pieces.info(digest);
        if (wait !== undefined && opts.pieces?.changed !== undefined && held(info) <= wait.known) {
          info = await waitForNews(opts.pieces, digest, wait, info, stream);
          // Who else asked meanwhile is news too.
          others = opts.askers?.ask(digest, peer);
        }
      } catch (err) {
        log.warn({ peer, digest, err }, 'p2p piece info failed');
        await finish(stream, encodeError('could not read piece info'));
        return;
      }
      if (info === undefined) {
        await finish(stream, Uint8Array.of(Status.NOT_FOUND));
        return;
      }
      // A provisional table (the first wave) travels on the swarm wire only: askers of the
      // previous release take a table as whole.
      if (info === 'pending' || !isComplete(info.table)) {
        await finish(stream, Uint8Array.of(Status.PENDING));
        return;
      }
      let answer: Uint8Array;
      try {
        answer = encodePieceInfo(others === undefined ? info : { ...info, peers: others });
      } catch (err) {
        log.warn({ peer, digest, err }, 'p2p local piece info is inconsistent');
        await finish(stream, encodeError('inconsistent piece info'));
        return;
      }
      await finish(stream, answer);
    } catch (err) {
      log.debug({ peer, err }, 'p2p piece info request failed');
      if (stream.status === 'open') stream.abort(err as Error);
    } finally {
      reader.dispose();
    }
  };
}

/** Verified pieces an answer says are held. */
function held(info: PieceAnswer): number {
  if (typeof info !== 'object') return 0;
  let n = 0;
  for (const h of info.have) if (h) n++;
  return n;
}

/**
 * Holds a long poll until more than `wait.known` pieces are held, `wait.waitMs` (capped) passes,
 * or the asker goes away; answers what is held then.
 */
async function waitForNews(pieces: LocalPieces, digest: string, wait: PieceWait, info: PieceAnswer, stream: Stream): Promise<PieceAnswer> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), Math.min(wait.waitMs, MAX_WAIT_MS));
  const onClose = (): void => controller.abort();
  stream.addEventListener('close', onClose);
  try {
    while (!controller.signal.aborted && held(info) <= wait.known) {
      await pieces.changed!(digest, controller.signal);
      info = await pieces.info(digest);
    }
    return info;
  } finally {
    clearTimeout(timer);
    stream.removeEventListener('close', onClose);
    controller.abort();
  }
}

/** The peer-exchange section of an OK answer. */
async function readPeers(reader: StreamReader, peerId: string, signal: AbortSignal): Promise<string[]> {
  const count = (await reader.readExactly(1, signal))[0]!;
  if (count > MAX_EXCHANGED_PEERS) throw new BlobProtocolError(`answer names ${count} peers`, peerId);
  const peers: string[] = [];
  for (let i = 0; i < count; i++) {
    const n = (await reader.readExactly(1, signal))[0]!;
    const text = decoder.decode(await reader.readExactly(n, signal));
    try {
      peers.push(peerIdFromString(text).toString());
    } catch {
      throw new BlobProtocolError('answer names an invalid peer id', peerId);
    }
  }
  return peers;
}

/** A request's digest and long poll, or undefined when it is malformed. */
function parseRequest(json: Uint8Array): { digest: string; wait?: PieceWait } | undefined {
  let value: unknown;
  try {
    value = JSON.parse(decoder.decode(json));
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const { digest, known, waitMs } = value as Record<string, unknown>;
  // The digest goes to the store: only a well-formed one may pass.
  if (typeof digest !== 'string' || tryParseDigest(digest) === undefined) return undefined;
  if (known === undefined && waitMs === undefined) return { digest };
  if (!isCount(known) || !isCount(waitMs)) return undefined;
  return { digest, wait: { known, waitMs } };
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

// ---------------------------------------------------------------------------------------------
// Requesting side

/**
 * Sends a pieces request on an open stream and reads the answer. Resolves undefined on NOT_FOUND;
 * throws BlobProtocolError on ERROR, a malformed answer or an invalid table (the table is a
 * peer's claim: pieces are checked against it, the whole blob against its digest). The stream is
 * reset on failure. `timeoutMs` bounds the whole exchange.
 */
export async function requestPieceInfo(
  stream: Stream,
  peerId: string,
  digest: string,
  opts: { signal?: AbortSignal; timeoutMs?: number; wait?: PieceWait } = {},
): Promise<PieceAnswer> {
  const reader = new StreamReader(stream, MAX_TABLE_BYTES + 4096);
  const request = opts.wait === undefined ? { digest } : { digest, known: opts.wait.known, waitMs: opts.wait.waitMs };
  const signals = [
    ...(opts.timeoutMs === undefined ? [] : [AbortSignal.timeout(opts.timeoutMs)]),
    ...(opts.signal === undefined ? [] : [opts.signal]),
  ];
  const signal = AbortSignal.any(signals);
  try {
    await sendAll(stream, withLength32(encoder.encode(JSON.stringify(request))), signal);
    await stream.close({ signal });
    const status = (await reader.readExactly(1, signal))[0];
    switch (status) {
      case Status.OK: {
        const n = new DataView((await reader.readExactly(4, signal)).buffer).getUint32(0);
        if (n > MAX_TABLE_BYTES) throw new BlobProtocolError(`piece table of ${n} bytes is too long`, peerId);
        let table: PieceTable;
        try {
          table = validatePieceTable(JSON.parse(decoder.decode(await reader.readExactly(n, signal))));
        } catch (err) {
          if (err instanceof BlobProtocolError || signal.aborted) throw err;
          throw new BlobProtocolError(`bad piece table: ${(err as Error).message}`, peerId);
        }
        const count = pieceCount(table);
        const bits = await reader.readExactly(Math.ceil(count / 8), signal);
        let have: boolean[];
        try {
          have = decodeBitfield(bits, count);
        } catch (err) {
          throw new BlobProtocolError(`bad bitfield: ${(err as Error).message}`, peerId);
        }
        const peers = (await reader.ended(signal)) ? undefined : await readPeers(reader, peerId, signal);
        reader.dispose();
        return peers === undefined || peers.length === 0 ? { table, have } : { table, have, peers };
      }
      case Status.NOT_FOUND:
        reader.dispose();
        return undefined;
      case Status.PENDING:
        reader.dispose();
        return 'pending';
      case Status.ERROR:
        throw await readErrorAnswer(reader, peerId, signal);
      default:
        throw new BlobProtocolError(`unknown status ${status}`, peerId);
    }
  } catch (err) {
    resetOnError(reader, stream, err);
  }
}
