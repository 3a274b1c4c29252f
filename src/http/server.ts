import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { randomUUID } from 'node:crypto';
import { RegistryError } from '../oci/errors.js';
import { registryRoutes, sendError, type RegistryDeps } from './registry-routes.js';

export interface ServerDeps extends RegistryDeps {
  logger: Logger;
  /** Whether the agent can serve (store open, …). */
  ready(): boolean;
}

/** The agent's one HTTP listener: the registry API plus health endpoints. */
export function buildServer(deps: ServerDeps): FastifyInstance {
  const app = Fastify({
    loggerInstance: deps.logger,
    // Repository names may be long; the wildcard route must not cut them off into a 404.
    maxParamLength: 4096,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && /^[\w.-]{1,64}$/.test(given) ? given : randomUUID();
    },
    requestIdHeader: false,
    disableRequestLogging: true,
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
    request.log.info(
      { method: request.method, url: request.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime) },
      'request',
    );
  });

  registryRoutes(app, deps);
  app.get('/healthz', async () => ({ status: 'ok' }));
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
