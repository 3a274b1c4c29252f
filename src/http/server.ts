import Fastify, { LogController, type FastifyInstance } from 'fastify';
import { createServer } from 'node:http';
import type { Logger } from 'pino';
import { randomUUID } from 'node:crypto';
import { RegistryError } from '../oci/errors.js';
import type { Preheater } from '../fetch/preheat.js';
import { preheatRoutes } from './preheat-routes.js';
import { STATUS_PAGE } from './status-page.js';
import { statusRoutes, type AgentStatus } from './status-routes.js';
import { registryRoutes, sendError, type RegistryDeps } from './registry-routes.js';

const SOCKET_HIGH_WATER_MARK = 4 * 1024 * 1024;

export interface ServerDeps extends RegistryDeps {
  logger: Logger;
  status: () => Promise<AgentStatus>;
  preheater: Preheater;
  /** Whether the agent can serve (store open, …). */
  ready(): boolean;
}

/** The agent's one HTTP listener: the registry API plus health endpoints. */
/** A low-cardinality route label: registry paths by kind, the rest as they are. */
function routeOf(url: string): string {
  const path = url.split('?')[0]!;
  if (/^\/v2\/.+\/manifests\//.test(path)) return '/v2/manifests';
  if (/^\/v2\/.+\/blobs\//.test(path)) return '/v2/blobs';
  if (path.startsWith('/v2')) return '/v2';
  return ['/healthz', '/readyz', '/metrics', '/status', '/preheat', '/'].includes(path) ? path : 'other';
}

export function buildServer(deps: ServerDeps): FastifyInstance {
  const app = Fastify({
    // Larger socket buffers keep a blob flowing while the next chunk is read from disk:
    // measured on loopback, this is what brings a Node server close to a sendfile one.
    serverFactory: (handler) => createServer({ highWaterMark: SOCKET_HIGH_WATER_MARK }, handler),
    loggerInstance: deps.logger,
    // Repository names may be long; the wildcard route must not cut them off into a 404.
    routerOptions: { maxParamLength: 4096 },
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && /^[\w.-]{1,64}$/.test(given) ? given : randomUUID();
    },
    requestIdHeader: false,
    // One log line per request comes from our onResponse hook instead.
    logController: new LogController({ disableRequestLogging: true }),
    // A URL the router cannot decode is answered as the spec's JSON, not fastify's.
    frameworkErrors: (error, _request, reply) => {
      void sendError(reply, new RegistryError('NAME_INVALID', `bad request: ${error.message}`));
    },
  }) as unknown as FastifyInstance;

  app.addHook('onRequest', async (request, reply) => {
    reply.header('Docker-Distribution-API-Version', 'registry/2.0');
    reply.header('X-Request-Id', request.id);
  });
  app.addHook('onResponse', async (request, reply) => {
    deps.metrics.requests.inc({ route: routeOf(request.url), method: request.method, status: String(reply.statusCode) });
    request.log.info(
      { method: request.method, url: request.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime) },
      'request',
    );
  });

  registryRoutes(app, deps);
  preheatRoutes(app, deps.preheater);
  statusRoutes(app, deps.status);
  app.get('/', async (_request, reply) => reply.type('text/html; charset=utf-8').send(STATUS_PAGE));
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/metrics', async (_request, reply) => reply.type(deps.metrics.contentType).send(await deps.metrics.text()));
  app.get('/readyz', async (_request, reply) => {
    const ready = deps.ready();
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not ready' });
  });
  app.setNotFoundHandler((_request, reply) => {
    void sendError(reply, new RegistryError('UNSUPPORTED', 'not found', undefined, 404));
  });
  app.setErrorHandler((error: Error, request, reply) => {
    const status = (error as { statusCode?: number }).statusCode ?? 500;
    if (status >= 500) request.log.error({ err: error }, 'unhandled error');
    void sendError(
      reply,
      status < 500
        ? new RegistryError('UNSUPPORTED', error.message, undefined, status)
        : new RegistryError('UNKNOWN', 'internal error'),
    );
  });
  return app;
}
