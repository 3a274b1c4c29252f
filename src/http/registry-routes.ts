import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Metrics } from '../metrics.js';
import { RegistryError } from '../oci/errors.js';
import type { BlobFetcher } from '../fetch/blob-fetcher.js';
import type { ManifestService } from '../fetch/manifests.js';
import type { BlobStore } from '../store/blob-store.js';
import { toRegistryError, type Subject } from './error-mapping.js';
import { parseRange } from './range.js';
import { parseRegistryPath, type RegistryTarget, type UpstreamNames } from './registry-path.js';

export interface RegistryDeps {
  metrics: Metrics;
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
  return reply.send(manifest.bytes);
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
  const blob = cached ?? (await deps.blobs.ensure(target));
  const range = parseRange(headerOf(request, 'range'), blob.size);
  const stream = await deps.store.createReadStream(digest, range);
  if (!stream) throw new RegistryError('BLOB_UNKNOWN', 'blob was evicted while being served');
  if (range) {
    reply.code(206).header('Content-Range', `bytes ${range.start}-${range.end}/${blob.size}`);
  }
  const length = range ? range.end - range.start + 1 : blob.size;
  if (cached) stream.once('end', () => deps.metrics.blobBytes.inc({ source: 'local' }, length));
  return reply.header('Content-Length', String(length)).send(stream);
}

function headerOf(request: FastifyRequest, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value[0] : value;
}
