import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import type { PrivateKey } from '@libp2p/interface';
import { NodeKeyError } from './errors.js';

/**
 * Loads the node's private key from `file`, or creates an Ed25519 key and persists it there
 * (protobuf bytes, mode 0600, written to a temp file and renamed so a crash never leaves half a
 * key). A stable key keeps the peer id stable across restarts, so DHT provider records and
 * peers' routing tables stay valid.
 */
export async function loadOrCreatePrivateKey(file: string): Promise<PrivateKey> {
  let bytes: Buffer | undefined;
  try {
    bytes = await readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new NodeKeyError(file, (err as Error).message);
  }
  if (bytes !== undefined) {
    try {
      return privateKeyFromProtobuf(new Uint8Array(bytes));
    } catch (err) {
      throw new NodeKeyError(file, `not a libp2p private key (${(err as Error).message})`);
    }
  }

  const key = await generateKeyPair('Ed25519');
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  const fh = await open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(privateKeyToProtobuf(key));
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, file);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  return key;
}
