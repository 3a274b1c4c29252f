import type { Connection, Stream } from '@libp2p/interface';
import type { Logger } from 'pino';
import { tryParseDigest } from '../oci/digest.js';
import { isValidName } from '../oci/reference.js';
import { encodeError, Status } from './blob-protocol.js';
import { protocolIds, DEFAULT_PROTOCOL_PREFIX } from './config.js';
import { BlobProtocolError } from './errors.js';
import { resetOnError, sendAll, StreamReader } from './stream-io.js';

/*
 * `${prefix}/fetch/1.0.0`: "please fetch this blob from the origin". An agent that needs a blob
 * nobody holds asks the zone's elected origin fetcher to start, instead of hoping that fetcher's
 * own client asks for it soon. The fetcher fetches only what the origin lets it read with its own
 * credentials, and the asker takes the bytes only under its own grants, so no access is widened.
 * Request: u32 length + JSON {registry, repository, digest}. Answer: one status byte (OK =
 * fetching or held, NOT_FOUND = refused) or ERROR + u16 length + message.
 */

export interface FetchRequest {
  registry: string;
  repository: string;
  digest: string;
}

/** The serving side (the agent): starts fetching, answering whether it will. */
export interface LocalFetches {
  request(request: FetchRequest): Promise<boolean>;
}

export function fetchProtocolId(prefix = DEFAULT_PROTOCOL_PREFIX): string {
  return protocolIds(prefix).blob.replace(/\/blob\/1\.0\.0$/, '/fetch/1.0.0');
}

const MAX_REQUEST_BYTES = 4096;
const TIMEOUT_MS = 10_000;
const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

function parseRequest(bytes: Uint8Array): FetchRequest | undefined {
  try {
    const value = JSON.parse(decoder.decode(bytes)) as Partial<FetchRequest>;
    const { registry, repository, digest } = value;
    if (typeof registry !== 'string' || registry.length > 255 || typeof repository !== 'string' || typeof digest !== 'string') {
      return undefined;
    }
    if (!isValidName(repository) || !tryParseDigest(digest)) return undefined;
    return { registry, repository, digest };
  } catch {
    return undefined;
  }
}

export function fetchRequestHandler(opts: { fetches?: LocalFetches; logger: Logger }) {
  const finish = async (stream: Stream, bytes: Uint8Array): Promise<void> => {
    await sendAll(stream, bytes);
    await stream.close();
  };
  return async (stream: Stream, connection: Connection): Promise<void> => {
    const peer = connection.remotePeer.toString();
    const reader = new StreamReader(stream, MAX_REQUEST_BYTES + 4);
    try {
      const signal = AbortSignal.timeout(TIMEOUT_MS);
      const n = new DataView((await reader.readExactly(4, signal)).buffer).getUint32(0);
      if (n > MAX_REQUEST_BYTES) throw new BlobProtocolError(`request of ${n} bytes is too long`);
      const request = parseRequest(await reader.readExactly(n, signal));
      reader.dispose();
      if (!request) return await finish(stream, encodeError('invalid request'));
      const accepted = opts.fetches ? await opts.fetches.request(request).catch(() => false) : false;
      await finish(stream, Uint8Array.of(accepted ? Status.OK : Status.NOT_FOUND));
    } catch (err) {
      reader.dispose();
      opts.logger.debug({ peer, err }, 'p2p fetch request failed');
      if (stream.status === 'open') stream.abort(err as Error);
    }
  };
}

/** Asks a peer to fetch a blob; true when it is fetching (or holds) it. */
export async function requestFetch(stream: Stream, peerId: string, request: FetchRequest, signal?: AbortSignal): Promise<boolean> {
  const reader = new StreamReader(stream, 4096);
  const all = AbortSignal.any([AbortSignal.timeout(TIMEOUT_MS), ...(signal ? [signal] : [])]);
  try {
    const json = encoder.encode(JSON.stringify(request));
    const out = new Uint8Array(4 + json.byteLength);
    new DataView(out.buffer).setUint32(0, json.byteLength);
    out.set(json, 4);
    await sendAll(stream, out, all);
    await stream.close({ signal: all });
    const status = (await reader.readExactly(1, all))[0];
    reader.dispose();
    if (status === Status.OK) return true;
    if (status === Status.NOT_FOUND) return false;
    throw new BlobProtocolError(`fetch request answered status ${status}`, peerId);
  } catch (err) {
    resetOnError(reader, stream, err);
  }
}
