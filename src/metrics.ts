import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** Every metric the agent exports; names are prefixed `shoal_` (README lists them). */
export class Metrics {
  readonly registry = new Registry();

  /** Blob bytes by where they came from: `local` (served from the store), `peer`, `origin` (downloaded). */
  readonly blobBytes = new Counter({
    name: 'shoal_blob_bytes_total',
    help: 'Blob bytes by source: local = served from the cache, peer/origin = downloaded from there',
    labelNames: ['source'] as const,
    registers: [this.registry],
  });

  /** Read at every scrape; the agent points them at the libp2p node and the store. */
  peerZones: () => (string | undefined)[] = () => [];
  storeSize: () => { bytes: number; blobs: number } = () => ({ bytes: 0, blobs: 0 });

  readonly peers: Gauge = new Gauge({
    name: 'shoal_peers',
    help: 'Connected peers',
    registers: [this.registry],
    collect: (): void => this.peers.set(this.peerZones().length),
  });

  readonly peersByZone: Gauge<'zone'> = new Gauge({
    name: 'shoal_peers_by_zone',
    help: 'Connected peers by the zone they announced',
    labelNames: ['zone'] as const,
    registers: [this.registry],
    collect: (): void => {
      this.peersByZone.reset();
      const counts = new Map<string, number>();
      for (const zone of this.peerZones()) counts.set(zone ?? 'unknown', (counts.get(zone ?? 'unknown') ?? 0) + 1);
      for (const [zone, count] of counts) this.peersByZone.set({ zone }, count);
    },
  });

  /** Read at every scrape: live members (this agent included) and connection counts. */
  memberCounts: () => { zone: number; all: number } = () => ({ zone: 0, all: 0 });
  connectionStats: () => { open: number; peak: number; max: number } = () => ({ open: 0, peak: 0, max: 0 });

  readonly members: Gauge<'scope'> = new Gauge({
    name: 'shoal_members',
    help: 'Live agents this agent knows of, itself included: of its own zone (scope="zone") and of the fleet (scope="all")',
    labelNames: ['scope'] as const,
    registers: [this.registry],
    collect: (): void => {
      const counts = this.memberCounts();
      this.members.set({ scope: 'zone' }, counts.zone);
      this.members.set({ scope: 'all' }, counts.all);
    },
  });

  readonly connections: Gauge = new Gauge({
    name: 'shoal_connections',
    help: 'Open p2p connections',
    registers: [this.registry],
    collect: (): void => this.connections.set(this.connectionStats().open),
  });

  readonly connectionsPeak: Gauge = new Gauge({
    name: 'shoal_connections_peak',
    help: 'The most p2p connections open at once since the agent started',
    registers: [this.registry],
    collect: (): void => this.connectionsPeak.set(this.connectionStats().peak),
  });

  readonly connectionsMax: Gauge = new Gauge({
    name: 'shoal_connections_max',
    help: 'p2p.maxConnections',
    registers: [this.registry],
    collect: (): void => this.connectionsMax.set(this.connectionStats().max),
  });

  readonly requests = new Counter({
    name: 'shoal_http_requests_total',
    help: 'HTTP requests answered, by route and status',
    labelNames: ['route', 'method', 'status'] as const,
    registers: [this.registry],
  });

  readonly cacheLookups = new Counter({
    name: 'shoal_cache_lookups_total',
    help: 'Blob requests answered from the cache (hit) or needing a download (miss)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly storeBytes: Gauge = new Gauge({
    name: 'shoal_store_bytes',
    help: 'Bytes of blobs held in the store',
    registers: [this.registry],
    collect: (): void => this.storeBytes.set(this.storeSize().bytes),
  });

  readonly storeBlobs: Gauge = new Gauge({
    name: 'shoal_store_blobs',
    help: 'Blobs held in the store',
    registers: [this.registry],
    collect: (): void => this.storeBlobs.set(this.storeSize().blobs),
  });

  readonly evictions = new Counter({
    name: 'shoal_store_evictions_total',
    help: 'Blobs evicted to keep the store under storage.maxSize',
    registers: [this.registry],
  });

  readonly originErrors = new Counter({
    name: 'shoal_origin_errors_total',
    help: 'Failed origin requests, by kind (unauthorized, denied, not-found, toomanyrequests, unavailable, protocol)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });

  readonly providerLookup = new Histogram({
    name: 'shoal_provider_lookup_seconds',
    help: 'Time to find providers of a blob in the swarm',
    labelNames: ['result'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });

  readonly peerTransfer = new Histogram({
    name: 'shoal_peer_transfer_seconds',
    help: 'Time of blob transfers from peers that completed',
    buckets: [0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
    registers: [this.registry],
  });

  readonly originFallbacks = new Counter({
    name: 'shoal_origin_fallbacks_total',
    help: 'Blobs (or missing pieces of them) this agent took from the origin although it was not their elected fetcher, by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  readonly peerFailures = new Counter({
    name: 'shoal_peer_transfer_failures_total',
    help: 'Blob transfers from peers that failed, by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  /** Piece bytes downloaded from peers, by whether the peer is in this agent's zone. */
  readonly peerZoneBytes = new Counter({
    name: 'shoal_peer_piece_bytes_total',
    help: 'Piece bytes downloaded from peers, by zone: same (this zone) or other',
    labelNames: ['zone'] as const,
    registers: [this.registry],
  });

  readonly peerUploads = new Counter({
    name: 'shoal_peer_upload_bytes_total',
    help: 'Blob bytes served to peers',
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'shoal_' });
  }

  /** libp2p's own metrics, kept apart so their names can be given Shoal's prefix. */
  readonly libp2p = new Registry();

  /** Prometheus text of Shoal's metrics and libp2p's (renamed libp2p_* → shoal_libp2p_*). */
  async text(): Promise<string> {
    const ours = await this.registry.metrics();
    // libp2p_x becomes shoal_libp2p_x; the few process metrics it adds become shoal_libp2p_<name>.
    const theirs = (await this.libp2p.metrics()).replace(/^(# (?:HELP|TYPE) )?([a-zA-Z_]\w*)/gm, (_all, comment: string | undefined, name: string) =>
      `${comment ?? ''}${name.startsWith('libp2p_') ? `shoal_${name}` : `shoal_libp2p_${name}`}`,
    );
    return theirs.trim() === '' ? ours : `${ours}\n${theirs}`;
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
