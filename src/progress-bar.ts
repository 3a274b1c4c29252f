import type { PreheatProgress } from './fetch/preheat.js';

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/** A one-line progress bar on a terminal; one line per finished blob elsewhere (logs, CI). */
export class ProgressBar {
  private readonly tty: boolean;

  constructor(private readonly out: NodeJS.WriteStream) {
    this.tty = Boolean(out.isTTY);
  }

  update(p: PreheatProgress): void {
    const text = `${p.done}/${p.blobs} blobs  ${formatBytes(p.doneBytes)} / ${formatBytes(p.bytes)}`;
    if (this.tty) {
      const width = 30;
      const filled = p.bytes > 0 ? Math.round((p.doneBytes / p.bytes) * width) : width;
      this.out.write(`\r[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${text}`);
    } else if (p.digest) {
      this.out.write(`${text}  ${p.digest}\n`);
    }
  }

  end(): void {
    if (this.tty) this.out.write('\n');
  }
}
