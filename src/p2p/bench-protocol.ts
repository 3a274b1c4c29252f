import type { Connection, Stream, StreamMessageEvent } from '@libp2p/interface';
import type { Logger } from 'pino';
import { sendAll } from './stream-io.js';

/*
 * `${prefix}/bench/1.0.0`: the requester sends u64be n and closes its writable end; the server
 * answers with n zero bytes and closes. Only served when the node is started with
 * `benchProtocol: true`. It measures what a bare libp2p stream carries between two agents, the
 * baseline the blob protocol is compared with.
 */

/** Refuse absurd requests: a benchmark never needs more than this. */
export const MAX_BENCH_BYTES = 64 * 1024 ** 3;
const CHUNK = new Uint8Array(1024 * 1024);

export function benchHandler(logger: Logger) {
  return async (stream: Stream, connection: Connection): Promise<void> => {
    try {
      const header = await readHeader(stream);
      const n = Number(new DataView(header.buffer, header.byteOffset, 8).getBigUint64(0));
      if (!Number.isSafeInteger(n) || n > MAX_BENCH_BYTES) throw new Error(`bench request of ${n} bytes refused`);
      let left = n;
      while (left > 0) {
        const part = left >= CHUNK.byteLength ? CHUNK : CHUNK.subarray(0, left);
        await sendAll(stream, part);
        left -= part.byteLength;
      }
      await stream.close();
    } catch (err) {
      logger.debug({ peer: connection.remotePeer.toString(), err }, 'p2p bench stream failed');
      if (stream.status === 'open') stream.abort(err as Error);
    }
  };
}

/** The 8-byte request; tiny, so collecting message events until 8 bytes arrived is enough. */
function readHeader(stream: Stream): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const got: Uint8Array[] = [];
    let n = 0;
    const done = (err?: Error): void => {
      stream.removeEventListener('message', onMessage);
      stream.removeEventListener('close', onClose);
      if (err !== undefined) reject(err);
      else resolve(Buffer.concat(got));
    };
    const onMessage = (evt: StreamMessageEvent): void => {
      const data = evt.data;
      for (const part of data instanceof Uint8Array ? [data] : data) {
        got.push(part);
        n += part.byteLength;
      }
      if (n >= 8) done();
    };
    const onClose = (): void => done(new Error('bench stream closed before the request'));
    stream.addEventListener('message', onMessage);
    stream.addEventListener('close', onClose);
  });
}

export interface ThroughputResult {
  bytes: number;
  ms: number;
  mibPerSec: number;
}

/** Opens a stream on the bench protocol to `peerId`; implemented by P2PNode. */
export interface BenchDialer {
  openBenchStream(peerId: string, signal?: AbortSignal): Promise<Stream>;
}

/**
 * Asks `b` for `bytes` zero bytes over a raw libp2p stream from `a` and times it (first request
 * byte to last response byte). Received bytes are counted and dropped as they arrive.
 * `b` is a node in this process or the peer id of one elsewhere (started with benchProtocol).
 */
export async function rawStreamThroughput(
  a: BenchDialer,
  b: { peerId: string } | string,
  bytes: number,
  signal?: AbortSignal,
): Promise<ThroughputResult> {
  const peerId = typeof b === 'string' ? b : b.peerId;
  const stream = await a.openBenchStream(peerId, signal);
  const start = performance.now();
  const req = new Uint8Array(8);
  new DataView(req.buffer).setBigUint64(0, BigInt(bytes));
  const received = await new Promise<number>((resolve, reject) => {
    let n = 0;
    const cleanup = (): void => {
      stream.removeEventListener('message', onMessage);
      stream.removeEventListener('close', onClose);
      stream.removeEventListener('end', onEnd);
      signal?.removeEventListener('abort', onAbort);
    };
    const onMessage = (evt: StreamMessageEvent): void => {
      n += evt.data.byteLength;
      if (n >= bytes) {
        cleanup();
        resolve(n);
      }
    };
    const onEnd = (): void => {
      cleanup();
      resolve(n);
    };
    const onClose = (evt: Event & { error?: Error }): void => {
      cleanup();
      if (evt.error !== undefined) reject(evt.error);
      else resolve(n);
    };
    const onAbort = (): void => {
      cleanup();
      stream.abort(new Error('bench aborted'));
      reject(signal!.reason);
    };
    stream.addEventListener('message', onMessage);
    stream.addEventListener('end', onEnd);
    stream.addEventListener('close', onClose);
    signal?.addEventListener('abort', onAbort, { once: true });
    sendAll(stream, req)
      .then(async () => stream.close())
      .catch((err: Error) => {
        cleanup();
        reject(err);
      });
  });
  const ms = performance.now() - start;
  if (received !== bytes) throw new Error(`bench stream carried ${received} of ${bytes} bytes`);
  return { bytes, ms, mibPerSec: bytes / 1024 ** 2 / (ms / 1000) };
}
