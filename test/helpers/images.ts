import { createCipheriv, createHash, randomFillSync } from 'node:crypto';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { runOk } from './proc.js';
import type { Registry } from './registry.js';
import { credsArg, skopeo, skopeoInspectRaw, type Creds } from './skopeo.js';
import { makeTempDir, removeTempDir } from './tmp.js';

export const UMOCI_BIN = '/usr/bin/umoci';

/**
 * A layer: a number is that many bytes of incompressible random content in one file; a Buffer is
 * one file with those bytes; `files` lists path → content.
 */
export type LayerSpec = number | Buffer | { files: Record<string, Buffer | string> };

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface MakeImageOptions {
  layers: LayerSpec[];
  /** default linux/amd64 */
  platform?: Platform;
  /** tag inside the layout (default "latest") */
  tag?: string;
  /** same seed → same file content (layer blobs then come out the same too); default random */
  seed?: string;
  /** add to an existing layout instead of making a temp one */
  layoutDir?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
  annotations?: Record<string, string>;
}

export interface LocalImage {
  layoutDir: string;
  tag: string;
  platform: Platform;
  manifestDigest: string;
  manifestMediaType: string;
  manifestSize: number;
  configDigest: string;
  configSize: number;
  layerDigests: string[];
  layerSizes: number[];
  /** config + layer blob sizes */
  blobBytes: number;
  /** removes the layout dir */
  remove(): Promise<void>;
}

export interface LocalIndex {
  layoutDir: string;
  tag: string;
  indexDigest: string;
  images: LocalImage[];
  remove(): Promise<void>;
}

const CHUNK = 1 << 20;

/** Yields `size` bytes: OS randomness, or an AES-CTR keystream when seeded (fast and repeatable). */
function* contentChunks(size: number, seed: string | undefined): Generator<Buffer> {
  const cipher = seed
    ? createCipheriv('aes-256-ctr', createHash('sha256').update(seed).digest(), Buffer.alloc(16))
    : undefined;
  const zero = cipher ? Buffer.alloc(CHUNK) : undefined;
  for (let left = size; left > 0; left -= CHUNK) {
    const n = Math.min(CHUNK, left);
    yield cipher ? cipher.update(zero!.subarray(0, n)) : randomFillSync(Buffer.allocUnsafe(n));
  }
}

function tarHeader(name: string, size: number): Buffer {
  const h = Buffer.alloc(512);
  const put = (s: string, off: number, len: number) => h.write(s, off, len, 'utf8');
  const octal = (n: number, len: number) => n.toString(8).padStart(len - 1, '0') + '\0';
  put(name, 0, 100);
  put(octal(0o644, 8), 100, 8);
  put(octal(0, 8), 108, 8); // uid
  put(octal(0, 8), 116, 8); // gid
  put(octal(size, 12), 124, 12);
  put(octal(0, 12), 136, 12); // mtime 0: repeatable layers
  put('        ', 148, 8); // checksum counts itself as spaces
  put('0', 156, 1);
  put('ustar\0', 257, 6);
  put('00', 263, 2);
  let sum = 0;
  for (const b of h) sum += b;
  put(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8);
  return h;
}

async function write(out: Writable, b: Buffer): Promise<void> {
  if (!out.write(b)) await once(out, 'drain');
}

/** Streams one layer tar into out (umoci's stdin), without holding it in memory. */
async function writeLayerTar(out: Writable, spec: LayerSpec, index: number, seed: string | undefined): Promise<void> {
  const files: [string, Buffer | string | number][] =
    typeof spec === 'number'
      ? [[`shoal-layer-${index}.bin`, spec]]
      : Buffer.isBuffer(spec)
        ? [[`shoal-layer-${index}.bin`, spec]]
        : Object.entries(spec.files);
  for (const [name, content] of files) {
    const size = typeof content === 'number' ? content : Buffer.byteLength(content);
    await write(out, tarHeader(name.replace(/^\/+/, ''), size));
    if (typeof content === 'number') {
      // Unseeded layers still get a random seed: one path for both, and unique content per layer.
      const s = seed !== undefined ? `${seed}/${index}/${name}` : undefined;
      for (const c of contentChunks(content, s)) await write(out, c);
    } else {
      await write(out, Buffer.from(content));
    }
    if (size % 512) await write(out, Buffer.alloc(512 - (size % 512)));
  }
  await write(out, Buffer.alloc(1024)); // end of archive
}

