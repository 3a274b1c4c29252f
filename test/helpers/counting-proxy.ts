import {
  Agent,
  createServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Registry } from './registry.js';

export interface ProxyRequestLog {
  method: string;
  /** path with query string, as the client sent it */
  path: string;
  /** 0 until the response head is sent */
  status: number;
  /** response body bytes written to the client so far */
  bytes: number;
  /** true once the response finished or the connection closed */
  done: boolean;
  /** answered by an onRequest hook rather than the origin */
  hooked: boolean;
}

/** Return true when the hook answered the request itself; false lets the proxy forward it. */
export type RequestHook = (req: IncomingMessage, res: ServerResponse) => boolean | Promise<boolean>;

export interface CountingProxy {
  url: string;
  host: string;
  port: number;
  /** where requests go (changeable with setTarget) */
  target: string;
  /** every request, in arrival order; entries are live-updated while bodies stream */
  requests: ProxyRequestLog[];
  onRequest?: RequestHook;
  /** GET body bytes served for /v2/<name>/blobs/<digest> (uploads excluded) */
  blobBytes(): number;
  /** number of GET /v2/<name>/blobs/<digest> */
  blobGets(): number;
  /** number of GET /v2/<name>/manifests/<ref> */
  manifestGets(): number;
  /** number of HEAD /v2/<name>/manifests/<ref> */
  manifestHeads(): number;
  /** all response body bytes */
  totalBytes(): number;
  reset(): void;
  /** true: refuse every connection (and cut open ones), as an unreachable origin would */
  setDown(down: boolean): void;
  /** caps all response bodies together at this many bytes/s (a thin uplink); null = no cap */
  setRateLimit(bytesPerSecond: number | null): void;
  setTarget(target: Registry | string): void;
  /** forwards req to the target and returns its response unread (for hooks that alter bodies) */
  forward(req: IncomingMessage): Promise<IncomingMessage>;
  stop(): Promise<void>;
}

const BLOB = /^\/v2\/.+\/blobs\/(?!uploads\/)[^/?]+/;
const MANIFEST = /^\/v2\/.+\/manifests\/[^/?]+/;

// Hop-by-hop headers belong to one connection and must not be forwarded (RFC 9110 §7.6.1).
const HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

function endToEnd(h: IncomingHttpHeaders): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const [k, v] of Object.entries(h)) if (!HOP.has(k) && v !== undefined) out[k] = v;
  return out;
}

const toUrl = (t: Registry | string): string => (typeof t === 'string' ? t : t.url).replace(/\/+$/, '');

/**
 * A streaming reverse proxy in front of a registry that counts what it serves. The Host header
 * is passed through, so the registry builds upload Locations that point back at the proxy; all
 * response headers (Location, WWW-Authenticate, Docker-Content-Digest) pass unchanged.
 */
export async function startCountingProxy(
  target: Registry | string,
  opts: { onRequest?: RequestHook } = {},
): Promise<CountingProxy> {
  const agent = new Agent({ keepAlive: true, maxSockets: 64 });
  const sockets = new Set<Socket>();
  let down = false;
  let rate: number | null = null;
  let nextSlot = 0; // shared pacing clock for the rate limit

  const forward = (req: IncomingMessage): Promise<IncomingMessage> =>
    new Promise((resolve, reject) => {
      const up = httpRequest(
        `${proxy.target}${req.url ?? '/'}`,
        { method: req.method, headers: endToEnd(req.headers), agent },
        resolve,
      );
      up.once('error', reject);
      req.pipe(up);
    });

  async function pace(len: number): Promise<void> {
    if (rate === null) return;
    const now = Date.now();
    const start = Math.max(nextSlot, now);
    nextSlot = start + (len * 1000) / rate;
    if (start > now) await new Promise((r) => setTimeout(r, start - now));
  }

  async function handle(req: IncomingMessage, res: ServerResponse, entry: ProxyRequestLog): Promise<void> {
    if (proxy.onRequest && (await proxy.onRequest(req, res))) {
      entry.hooked = true;
      return;
    }
    let up: IncomingMessage;
    try {
      up = await forward(req);
    } catch {
      // The origin is unreachable: answer as a gateway would.
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
      res.end('bad gateway');
      return;
    }
    res.writeHead(up.statusCode ?? 502, up.statusMessage, endToEnd(up.headers));
    res.once('close', () => up.destroy()); // client went away: stop reading the origin
    up.once('error', () => res.destroy()); // origin cut the body: cut ours, so the client sees it
    for await (const chunk of up) {
      await pace((chunk as Buffer).length);
      if (res.destroyed) return;
      if (!res.write(chunk)) {
        // Both listeners go once either fires, so a long body does not pile up 'close' listeners.
        await new Promise<void>((resolve) => {
          const done = () => {
            res.off('drain', done).off('close', done);
            resolve();
          };
          res.on('drain', done).on('close', done);
        });
      }
    }
    res.end();
  }

  const server = createServer((req, res) => {
    const entry: ProxyRequestLog = {
      method: req.method ?? 'GET',
      path: req.url ?? '/',
      status: 0,
      bytes: 0,
      done: false,
      hooked: false,
    };
    proxy.requests.push(entry);
    // Count at the response itself, so hooks' bodies are counted the same way as forwarded ones.
    const origWrite = res.write.bind(res) as (...a: unknown[]) => boolean;
    const origEnd = res.end.bind(res) as (...a: unknown[]) => ServerResponse;
    const count = (chunk: unknown) => {
      if (typeof chunk === 'string') entry.bytes += Buffer.byteLength(chunk);
      else if (chunk instanceof Uint8Array) entry.bytes += chunk.length;
    };
    res.write = ((...a: unknown[]) => {
      count(a[0]);
      entry.status = res.statusCode;
      return origWrite(...a);
    }) as typeof res.write;
    res.end = ((...a: unknown[]) => {
      if (typeof a[0] !== 'function') count(a[0]);
      entry.status = res.statusCode;
      return origEnd(...a);
    }) as typeof res.end;
    res.once('close', () => {
      entry.status = res.statusCode;
      entry.done = true;
    });
    handle(req, res, entry).catch(() => res.destroy());
  });
  server.keepAliveTimeout = 30_000;
  server.on('connection', (s: Socket) => {
    if (down) {
      s.destroy();
      return;
    }
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const sum = (pred: (e: ProxyRequestLog) => boolean, f: (e: ProxyRequestLog) => number) =>
    proxy.requests.filter(pred).reduce((a, e) => a + f(e), 0);

  const proxy: CountingProxy = {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    port,
    target: toUrl(target),
    requests: [],
    ...(opts.onRequest ? { onRequest: opts.onRequest } : {}),
    blobBytes: () => sum((e) => e.method === 'GET' && BLOB.test(e.path), (e) => e.bytes),
    blobGets: () => sum((e) => e.method === 'GET' && BLOB.test(e.path), () => 1),
    manifestGets: () => sum((e) => e.method === 'GET' && MANIFEST.test(e.path), () => 1),
    manifestHeads: () => sum((e) => e.method === 'HEAD' && MANIFEST.test(e.path), () => 1),
    totalBytes: () => sum(() => true, (e) => e.bytes),
    reset() {
      proxy.requests.length = 0;
    },
    setDown(d: boolean) {
      down = d;
      if (d) for (const s of sockets) s.destroy();
    },
    setRateLimit(bps: number | null) {
      rate = bps;
      nextSlot = 0;
    },
    setTarget(t: Registry | string) {
      proxy.target = toUrl(t);
      agent.destroy(); // drop pooled connections to the old target
    },
    forward,
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      agent.destroy();
    },
  };
  return proxy;
}
