import { createHash, type Hash } from 'node:crypto';

/** Digest algorithms Shoal verifies, with the hex length of their encoded part. */
const ALGORITHMS = { sha256: 64, sha512: 128 } as const;
export type Algorithm = keyof typeof ALGORITHMS;

/** A parsed, validated content digest (`algorithm:hex`). Safe to use in file paths. */
export interface Digest {
  readonly algorithm: Algorithm;
  readonly hex: string;
  /** The canonical `algorithm:hex` form. */
  readonly value: string;
}

export class InvalidDigestError extends Error {
  constructor(readonly input: string, reason: string) {
    super(`invalid digest ${JSON.stringify(input.slice(0, 200))}: ${reason}`);
    this.name = 'InvalidDigestError';
  }
}

/**
 * Parses `algorithm:hex`. Only lower-case hex of exactly the algorithm's length passes,
 * so a digest that passes can never name anything but one file under the store.
 */
export function parseDigest(input: string): Digest {
  const colon = input.indexOf(':');
  if (colon <= 0) throw new InvalidDigestError(input, 'expected algorithm:hex');
  const algorithm = input.slice(0, colon);
  const hex = input.slice(colon + 1);
  if (!Object.hasOwn(ALGORITHMS, algorithm)) {
    throw new InvalidDigestError(input, `unsupported algorithm ${JSON.stringify(algorithm.slice(0, 20))}`);
  }
  const length = ALGORITHMS[algorithm as Algorithm];
  if (hex.length !== length || !/^[0-9a-f]+$/.test(hex)) {
    throw new InvalidDigestError(input, `${algorithm} needs ${length} lower-case hex digits`);
  }
  return { algorithm: algorithm as Algorithm, hex, value: input };
}

export function tryParseDigest(input: string): Digest | undefined {
  try {
    return parseDigest(input);
  } catch {
    return undefined;
  }
}

export function isDigest(input: string): boolean {
  return tryParseDigest(input) !== undefined;
}

/** An incremental hash for the digest's algorithm. */
export function hasherFor(digest: Digest | Algorithm): Hash {
  return createHash(typeof digest === 'string' ? digest : digest.algorithm);
}

/** The digest of a whole buffer (manifests are small; blobs are hashed as streams). */
export function digestOf(bytes: Uint8Array, algorithm: Algorithm = 'sha256'): Digest {
  const hex = createHash(algorithm).update(bytes).digest('hex');
  return { algorithm, hex, value: `${algorithm}:${hex}` };
}

export class DigestMismatchError extends Error {
  constructor(readonly expected: string, readonly actual: string, readonly source: string) {
    super(`digest mismatch from ${source}: expected ${expected}, got ${actual}`);
    this.name = 'DigestMismatchError';
  }
}
