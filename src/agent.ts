import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { listenAddress } from './config/load.js';
import type { Config } from './config/schema.js';
import { BlobFetcher } from './fetch/blob-fetcher.js';
import { ManifestService } from './fetch/manifests.js';
import { OriginSource } from './fetch/origin-source.js';
import { buildServer } from './http/server.js';
import { createLogger } from './log.js';
import { Upstreams } from './origin/upstreams.js';
import { BlobStore } from './store/blob-store.js';

export interface AgentOptions {
  logger?: Logger;
}

/** Wires the parts together: store ← fetch ← http, with the origin as a blob source. */
export class Agent {
  private constructor(
    readonly config: Config,
    readonly logger: Logger,
    readonly store: BlobStore,
    private readonly upstreams: Upstreams,
    private readonly blobs: BlobFetcher,
    private readonly server: FastifyInstance,
    /** The registry endpoint actually bound (port 0 in the config picks a free one). */
    readonly url: string,
  ) {}

  static async start(config: Config, opts: AgentOptions = {}): Promise<Agent> {
    const logger = opts.logger ?? createLogger(config.log.level);
    const store = await BlobStore.open({ dir: config.storage.dir, maxSize: config.storage.maxSize });
    const upstreams = new Upstreams(config.upstreams, logger.child({ part: 'origin' }));
    const blobs = new BlobFetcher(store, [new OriginSource(upstreams)], logger.child({ part: 'fetch' }));
    const manifests = new ManifestService({
      store,
      origin: (registry) => upstreams.client(registry),
      staleIfErrorMs: config.upstreams.staleIfError,
      logger: logger.child({ part: 'manifests' }),
    });
    const server = buildServer({
      logger,
      upstreams,
      manifests,
      blobs,
      store,
      headBlob: (registry, repository, digest) => upstreams.client(registry).headBlob(repository, digest),
      ready: () => true,
    });
    const { host, port } = listenAddress(config.registry.listen);
    try {
      await server.listen({ host, port });
    } catch (err) {
      await upstreams.close();
      await store.close();
      throw err;
    }
    const address = server.server.address();
    const bound = typeof address === 'object' && address ? address.port : port;
    const urlHost = host.includes(':') ? `[${host}]` : host;
    const url = `http://${urlHost}:${bound}`;
    logger.info({ url, storage: config.storage.dir, registries: upstreams.hosts() }, 'shoal agent listening');
    return new Agent(config, logger, store, upstreams, blobs, server, url);
  }

  async stop(): Promise<void> {
    await this.server.close();
    this.blobs.close();
    await this.upstreams.close();
    await this.store.close();
  }
}
