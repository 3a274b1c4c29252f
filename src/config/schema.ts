import { isIPv4, isIPv6 } from 'node:net';
import { z } from 'zod';
import { DOCKER_HUB, DOCKER_HUB_API } from '../oci/reference.js';
import { multiaddr } from '@multiformats/multiaddr';
import { parseBootstrapEntry } from '../p2p/bootstrap.js';
import { parseDuration, parseSize } from './units.js';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface RegistryConfig {
  /** Origin of the upstream registry, without a trailing slash: "https://registry-1.docker.io". */
  url: string;
  username?: string;
  password?: string;
  passwordFile?: string;
  /** A Docker `config.json` whose `auths` (or credential helpers) hold this registry's credentials. */
  dockerConfig?: string;
  /** Skip TLS certificate verification for this origin. */
  insecure: boolean;
}

export interface UpstreamsConfig {
  /** Registry host used when a request names none (no `ns`, no leading registry segment). */
  default: string;
  /** ms: how long a resolved tag may be answered from cache while the origin is unreachable. */
  staleIfError: number;
  /** ms: connect + response-header timeout for origin requests. */
  timeout: number;
  retries: number;
  /** Bytes a second downloaded from all origins together; unset = no limit. */
  maxRate?: number;
  /** Keyed by registry host as clients name it: "docker.io", "ghcr.io", "127.0.0.1:5000". */
  registries: Record<string, RegistryConfig>;
}

/** The peer-to-peer side: where the libp2p node listens, whom it joins, and its limits. */
export interface P2PConfig {
  /** Off: the agent is a plain pull-through mirror. */
  enabled: boolean;
  /** Multiaddrs to listen on. */
  listen: string[];
  /** Multiaddrs (with or without /p2p/<id>), or DNS names resolving to many addresses. */
  bootstrap: string[];
  /** ms between re-resolutions of bootstrap DNS names. */
  bootstrapInterval: number;
  mdns: boolean;
  /** Swarm key file; only agents holding the same key join the swarm. */
  pskFile?: string;
  zone: string;
  /** Concurrent blob uploads served to peers. */
  maxUploadStreams: number;
  /** Bytes a second served to peers, all uploads together; unset = no limit. */
  maxUploadRate?: number;
  /** ms a local miss may spend looking up providers before the origin is asked. */
  providerLookupTimeout: number;
  /** ms a peer whose bytes failed verification is left out. */
  penaltyDuration: number;
  /** Agents of a zone, closest to a blob, that fetch it from the origin; the rest wait for them. */
  originFetchers: number;
  /** ms without any answer from a live fetcher before the next-ranked member is asked instead. */
  originFetcherTimeout: number;
  /** ms to wait at most for a fetcher that is downloading before fetching oneself. */
  originFetchWait: number;
  /** Open p2p connections at most, inbound and outbound together. */
  maxConnections: number;
}

export interface Config {
  registry: { listen: string };
  storage: { dir: string; maxSize: number };
  upstreams: UpstreamsConfig;
  log: { level: LogLevel };
  p2p: P2PConfig;
}

export const DEFAULT_LISTEN = '127.0.0.1:30020';
export const DEFAULT_P2P_LISTEN = '/ip4/0.0.0.0/tcp/30021';
export const DEFAULT_STORAGE_DIR = '/var/lib/shoal';

// ---------------------------------------------------------------------------------------------
// host / host:port

/** A host (brackets stripped from IPv6) and an optional port. */
export interface HostPort {
  host: string;
  port?: number;
}

const DNS_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/i;

function isHostName(s: string): boolean {
  if (s.length === 0 || s.length > 253) return false;
  // An all-numeric name is an IPv4 address or nothing ("999.1.1.1" is not a host name).
  if (/^[0-9.]+$/.test(s)) return isIPv4(s);
  return s.split('.').every((label) => DNS_LABEL.test(label));
}

