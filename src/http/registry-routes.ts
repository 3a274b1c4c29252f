import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Metrics } from '../metrics.js';
import { RegistryError } from '../oci/errors.js';
import { configDigest } from '../oci/manifest.js';
import { INDEX_MEDIA_TYPES } from '../oci/media-types.js';
import type { BlobFetcher } from '../fetch/blob-fetcher.js';
import type { ManifestService } from '../fetch/manifests.js';
import type { BlobStore } from '../store/blob-store.js';
import { toRegistryError, type Subject } from './error-mapping.js';
import type { OutgoingHttpHeaders } from 'node:http';
import { parseRange } from './range.js';
import { sendFileRange } from './send-file.js';
import { sendWhileAssembling } from './send-assembling.js';
import type { Partial, Partials } from '../fetch/partials.js';
import type { StoredBlob } from '../store/blob-store.js';
import { parseRegistryPath, type RegistryTarget, type UpstreamNames } from './registry-path.js';

export interface RegistryDeps {
  metrics: Metrics;
  /** Blobs the swarm is assembling (absent when p2p is off). */
  partials?: Partials;
  upstreams: UpstreamNames;
  manifests: ManifestService;
  blobs: BlobFetcher;
  store: BlobStore;
  /** Size of a blob the store lacks, asked of the origin without downloading it. */
  headBlob(registry: string, repository: string, digest: string): Promise<{ size: number }>;
}

/** The pull side of the OCI distribution API. */
export function registryRoutes(app: FastifyInstance, deps: RegistryDeps): void {
  const handler = async (request: FastifyRequest, reply: FastifyReply) => {
    let target: RegistryTarget;
    try {
      target = parseRegistryPath(request.raw.url ?? '/', deps.upstreams);
    } catch (err) {
      return sendError(reply, toRegistryError(err, 'manifest'));
    }
    if (target.kind === 'root') return reply.type('application/json').send('{}');
    const subject: Subject = target.kind;
    try {
      if (target.kind === 'manifest') return await serveManifest(request, reply, target, deps);
      return await serveBlob(request, reply, target, deps);
    } catch (err) {
      const mapped = toRegistryError(err, subject);
      if (mapped.status >= 500) request.log.error({ err }, 'pull failed');
      else request.log.info({ code: mapped.code, msg: mapped.message }, 'pull refused');
      return sendError(reply, mapped);
    }
  };
  app.route({ method: ['GET', 'HEAD'], url: '/v2', handler, exposeHeadRoute: false });
  app.route({ method: ['GET', 'HEAD'], url: '/v2/*', handler, exposeHeadRoute: false });
  app.route({
    method: ['POST', 'PUT', 'PATCH', 'DELETE'],
    url: '/v2/*',
    handler: (_request, reply) =>
      sendError(reply, new RegistryError('UNSUPPORTED', 'this is a pull-through mirror: push to the origin registry')),
  });
}

export function sendError(reply: FastifyReply, error: RegistryError): FastifyReply {
  if (error.code === 'RANGE_INVALID') {
    const size = (error.detail as { size?: unknown } | undefined)?.size;
    if (typeof size === 'number') reply.header('Content-Range', `bytes */${size}`);
  }
  return reply.code(error.status).type('application/json').send(JSON.stringify(error.toJSON()));
}

async function serveManifest(
  request: FastifyRequest,
  reply: FastifyReply,
  target: Extract<RegistryTarget, { kind: 'manifest' }>,
  deps: RegistryDeps,
): Promise<FastifyReply> {
  const manifest = await deps.manifests.resolve(target);
  reply
    .header('Docker-Content-Digest', manifest.digest)
    .header('Content-Type', manifest.mediaType)
    .header('Content-Length', String(manifest.size))
    .header('ETag', `"${manifest.digest}"`);
  if (manifest.stale) reply.header('Warning', '110 shoal "origin unreachable: tag answered from cache"');
  if (request.method === 'HEAD') return reply.send();
  prefetchConfig(manifest, target, String(request.id), deps);
  return reply.send(manifest.bytes);
}

/**
 * Starts fetching an image manifest's config blob as the manifest is served. Clients ask for
 * the config after the layers (skopeo) or just before them, and always need it: starting it
 * now takes a whole fetch (and, in a rollout, a round of fetcher election) off the end of the
 * pull. It is small, so this costs nothing when the client already has it. Layers are not
 * prefetched: a client may hold most of them already.
 */
