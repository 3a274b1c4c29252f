import { readFile, stat } from 'node:fs/promises';
import { OriginError } from './errors.js';

/** How a registry's credentials are configured (`upstreams.registries.<host>`). */
export interface RegistryCredentialsConfig {
  username?: string;
  password?: string;
  /** A file holding the password (a mounted Secret); re-read when it changes. */
  passwordFile?: string;
  /** A Docker `config.json`; re-read when it changes. */
  dockerConfig?: string;
}

export interface Credentials {
  username: string;
  password: string;
  /**
   * An OAuth2 refresh token (`identitytoken` in a Docker config). Used with the token
   * endpoint's refresh_token grant; `password` then holds the same value for registries
   * whose token endpoint only takes Basic auth.
   */
  identityToken?: string;
}

export interface CredentialsSnapshot {
  /** `undefined` means anonymous. */
  credentials: Credentials | undefined;
  /** Changes whenever the credentials do, so holders of derived state (tokens) can drop it. */
  generation: number;
}

interface Logger {
  debug(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

export interface CredentialSourceOptions {
  /** How often a credentials file is stat'ed at most (default 1000 ms). */
  checkIntervalMs?: number;
  logger?: Logger;
}

/** The Docker Hub aliases Docker's own config files use as keys for `docker.io`. */
const DOCKER_HUB_KEYS = ['https://index.docker.io/v1/', 'index.docker.io', 'registry-1.docker.io', 'docker.io'];

/** Docker's own normalisation of `auths` keys: drop the scheme and any path. */
function hostOfKey(key: string): string {
  const noScheme = key.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '');
  const slash = noScheme.indexOf('/');
  return (slash >= 0 ? noScheme.slice(0, slash) : noScheme).toLowerCase();
}

function decodeAuth(value: string): { username: string; password: string } | undefined {
  const decoded = Buffer.from(value, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon <= 0) return undefined;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1).replace(/\0+$/, '') };
}

/**
 * Looks `host` up in a parsed Docker `config.json`. Tries the exact key, then `https://host`,
 * `http://host`, then any key whose host part matches (Docker writes `https://host/v1/` too);
 * for `docker.io` also the historical Hub keys. Returns `undefined` when there is no usable entry.
 * Credential helpers (`credsStore`, `credHelpers`) and `registrytoken` are not supported.
 */
export function dockerConfigCredentials(doc: unknown, host: string): Credentials | undefined {
  if (!doc || typeof doc !== 'object') return undefined;
  const auths = (doc as { auths?: unknown }).auths;
  if (!auths || typeof auths !== 'object') return undefined;
  const entries = auths as Record<string, unknown>;
  const wanted = host.toLowerCase();
  const isHub = wanted === 'docker.io' || wanted === 'index.docker.io' || wanted === 'registry-1.docker.io';
  const candidates = [host, `https://${host}`, `http://${host}`];
  if (isHub) candidates.push(...DOCKER_HUB_KEYS);
  const hosts = new Set(isHub ? DOCKER_HUB_KEYS.map(hostOfKey) : [wanted]);
  const keys = [
    ...candidates.filter((k) => Object.hasOwn(entries, k)),
    ...Object.keys(entries).filter((k) => hosts.has(hostOfKey(k))),
  ];
  for (const key of keys) {
    const creds = entryCredentials(entries[key]);
    if (creds) return creds;
  }
  return undefined;
}

function entryCredentials(entry: unknown): Credentials | undefined {
  if (!entry || typeof entry !== 'object') return undefined;
  const e = entry as Record<string, unknown>;
  let username = typeof e.username === 'string' ? e.username : undefined;
  let password = typeof e.password === 'string' ? e.password : undefined;
  if (typeof e.auth === 'string' && e.auth !== '') {
    const decoded = decodeAuth(e.auth);
    if (decoded) ({ username, password } = decoded);
  }
  const identityToken = typeof e.identitytoken === 'string' && e.identitytoken !== '' ? e.identitytoken : undefined;
  if (identityToken) {
    // Docker stores `<token>` (or a fixed GUID, on ACR) as the user with an identity token.
    return { username: username || '<token>', password: identityToken, identityToken };
  }
  if (username && password !== undefined) return { username, password };
  return undefined;
}

function sameCredentials(a: Credentials | undefined, b: Credentials | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return a.username === b.username && a.password === b.password && a.identityToken === b.identityToken;
}

interface FileIdentity {
  mtimeMs: number;
  size: number;
  ino: number;
  dev: number;
}

/**
 * A registry's credentials, kept current. Inline credentials never change; a password file or
 * Docker config is stat'ed (following symlinks, as mounted Secrets swap a `..data` link) at most
 * once per check interval and re-read when its identity changes.
 */
