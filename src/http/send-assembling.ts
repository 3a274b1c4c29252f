import { open } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { Partials, type Partial } from '../fetch/partials.js';
import type { StoredBlob } from '../store/blob-store.js';
import { sendFileRange } from './send-file.js';

const POLL_MS = 25;

/**
 * Serves a blob to the local client while the swarm still assembles it: verified pieces in
 * order as they arrive, never the last byte before the whole blob has hashed to its digest. If
 * that check fails the response is cut short, so the client never receives a complete wrong
 * blob. `done` resolves when the blob is committed (the rest is then read from the store).
 */
export async function sendWhileAssembling(
  res: ServerResponse,
  partial: Partial,
  size: number,
  done: Promise<StoredBlob & { afterMismatch?: boolean }>,
): Promise<void> {
  let stored: (StoredBlob & { afterMismatch?: boolean }) | undefined;
  let failure: unknown;
  done.then(
    (blob) => (stored = blob),
    (err: unknown) => (failure = err),
  );
  // Our own descriptor: the bytes stay readable even after the partial file is moved or removed.
  // It may already have been moved (the assembly just finished): then the store serves it all.
  const file = await open(partial.path, 'r').catch(() => undefined);
  if (!file) {
    const blob = await done;
    if (blob.size !== size) throw new Error(`blob is ${blob.size} bytes, not the ${size} announced`);
    await sendFileRange(res, blob.path, 0, size - 1);
    return;
  }
  let sent = 0;
  try {
    for (;;) {
      if (failure) throw failure;
      if (stored) {
        // Bytes already sent may have been from the assembly that failed: never complete them.
        if (stored.afterMismatch && sent > 0) throw new Error('the assembled blob failed its digest');
        if (stored.size !== size) throw new Error(`blob is ${stored.size} bytes, not the ${size} announced`);
        if (sent < size) await sendFileRange(res, stored.path, sent, size - 1);
        else res.end();
        return;
      }
      // Hold back the last byte until the digest has been checked.
      const ready = Math.min(Partials.prefix(partial), size - 1);
      if (ready > sent) {
        await sendFileRange(res, file, sent, ready - 1, { end: false });
        sent = ready;
      } else {
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      }
      if (res.destroyed) throw new Error('client closed the connection');
    }
  } finally {
    await file.close();
  }
}
