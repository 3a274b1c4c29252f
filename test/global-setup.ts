import { execFileSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** Newest modification time under a directory. */
function newest(dir: string): number {
  let latest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    latest = Math.max(latest, entry.isDirectory() ? newest(path) : statSync(path).mtimeMs);
  }
  return latest;
}

/** Tests that run `shoal` as users do need dist/cli.js; build it when it is missing or stale. */
export default function setup(): void {
  let built = 0;
  try {
    built = statSync('dist/cli.js').mtimeMs;
  } catch {
    // not built yet
  }
  if (built < newest('src')) execFileSync('npm', ['run', '--silent', 'build'], { stdio: 'inherit' });
}