/**
 * `umoci raw add-layer` reading the tar from a pipe: no temp tar file; umoci gzips it (pgzip).
 * `cat |` is there because node's stdin "pipe" is a socketpair, which /dev/stdin cannot open.
 */
async function addLayer(image: string, spec: LayerSpec, index: number, seed: string | undefined): Promise<void> {
  const script = 'cat | "$0" raw add-layer --no-history --image "$1" /dev/stdin';
  const child = spawn('/bin/sh', ['-c', script, UMOCI_BIN, image], { stdio: ['pipe', 'ignore', 'pipe'] });
  const err: Buffer[] = [];
  child.stderr.on('data', (b: Buffer) => err.push(b));
  const closed = once(child, 'close') as Promise<[number | null]>;
  let writeErr: unknown;
  try {
    await writeLayerTar(child.stdin, spec, index, seed);
    child.stdin.end();
  } catch (e) {
    writeErr = e; // umoci died early (EPIPE); its stderr says why
  }
  const [code] = await closed;
  if (code !== 0 || writeErr) {
    throw new Error(`umoci raw add-layer failed (${code}): ${Buffer.concat(err).toString().trim()} ${String(writeErr ?? '')}`);
  }
}

async function readJson<T>(path: string): Promise<T> {
  return JSON.parse(await readFile(path, 'utf8')) as T;
}

const blobPath = (layout: string, digest: string) => join(layout, 'blobs', ...digest.split(':'));

interface LayoutIndex {
  schemaVersion: number;
  manifests: Descriptor[];
}

async function describe(layoutDir: string, tag: string, platform: Platform, root?: string): Promise<LocalImage> {
  const index = await readJson<LayoutIndex>(join(layoutDir, 'index.json'));
  const desc = index.manifests.find((d) => d.annotations?.['org.opencontainers.image.ref.name'] === tag);
  if (!desc) throw new Error(`tag ${tag} not in ${layoutDir}/index.json`);
  const manifest = await readJson<{ config: Descriptor; layers: Descriptor[] }>(blobPath(layoutDir, desc.digest));
  const layerSizes = manifest.layers.map((l) => l.size);
  return {
    layoutDir,
    tag,
    platform,
    manifestDigest: desc.digest,
    manifestMediaType: desc.mediaType,
    manifestSize: desc.size,
    configDigest: manifest.config.digest,
    configSize: manifest.config.size,
    layerDigests: manifest.layers.map((l) => l.digest),
    layerSizes,
    blobBytes: manifest.config.size + layerSizes.reduce((a, b) => a + b, 0),
    remove: () => (root !== undefined ? removeTempDir(root) : Promise.resolve()),
  };
}

/**
 * Builds an OCI image layout with umoci: `umoci init`, `umoci new`, `umoci config` for the
 * platform, then one `umoci raw add-layer` per layer (gzip; random content stays ≈ its size).
 */
export async function makeImage(opts: MakeImageOptions): Promise<LocalImage> {
  // A temp dir of our own unless adding to the caller's layout (then the caller removes it).
  const root = opts.layoutDir === undefined ? await makeTempDir('shoal-img-') : undefined;
  const layoutDir = opts.layoutDir ?? join(root!, 'layout');
  const tag = opts.tag ?? 'latest';
  const platform = opts.platform ?? { os: 'linux', architecture: 'amd64' };
  const image = `${layoutDir}:${tag}`;
  try {
    if (root !== undefined) await runOk(UMOCI_BIN, ['init', '--layout', layoutDir]);
    await runOk(UMOCI_BIN, ['new', '--image', image]);
    await runOk(UMOCI_BIN, [
      'config', '--no-history', '--image', image,
      '--os', platform.os, '--architecture', platform.architecture,
      // A fixed creation time keeps seeded images' configs repeatable.
      ...(opts.seed !== undefined ? ['--created', '2020-01-01T00:00:00Z'] : []),
    ]);
    for (const [i, spec] of opts.layers.entries()) {
      // Unseeded: a fresh random seed per layer, so no two images share a blob by accident.
      const seed = opts.seed ?? randomFillSync(Buffer.alloc(16)).toString('hex');
      await addLayer(image, spec, i, seed);
    }
    return await describe(layoutDir, tag, platform, root);
  } catch (e) {
    if (root !== undefined) await removeTempDir(root);
    throw e;
  }
}

