import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run, type RunResult } from './proc.js';
import { makeTempDir, removeTempDir } from './tmp.js';

export const SKOPEO_BIN = '/usr/bin/skopeo';

let envDir: Promise<string> | undefined;

/**
 * skopeo runs hermetically: no user auth files, no system registries.conf mirrors, big temp
 * files in our own dir, and no signature policy lookup (--insecure-policy on each call).
 */
async function skopeoEnv(): Promise<NodeJS.ProcessEnv> {
  envDir ??= (async () => {
    const dir = await makeTempDir('shoal-skopeo-');
    await writeFile(join(dir, 'registries.conf'), '');
    await writeFile(join(dir, 'auth.json'), '{"auths":{}}');
    return dir;
  })();
  const dir = await envDir;
  return {
    ...process.env,
    REGISTRY_AUTH_FILE: join(dir, 'auth.json'),
    CONTAINERS_REGISTRIES_CONF: join(dir, 'registries.conf'),
    TMPDIR: dir,
  };
}

/** Runs `skopeo --insecure-policy ARGS`, never rejecting on a non-zero exit. */
export async function skopeo(args: string[], timeoutMs = 300_000): Promise<RunResult> {
  return run(SKOPEO_BIN, ['--insecure-policy', ...args], { env: await skopeoEnv(), timeoutMs });
}

/** "user:pass" or {username,password} → skopeo's USERNAME:PASSWORD */
export type Creds = string | { username: string; password: string };
export const credsArg = (c: Creds): string => (typeof c === 'string' ? c : `${c.username}:${c.password}`);

export interface SkopeoPullResult {
  ok: boolean;
  code: number;
  stderr: string;
  /** OCI layout written (image tag "img"); already removed after a failed pull into a temp dir */
  layoutDir: string;
  /** removes layoutDir */
  remove(): Promise<void>;
}

export interface SkopeoPullOptions {
  creds?: Creds;
  /** an OCI layout dir to write into; default a fresh temp dir */
  destDir?: string;
  /** copy every platform of an index (skopeo --all) */
  all?: boolean;
  /** pick one platform of an index */
  os?: string;
  arch?: string;
  timeoutMs?: number;
}

/**
 * Pulls `src` (host:port/repo:tag or @digest) over plain HTTP into an OCI layout. skopeo checks
 * every blob and the manifest against their digests, so ok=true means the bytes were right.
 */
export async function skopeoPull(src: string, opts: SkopeoPullOptions = {}): Promise<SkopeoPullResult> {
  const layoutDir = opts.destDir ?? (await makeTempDir('shoal-pull-'));
  const args = ['copy', '--quiet', '--src-tls-verify=false'];
  if (opts.creds !== undefined) args.push('--src-creds', credsArg(opts.creds));
  else args.push('--src-no-creds');
  if (opts.all) args.push('--all');
  if (opts.os) args.push('--override-os', opts.os);
  if (opts.arch) args.push('--override-arch', opts.arch);
  args.push(`docker://${src}`, `oci:${layoutDir}:img`);
  const r = await skopeo(args, opts.timeoutMs);
  // A failed pull's half-written layout is of no use: drop it if it is ours.
  if (r.code !== 0 && opts.destDir === undefined) await removeTempDir(layoutDir);
  return {
    ok: r.code === 0,
    code: r.code,
    stderr: r.stderr,
    layoutDir,
    remove: () => removeTempDir(layoutDir),
  };
}

export interface SkopeoInspectOptions {
  creds?: Creds;
}

/** The raw manifest bytes (exactly as served) and their sha256 digest. Throws if skopeo fails. */
export async function skopeoInspectRaw(
  ref: string,
  opts: SkopeoInspectOptions = {},
): Promise<{ raw: Buffer; digest: string; manifest: Record<string, unknown> }> {
  const args = ['inspect', '--raw', '--tls-verify=false'];
  args.push(...(opts.creds !== undefined ? ['--creds', credsArg(opts.creds)] : ['--no-creds']));
  const r = await skopeo([...args, `docker://${ref}`]);
  if (r.code !== 0) throw new Error(`skopeo inspect --raw ${ref} exited ${r.code}: ${r.stderr.trim()}`);
  const raw = r.stdoutBuf;
  return {
    raw,
    digest: `sha256:${createHash('sha256').update(raw).digest('hex')}`,
    manifest: JSON.parse(raw.toString('utf8')) as Record<string, unknown>,
  };
}

/** `skopeo inspect` (the summarised JSON: Digest, Layers, Architecture, Os, ...). Throws if skopeo fails. */
export async function skopeoInspect(ref: string, opts: SkopeoInspectOptions = {}): Promise<Record<string, unknown>> {
  const args = ['inspect', '--tls-verify=false'];
  args.push(...(opts.creds !== undefined ? ['--creds', credsArg(opts.creds)] : ['--no-creds']));
  const r = await skopeo([...args, `docker://${ref}`]);
  if (r.code !== 0) throw new Error(`skopeo inspect ${ref} exited ${r.code}: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}
