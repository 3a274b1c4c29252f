import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { ZodIssue } from 'zod';
import { type Config, configErrorMap, configSchema, parseHostPort } from './schema.js';

/**
 * A config problem, named by the dotted key path the user wrote ("upstreams.registries.ghcr.io.url").
 * Host keys contain dots themselves; the path is joined literally anyway because that is how
 * users read it back against their file.
 */
export class ConfigError extends Error {
  readonly path: string;
  readonly reason: string;
  /** Every problem found, each as "<path>: <reason>"; the message carries the first. */
  readonly issues: string[];
  /** The config file, when the problem came from one. */
  readonly file?: string;

  constructor(path: string, reason: string, opts: { issues?: string[]; file?: string; cause?: unknown } = {}) {
    const line = formatIssue(path, reason);
    super(line, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'ConfigError';
    this.path = path;
    this.reason = reason;
    this.issues = opts.issues ?? [line];
    if (opts.file !== undefined) this.file = opts.file;
  }
}

function formatIssue(path: string, reason: string): string {
  return path === '' ? `config: ${reason}` : `${path}: ${reason}`;
}

export interface ParseOptions {
  /** Relative `storage.dir`, `passwordFile` and `dockerConfig` are resolved against this directory. */
  baseDir?: string;
  /** Recorded on a ConfigError so callers can say which file was wrong. */
  file?: string;
}

/** Validates raw config (parsed JSON), applies defaults and returns the typed config. */
export function parseConfig(raw: unknown, opts: ParseOptions = {}): Config {
  const result = configSchema.safeParse(raw, { errorMap: configErrorMap });
  if (!result.success) {
    const problems = result.error.issues.flatMap(toProblems);
    const first = problems[0] ?? { path: '', reason: 'invalid config' };
    throw new ConfigError(first.path, first.reason, {
      issues: problems.map((p) => formatIssue(p.path, p.reason)),
      ...(opts.file === undefined ? {} : { file: opts.file }),
    });
  }
  const config = result.data;
  if (opts.baseDir !== undefined) resolvePaths(config, opts.baseDir);
  return config;
}

/** An unknown-keys issue names the object; users need the key itself, one problem per key. */
function toProblems(issue: ZodIssue): { path: string; reason: string }[] {
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => ({ path: joinPath([...issue.path, key]), reason: 'unknown key' }));
  }
  return [{ path: joinPath(issue.path), reason: issue.message }];
}

function joinPath(path: (string | number)[]): string {
  return path.map(String).join('.');
}

function resolvePaths(config: Config, baseDir: string): void {
  config.storage.dir = resolve(baseDir, config.storage.dir);
  for (const registry of Object.values(config.upstreams.registries)) {
    if (registry.passwordFile !== undefined) registry.passwordFile = resolve(baseDir, registry.passwordFile);
    if (registry.dockerConfig !== undefined) registry.dockerConfig = resolve(baseDir, registry.dockerConfig);
  }
  if (config.p2p.pskFile !== undefined) config.p2p.pskFile = resolve(baseDir, config.p2p.pskFile);
}

/** Reads a JSON config file; relative paths inside it are taken relative to the file's directory. */
export async function loadConfig(file: string): Promise<Config> {
  const abs = resolve(file);
  let text: string;
  try {
    text = await readFile(abs, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const reason =
      code === 'ENOENT'
        ? `config file ${abs} not found`
        : code === 'EISDIR'
          ? `config file ${abs} is a directory`
          : `cannot read config file ${abs}: ${(err as Error).message}`;
    throw new ConfigError(file, reason, { file, cause: err });
  }
  let raw: unknown;
  try {
    // Editors on Windows like to leave a byte-order mark, which JSON.parse refuses.
    raw = JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch (err) {
    throw new ConfigError(file, `invalid JSON in ${abs}: ${describeJsonError(err as Error, text)}`, { file, cause: err });
  }
  return parseConfig(raw, { baseDir: dirname(abs), file });
}

/** Adds line and column to V8's "at position N" when it does not give them itself. */
function describeJsonError(err: Error, text: string): string {
  const m = /at position (\d+)/.exec(err.message);
  if (!m || /line \d+/.test(err.message)) return err.message;
  const before = text.slice(0, Number(m[1]));
  const line = before.split('\n').length;
  const column = before.length - before.lastIndexOf('\n');
  return `${err.message} (line ${line}, column ${column})`;
}

/** "host:port" → the host to bind (IPv6 without brackets) and the port. */
export function listenAddress(listen: string): { host: string; port: number } {
  const hp = parseHostPort(listen);
  if (!hp || hp.port === undefined) throw new ConfigError('registry.listen', 'must be host:port');
  return { host: hp.host, port: hp.port };
}
