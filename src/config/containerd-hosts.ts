import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { isIPv6 } from 'node:net';
import { copyFile, mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError, listenAddress } from './load.js';
import type { Config } from './schema.js';


const HEADER = '# Written by shoal containerd-config. The origin stays the fallback when the agent is down.';
/** Short, so that containerd falls back to the origin quickly when the node-local agent is down. */
const MIRROR_DIAL_TIMEOUT = '200ms';

export interface WriteContainerdHostsOptions {
  config: Config;
  /** containerd's hosts directory, e.g. /etc/containerd/certs.d. */
  dir: string;
  /** The agent as containerd should reach it; defaults to http://<registry.listen>. */
  mirror?: string;
}

export interface WriteContainerdHostsResult {
  /** hosts.toml files created or replaced. */
  written: string[];
  /** hosts.toml files that already had the wanted content. */
  unchanged: string[];
  /** Copies of replaced files that had different content. */
  backups: string[];
}

/** http://<listen>, with a wildcard bind address replaced by loopback, which is what a local client dials. */
export function defaultMirror(listen: string): string {
  const { host, port } = listenAddress(listen);
  if (port === 0) {
    throw new ConfigError('--mirror', 'registry.listen uses port 0 (any free port); give --mirror explicitly');
  }
  // URL parsing canonicalises every spelling of the IPv6 unspecified address to [::].
  const wildcard = host === '0.0.0.0' || (isIPv6(host) && new URL(`http://[${host}]`).hostname === '[::]');
  const dialHost = wildcard ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
  return `http://${dialHost}:${port}`;
}

/** Validates a mirror URL (http or https origin) and returns it without a trailing slash. */
export function normaliseMirror(mirror: string): string {
  let u: URL;
  try {
    u = new URL(mirror);
  } catch {
    throw new ConfigError('--mirror', 'must be an http(s) URL like http://127.0.0.1:30020');
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new ConfigError('--mirror', 'must be an http(s) URL like http://127.0.0.1:30020');
  }
  // The agent serves /v2 at its root; containerd would append /v2 to any path given here.
  if (u.pathname !== '/' || u.search || u.hash || u.username || u.password) {
    throw new ConfigError('--mirror', 'must be an origin without path, query or credentials, like http://127.0.0.1:30020');
  }
  return u.origin;
}

/** The hosts.toml for one registry: the agent first, the origin (`server`) as the fallback. */
export function renderHostsToml(opts: { server: string; mirror: string; insecure?: boolean }): string {
  const lines = [HEADER, `server = ${tomlString(opts.server)}`];
  // Same trust decision the agent makes for this origin, so that the fallback path works too.
  if (opts.insecure && opts.server.startsWith('https:')) lines.push('skip_verify = true');
  lines.push(
    '',
    `[host.${tomlString(opts.mirror)}]`,
    '  capabilities = ["pull", "resolve"]',
    `  dial_timeout = ${tomlString(MIRROR_DIAL_TIMEOUT)}`,
  );
  return lines.join('\n') + '\n';
}

/** JSON string escapes are valid TOML basic-string escapes. */
function tomlString(s: string): string {
  return JSON.stringify(s);
}

/**
 * Writes <dir>/<registry>/hosts.toml for every configured registry. containerd (1.5+) looks a
 * registry with a port up as "host_port_" and then "host:port"; the key is used as-is, colon
 * included. Files with the wanted content are left alone; others are backed up first.
 */
export async function writeContainerdHosts(opts: WriteContainerdHostsOptions): Promise<WriteContainerdHostsResult> {
  const mirror = normaliseMirror(opts.mirror ?? defaultMirror(opts.config.registry.listen));
  const result: WriteContainerdHostsResult = { written: [], unchanged: [], backups: [] };
  const hosts = Object.keys(opts.config.upstreams.registries).sort();
  for (const host of hosts) {
    const registry = opts.config.upstreams.registries[host]!;
    // Registry keys were validated as host[:port], so none can climb out of dir.
    const hostDir = join(opts.dir, host);
    const file = join(hostDir, 'hosts.toml');
    const content = renderHostsToml({ server: registry.url, mirror, insecure: registry.insecure });
    const existing = await readIfExists(file);
    if (existing === content) {
      result.unchanged.push(file);
      continue;
    }
    await mkdir(hostDir, { recursive: true });
    if (existing !== undefined) result.backups.push(await backup(file));
    await writeAtomically(file, content);
    result.written.push(file);
  }
  return result;
}

async function readIfExists(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * Copies (rather than renames) the old file so hosts.toml never disappears, even for an instant,
 * while containerd may be reading it; COPYFILE_EXCL keeps an earlier backup from being overwritten.
 */
async function backup(file: string): Promise<string> {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  const candidates = [`${file}.bak`, `${file}.bak.${stamp}`];
  for (let i = 1; i < 100; i++) candidates.push(`${file}.bak.${stamp}-${i}`);
  for (const target of candidates) {
    try {
      await copyFile(file, target, constants.COPYFILE_EXCL);
      return target;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  throw new Error(`cannot find a free backup name for ${file}`);
}

/** Temp file in the same directory, fsynced, then renamed over the target. */
async function writeAtomically(file: string, content: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    const handle = await open(tmp, 'wx', 0o644);
    try {
      await handle.writeFile(content, 'utf8');
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
