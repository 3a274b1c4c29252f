import { randomUUID, sign } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from './tmp.js';
import { libtrustKeyId, makeSelfSignedCert, type KeyAlg } from './x509.js';

/** Marks ACL entries for requests without credentials. They also apply to every logged-in user. */
export const ANONYMOUS = '*anonymous*';

export interface AclEntry {
  /** a user name, ANONYMOUS ('*anonymous*': everyone), or '*' (every authenticated user) */
  user: string;
  /** exact repository names, globs with '*', or regular expressions */
  repos: (string | RegExp)[];
  actions: string[];
}

export interface TokenIssuerOptions {
  users?: Record<string, string>;
  acl: AclEntry[];
  /** hand out (empty-scoped unless the ACL says otherwise) tokens to requests without credentials; default true */
  allowAnonymous?: boolean;
  service?: string;
  issuer?: string;
  alg?: KeyAlg;
  /**
   * How the JWT names its key. 'x5c' (default) carries the signing cert, which distribution
   * verifies against rootcertbundle; 'kid' carries the libtrust fingerprint of the cert's key.
   */
  keyRef?: 'x5c' | 'kid';
  /** token lifetime, seconds (default 300) */
  expiresIn?: number;
}

export interface TokenRequestLog {
  method: string;
  /** the user name the request claimed (null: anonymous) */
  user: string | null;
  scopes: string[];
  granted: { type: string; name: string; actions: string[] }[];
  status: number;
}

export interface TokenIssuer {
  /** the URL to put in the registry's auth.token.realm */
  realm: string;
  service: string;
  issuer: string;
  certPem: string;
  /** PEM file for the registry's auth.token.rootcertbundle */
  certFile: string;
  /** number of token requests so far (any outcome) */
  readonly requests: number;
  log: TokenRequestLog[];
  reset(): void;
  stop(): Promise<void>;
}

const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url');

function globToRegExp(glob: string): RegExp {
  return new RegExp('^' + glob.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\/]/g, '\\$&')).join('.*') + '$');
}

function repoMatches(pattern: string | RegExp, name: string): boolean {
  if (pattern instanceof RegExp) return pattern.test(name);
  return pattern.includes('*') ? globToRegExp(pattern).test(name) : pattern === name;
}

/** Parses "repository:foo/bar:pull,push" (the name itself may hold ':' e.g. a port). */
function parseScope(scope: string): { type: string; name: string; actions: string[] } | null {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first < 0 || last <= first) return null;
  return {
    type: scope.slice(0, first),
    name: scope.slice(first + 1, last),
    actions: scope.slice(last + 1).split(',').filter(Boolean),
  };
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * A Docker token-auth server (the `auth: token` realm of distribution): GET /token with Basic
 * credentials (docker/skopeo style) and POST /token with an OAuth2 password grant (containerd
 * tries that first when it has credentials).
 */
