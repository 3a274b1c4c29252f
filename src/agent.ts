import type { FastifyInstance } from 'fastify';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { listenAddress } from './config/load.js';
import type { Config } from './config/schema.js';
import { BlobFetcher } from './fetch/blob-fetcher.js';
import { Grants } from './fetch/grants.js';
import { ManifestService } from './fetch/manifests.js';
import { OriginSource } from './fetch/origin-source.js';
import { HashWorker } from './fetch/hash-worker.js';
import { PieceNews } from './fetch/piece-news.js';
import { Partials } from './fetch/partials.js';
import { PeerPlanner } from './fetch/peer-planner.js';
import { PieceTables } from './fetch/piece-tables.js';
import { pieceCount, type PieceTable } from './fetch/piece-table.js';
import { Preheater } from './fetch/preheat.js';
import { fixedPlan, type BlobRequest, type SourcePlanner } from './fetch/source.js';
import { buildServer } from './http/server.js';
import { createLogger } from './log.js';
import { Metrics } from './metrics.js';
import { OriginError } from './origin/errors.js';
import { Upstreams } from './origin/upstreams.js';
import type { LocalBlobs } from './p2p/blob-protocol.js';
import type { Lookup } from './p2p/bootstrap.js';
import { P2PNode } from './p2p/node.js';
import { PeerBook } from './p2p/peer-book.js';
import { tryParseDigest } from './oci/digest.js';
import { BlobStore } from './store/blob-store.js';
import { RecentErrors } from './recent-errors.js';
import { VERSION } from './version.js';
import { throttle, TokenBucket } from './throttle.js';

export interface AgentOptions {
  logger?: Logger;
  /** Serve the raw-stream bench protocol to peers (benchmarks only). */
  benchProtocol?: boolean;
  /** Resolves bootstrap DNS names (default: the system's getaddrinfo); benchmarks inject one. */
  lookup?: Lookup;
}

/**
 * Wires the parts together. Data flows one way: http → fetch (planner: peers, then origin) →
 * store; p2p announces what the store holds and serves it to peers.
 */
export class Agent {
  private constructor(
    readonly config: Config,
    readonly logger: Logger,
    readonly store: BlobStore,
    readonly metrics: Metrics,
    readonly p2p: P2PNode | undefined,
    readonly peerBook: PeerBook | undefined,
    private readonly upstreams: Upstreams,
    private readonly blobs: BlobFetcher,
    private readonly server: FastifyInstance,
    /** The registry endpoint actually bound (port 0 in the config picks a free one). */
    readonly url: string,
    private readonly hashing: HashWorker,
  ) {}

