import { RegistryError } from '../oci/errors.js';

export interface ByteRange {
  start: number;
  /** Inclusive. */
  end: number;
}

/**
 * Parses a single `bytes=` range against a blob of `size` bytes. Absent header: undefined
 * (the whole blob). Malformed, multi-part or unsatisfiable: a 416 with the spec's JSON.
 */
export function parseRange(header: string | undefined, size: number): ByteRange | undefined {
  if (header === undefined) return undefined;
  const match = /^bytes=(\d{0,20})-(\d{0,20})$/.exec(header.trim());
  if (!match) throw unsatisfiable(size, 'malformed or multi-part Range');
  const [, first, last] = match as unknown as [string, string, string];
  let start: number;
  let end: number;
  if (first === '') {
    // Suffix form: the last N bytes.
    if (last === '') throw unsatisfiable(size, 'malformed Range');
    const suffix = Number(last);
    if (suffix === 0 || size === 0) throw unsatisfiable(size, 'empty suffix range');
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(first);
    end = last === '' ? size - 1 : Math.min(Number(last), size - 1);
    if (last !== '' && Number(last) < start) throw unsatisfiable(size, 'range ends before it starts');
  }
  if (!Number.isSafeInteger(start) || start >= size) throw unsatisfiable(size, 'range starts past the end');
  return { start, end };
}

function unsatisfiable(size: number, reason: string): RegistryError {
  return new RegistryError('RANGE_INVALID', `requested range not satisfiable: ${reason}`, { size });
}
