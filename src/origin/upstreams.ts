import type { UpstreamsConfig } from '../config/schema.js';
import { OriginClient } from './client.js';

type OriginLogger = ConstructorParameters<typeof OriginClient>[0]['logger'];

/** One origin client per configured registry, keyed by the host clients name it by. */
export class Upstreams {
  private readonly clients = new Map<string, OriginClient>();
  readonly defaultRegistry: string;

  constructor(config: UpstreamsConfig, logger?: OriginLogger) {
    this.defaultRegistry = config.default;
    for (const [host, registry] of Object.entries(config.registries)) {
      const credentials = {
        ...(registry.username !== undefined && { username: registry.username }),
        ...(registry.password !== undefined && { password: registry.password }),
        ...(registry.passwordFile !== undefined && { passwordFile: registry.passwordFile }),
        ...(registry.dockerConfig !== undefined && { dockerConfig: registry.dockerConfig }),
      };
      this.clients.set(
        host,
        new OriginClient({
          host,
          url: registry.url,
          credentials,
          timeoutMs: config.timeout,
          retries: config.retries,
          ...(logger && { logger }),
        }),
      );
    }
  }

  has(host: string): boolean {
    return this.clients.has(host);
  }

  hosts(): string[] {
    return [...this.clients.keys()];
  }

  client(host: string): OriginClient {
    const client = this.clients.get(host);
    if (!client) throw new Error(`registry ${host} is not configured`);
    return client;
  }

  async close(): Promise<void> {
    await Promise.all([...this.clients.values()].map((c) => c.close()));
  }
}
