import type { FileHandle } from 'node:fs/promises';

/** Dirty bytes after which a background flush starts. */
const FLUSH_EVERY = 32 * 1024 * 1024;

/**
 * Flushes a file being written to disk in the background as it grows, so the fsync that makes a
 * blob durable before its commit finds little left to write: on a 256 MiB blob that final
 * fsync was a fifth of a second during which the client held back the last byte (measured).
 * One flush at a time; its errors are left to the final fsync, which reports them.
 */
export class FlushBehind {
  private dirty = 0;
  private flushing: Promise<void> | undefined;

  constructor(private readonly file: FileHandle) {}

  wrote(bytes: number): void {
    this.dirty += bytes;
    if (this.dirty < FLUSH_EVERY || this.flushing !== undefined) return;
    this.dirty = 0;
    this.flushing = this.file
      .datasync()
      .catch(() => undefined)
      .finally(() => (this.flushing = undefined));
  }

  /** Waits for a flush in progress (before the file is closed or synced). */
  async settle(): Promise<void> {
    await this.flushing;
  }
}