/**
 * Splits "host", "host:port", "[v6]" or "[v6]:port"; undefined when it is none of these.
 * A bare IPv6 address is refused: "::1:5000" cannot be split unambiguously.
 */
export function parseHostPort(s: string): HostPort | undefined {
  let host: string;
  let rest: string;
  if (s.startsWith('[')) {
    const close = s.indexOf(']');
    if (close < 0) return undefined;
    host = s.slice(1, close);
    if (!isIPv6(host)) return undefined;
    rest = s.slice(close + 1);
  } else {
    const colon = s.indexOf(':');
    if (colon !== s.lastIndexOf(':')) return undefined;
    host = colon < 0 ? s : s.slice(0, colon);
    if (!isIPv4(host) && !isHostName(host)) return undefined;
    rest = colon < 0 ? '' : s.slice(colon);
  }
  if (rest === '') return { host };
  const m = /^:([0-9]{1,5})$/.exec(rest);
  if (!m) return undefined;
  const port = Number(m[1]);
  if (port > 65535) return undefined;
  return { host, port };
}

/** A registry host key as it appears in image references: "ghcr.io", "127.0.0.1:5000", "[::1]:5000". */
export function isRegistryHost(s: string): boolean {
  const hp = parseHostPort(s);
  return hp !== undefined && hp.port !== 0;
}

// ---------------------------------------------------------------------------------------------
// field schemas; each failure carries the short human reason that users see after the key path

// Any type is accepted here so that `"listen": 30020` gets the same helpful reason as a bad string.
const listenSchema = z.unknown().transform((v, ctx) => {
  const hp = typeof v === 'string' ? parseHostPort(v) : undefined;
  if (typeof v !== 'string' || !hp || hp.port === undefined) {
    ctx.addIssue({ code: 'custom', message: 'must be host:port' });
    return z.NEVER;
  }
  return v;
});

function sizeSchema(example: string) {
  return z.unknown().transform((v, ctx) => {
    try {
      if (typeof v !== 'string' && typeof v !== 'number') throw new Error('not a size');
      const n = parseSize(v);
      if (n <= 0) {
        ctx.addIssue({ code: 'custom', message: 'must be greater than 0' });
        return z.NEVER;
      }
      return n;
    } catch {
      ctx.addIssue({ code: 'custom', message: `must be a size like "${example}"` });
      return z.NEVER;
    }
  });
}

function durationSchema(example: string, opts: { positive: boolean }) {
  return z.unknown().transform((v, ctx) => {
    try {
      if (typeof v !== 'string' && typeof v !== 'number') throw new Error('not a duration');
      const ms = parseDuration(v);
      if (opts.positive && ms <= 0) {
        ctx.addIssue({ code: 'custom', message: 'must be greater than 0' });
        return z.NEVER;
      }
      return ms;
    } catch {
      ctx.addIssue({ code: 'custom', message: `must be a duration like "${example}"` });
      return z.NEVER;
    }
  });
}

/** http(s) URL with nothing beyond the origin; normalised to the origin (no trailing slash). */
const originUrlSchema = z.string().transform((v, ctx) => {
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    ctx.addIssue({ code: 'custom', message: 'must be a URL' });
    return z.NEVER;
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    ctx.addIssue({ code: 'custom', message: 'must be an http:// or https:// URL' });
    return z.NEVER;
  }
  if (u.username || u.password) {
    ctx.addIssue({ code: 'custom', message: 'must not contain credentials (use username and password)' });
    return z.NEVER;
  }
  if (u.pathname !== '/' || u.search || u.hash) {
    ctx.addIssue({ code: 'custom', message: 'must be a registry origin without a path, query or fragment' });
    return z.NEVER;
  }
  return u.origin;
});

const nonEmpty = z.string().min(1, 'must not be empty');