export interface MakeIndexOptions {
  /** one image per platform */
  images: { platform: Platform; layers: LayerSpec[] }[];
  tag?: string;
  seed?: string;
}

/** A multi-platform image: one layout holding each platform's image and an OCI index tagged `tag`. */
export async function makeIndex(opts: MakeIndexOptions): Promise<LocalIndex> {
  const root = await makeTempDir('shoal-idx-');
  const layoutDir = join(root, 'layout');
  const tag = opts.tag ?? 'latest';
  try {
    await runOk(UMOCI_BIN, ['init', '--layout', layoutDir]);
    const images: LocalImage[] = [];
    for (const [i, spec] of opts.images.entries()) {
      const p = spec.platform;
      images.push(
        await makeImage({
          layers: spec.layers,
          platform: p,
          layoutDir,
          tag: `${tag}-${i}-${p.os}-${p.architecture}${p.variant ?? ''}`,
          ...(opts.seed !== undefined ? { seed: `${opts.seed}/${i}` } : {}),
        }),
      );
    }
    const body = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: images.map((im) => ({
          mediaType: im.manifestMediaType,
          digest: im.manifestDigest,
          size: im.manifestSize,
          platform: im.platform,
        })),
      }),
    );
    const indexDigest = `sha256:${createHash('sha256').update(body).digest('hex')}`;
    await writeFile(blobPath(layoutDir, indexDigest), body);
    const top = await readJson<LayoutIndex>(join(layoutDir, 'index.json'));
    top.manifests.push({
      mediaType: 'application/vnd.oci.image.index.v1+json',
      digest: indexDigest,
      size: body.length,
      annotations: { 'org.opencontainers.image.ref.name': tag },
    });
    await writeFile(join(layoutDir, 'index.json'), JSON.stringify(top));
    return { layoutDir, tag, indexDigest, images, remove: () => removeTempDir(root) };
  } catch (e) {
    await removeTempDir(root);
    throw e;
  }
}

export interface PushedImage {
  /** host/repo:tag */
  ref: string;
  repo: string;
  tag: string;
  manifestDigest: string;
  manifestMediaType: string;
  /** the manifest's exact bytes as the registry serves them */
  manifestRaw: Buffer;
  configDigest: string;
  layerDigests: string[];
  layerSizes: number[];
  /** config + layers, as referenced by the pushed manifest */
  blobBytes: number;
}

export interface PushedIndex {
  ref: string;
  repo: string;
  tag: string;
  indexDigest: string;
  indexMediaType: string;
  indexRaw: Buffer;
  /** each platform's manifest as the registry has it */
  manifests: (PushedImage & { platform: Platform })[];
  /** all platforms' config + layer blobs (a blob shared by two platforms counts once) */
  blobBytes: number;
}

export interface PushOptions {
  creds?: Creds;
  /** push as Docker schema 2 ("v2s2") instead of keeping the OCI manifest */
  format?: 'oci' | 'v2s2';
}

const hostOf = (target: Registry | string): string => (typeof target === 'string' ? target : target.host);

function splitRef(ref: string): { repo: string; tag: string } {
  const i = ref.lastIndexOf(':');
  if (i < 0 || ref.slice(i).includes('/')) return { repo: ref, tag: 'latest' };
  return { repo: ref.slice(0, i), tag: ref.slice(i + 1) };
}