export async function startTokenIssuer(opts: TokenIssuerOptions): Promise<TokenIssuer> {
  const alg = opts.alg ?? 'ES256';
  const service = opts.service ?? 'shoal-test-registry';
  const issuer = opts.issuer ?? 'shoal-test-issuer';
  const users = opts.users ?? {};
  const allowAnonymous = opts.allowAnonymous ?? true;
  const expiresIn = opts.expiresIn ?? 300;
  const keyRef = opts.keyRef ?? 'x5c';
  const cert = makeSelfSignedCert(issuer, alg);
  const kid = libtrustKeyId(cert.publicKey);
  const dir = await makeTempDir('shoal-tok-');
  const certFile = join(dir, 'root.pem');
  await writeFile(certFile, cert.certPem);

  const log: TokenRequestLog[] = [];
  let count = 0;

  function grant(user: string | null, scopes: string[]): TokenRequestLog['granted'] {
    const out: TokenRequestLog['granted'] = [];
    for (const s of scopes) {
      const p = parseScope(s);
      if (!p || p.type !== 'repository') continue;
      const allowed = new Set<string>();
      for (const e of opts.acl) {
        const applies = e.user === ANONYMOUS || (user !== null && (e.user === '*' || e.user === user));
        if (applies && e.repos.some((r) => repoMatches(r, p.name))) e.actions.forEach((a) => allowed.add(a));
      }
      const actions = p.actions.filter((a) => allowed.has(a) || allowed.has('*'));
      out.push({ type: p.type, name: p.name, actions });
    }
    return out;
  }

  function mint(user: string | null, access: TokenRequestLog['granted']): string {
    const now = Math.floor(Date.now() / 1000);
    const header = keyRef === 'kid' ? { typ: 'JWT', alg, kid } : { typ: 'JWT', alg, x5c: [cert.certDer.toString('base64')] };
    const claims = {
      iss: issuer,
      sub: user ?? '',
      aud: service,
      exp: now + expiresIn,
      nbf: now - 10,
      iat: now,
      jti: randomUUID(),
      access,
    };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    // JWS wants ECDSA signatures as raw r||s, not DER.
    const sig =
      alg === 'ES256'
        ? sign('sha256', Buffer.from(input), { key: cert.privateKey, dsaEncoding: 'ieee-p1363' })
        : sign('sha256', Buffer.from(input), cert.privateKey);
    return `${input}.${b64url(sig)}`;
  }
  function deny(res: ServerResponse, entry: TokenRequestLog, status: number, msg: string): void {
    entry.status = status;
    res.writeHead(status, {
      'content-type': 'application/json',
      ...(status === 401 ? { 'www-authenticate': 'Basic realm="shoal-test-token"' } : {}),
    });
    res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: msg }] }));
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname !== '/token') {
      res.writeHead(404).end();
      return;
    }
    count++;
    const entry: TokenRequestLog = { method: req.method ?? 'GET', user: null, scopes: [], granted: [], status: 0 };
    log.push(entry);
    let user: string | null = null;
    let password: string | null = null;
    let reqService: string | null;
    if (req.method === 'POST') {
      const form = new URLSearchParams(await readBody(req));
      if (form.get('grant_type') !== 'password') {
        deny(res, entry, 400, 'only the password grant is supported');
        return;
      }
      user = form.get('username');
      password = form.get('password');
      entry.scopes = (form.get('scope') ?? '').split(' ').filter(Boolean);
      reqService = form.get('service');
    } else {
      const auth = req.headers.authorization;
      if (auth?.startsWith('Basic ')) {
        const decoded = Buffer.from(auth.slice(6), 'base64').toString('utf8');
        const i = decoded.indexOf(':');
        user = i < 0 ? decoded : decoded.slice(0, i);
        password = i < 0 ? '' : decoded.slice(i + 1);
      }
      entry.scopes = url.searchParams.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean);
      reqService = url.searchParams.get('service');
    }
    if (reqService !== null && reqService !== service) {
      deny(res, entry, 400, `unknown service ${reqService}`);
      return;
    }
    entry.user = user; // as claimed; status says whether it was accepted
    if (user !== null && users[user] !== password) {
      deny(res, entry, 401, 'bad credentials');
      return;
    }
    if (user === null && !allowAnonymous) {
      deny(res, entry, 401, 'authentication required');
      return;
    }
    entry.granted = grant(user, entry.scopes);
    const token = mint(user, entry.granted);
    entry.status = 200;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({ token, access_token: token, expires_in: expiresIn, issued_at: new Date().toISOString() }),
    );
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      if (!res.headersSent) res.writeHead(500);
      res.end(String(e));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  return {
    realm: `http://127.0.0.1:${port}/token`,
    service,
    issuer,
    certPem: cert.certPem,
    certFile,
    get requests() {
      return count;
    },
    log,
    reset() {
      count = 0;
      log.length = 0;
    },
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await removeTempDir(dir);
    },
  };
}
