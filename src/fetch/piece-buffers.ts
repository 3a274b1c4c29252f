/**
 * Piece buffers shared by every download of the process, by size. Each is a SharedArrayBuffer
 * (the hash worker reads it in place). A fresh 4 MiB buffer costs a thousand page faults as it
 * is first written: with one pool per download, every blob of a rollout paid them again (perf:
 * 4 % of the agents' CPU in the kernel zeroing pages under V8's copy into shared memory).
 * Bounded: beyond MAX_RETAINED_BYTES a returned buffer is left to the garbage collector.
 */
const MAX_RETAINED_BYTES = 64 * 1024 * 1024;

const free = new Map<number, Buffer[]>();
let retained = 0;

/** A buffer of exactly `size` bytes, reused when one is free. */
export function takePieceBuffer(size: number): Buffer {
  const buffer = free.get(size)?.pop();
  if (buffer === undefined) return Buffer.from(new SharedArrayBuffer(size));
  retained -= size;
  return buffer;
}

/** Returns a buffer no one uses any more. */
export function givePieceBuffer(buffer: Buffer): void {
  if (retained + buffer.byteLength > MAX_RETAINED_BYTES) return;
  retained += buffer.byteLength;
  let list = free.get(buffer.byteLength);
  if (list === undefined) free.set(buffer.byteLength, (list = []));
  list.push(buffer);
}

/** Bytes held in free buffers (tests). */
export function retainedPieceBytes(): number {
  return retained;
}
