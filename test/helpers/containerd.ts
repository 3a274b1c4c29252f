import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run, startDaemon, waitFor, type Daemon, type RunResult } from './proc.js';
import { makeTempDir, removeTempDir } from './tmp.js';

export const CONTAINERD_BIN = '/usr/bin/containerd';
export const CTR_BIN = '/usr/bin/ctr';
export const DEFAULT_NAMESPACE = 'shoaltest';

export interface PullOptions {
  /** dir holding <registry host>/hosts.toml files (ctr --hosts-dir) */
  hostsDir?: string;
  /** ctr --plain-http: plain HTTP to hosts not configured in hostsDir */
  plainHttp?: boolean;
  /** "user:password" for the registry (ctr --user) */
  user?: string;
  namespace?: string;
  /** e.g. linux/arm64 */
  platform?: string;
  /** log every registry request/response to stderr (ctr --http-dump) */
  httpDump?: boolean;
  timeoutMs?: number;
}

export interface Containerd {
  /** grpc socket (ctr --address) */
  address: string;
  root: string;
  logFile: string;
  /** the snapshotter pulls unpack into: overlayfs when the kernel allows it here, else native */
  snapshotter: string;
  /** ctr images pull (fetch every blob, verify, unpack) */
  pull(ref: string, opts?: PullOptions): Promise<RunResult>;
  /** any ctr command against this daemon, e.g. ['images', 'ls', '-q'] */
  ctr(args: string[], namespace?: string): Promise<RunResult>;
  /** deletes an image and, synchronously, the content and snapshots only it used */
  removeImage(ref: string, namespace?: string): Promise<RunResult>;
  stop(): Promise<void>;
}

/** hosts.toml for `host`: try `mirrors` (pull+resolve) in order, then fall back to `server`. */
export function hostsToml(server: string, mirrors: string[]): string {
  const lines = [`server = ${JSON.stringify(server)}`, ''];
  for (const m of mirrors) lines.push(`[host.${JSON.stringify(m)}]`, '  capabilities = ["pull", "resolve"]', '');
  return lines.join('\n');
}

/** Writes <hostsDir>/<host>/hosts.toml (host as in image refs, e.g. 127.0.0.1:5000). */
export async function writeHostsToml(hostsDir: string, host: string, server: string, mirrors: string[]): Promise<string> {
  const dir = join(hostsDir, host);
  await mkdir(dir, { recursive: true });
  const file = join(dir, 'hosts.toml');
  await writeFile(file, hostsToml(server, mirrors));
  return file;
}

/**
 * Runs a private containerd (own root, state, socket; never the system one) with the CRI plugin
 * and unneeded snapshotters off. Content is isolated per namespace, so a pull in a fresh
 * namespace downloads everything again even if another namespace has it.
 */
export async function startContainerd(): Promise<Containerd> {
  const dir = await makeTempDir('shoal-ctd-');
  const root = join(dir, 'root');
  const address = join(dir, 'ctd.sock');
  const logFile = join(dir, 'containerd.log');
  const configFile = join(dir, 'config.toml');
  const config = [
    'version = 2',
    `root = ${JSON.stringify(root)}`,
    `state = ${JSON.stringify(join(dir, 'state'))}`,
    'disabled_plugins = [',
    '  "io.containerd.grpc.v1.cri",',
    '  "io.containerd.snapshotter.v1.aufs",',
    '  "io.containerd.snapshotter.v1.btrfs",',
    '  "io.containerd.snapshotter.v1.devmapper",',
    '  "io.containerd.snapshotter.v1.zfs",',
    '  "io.containerd.tracing.processor.v1.otlp",',
    '  "io.containerd.internal.v1.tracing",',
    ']',
    '[grpc]',
    `  address = ${JSON.stringify(address)}`,
    '[ttrpc]',
    `  address = ${JSON.stringify(address + '.ttrpc')}`,
    '[debug]',
    '  level = "warn"',
    '[metrics]',
    '  address = ""',
    '[plugins]',
    '  [plugins."io.containerd.internal.v1.opt"]',
    `    path = ${JSON.stringify(join(dir, 'opt'))}`,
    '  [plugins."io.containerd.metadata.v1.bolt"]',
    '    content_sharing_policy = "isolated"',
    '',
  ].join('\n');
  await writeFile(configFile, config);

  const daemon: Daemon = startDaemon(CONTAINERD_BIN, ['--config', configFile], logFile);
  const ctr = (args: string[], namespace = DEFAULT_NAMESPACE, timeoutMs = 120_000) =>
    run(CTR_BIN, ['--address', address, '--namespace', namespace, ...args], { timeoutMs });

  try {
    await waitFor('containerd', async () => (await ctr(['version'], DEFAULT_NAMESPACE, 5_000)).code === 0, {
      daemon,
      timeoutMs: 30_000,
    });
  } catch (e) {
    await daemon.stop();
    await removeTempDir(dir);
    throw e;
  }

  // overlayfs registers only if the kernel and filesystem support it; native always works.
  const plugins = await ctr(['plugins', 'ls']);
  const snapshotter = /io\.containerd\.snapshotter\.v1\s+overlayfs\s+\S+\s+ok/.test(plugins.stdout)
    ? 'overlayfs'
    : 'native';

  return {
    address,
    root,
    logFile,
    snapshotter,
    pull(ref, opts = {}) {
      const args = ['images', 'pull', '--snapshotter', snapshotter];
      if (opts.hostsDir) args.push('--hosts-dir', opts.hostsDir);
      if (opts.plainHttp) args.push('--plain-http');
      if (opts.user) args.push('--user', opts.user);
      if (opts.platform) args.push('--platform', opts.platform);
      if (opts.httpDump) args.push('--http-dump');
      return ctr([...args, ref], opts.namespace, opts.timeoutMs ?? 300_000);
    },
    ctr: (args, namespace) => ctr(args, namespace),
    removeImage: (ref, namespace) => ctr(['images', 'rm', '--sync', ref], namespace),
    async stop() {
      await daemon.stop(10_000);
      // A snapshot mount can outlive a crash; unmount anything left under our root before rm.
      const mounts = await run('findmnt', ['-rn', '-o', 'TARGET']).catch(() => ({ stdout: '' }));
      for (const m of mounts.stdout.split('\n').filter((t) => t.startsWith(dir)).reverse()) {
        await run('umount', ['-l', m]).catch(() => undefined);
      }
      await removeTempDir(dir);
    },
  };
}