  static async start(config: Config, opts: AgentOptions = {}): Promise<Agent> {
    const logger = opts.logger ?? createLogger(config.log.level);
    const metrics = new Metrics();
    let p2p: P2PNode | undefined;
    const store = await BlobStore.open({
      dir: config.storage.dir,
      maxSize: config.storage.maxSize,
      onEvict: (digest) => {
        metrics.evictions.inc();
        void p2p?.unprovide(digest);
      },
    });
    const upstreams = new Upstreams(config.upstreams, logger.child({ part: 'origin' }));
    metrics.storeSize = () => ({ bytes: store.size, blobs: store.count });
    const grants = new Grants(store.metadata);
    const recentErrors = new RecentErrors();
    let boundUrl = `http://${config.registry.listen}`;
    const startedAt = Date.now();
    const hashing = new HashWorker();
    const cleanup = async () => {
      await hashing.close();
      await p2p?.stop();
      await upstreams.close();
      await store.close();
    };
    try {
      const origin = new OriginSource(
        upstreams,
        config.upstreams.maxRate === undefined ? undefined : new TokenBucket(config.upstreams.maxRate),
      );
      let planner: SourcePlanner = fixedPlan([origin]);
      let peerPlanner: PeerPlanner | undefined;
      // Peers' long polls on the pieces protocol wait for news of a digest here.
      const news = new PieceNews();
      const partials = new Partials(join(config.storage.dir, 'tmp'), news);
      const pieceTables = new PieceTables(store);
      /** Digests this agent is fetching from the origin now: it answers PENDING for them. */
      const fromOrigin = new Set<string>();
      /** The fetcher, once built (the p2p node, started first, answers fetch requests with it). */
      const blobsRef: { current?: BlobFetcher } = {};
      const originAllows = async ({ registry, repository, digest }: BlobRequest): Promise<boolean> => {
        try {
          await upstreams.client(registry).headBlob(repository, digest.value);
          return true;
        } catch (err) {
          if (err instanceof OriginError && err.kind !== 'unavailable') return false;
          throw err;
        }
      };
      let peerBook: PeerBook | undefined;
      if (config.p2p.enabled) {
        p2p = await P2PNode.start({
          listen: config.p2p.listen,
          bootstrap: config.p2p.bootstrap,
          bootstrapIntervalMs: config.p2p.bootstrapInterval,
          mdns: config.p2p.mdns,
          ...(config.p2p.pskFile !== undefined && { pskFile: config.p2p.pskFile }),
          zone: config.p2p.zone,
          keyFile: join(config.storage.dir, 'p2p', 'key'),
          maxUploads: config.p2p.maxUploadStreams,
          maxConnections: config.p2p.maxConnections,
          benchProtocol: opts.benchProtocol ?? false,
          ...(opts.lookup !== undefined && { lookup: opts.lookup }),
          metricsRegistry: metrics.libp2p,
          // Announcements of blobs taken from peers wait for the agent's downloads to end.
          busy: () => (blobsRef.current?.downloads ?? 0) > 0,
          logger,
          blobs: localBlobs(
            store,
            partials,
            metrics,
            config.p2p.maxUploadRate === undefined ? undefined : new TokenBucket(config.p2p.maxUploadRate),
          ),
          fetches: {
            // Another agent of the zone asks this one, its elected origin fetcher, to fetch a
            // blob: done only for what the origin lets this agent read.
            async request({ registry, repository, digest }) {
              const parsed = tryParseDigest(digest);
              if (!parsed || !upstreams.has(registry)) return false;
              const request = { registry, repository, digest: parsed };
              if (!(await grants.has(registry, repository, digest)) && !(await originAllows(request).catch(() => false))) return false;
              await grants.grant(registry, repository, [digest]);
              const blobs = blobsRef.current;
              if (!blobs) return false;
              // Said at once, so askers wait for this agent rather than time out on it.
              // Sessions watching the blob hear it (a change to what `pieces.info` answers).
              fromOrigin.add(digest);
              news.notify(digest);
              void blobs
                .ensure(request)
                .catch((err: unknown) => logger.warn({ digest, err }, 'fetch asked by a peer failed'))
                .finally(() => {
                  if (!blobs.isDownloading(digest) && fromOrigin.delete(digest)) news.notify(digest);
                });
              return true;
            },
          },
          pieces: {
            async info(digest) {
              const table = await pieceTables.get(digest);
              if (table) return { table, have: new Array<boolean>(table.hashes.length).fill(true) };
              const partial = partials.get(digest);
              if (partial?.table && partial.have.some(Boolean)) return { table: partial.table, have: [...partial.have] };
              // The first wave: what this agent's origin download has written so far, under its
              // provisional table (peers check pieces against it, and the blob against its digest).
              const provisional = store.writerOf(digest)?.provisional();
              if (provisional) return { table: provisional, have: provisionalHave(provisional) };
              // Also while this agent waits on the zone's fetcher that said it is downloading
              // it: an agent the fetcher cannot take then waits too, rather than fail it over.
              return partial || fromOrigin.has(digest) || peerPlanner?.hearsFetching(digest) ? 'pending' : undefined;
            },
            changed: (digest, signal) => news.next(digest, signal),
          },
        });
        const node = p2p;
        metrics.peerZones = () => node.peers().map((p) => p.zone);
        metrics.memberCounts = () => {
          const members = node.members();
          return { zone: 1 + members.filter((m) => m.zone === config.p2p.zone).length, all: 1 + members.length };
        };
        metrics.connectionStats = () => node.connectionStats();
        const book = new PeerBook(config.p2p.zone, config.p2p.penaltyDuration);
        peerBook = book;
        const p2pLog = logger.child({ part: 'peers' });
        planner = peerPlanner = new PeerPlanner({
          swarm: node,
          self: { id: node.peerId, zone: config.p2p.zone },
          originFetchers: config.p2p.originFetchers,
          fetcherTimeoutMs: config.p2p.originFetcherTimeout,
          fetchWaitMs: config.p2p.originFetchWait,
          askedToFetch: (digest) => fromOrigin.has(digest),
          fetchingChanged: (digest) => news.notify(digest),
          book,
          grants,
          partials,
          origin,
          originAllows,
          lookupTimeoutMs: config.p2p.providerLookupTimeout,
          logger: p2pLog,
          hashing,
          events: {
            peerFailed: (peer, error) => {
              p2pLog.debug({ peer, err: (error as Error)?.message }, 'peer failed a request');
              book.failed(peer);
              metrics.peerFailures.inc({ reason: reasonOf(error) });
            },
            badPeer: (peer, reason) => {
              book.penalise(peer);
              metrics.peerFailures.inc({ reason: 'verification' });
              p2pLog.warn({ peer, reason }, 'peer sent a piece that failed verification: dropped and penalised');
            },
            penalised: (peer, reason) => {
              book.penalise(peer);
              metrics.peerFailures.inc({ reason: 'verification' });
              p2pLog.warn({ peer, reason }, 'peer sent bytes that failed verification: penalised');
            },
            piece: (peer, bytes) => {
              const zone = node.peers().find((p) => p.id === peer)?.zone;
              metrics.peerZoneBytes.inc({ zone: zone === config.p2p.zone ? 'same' : 'other' }, bytes);
            },
            bytes: (kind, count) => metrics.blobBytes.inc({ source: kind }, count),
            originFallback: (reason) => metrics.originFallbacks.inc({ reason }),
            // Taken from peers: the zone finds it through them meanwhile; announced after the wave.
            firstPiece: (digest) => void node.provide(digest, { later: true }),
            transferred: (seconds) => metrics.peerTransfer.observe(seconds),
            lookup: (seconds, found) => metrics.providerLookup.observe({ result: found > 0 ? 'found' : 'none' }, seconds),
          },
        });
        void provideAll(store, node, logger);
      }
      const blobs = new BlobFetcher(store, planner, logger.child({ part: 'fetch' }), {
        failure: (source, error, digest) => {
          recentErrors.add(`${source.name}: ${(error as Error).message ?? String(error)}`, digest);
          if (error instanceof OriginError) metrics.originErrors.inc({ kind: error.kind });
        },
        mismatch: (digest, message) => recentErrors.add(message, digest),
        bytes: (kind, count) => metrics.blobBytes.inc({ source: kind }, count),
        // Announced as soon as an origin download starts, so the zone's other agents wait for
        // this one instead of going to the origin too.
        originStarted: (digest) => {
          fromOrigin.add(digest);
          news.notify(digest);
          void p2p?.provide(digest);
        },
        finished: (digest) => {
          fromOrigin.delete(digest);
          news.notify(digest);
        },
        pieces: (digest) => news.notify(digest),
        committed: (digest) => {
          news.notify(digest);
          // From the origin it was announced when the download started; from peers, later.
          void p2p?.provide(digest, { later: true });
        },
      }, { pieceTables: p2p !== undefined });
      blobsRef.current = blobs;
      const manifests = new ManifestService({
        store,
        grants,
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
        metrics,
        preheater: new Preheater(manifests, blobs, upstreams),
        status: async () => ({
          ...(p2p && { id: p2p.peerId }),
          ...(config.p2p.enabled && { zone: config.p2p.zone }),
          version: VERSION,
          uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
          registry: boundUrl,
          p2p: { enabled: config.p2p.enabled, addresses: p2p?.multiaddrs() ?? [] },
          peers: p2p?.peers() ?? [],
          ...(p2p && {
            members: (() => {
              const members = p2p.members();
              return { zone: 1 + members.filter((m) => m.zone === config.p2p.zone).length, all: 1 + members.length };
            })(),
            connections: p2p.connectionStats(),
          }),
          transfers: blobs.transfers().map((t) => {
            const partial = partials.get(t.digest);
            const table = partial?.table;
            return {
              digest: t.digest,
              repository: t.repository,
              bytes: t.bytes,
              ...(t.size !== undefined && { size: t.size }),
              sources: t.sources,
              seconds: Math.round((Date.now() - t.startedAt) / 100) / 10,
              ...(table && partial && { size: table.size, pieces: { have: partial.have.filter(Boolean).length, total: pieceCount(table) } }),
            };
          }),
          cache: { bytes: store.size, maxBytes: store.maxSize, blobs: store.count },
          recentErrors: recentErrors.list(),
        }),
        ...(p2p && { partials }),
        headBlob: async (registry, repository, digest) => {
          const head = await upstreams.client(registry).headBlob(repository, digest);
          await grants.grant(registry, repository, [digest]);
          return head;
        },
        // Ready once the store is open (it is, by now) and, when peers are configured to bootstrap
        // from, once the swarm is joined: an agent cut off from its fleet should not take traffic.
        ready: () => config.p2p.bootstrap.length === 0 || (p2p?.membership.joined() ?? false),
      });
      const { host, port } = listenAddress(config.registry.listen);
      await server.listen({ host, port });
      const address = server.server.address();
      const bound = typeof address === 'object' && address ? address.port : port;
      const url = `http://${host.includes(':') ? `[${host}]` : host}:${bound}`;
      boundUrl = url;
      logger.info(
        { url, storage: config.storage.dir, registries: upstreams.hosts(), peerId: p2p?.peerId, p2p: p2p?.multiaddrs() },
        'shoal agent listening',
      );
      return new Agent(config, logger, store, metrics, p2p, peerBook, upstreams, blobs, server, url, hashing);
    } catch (err) {
      await cleanup();
      throw err;
    }
  }

