import type { FastifyInstance } from 'fastify';
import { RegistryError } from '../oci/errors.js';
import type { Preheater } from '../fetch/preheat.js';
import { toRegistryError } from './error-mapping.js';
import { sendError } from './registry-routes.js';

/**
 * POST /preheat?ref=<image>[&platform=os/arch]: fetches an image's blobs ahead of a rollout.
 * The answer streams NDJSON progress lines, then {"status":"done"} or {"status":"error",…}.
 */
export function preheatRoutes(app: FastifyInstance, preheater: Preheater): void {
  app.post('/preheat', async (request, reply) => {
    const query = request.query as { ref?: unknown; platform?: unknown };
    const platform = typeof query.platform === 'string' && query.platform !== '' ? query.platform : undefined;
    if (platform !== undefined && !/^[a-z0-9]+\/[a-z0-9]+(\/[a-z0-9]+)?$/.test(platform)) {
      return sendError(reply, new RegistryError('UNSUPPORTED', `bad platform ${JSON.stringify(platform)}: expected os/arch[/variant]`, undefined, 400));
    }
    let ref;
    try {
      if (typeof query.ref !== 'string' || query.ref === '') throw new RegistryError('NAME_INVALID', 'the ref query parameter is required');
      ref = preheater.reference(query.ref);
    } catch (err) {
      return sendError(reply, toRegistryError(err, 'manifest'));
    }
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'docker-distribution-api-version': 'registry/2.0' });
    const line = (value: unknown) => res.write(`${JSON.stringify(value)}\n`);
    try {
      const done = await preheater.run(ref, platform, (p) => line({ status: 'progress', ...p }));
      line({ status: 'done', ...done });
      request.log.info({ ref: query.ref, blobs: done.blobs, bytes: done.bytes }, 'preheated');
    } catch (err) {
      const mapped = toRegistryError(err, 'manifest');
      line({ status: 'error', code: mapped.code, message: mapped.message });
      request.log.warn({ ref: query.ref, err }, 'preheat failed');
    }
    res.end();
    return reply;
  });
}