const registrySchema = z
  .object({
    url: originUrlSchema.optional(),
    username: nonEmpty.optional(),
    password: nonEmpty.optional(),
    passwordFile: nonEmpty.optional(),
    dockerConfig: nonEmpty.optional(),
    insecure: z.boolean().optional(),
  })
  .strict()
  .superRefine((r, ctx) => {
    const hasPassword = r.password !== undefined;
    const hasFile = r.passwordFile !== undefined;
    if (r.dockerConfig !== undefined && (r.username !== undefined || hasPassword || hasFile)) {
      ctx.addIssue({ code: 'custom', message: 'dockerConfig cannot be combined with username, password or passwordFile' });
      return;
    }
    if (hasPassword && hasFile) {
      ctx.addIssue({ code: 'custom', message: 'password and passwordFile are mutually exclusive' });
      return;
    }
    if ((hasPassword || hasFile) && r.username === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['username'],
        message: `is required with ${hasPassword ? 'password' : 'passwordFile'}`,
      });
    }
    if (r.username !== undefined && !hasPassword && !hasFile) {
      ctx.addIssue({ code: 'custom', message: 'username needs password or passwordFile' });
    }
  });

type RawRegistry = z.output<typeof registrySchema>;

const registriesSchema = z
  .record(z.string(), registrySchema)
  .superRefine((rec, ctx) => {
    const keys = Object.keys(rec);
    if (keys.length === 0) ctx.addIssue({ code: 'custom', message: 'must list at least one registry' });
    for (const key of keys) {
      if (!isRegistryHost(key)) {
        ctx.addIssue({
          code: 'custom',
          path: [key],
          message: 'must be a registry host like "ghcr.io" or "127.0.0.1:5000"',
        });
      }
    }
  })
  .transform((rec) => {
    const out: Record<string, RegistryConfig> = {};
    for (const [host, r] of Object.entries(rec)) out[host] = withUrl(host, r);
    return out;
  });

/** docker.io is served from registry-1.docker.io; any other host serves its own API over https. */
function withUrl(host: string, r: RawRegistry): RegistryConfig {
  const url = r.url ?? (host === DOCKER_HUB ? DOCKER_HUB_API : `https://${host}`);
  const out: RegistryConfig = { url, insecure: r.insecure ?? false };
  if (r.username !== undefined) out.username = r.username;
  if (r.password !== undefined) out.password = r.password;
  if (r.passwordFile !== undefined) out.passwordFile = r.passwordFile;
  if (r.dockerConfig !== undefined) out.dockerConfig = r.dockerConfig;
  return out;
}

const upstreamsSchema = z
  .object({
    default: z
      .string()
      .refine(isRegistryHost, 'must be a registry host like "docker.io"')
      .default(DOCKER_HUB),
    staleIfError: durationSchema('24h', { positive: false }).default('24h'),
    timeout: durationSchema('30s', { positive: true }).default('30s'),
    retries: z
      .number()
      .int('must be an integer from 0 to 10')
      .min(0, 'must be an integer from 0 to 10')
      .max(10, 'must be an integer from 0 to 10')
      .default(3),
    maxRate: sizeSchema('50MiB').optional(),
    // Only when the user names no registries at all is Docker Hub implied.
    registries: registriesSchema.default({ [DOCKER_HUB]: {} }),
  })
  .strict()
  .superRefine((u, ctx) => {
    const hosts = Object.keys(u.registries);
    if (hosts.length > 0 && !hosts.includes(u.default)) {
      ctx.addIssue({
        code: 'custom',
        path: ['default'],
        message: `"${u.default}" is not one of upstreams.registries (${hosts.join(', ')})`,
      });
    }
  });

const multiaddrSchema = z.string().refine((v) => {
  try {
    const parts = multiaddr(v).getComponents();
    return parts.length >= 2 && ['ip4', 'ip6', 'dns4', 'dns6', 'dns'].includes(parts[0]!.name) && parts[1]!.name === 'tcp';
  } catch {
    return false;
  }
}, 'must be a TCP multiaddr like "/ip4/0.0.0.0/tcp/30021"');