  /**
   * Graceful shutdown: stop accepting, let responses in flight finish (at most `deadlineMs`,
   * then cut them), stop downloads and providing, and close the store cleanly.
   */
  async stop(deadlineMs = 10_000): Promise<void> {
    const closing = this.server.close();
    const deadline = setTimeout(() => this.server.server.closeAllConnections(), deadlineMs);
    deadline.unref();
    await closing;
    clearTimeout(deadline);
    this.blobs.close();
    await this.p2p?.stop();
    await this.hashing.close();
    await this.upstreams.close();
    await this.store.close();
    this.logger.info('agent stopped');
  }
}

/**
 * The store as peers see it: committed (verified) blobs, and the verified pieces of blobs
 * still being assembled.
 */
function localBlobs(store: BlobStore, partials: Partials, metrics: Metrics, uploadLimit: TokenBucket | undefined): LocalBlobs {
  return {
    async open(digest, offset, length) {
      const parsed = tryParseDigest(digest);
      if (!parsed) return undefined;
      let blob = await store.get(parsed);
      if (!blob) {
        // Pieces of a swarm download, else of an origin download still streaming in (the first
        // wave: checked by the asker against the provisional table, never served to a client).
        const piece = (await partials.read(digest, offset, length)) ?? (await store.writerOf(digest)?.openProvisional(offset, length));
        if (piece) return limit(piece);
        // Committed meanwhile (its download's files are gone): the store has it now.
        blob = await store.get(parsed);
        if (!blob) return undefined;
      }
      if (offset > blob.size) return undefined;
      const end = length === undefined ? blob.size - 1 : Math.min(blob.size, offset + length) - 1;
      // An empty range answers "I hold it" (a probe) without touching the file.
      if (end < offset) return { size: blob.size, body: Readable.from([]) };
      const body = await store.createReadStream(parsed, { start: offset, end });
      if (!body) return undefined;
      return limit({ size: blob.size, body });
    },
    sent: (_digest, bytes) => metrics.peerUploads.inc(bytes),
  };

  /** Holds uploads to p2p.maxUploadRate. */
  function limit(opened: { size: number; body: Readable } | undefined) {
    if (!opened) return undefined;
    const { body } = opened;
    if (!uploadLimit) return opened;
    const limited = throttle(uploadLimit);
    body.on('error', (err) => limited.destroy(err));
    limited.on('close', () => body.destroy());
    return { size: opened.size, body: body.pipe(limited) };
  }
}

/** The bitfield of a provisional table: its holder has exactly the pieces whose hashes it knows. */
function provisionalHave(table: PieceTable): boolean[] {
  return Array.from({ length: pieceCount(table) }, (_, i) => i < table.hashes.length);
}

function reasonOf(err: unknown): string {
  const name = (err as { name?: unknown } | undefined)?.name;
  return typeof name === 'string' && name !== 'Error' ? name : 'error';
}

/** Every blob held is announced at start-up, so a restarted agent seeds at once. */
async function provideAll(store: BlobStore, node: P2PNode, logger: Logger): Promise<void> {
  let count = 0;
  try {
    for await (const digest of store.digests()) {
      await node.provide(digest);
      count++;
    }
    logger.info({ count }, 'providing cached blobs');
  } catch (err) {
    logger.warn({ err }, 'could not provide cached blobs');
  }
}