export class CredentialSource {
  private readonly file: string | undefined;
  private readonly fileKind: 'password file' | 'docker config' | undefined;
  private readonly checkIntervalMs: number;
  private readonly logger: Logger | undefined;
  private current: Credentials | undefined;
  private generation = 0;
  private identity: FileIdentity | undefined;
  private lastCheck = Number.NEGATIVE_INFINITY;
  private checking: Promise<void> | undefined;
  private failure: OriginError | undefined;
  private warnedMissingEntry = false;

  constructor(
    private readonly config: RegistryCredentialsConfig,
    private readonly host: string,
    options: CredentialSourceOptions = {},
  ) {
    this.checkIntervalMs = options.checkIntervalMs ?? 1000;
    this.logger = options.logger;
    if (config.password !== undefined && config.passwordFile !== undefined) {
      throw new Error(`registry ${host}: set either password or passwordFile, not both`);
    }
    if ((config.password !== undefined || config.passwordFile !== undefined) && !config.username) {
      throw new Error(`registry ${host}: a password needs a username`);
    }
    if (config.username && config.password === undefined && config.passwordFile === undefined) {
      throw new Error(`registry ${host}: username ${config.username} has no password or passwordFile`);
    }
    if (config.username && config.password !== undefined) {
      this.current = { username: config.username, password: config.password };
    } else if (config.username && config.passwordFile !== undefined) {
      this.file = config.passwordFile;
      this.fileKind = 'password file';
    } else if (config.dockerConfig !== undefined) {
      this.file = config.dockerConfig;
      this.fileKind = 'docker config';
    }
  }

  /** A short description for messages (never the secret itself). */
  describe(): string {
    if (this.file) return `${this.fileKind} ${this.file}`;
    return this.current ? `user ${this.current.username}` : 'anonymous';
  }

  /**
   * The current credentials. `force` skips the once-per-interval throttle (after the origin
   * rejected what we sent, the Secret may just have rotated).
   * Throws OriginError 'unauthorized' naming the file when it cannot be read or parsed.
   */
  async get(force = false): Promise<CredentialsSnapshot> {
    if (this.file !== undefined) {
      const due = force || this.failure !== undefined || Date.now() - this.lastCheck >= this.checkIntervalMs;
      if (due) {
        this.checking ??= this.check().finally(() => {
          this.checking = undefined;
        });
        await this.checking;
      }
      if (this.failure) throw this.failure;
    }
    return { credentials: this.current, generation: this.generation };
  }

  private async check(): Promise<void> {
    const file = this.file!;
    this.lastCheck = Date.now();
    try {
      // Stat before reading: a change between the two is then seen again on the next check.
      const st = await stat(file);
      const identity: FileIdentity = { mtimeMs: st.mtimeMs, size: st.size, ino: st.ino, dev: st.dev };
      const prev = this.identity;
      if (
        prev &&
        this.failure === undefined &&
        prev.mtimeMs === identity.mtimeMs &&
        prev.size === identity.size &&
        prev.ino === identity.ino &&
        prev.dev === identity.dev
      ) {
        return;
      }
      const text = await readFile(file, 'utf8');
      const next = this.parse(text);
      this.identity = identity;
      this.failure = undefined;
      if (!sameCredentials(this.current, next) || this.generation === 0) {
        if (this.generation > 0) this.logger?.debug({ host: this.host, source: this.describe() }, 'registry credentials changed');
        this.current = next;
        this.generation++;
      }
    } catch (err) {
      const reason = err instanceof OriginError ? err.message : (err as Error).message;
      this.failure = new OriginError('unauthorized', `registry ${this.host}: cannot use ${this.fileKind} ${file}: ${reason}`, {
        cause: err,
      });
      this.identity = undefined;
      this.logger?.warn({ host: this.host, file, err: reason }, 'registry credentials unreadable');
    }
  }

  private parse(text: string): Credentials | undefined {
    if (this.fileKind === 'password file') {
      // Editors and `kubectl create secret --from-file` leave a trailing newline.
      return { username: this.config.username!, password: text.replace(/[\r\n]+$/, '') };
    }
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (err) {
      throw new OriginError('unauthorized', `not valid JSON (${(err as Error).message})`);
    }
    const creds = dockerConfigCredentials(doc, this.host);
    if (creds) this.warnedMissingEntry = false;
    else if (!this.warnedMissingEntry) {
      this.warnedMissingEntry = true;
      this.logger?.warn({ host: this.host, file: this.file }, 'docker config has no usable auths entry for this registry; pulling anonymously');
    }
    return creds;
  }
}

/** `undefined` when nothing is configured: the registry is used anonymously. */
export function credentialSource(
  config: RegistryCredentialsConfig | undefined,
  host: string,
  options?: CredentialSourceOptions,
): CredentialSource | undefined {
  if (!config) return undefined;
  const { username, password, passwordFile, dockerConfig } = config;
  if (username === undefined && password === undefined && passwordFile === undefined && dockerConfig === undefined) {
    return undefined;
  }
  return new CredentialSource(config, host, options);
}