async function readPushed(host: string, repo: string, ref: string, creds: Creds | undefined): Promise<PushedImage> {
  const inspected = await skopeoInspectRaw(`${host}/${repo}${ref}`, creds !== undefined ? { creds } : {});
  const m = inspected.manifest as { mediaType?: string; config: Descriptor; layers: Descriptor[] };
  const layerSizes = m.layers.map((l) => l.size);
  const tag = ref.startsWith(':') ? ref.slice(1) : '';
  return {
    ref: `${host}/${repo}${ref}`,
    repo,
    tag,
    manifestDigest: inspected.digest,
    manifestMediaType: m.mediaType ?? 'application/vnd.oci.image.manifest.v1+json',
    manifestRaw: inspected.raw,
    configDigest: m.config.digest,
    layerDigests: m.layers.map((l) => l.digest),
    layerSizes,
    blobBytes: m.config.size + layerSizes.reduce((a, b) => a + b, 0),
  };
}

async function copyToRegistry(src: string, dest: string, all: boolean, opts: PushOptions): Promise<void> {
  const args = ['copy', '--quiet', '--dest-tls-verify=false', '--retry-times', '2'];
  if (opts.creds !== undefined) args.push('--dest-creds', credsArg(opts.creds));
  else args.push('--dest-no-creds');
  if (all) args.push('--all');
  // Unless converting, insist that the registry gets our exact bytes.
  if (opts.format === 'v2s2') args.push('--format', 'v2s2');
  else args.push('--preserve-digests');
  const r = await skopeo([...args, src, `docker://${dest}`]);
  if (r.code !== 0) throw new Error(`skopeo copy ${src} → ${dest} exited ${r.code}: ${r.stderr.trim()}`);
}

/** Pushes an image with skopeo and returns what the registry now serves for it. */
export async function pushImage(
  image: LocalImage,
  target: Registry | string,
  ref: string,
  credsOrOpts?: Creds | PushOptions,
): Promise<PushedImage> {
  const opts = normalize(credsOrOpts);
  const host = hostOf(target);
  const { repo, tag } = splitRef(ref);
  await copyToRegistry(`oci:${image.layoutDir}:${image.tag}`, `${host}/${repo}:${tag}`, false, opts);
  return readPushed(host, repo, `:${tag}`, opts.creds);
}

/** Pushes a multi-platform index and every platform (skopeo copy --all). */
export async function pushIndex(
  index: LocalIndex,
  target: Registry | string,
  ref: string,
  credsOrOpts?: Creds | PushOptions,
): Promise<PushedIndex> {
  const opts = normalize(credsOrOpts);
  const host = hostOf(target);
  const { repo, tag } = splitRef(ref);
  await copyToRegistry(`oci:${index.layoutDir}:${index.tag}`, `${host}/${repo}:${tag}`, true, opts);
  const top = await skopeoInspectRaw(`${host}/${repo}:${tag}`, opts.creds !== undefined ? { creds: opts.creds } : {});
  const list = top.manifest as { mediaType?: string; manifests: Descriptor[] };
  const manifests: PushedIndex['manifests'] = [];
  const blobs = new Map<string, number>();
  for (const d of list.manifests) {
    const p = await readPushed(host, repo, `@${d.digest}`, opts.creds);
    manifests.push({ ...p, platform: d.platform ?? { os: 'unknown', architecture: 'unknown' } });
    const m = JSON.parse(p.manifestRaw.toString('utf8')) as { config: Descriptor; layers: Descriptor[] };
    for (const b of [m.config, ...m.layers]) blobs.set(b.digest, b.size);
  }
  return {
    ref: `${host}/${repo}:${tag}`,
    repo,
    tag,
    indexDigest: top.digest,
    indexMediaType: list.mediaType ?? 'application/vnd.oci.image.index.v1+json',
    indexRaw: top.raw,
    manifests,
    blobBytes: [...blobs.values()].reduce((a, b) => a + b, 0),
  };
}

function normalize(c: Creds | PushOptions | undefined): PushOptions {
  if (c === undefined) return {};
  if (typeof c === 'string' || ('username' in c && 'password' in c)) return { creds: c as Creds };
  return c as PushOptions;
}
