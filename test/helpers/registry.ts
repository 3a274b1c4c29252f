import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { freePort } from './ports.js';
import { startDaemon, waitFor, type Daemon } from './proc.js';
import { makeTempDir, removeTempDir } from './tmp.js';
import type { TokenIssuer } from './token-issuer.js';

export const REGISTRY_BIN = '/usr/bin/docker-registry';

export type RegistryAuth =
  | { kind: 'htpasswd'; users: Record<string, string> }
  | { kind: 'token'; issuer: TokenIssuer };

export interface RegistryOptions {
  auth?: RegistryAuth;
  /** Run inside a network namespace the caller made, listening on its address (port 5000). */
  netns?: { name: string; address: string };
}

export interface Registry {
  /** http://127.0.0.1:PORT */
  url: string;
  /** 127.0.0.1:PORT, as used in image references */
  host: string;
  port: number;
  /** filesystem storage root */
  dataDir: string;
  /** the registry's own log (warn level) */
  logFile: string;
  /** stops the process, keeping port and data for start(); files go at close() or process exit */
  stop(): Promise<void>;
  /** starts it again on the same port and data (after stop) */
  start(): Promise<void>;
  /** stops and removes all its files */
  close(): Promise<void>;
}

/** Answers GET /v2/ with 200 (open) or 401 (auth on): either means the registry is serving. */
export async function registryAnswers(url: string): Promise<boolean> {
  const r = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(2_000) });
  await r.arrayBuffer();
  return r.status === 200 || r.status === 401;
}

/**
 * Runs a real distribution 2.8 registry (filesystem storage in a temp dir) on a free loopback
 * port. Its config is JSON, which the YAML parser reads as well.
 */
export async function startRegistry(opts: RegistryOptions = {}): Promise<Registry> {
  const dir = await makeTempDir('shoal-reg-');
  const dataDir = join(dir, 'data');
  await mkdir(dataDir);
  const logFile = join(dir, 'registry.log');
  const configFile = join(dir, 'config.yml');

  let auth: Record<string, unknown> | undefined;
  if (opts.auth?.kind === 'htpasswd') {
    // distribution accepts only bcrypt entries; cost 4 keeps each request's check cheap.
    const lines = Object.entries(opts.auth.users).map(([u, p]) => `${u}:${bcrypt.hashSync(p, 4)}`);
    await writeFile(join(dir, 'htpasswd'), lines.join('\n') + '\n');
    auth = { htpasswd: { realm: 'shoal-test', path: join(dir, 'htpasswd') } };
  } else if (opts.auth?.kind === 'token') {
    const t = opts.auth.issuer;
    auth = { token: { realm: t.realm, service: t.service, issuer: t.issuer, rootcertbundle: t.certFile } };
  }

  const writeConfig = (port: number) =>
    writeFile(
      configFile,
      JSON.stringify(
        {
          version: '0.1',
          log: { level: 'warn', formatter: 'text', accesslog: { disabled: true } },
          storage: {
            filesystem: { rootdirectory: dataDir },
            delete: { enabled: true },
            maintenance: { uploadpurging: { enabled: false } },
          },
          http: { addr: `${host}:${port}`, secret: randomBytes(16).toString('hex') },
          health: { storagedriver: { enabled: false } },
          ...(auth ? { auth } : {}),
        },
        null,
        2,
      ),
    );

  // Keep REGISTRY_* variables of the surrounding environment from overriding our config.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_')));

  const host = opts.netns?.address ?? '127.0.0.1';
  let port = 0;
  let daemon: Daemon | undefined;
  const launch = async (): Promise<void> => {
    daemon = opts.netns
      ? startDaemon('ip', ['netns', 'exec', opts.netns.name, REGISTRY_BIN, 'serve', configFile], logFile, env)
      : startDaemon(REGISTRY_BIN, ['serve', configFile], logFile, env);
    const url = `http://${host}:${port}`;
    await waitFor(`registry on ${url}`, () => registryAnswers(url), { daemon, timeoutMs: 30_000 });
  };

  // The free port may be taken between probing and binding: retry with a new one.
  for (let attempt = 1; ; attempt++) {
    // Inside its own namespace the registry has every port to itself.
    port = opts.netns ? 5000 : await freePort();
    await writeConfig(port);
    try {
      await launch();
      break;
    } catch (e) {
      await daemon?.stop();
      if (attempt >= 3 || !/address already in use/.test(String(e))) {
        await removeTempDir(dir);
        throw e;
      }
    }
  }

  const reg: Registry = {
    url: `http://${host}:${port}`,
    host: `${host}:${port}`,
    port,
    dataDir,
    logFile,
    async stop() {
      await daemon?.stop();
      daemon = undefined;
    },
    async start() {
      if (daemon) return;
      await launch();
    },
    async close() {
      await reg.stop();
      await removeTempDir(dir);
    },
  };
  return reg;
}
