import type { IncomingHttpHeaders } from 'node:http';
import { parseWwwAuthenticate, type Challenge } from './challenge.js';
import type { CredentialSource, Credentials } from './credentials.js';
import { OriginError, RETRYABLE_STATUSES, kindForStatus, parseErrorBody, redact } from './errors.js';
import { parseRetryAfter, raceSignal } from './retry.js';

/** One whole-body HTTP exchange with a token server. Connection failures reject with OriginError. */
export type TokenTransport = (request: {
  method: 'GET' | 'POST';
  url: URL;
  headers: Record<string, string>;
  body?: string;
}) => Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer }>;

interface Logger {
  debug(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

export interface AuthenticatorOptions {
  /** The registry host, for messages. */
  host: string;
  credentials?: CredentialSource | undefined;
  transport: TokenTransport;
  logger?: Logger | undefined;
}

/** What a registry taught us about itself with its last challenge. */
interface BearerScheme {
  type: 'bearer';
  realm: string;
  service: string | undefined;
}
type Scheme = { type: 'basic' } | BearerScheme;

interface CachedToken {
  token: string;
  expiresAt: number;
}

/** Docker's token spec: absent `expires_in` means 60 s. */
const DEFAULT_TOKEN_LIFETIME_S = 60;
/** Renew a bit early so a token does not expire between our check and the origin's. */
const MAX_EXPIRY_MARGIN_MS = 30_000;
/** Identifies us to OAuth2 token endpoints (the refresh_token grant requires a client_id). */
const CLIENT_ID = 'shoal';

export function basicAuthorization(creds: Pick<Credentials, 'username' | 'password'>): string {
  return `Basic ${Buffer.from(`${creds.username}:${creds.password}`, 'utf8').toString('base64')}`;
}

export function pullScope(repo: string): string {
  return `repository:${repo}:pull`;
}

/**
 * Answers a registry's challenges (Bearer token flow, Basic) and remembers the scheme so later
 * requests carry an Authorization header from the start instead of paying a 401 round trip.
 * Tokens are cached per (realm, service, scope) and dropped when the credentials change.
 */
export class Authenticator {
  private scheme: Scheme | undefined;
  private tokens = new Map<string, CachedToken>();
  private inflight = new Map<string, Promise<string>>();
  private generation: number | undefined;

  constructor(private readonly opts: AuthenticatorOptions) {}

  /** The Authorization header to send before any challenge, or undefined (none learned yet). */
  async preemptive(repo: string, signal?: AbortSignal): Promise<string | undefined> {
    const scheme = this.scheme;
    if (!scheme) return undefined;
    const creds = await this.credentials(false);
    if (scheme.type === 'basic') return creds ? basicAuthorization(creds) : undefined;
    return `Bearer ${await this.token(scheme, repo, creds, signal)}`;
  }

  /**
   * The Authorization header answering a 401's `WWW-Authenticate`. `sent` is what the rejected
   * request carried: a rejected cached token is dropped, rejected Basic credentials are final.
   * Throws OriginError 'unauthorized' when the challenge cannot be answered.
   */
  async answer(header: string | string[] | undefined, repo: string, sent: string | undefined, signal?: AbortSignal): Promise<string> {
    const challenges = parseWwwAuthenticate(header);
    const bearer = challenges.find((c) => c.scheme === 'bearer' && c.params.realm);
    const basic = challenges.find((c) => c.scheme === 'basic');
    // The origin refused what we sent: a rotated Secret may explain it, so look now.
    const creds = await this.credentials(true);
    if (bearer) {
      const scheme = this.bearerScheme(bearer);
      this.scheme = scheme;
      const key = tokenKey(scheme, repo);
      const cached = this.tokens.get(key);
      if (cached && sent === `Bearer ${cached.token}`) this.tokens.delete(key);
      return `Bearer ${await this.token(scheme, repo, creds, signal)}`;
    }
    if (basic) {
      this.scheme = { type: 'basic' };
      if (!creds) {
        throw new OriginError('unauthorized', `${this.opts.host} requires credentials (Basic auth) and none are configured`, {
          status: 401,
        });
      }
      const authorization = basicAuthorization(creds);
      if (authorization === sent) throw this.rejected();
      return authorization;
    }
    throw new OriginError('unauthorized', `${this.opts.host} answered 401 without a Bearer or Basic challenge`, { status: 401 });
  }

  /** The error for a 401 to a request that already carried our best answer. */
  rejected(challengeHeader?: string | string[]): OriginError {
    const bearer = parseWwwAuthenticate(challengeHeader).find((c) => c.scheme === 'bearer');
    const why = bearer?.params.error ? ` (${bearer.params.error})` : '';
    const who = this.opts.credentials ? this.opts.credentials.describe() : 'anonymous access';
    const hint = this.opts.credentials ? '' : '; the repository may not exist or may need credentials';
    return new OriginError('unauthorized', `${this.opts.host} rejected ${who}${why}${hint}`, { status: 401 });
  }

  private bearerScheme(challenge: Challenge): BearerScheme {
    const realm = challenge.params.realm!;
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw new OriginError('protocol', `${this.opts.host} sent a Bearer challenge with an invalid realm ${JSON.stringify(realm)}`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      throw new OriginError('protocol', `${this.opts.host} sent a Bearer realm with unsupported scheme ${url.protocol}`);
    }
    return { type: 'bearer', realm, service: challenge.params.service };
  }

  /** Current credentials; a change of credentials drops every token got with the old ones. */
  private async credentials(force: boolean): Promise<Credentials | undefined> {
    const source = this.opts.credentials;
    if (!source) return undefined;
    const snapshot = await source.get(force);
    if (this.generation !== snapshot.generation) {
      if (this.generation !== undefined) {
        this.opts.logger?.debug({ host: this.opts.host }, 'credentials changed; dropping cached tokens');
      }
      this.generation = snapshot.generation;
      // New maps rather than clear(): fetches still running with old credentials write to the old ones.
      this.tokens = new Map();
      this.inflight = new Map();
    }
    return snapshot.credentials;
  }

  private token(scheme: BearerScheme, repo: string, creds: Credentials | undefined, signal?: AbortSignal): Promise<string> {
    const key = tokenKey(scheme, repo);
    const cached = this.tokens.get(key);
    if (cached && cached.expiresAt > Date.now()) return Promise.resolve(cached.token);
    // Many concurrent pulls of one repository share one token request.
    const inflight = this.inflight;
    let pending = inflight.get(key);
    if (!pending) {
      const tokens = this.tokens;
      pending = this.fetchToken(scheme, repo, creds)
        .then((t) => {
          tokens.set(key, t);
          return t.token;
        })
        .finally(() => inflight.delete(key));
      inflight.set(key, pending);
    }
    // The shared fetch is not tied to one caller's signal; each caller may stop waiting.
    return raceSignal(pending, signal);
  }

  private async fetchToken(scheme: BearerScheme, repo: string, creds: Credentials | undefined): Promise<CachedToken> {
    const scope = pullScope(repo);
    const realm = new URL(scheme.realm);
    if (creds?.identityToken) {
      // OAuth2 refresh_token grant (what `docker login` set up for an identity token).
      const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: creds.identityToken, client_id: CLIENT_ID, scope });
      if (scheme.service) form.set('service', scheme.service);
      const res = await this.opts.transport({
        method: 'POST',
        url: realm,
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: form.toString(),
      });
      // Token servers without OAuth2 support answer 404/405; they take the token as a Basic password.
      if (res.status !== 404 && res.status !== 405) return this.tokenFrom(res, scheme, scope, creds);
    }
    const url = new URL(realm);
    if (scheme.service) url.searchParams.set('service', scheme.service);
    url.searchParams.append('scope', scope);
    const headers: Record<string, string> = {};
    if (creds) headers.authorization = basicAuthorization(creds);
    const res = await this.opts.transport({ method: 'GET', url, headers });
    return this.tokenFrom(res, scheme, scope, creds);
  }

