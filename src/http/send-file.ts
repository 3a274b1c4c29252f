import { open, type FileHandle } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';

/** Size of each read; two buffers of it per response are all the memory a download takes. */
const CHUNK = 1024 * 1024;

/**
 * Writes bytes [start, end] of a file to a response that already has its headers, with two
 * buffers reused for the whole response: one being sent while the next is read. Allocating a
 * fresh buffer per chunk (what a file read stream does) costs more in garbage collection than
 * the copy itself at GiB/s, and makes memory use follow the number of bytes served.
 * Resolves when the last byte is handed to the socket; rejects if the client goes away.
 */
export async function sendFileRange(
  res: ServerResponse,
  path: string | FileHandle,
  start: number,
  end: number,
  opts: { end?: boolean } = {},
): Promise<void> {
  const owned = typeof path === 'string';
  const file = owned ? await open(path, 'r') : path;
  const free: Buffer[] = [Buffer.allocUnsafeSlow(CHUNK), Buffer.allocUnsafeSlow(CHUNK)];
  let waiting: (() => void) | undefined;
  let failure: Error | undefined;
  const onClose = () => {
    if (!res.writableFinished) failure ??= new Error('client closed the connection');
    waiting?.();
  };
  res.once('close', onClose);
  try {
    let position = start;
    while (position <= end) {
      while (free.length === 0 && !failure && !res.destroyed) await new Promise<void>((resolve) => (waiting = resolve));
      if (res.destroyed) failure ??= new Error('client closed the connection');
      if (failure) throw failure;
      const buffer = free.pop()!;
      const want = Math.min(CHUNK, end - position + 1);
      const { bytesRead } = await file.read(buffer, 0, want, position);
      if (bytesRead === 0) throw new Error(`file ended at byte ${position} of ${end + 1}`);
      position += bytesRead;
      // The buffer is reused only once the socket has taken its bytes.
      res.write(buffer.subarray(0, bytesRead), (err) => {
        if (err) failure ??= err;
        free.push(buffer);
        waiting?.();
      });
    }
    if (opts.end === false) {
      // More follows from elsewhere: only wait until these bytes are handed to the socket.
      while (free.length < 2 && !failure && !res.destroyed) await new Promise<void>((resolve) => (waiting = resolve));
      if (failure) throw failure;
      return;
    }
    await new Promise<void>((resolve, reject) => {
      if (failure) return reject(failure);
      res.once('error', reject);
      res.end((err?: Error | null) => {
        // A destroyed response calls back too; only a finished one delivered every byte.
        if (err || !res.writableFinished) reject(err ?? failure ?? new Error('client closed the connection'));
        else resolve();
      });
    });
  } finally {
    res.off('close', onClose);
    if (owned) await file.close();
  }
}
