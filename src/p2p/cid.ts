import { createHash } from 'node:crypto';
import { CID } from 'multiformats/cid';
import * as raw from 'multiformats/codecs/raw';
import { create as createMultihash } from 'multiformats/hashes/digest';
import { parseDigest } from '../oci/digest.js';

const SHA2_256 = 0x12;

/**
 * The DHT key for a blob or manifest digest: CIDv1, raw codec, sha256 multihash of the digest's
 * own UTF-8 text ("sha256:<hex>"). Hashing the text rather than reusing the digest's bytes keeps
 * the key one fixed shape for every algorithm (sha512 digests too), and the key never claims to
 * address the blob's bytes themselves.
 */
export function cidForDigest(digest: string): CID {
  parseDigest(digest); // refuse anything that is not a digest Shoal would serve
  const hash = createHash('sha256').update(digest, 'utf8').digest();
  return CID.createV1(raw.code, createMultihash(SHA2_256, new Uint8Array(hash)));
}