const bootstrapSchema = z.string().superRefine((v, ctx) => {
  try {
    parseBootstrapEntry(v);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `must be a multiaddr or host[:port] (${(err as Error).message})` });
  }
});

const p2pSchema = z
  .object({
    enabled: z.boolean().default(true),
    listen: z.array(multiaddrSchema).default([DEFAULT_P2P_LISTEN]),
    bootstrap: z.array(bootstrapSchema).default([]),
    bootstrapInterval: durationSchema('30s', { positive: true }).default('30s'),
    mdns: z.boolean().default(false),
    pskFile: nonEmpty.optional(),
    zone: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,63}$/, 'must be 1-63 letters, digits, ".", "_" or "-"')
      .default('default'),
    maxUploadStreams: z
      .number()
      .int('must be an integer from 1 to 1024')
      .min(1, 'must be an integer from 1 to 1024')
      .max(1024, 'must be an integer from 1 to 1024')
      .default(16),
    maxUploadRate: sizeSchema('100MiB').optional(),
    providerLookupTimeout: durationSchema('1s', { positive: true }).default('1s'),
    penaltyDuration: durationSchema('10m', { positive: true }).default('10m'),
    originFetchers: z
      .number()
      .int('must be an integer from 1 to 16')
      .min(1, 'must be an integer from 1 to 16')
      .max(16, 'must be an integer from 1 to 16')
      .default(1),
    originFetcherTimeout: durationSchema('10s', { positive: true }).default('10s'),
    originFetchWait: durationSchema('10m', { positive: true }).default('10m'),
    maxConnections: z
      .number()
      .int('must be an integer from 8 to 10000')
      .min(8, 'must be an integer from 8 to 10000')
      .max(10000, 'must be an integer from 8 to 10000')
      .default(64),
  })
  .strict()
  .transform((p): P2PConfig => {
    const { pskFile, maxUploadRate, ...rest } = p;
    return {
      ...rest,
      ...(pskFile !== undefined && { pskFile }),
      ...(maxUploadRate !== undefined && { maxUploadRate }),
    };
  });

export const configSchema = z
  .object({
    registry: z.object({ listen: listenSchema.default(DEFAULT_LISTEN) }).strict().default({}),
    storage: z
      .object({
        dir: nonEmpty.default(DEFAULT_STORAGE_DIR),
        maxSize: sizeSchema('20GiB').default('20GiB'),
      })
      .strict()
      .default({}),
    upstreams: upstreamsSchema.default({}),
    log: z
      .object({
        level: z
          .enum(LOG_LEVELS, { errorMap: () => ({ message: `must be one of ${LOG_LEVELS.join(', ')}` }) })
          .default('info'),
      })
      .strict()
      .default({}),
    p2p: p2pSchema.default({}),
  })
  .strict() satisfies z.ZodType<Config, z.ZodTypeDef, unknown>;

/** Turns zod's built-in messages into the short phrases users see; custom issues keep theirs. */
export const configErrorMap: z.ZodErrorMap = (issue, ctx) => {
  switch (issue.code) {
    case 'invalid_type': {
      if (issue.received === 'undefined') return { message: 'is required' };
      const expected: Record<string, string> = {
        string: 'must be a string',
        number: 'must be a number',
        integer: 'must be an integer',
        boolean: 'must be true or false',
        object: 'must be an object',
        array: 'must be an array',
      };
      return { message: expected[issue.expected] ?? `must be ${issue.expected}` };
    }
    case 'unrecognized_keys':
      return { message: 'unknown key' };
    case 'invalid_enum_value':
      return { message: `must be one of ${issue.options.join(', ')}` };
    case 'too_small':
      return { message: `must be at least ${String(issue.minimum)}` };
    case 'too_big':
      return { message: `must be at most ${String(issue.maximum)}` };
    default:
      return { message: ctx.defaultError };
  }
};