function prefetchConfig(
  manifest: { mediaType: string; bytes: Buffer },
  target: { registry: string; repository: string },
  requestId: string,
  deps: RegistryDeps,
): void {
  if (INDEX_MEDIA_TYPES.has(manifest.mediaType)) return;
  const digest = configDigest(manifest.bytes);
  if (digest === undefined) return; // not an image manifest: nothing to prefetch
  deps.blobs.ensure({ registry: target.registry, repository: target.repository, digest, requestId }).catch(() => {
    // the client's own request for it will report what went wrong
  });
}

async function serveBlob(
  request: FastifyRequest,
  reply: FastifyReply,
  target: Extract<RegistryTarget, { kind: 'blob' }>,
  deps: RegistryDeps,
): Promise<FastifyReply> {
  const { digest } = target;
  reply
    .header('Docker-Content-Digest', digest.value)
    .header('Content-Type', 'application/octet-stream')
    .header('Accept-Ranges', 'bytes')
    .header('ETag', `"${digest.value}"`);
  if (request.method === 'HEAD') {
    const stored = await deps.store.get(digest);
    const size = stored?.size ?? (await deps.headBlob(target.registry, target.repository, digest.value)).size;
    return reply.header('Content-Length', String(size)).send();
  }
  const cached = await deps.store.get(digest);
  deps.metrics.cacheLookups.inc({ result: cached ? 'hit' : 'miss' });
  let blob = cached;
  if (!blob) {
    const ensuring = deps.blobs.ensure({ ...target, requestId: String(request.id) });
    const rangeHeader = headerOf(request, 'range');
    // A blob the swarm is assembling is fed to the client piece by piece as it is verified.
    const partial = rangeHeader === undefined && deps.partials ? await assembling(deps.partials, digest.value, ensuring) : undefined;
    if (partial?.table) {
      deps.metrics.requests.inc({ route: '/v2/blobs', method: request.method, status: '200' });
      return streamAssembling(request, reply, partial, partial.table.size, ensuring);
    }
    blob = await ensuring;
  }
  const range = parseRange(headerOf(request, 'range'), blob.size);
  const start = range?.start ?? 0;
  const end = range?.end ?? blob.size - 1;
  const length = end - start + 1;
  const lease = deps.store.lease(digest.value);
  if (range) reply.code(206).header('Content-Range', `bytes ${range.start}-${range.end}/${blob.size}`);
  reply.header('Content-Length', String(length));
  // The body is written straight to the socket with reused buffers (see send-file.ts).
  reply.hijack();
  const res = reply.raw;
  res.writeHead(reply.statusCode, reply.getHeaders() as OutgoingHttpHeaders);
  const started = performance.now();
  try {
    if (length > 0) await sendFileRange(res, blob.path, start, end);
    else res.end();
    if (cached) deps.metrics.blobBytes.inc({ source: 'local' }, length);
    // Hijacked replies skip fastify's onResponse hook, where other requests are counted.
    deps.metrics.requests.inc({ route: '/v2/blobs', method: request.method, status: String(reply.statusCode) });
    request.log.info(
      { method: request.method, url: request.url, status: reply.statusCode, bytes: length, ms: Math.round(performance.now() - started) },
      'request',
    );
  } catch (err) {
    request.log.info({ url: request.url, err }, 'blob response cut short');
    res.destroy();
  } finally {
    lease.release();
    void deps.store.touch(digest).catch(() => undefined);
  }
  return reply;
}

/** Waits until the download either finishes or becomes a swarm assembly with a known table. */
async function assembling(partials: Partials, digest: string, ensuring: Promise<unknown>): Promise<Partial | undefined> {
  let settled = false;
  ensuring.then(
    () => (settled = true),
    () => (settled = true),
  );
  while (!settled) {
    const partial = partials.get(digest);
    // Not from a provisional table: those bytes wait for the digest check.
    if (partial?.table && !partial.provisional && partial.have.some(Boolean)) return partial;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return undefined;
}

async function streamAssembling(
  request: FastifyRequest,
  reply: FastifyReply,
  partial: Partial,
  size: number,
  ensuring: Promise<StoredBlob>,
): Promise<FastifyReply> {
  reply.header('Content-Length', String(size));
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, reply.getHeaders() as OutgoingHttpHeaders);
  const started = performance.now();
  try {
    await sendWhileAssembling(res, partial, size, ensuring);
    request.log.info(
      { method: request.method, url: request.url, status: 200, bytes: size, ms: Math.round(performance.now() - started), streamed: true },
      'request',
    );
  } catch (err) {
    // Never a complete wrong blob: the client sees a cut connection instead.
    request.log.warn({ url: request.url, err }, 'blob response aborted while assembling');
    res.destroy();
  }
  return reply;
}

function headerOf(request: FastifyRequest, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value[0] : value;
}
