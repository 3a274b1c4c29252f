/** Sizes and durations as people write them in config files: "20GiB", "1h30m". */

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
  // Kubernetes quantities ("512Mi") are unambiguous, so they are accepted too.
  ki: 2 ** 10,
  mi: 2 ** 20,
  gi: 2 ** 30,
  ti: 2 ** 40,
};

const SIZE_RE = /^([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*([a-z]*)$/i;

/** Bytes from a number or a string like "20GiB", "1.5GB", "100KB", "123". */
export function parseSize(input: string | number): number {
  if (typeof input === 'number') return checkBytes(input, String(input));
  if (typeof input !== 'string') throw new Error(`invalid size ${describe(input)}: must be a number or a string like "20GiB"`);
  const s = input.trim();
  if (s.startsWith('-')) throw new Error(`invalid size ${JSON.stringify(input)}: must not be negative`);
  const m = SIZE_RE.exec(s);
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new Error(`invalid size ${JSON.stringify(input)}: expected a number of bytes or a size like "20GiB", "512MiB", "1.5GB"`);
  }
  // "1.5KiB" is a whole number of bytes; a fraction of a byte is rounded down rather than refused.
  return checkBytes(Math.floor(Number(m[1]) * unit), input);
}

function checkBytes(n: number, shown: string): number {
  if (!Number.isFinite(n)) throw new Error(`invalid size ${JSON.stringify(shown)}: must be a finite number`);
  if (n < 0) throw new Error(`invalid size ${JSON.stringify(shown)}: must not be negative`);
  if (!Number.isInteger(n)) throw new Error(`invalid size ${JSON.stringify(shown)}: a number of bytes must be a whole number`);
  if (!Number.isSafeInteger(n)) throw new Error(`invalid size ${JSON.stringify(shown)}: too large`);
  return n;
}

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

const DURATION_PART = /([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*(ms|s|m|h|d)/iy;
const BARE_NUMBER = /^([0-9]+(?:\.[0-9]+)?|\.[0-9]+)$/;

/** Milliseconds from a number (ms) or a string like "30s", "500ms", "24h", "7d", "1h30m". */
export function parseDuration(input: string | number): number {
  if (typeof input === 'number') return checkMs(input, String(input));
  if (typeof input !== 'string') throw new Error(`invalid duration ${describe(input)}: must be a number or a string like "30s"`);
  const s = input.trim();
  if (s.startsWith('-')) throw new Error(`invalid duration ${JSON.stringify(input)}: must not be negative`);
  if (BARE_NUMBER.test(s)) return checkMs(Number(s), input);
  const bad = new Error(`invalid duration ${JSON.stringify(input)}: expected milliseconds or a duration like "500ms", "30s", "5m", "24h", "7d", "1h30m"`);
  if (s === '') throw bad;
  // Sticky regex: the parts must cover the whole string with nothing between them but spaces.
  let total = 0;
  let pos = 0;
  while (pos < s.length) {
    while (s[pos] === ' ') pos++;
    if (pos >= s.length) break;
    DURATION_PART.lastIndex = pos;
    const m = DURATION_PART.exec(s);
    if (!m) throw bad;
    total += Number(m[1]) * DURATION_UNITS[m[2]!.toLowerCase()]!;
    pos = DURATION_PART.lastIndex;
  }
  return checkMs(total, input);
}

function checkMs(n: number, shown: string): number {
  if (!Number.isFinite(n)) throw new Error(`invalid duration ${JSON.stringify(shown)}: must be a finite number`);
  if (n < 0) throw new Error(`invalid duration ${JSON.stringify(shown)}: must not be negative`);
  if (n > Number.MAX_SAFE_INTEGER) throw new Error(`invalid duration ${JSON.stringify(shown)}: too large`);
  // Timers take whole milliseconds.
  return Math.round(n);
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}
