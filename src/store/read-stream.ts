import type { ReadStream } from 'node:fs';
import { open } from 'node:fs/promises';

/**
 * A read stream over [start, end] (inclusive) of a file, opened before it is returned.
 *
 * `fs.createReadStream(path)` opens the file later, on its own: if the file is removed in
 * between (a partial finished, a blob evicted or quarantined) the stream emits ENOENT as an
 * 'error' event, often before anyone listens, and an unheard 'error' ends the process. Opening
 * first turns that into `undefined` here, and once open, the descriptor keeps the bytes readable
 * even if the name goes away.
 */
export async function openReadStream(path: string, range: { start?: number; end?: number; highWaterMark?: number } = {}): Promise<ReadStream | undefined> {
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return handle.createReadStream({
    ...(range.start === undefined ? {} : { start: range.start }),
    ...(range.end === undefined ? {} : { end: range.end }),
    ...(range.highWaterMark === undefined ? {} : { highWaterMark: range.highWaterMark }),
    autoClose: true,
  });
}
