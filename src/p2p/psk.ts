import { readFile } from 'node:fs/promises';
import { SwarmKeyError } from './errors.js';

const HEADER = '/key/swarm/psk/1.0.0/';
const ENCODING = '/base16/';

/**
 * Reads and validates a libp2p v1 swarm key file and returns it normalised
 * ("/key/swarm/psk/1.0.0/\n/base16/\n<64 lower-case hex>"), the form `@libp2p/pnet` expects.
 * pnet's own decoder accepts a bad file silently in some shapes; checking here gives the
 * operator an error that names the file instead of peers that never connect.
 */
export async function readSwarmKey(file: string): Promise<Uint8Array> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new SwarmKeyError(file, (err as Error).message);
  }
  return parseSwarmKey(text, file);
}

export function parseSwarmKey(text: string, file = '<swarm key>'): Uint8Array {
  const lines = text.split(/\r\n|\r|\n/).map((l) => l.trim());
  while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  if (lines[0] !== HEADER) throw new SwarmKeyError(file, `first line must be ${HEADER}`);
  if (lines[1] !== ENCODING) throw new SwarmKeyError(file, `second line must be ${ENCODING} (the only encoding supported)`);
  const hex = lines[2] ?? '';
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new SwarmKeyError(file, 'third line must be 64 hex digits (a 32-byte key)');
  if (lines.length > 3) throw new SwarmKeyError(file, 'unexpected content after the key');
  return new TextEncoder().encode(`${HEADER}\n${ENCODING}\n${hex.toLowerCase()}`);
}

/** A fresh swarm key file's text (for tests and an eventual `shoal p2p-keygen`). */
export function generateSwarmKey(): string {
  const bytes = new Uint8Array(32);
  crypto.getRandomValues(bytes);
  return `${HEADER}\n${ENCODING}\n${Buffer.from(bytes).toString('hex')}\n`;
}