  private tokenFrom(
    res: { status: number; headers: IncomingHttpHeaders; body: Buffer },
    scheme: BearerScheme,
    scope: string,
    creds: Credentials | undefined,
  ): CachedToken {
    const where = `token server ${redact(scheme.realm)}`;
    if (res.status !== 200) {
      const parsed = parseErrorBody(res.body);
      const text = parsed.message ?? parsed.code;
      const suffix = text ? `: ${text}` : '';
      if (res.status === 401) {
        const msg = creds
          ? `${where} rejected the credentials (${this.opts.credentials?.describe() ?? 'configured'}) for ${this.opts.host}${suffix}`
          : `${where} refused anonymous access to ${scope} on ${this.opts.host}${suffix}`;
        throw new OriginError('unauthorized', msg, { status: 401, ...(parsed.code ? { code: parsed.code } : {}) });
      }
      const retryAfterMs = parseRetryAfter(res.headers['retry-after']);
      throw new OriginError(kindForStatus(res.status), `${where} answered ${res.status} for ${scope}${suffix}`, {
        status: res.status,
        retryable: RETRYABLE_STATUSES.has(res.status),
        ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
        ...(parsed.code ? { code: parsed.code } : {}),
      });
    }
    let doc: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      doc = JSON.parse(res.body.toString('utf8')) as typeof doc;
    } catch {
      throw new OriginError('protocol', `${where} answered with a body that is not JSON`);
    }
    const token = typeof doc.token === 'string' && doc.token ? doc.token : typeof doc.access_token === 'string' ? doc.access_token : '';
    if (!token) throw new OriginError('protocol', `${where} answered without a token`);
    const lifetimeS = typeof doc.expires_in === 'number' && doc.expires_in > 0 ? doc.expires_in : DEFAULT_TOKEN_LIFETIME_S;
    const lifetimeMs = lifetimeS * 1000;
    const margin = Math.min(MAX_EXPIRY_MARGIN_MS, lifetimeMs / 4);
    this.opts.logger?.debug({ host: this.opts.host, scope, expiresIn: lifetimeS }, 'fetched registry token');
    return { token, expiresAt: Date.now() + lifetimeMs - margin };
  }
}

function tokenKey(scheme: BearerScheme, repo: string): string {
  return `${scheme.realm}\n${scheme.service ?? ''}\n${pullScope(repo)}`;
}
