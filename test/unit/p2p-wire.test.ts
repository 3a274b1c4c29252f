import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { privateKeyToProtobuf } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { CID } from 'multiformats/cid';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeRequest, encodeError, encodeOk, encodeRequest, Status } from '../../src/p2p/blob-protocol.js';
import { cidForDigest } from '../../src/p2p/cid.js';
import { protocolIds } from '../../src/p2p/config.js';
import { NodeKeyError } from '../../src/p2p/errors.js';
import { loadOrCreatePrivateKey } from '../../src/p2p/key.js';
import { agentVersion, zoneFromAgentVersion } from '../../src/p2p/zone.js';

const D = `sha256:${'0123456789abcdef'.repeat(4)}`;

describe('cidForDigest', () => {
  it('is CIDv1, raw codec, sha256 of the digest text', async () => {
    const cid = cidForDigest(D);
    expect(cid.version).toBe(1);
    expect(cid.code).toBe(0x55);
    expect(cid.multihash.code).toBe(0x12);
    const { createHash } = await import('node:crypto');
    expect(Buffer.from(cid.multihash.digest).toString('hex')).toBe(createHash('sha256').update(D).digest('hex'));
    expect(CID.parse(cid.toString()).equals(cid)).toBe(true);
  });

  it('works for sha512 digests and refuses non-digests', () => {
    const cid = cidForDigest(`sha512:${'ab'.repeat(64)}`);
    expect(cid.multihash.digest.length).toBe(32);
    expect(() => cidForDigest('sha256:xyz')).toThrow();
    expect(() => cidForDigest('latest')).toThrow();
  });
});

describe('blob wire format', () => {
  it('round-trips requests', () => {
    const bytes = encodeRequest({ digest: D, offset: 5, length: 10 });
    const n = new DataView(bytes.buffer).getUint32(0);
    expect(n).toBe(bytes.length - 4);
    expect(decodeRequest(bytes.subarray(4))).toEqual({ digest: D, offset: 5, length: 10 });
    expect(decodeRequest(encodeRequest({ digest: D, offset: 0 }).subarray(4))).toEqual({ digest: D, offset: 0 });
  });

  it('refuses bad requests', () => {
    const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
    expect(() => decodeRequest(new TextEncoder().encode('{'))).toThrow(/JSON/);
    expect(() => decodeRequest(enc(null))).toThrow();
    expect(() => decodeRequest(enc({ digest: '../../etc/passwd', offset: 0 }))).toThrow(/digest/);
    expect(() => decodeRequest(enc({ digest: D, offset: -1 }))).toThrow(/offset/);
    expect(() => decodeRequest(enc({ digest: D, offset: 1.5 }))).toThrow(/offset/);
    expect(() => decodeRequest(enc({ digest: D, offset: 0, length: 'x' }))).toThrow(/length/);
  });

  it('encodes response headers', () => {
    const ok = encodeOk(2 ** 40, 7);
    expect(ok[0]).toBe(Status.OK);
    const v = new DataView(ok.buffer);
    expect(Number(v.getBigUint64(1))).toBe(2 ** 40);
    expect(Number(v.getBigUint64(9))).toBe(7);
    const err = encodeError('nope');
    expect(err[0]).toBe(Status.ERROR);
    expect(new TextDecoder().decode(err.subarray(3))).toBe('nope');
  });

  it('names protocols under the prefix', () => {
    expect(protocolIds()).toEqual({ dht: '/shoal/kad/1.0.0', blob: '/shoal/blob/1.0.0', bench: '/shoal/bench/1.0.0' });
    expect(protocolIds('/acme/').blob).toBe('/acme/blob/1.0.0');
    expect(() => protocolIds('shoal')).toThrow();
  });
});

describe('zone in the agent version', () => {
  it('round-trips any label', () => {
    for (const zone of ['default', 'eu-west-1a', 'site 7/rack 3']) {
      expect(zoneFromAgentVersion(agentVersion(zone))).toBe(zone);
    }
    expect(zoneFromAgentVersion('js-libp2p/3.0.0 UserAgent=v20')).toBeUndefined();
    expect(zoneFromAgentVersion(undefined)).toBeUndefined();
  });
});

describe('node key file', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-p2p-key-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('creates a key with mode 0600 (and its directory), then loads the same key', async () => {
    const file = join(dir, 'p2p', 'key');
    const first = await loadOrCreatePrivateKey(file);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    const second = await loadOrCreatePrivateKey(file);
    expect(peerIdFromPrivateKey(second).toString()).toBe(peerIdFromPrivateKey(first).toString());
    expect(Buffer.from(await readFile(file)).equals(Buffer.from(privateKeyToProtobuf(first)))).toBe(true);
  });

  it('refuses a file that is not a key, naming it', async () => {
    const file = join(dir, 'garbage');
    await writeFile(file, 'not a key');
    await expect(loadOrCreatePrivateKey(file)).rejects.toThrow(NodeKeyError);
    await expect(loadOrCreatePrivateKey(file)).rejects.toThrow(file);
  });
});
