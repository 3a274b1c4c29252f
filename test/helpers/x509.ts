import { createHash, generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';

// A minimal self-signed X.509 v3 certificate writer on node:crypto, written by hand (DER) so the
// tests need neither the openssl CLI nor an npm dependency: node can make keys but not certs,
// and distribution only needs one root cert whose public key signs the tokens.

function len(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}
const tlv = (tag: number, body: Buffer): Buffer => Buffer.concat([Buffer.from([tag]), len(body.length), body]);
const seq = (...items: Buffer[]): Buffer => tlv(0x30, Buffer.concat(items));
const set = (...items: Buffer[]): Buffer => tlv(0x31, Buffer.concat(items));
const explicit = (n: number, body: Buffer): Buffer => tlv(0xa0 + n, body);
const octets = (b: Buffer): Buffer => tlv(0x04, b);
const bits = (b: Buffer): Buffer => tlv(0x03, Buffer.concat([Buffer.from([0]), b]));
const bool = (v: boolean): Buffer => tlv(0x01, Buffer.from([v ? 0xff : 0]));
const utf8 = (s: string): Buffer => tlv(0x0c, Buffer.from(s, 'utf8'));
const NULL = Buffer.from([0x05, 0x00]);

function integer(b: Buffer): Buffer {
  // DER integers are signed and minimal: strip leading zeros, re-add one if the top bit is set.
  let i = 0;
  while (i < b.length - 1 && b[i] === 0 && (b[i + 1]! & 0x80) === 0) i++;
  const body = b.subarray(i);
  return tlv(0x02, (body[0]! & 0x80) !== 0 ? Buffer.concat([Buffer.from([0]), body]) : body);
}

function oid(dotted: string): Buffer {
  const parts = dotted.split('.').map(Number);
  const out: number[] = [40 * parts[0]! + parts[1]!];
  for (const p of parts.slice(2)) {
    const enc: number[] = [p & 0x7f];
    for (let v = Math.floor(p / 128); v > 0; v = Math.floor(v / 128)) enc.unshift((v & 0x7f) | 0x80);
    out.push(...enc);
  }
  return tlv(0x06, Buffer.from(out));
}

function time(d: Date): Buffer {
  // RFC 5280: UTCTime through 2049, GeneralizedTime after.
  const iso = d.toISOString().replace(/[-:T]/g, '').slice(0, 14); // YYYYMMDDHHMMSS
  return d.getUTCFullYear() < 2050 ? tlv(0x17, Buffer.from(iso.slice(2) + 'Z')) : tlv(0x18, Buffer.from(iso + 'Z'));
}

const name = (cn: string): Buffer => seq(set(seq(oid('2.5.4.3'), utf8(cn))));

export type KeyAlg = 'ES256' | 'RS256';

export interface SelfSignedCert {
  alg: KeyAlg;
  privateKey: KeyObject;
  publicKey: KeyObject;
  certDer: Buffer;
  certPem: string;
}

/** Makes a key pair and a self-signed CA certificate for it (valid from 1 h ago for 10 years). */
export function makeSelfSignedCert(commonName: string, alg: KeyAlg = 'ES256'): SelfSignedCert {
  const { privateKey, publicKey } =
    alg === 'ES256'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : generateKeyPairSync('rsa', { modulusLength: 2048 });
  const sigAlg = alg === 'ES256' ? seq(oid('1.2.840.10045.4.3.2')) : seq(oid('1.2.840.113549.1.1.11'), NULL);
  const serial = randomBytes(12);
  serial[0]! &= 0x7f;
  const now = Date.now();
  const keyUsage = Buffer.from([0x03, 0x02, 0x01, 0x86]); // BIT STRING: digitalSignature|keyCertSign|cRLSign
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const tbs = seq(
    explicit(0, integer(Buffer.from([2]))), // v3
    integer(serial),
    sigAlg,
    name(commonName),
    seq(time(new Date(now - 3_600_000)), time(new Date(now + 10 * 365 * 86_400_000))),
    name(commonName),
    spki,
    explicit(
      3,
      seq(
        seq(oid('2.5.29.19'), bool(true), octets(seq(bool(true)))), // basicConstraints: CA
        seq(oid('2.5.29.15'), bool(true), octets(keyUsage)),
        seq(oid('2.5.29.14'), octets(octets(createHash('sha1').update(spki).digest()))), // subjectKeyIdentifier
      ),
    ),
  );
  // X.509 wants the DER (not IEEE P1363) form of an ECDSA signature, which is node's default.
  const signature = sign('sha256', tbs, privateKey);
  const certDer = seq(tbs, sigAlg, bits(signature));
  const b64 = certDer.toString('base64').replace(/.{64}/g, '$&\n');
  const certPem = `-----BEGIN CERTIFICATE-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END CERTIFICATE-----\n`;
  return { alg, privateKey, publicKey, certDer, certPem };
}

function base32(b: Buffer): string {
  const abc = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let out = '';
  let acc = 0;
  let nbits = 0;
  for (const byte of b) {
    acc = (acc << 8) | byte;
    nbits += 8;
    while (nbits >= 5) {
      out += abc[(acc >>> (nbits - 5)) & 31];
      nbits -= 5;
    }
  }
  if (nbits > 0) out += abc[(acc << (5 - nbits)) & 31];
  return out;
}

/**
 * The libtrust key ID that distribution's token auth matches a JWT `kid` against: sha256 of the
 * DER SubjectPublicKeyInfo, first 240 bits, base32, in 12 colon-separated groups of 4.
 */
export function libtrustKeyId(publicKey: KeyObject): string {
  const sum = createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest();
  return base32(sum.subarray(0, 30)).match(/.{4}/g)!.join(':');
}
