import { identify, type Identify } from '@libp2p/identify';
import { KEEP_ALIVE, type Libp2p, type PeerDiscovery, type PeerId, type Stream } from '@libp2p/interface';
import { kadDHT, passthroughMapper, type KadDHT } from '@libp2p/kad-dht';
import { mdns } from '@libp2p/mdns';
import { noise } from '@libp2p/noise';
import { peerIdFromString } from '@libp2p/peer-id';
import { ping, type Ping } from '@libp2p/ping';
import { preSharedKey } from '@libp2p/pnet';
import { batchedTcp } from './batched-tcp.js';
import { yamux } from '@libp2p/yamux';
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import { createLibp2p, type ServiceFactoryMap } from 'libp2p';
import type { Logger } from 'pino';
import { benchHandler, type BenchDialer } from './bench-protocol.js';
import { BlobServer, requestBlob, type LocalBlobs, type OpenedBlob } from './blob-protocol.js';
import { Bootstrapper, hostPortKey, parseBootstrapEntry, peerIdOf, type Lookup } from './bootstrap.js';
import { ConnectionBudget, workStreams } from './connection-budget.js';
import { Membership, realClock, type Liveness, type MembershipOptions } from './membership/membership.js';
import { MemberWire, membersProtocolId } from './membership/member-wire.js';
import type { Member } from './membership/member-table.js';
import { cidForDigest } from './cid.js';
import { closestWithoutWalk, dhtInternals, providersWithoutWalk, sendProviderRecords, type DhtInternals } from './walkless-dht.js';
import { prometheusMetrics } from '@libp2p/prometheus-metrics';
import { StreamCounts } from './stream-counts.js';
import { TradeCounts } from './trade-counts.js';
import type { Registry } from 'prom-client';
import { fetchProtocolId, fetchRequestHandler, requestFetch, type FetchRequest, type LocalFetches } from './fetch-protocol.js';
import { swarmProtocolId, swarmWireHandler } from './swarm-wire.js';
import { SwarmSessions } from './swarm-sessions.js';
import { UploadGate } from './upload-gate.js';
import { MAX_WAIT_MS, pieceInfoHandler, pieceProtocolId, requestPieceInfo, type LocalPieces, type PieceAnswer, type PieceWait } from './piece-protocol.js';
import {
  DEFAULT_BOOTSTRAP_INTERVAL_MS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_UPLOADS,
  DEFAULT_PROTOCOL_PREFIX,
  DEFAULT_ZONE,
  protocolIds,
  type P2POptions,
  type ProtocolIds,
} from './config.js';
import { Askers } from './askers.js';
import { loadOrCreatePrivateKey } from './key.js';
import { readSwarmKey } from './psk.js';
import { agentVersion, zoneFromAgentVersion } from './zone.js';

export type { LocalBlobs, OpenedBlob } from './blob-protocol.js';
export type { LocalPieces, PieceInfo, PieceWait } from './piece-protocol.js';

/*
 * Settings, and why:
 * - Yamux: the receive window auto-tunes from 256 KiB (the spec's initial window, so any
 *   yamux peer interoperates) up to 16 MiB per stream, enough to keep a LAN link full. Flow
 *   control is driven by pausing the stream (see stream-io.ts), so a paused stream may hold a
 *   whole window: the read buffer limit is twice the window, else a slow reader would be reset.
 * - kad-dht: server mode always (LAN: every agent is dialable), a private protocol id under the
 *   prefix so Shoal never joins the public IPFS DHT, and a mapper that keeps private and loopback
 *   addresses (the stock mappers drop one or the other). Provider records expire after 2 h and
 *   are re-announced hourly, so an evicted blob stops being advertised within hours, not days.
 *   Queries may run with an empty routing table: they then return at once instead of waiting.
 * - Nothing dials on its own but the bootstrapper, mDNS (when enabled) and the DHT's queries:
 *   no public bootstrap list, relay, autonat or UPnP services are configured.
 */
const MIB = 1024 * 1024;
const STREAM_WINDOW = 16 * MIB;
const PROVIDER_VALIDITY_MS = 2 * 60 * 60_000;
const DEFAULT_PROVIDE_TIMEOUT_MS = 10_000;
/** The DHT's bucket size: a provider record goes to this many closest peers. */
const DHT_K = 20;
/** Peers asked for providers, without a walk, by a node whose own store knows none. */
const LOOKUP_ASK = 2;
/** A peer must answer a blob request (status and header) within this time. */
const RESPONSE_TIMEOUT_MS = 10_000;
/** How long a peer found to lack the swarm wire is asked the old way before it is tried again. */
const LEGACY_PEER_MS = 10 * 60_000;
const MAX_LEGACY_PEERS = 4096;
/** Waiting before (re-)announcing digests provided while the node had no DHT peers. */
const ANNOUNCE_DEBOUNCE_MS = 500;
/**
 * A blob taken from peers is announced this long (and up to as long again) after it arrived: a
 * rollout's first wave finds holders through the zone's fetchers' answers and membership
 * neighbours, and every agent of a 32-agent zone announcing each blob at once (a DHT walk and up
 * to 20 messages, over new connections) was a large part of the rollout's CPU.
 */
const DEFAULT_ANNOUNCE_LATER_MS = 120_000;
/** How many announceLaterMs delays an announcement waits at most for the agent to be idle. */
const MAX_LATER_ROUNDS = 4;
const MAX_ANNOUNCE_RETRY_MS = 60_000;
/** A connection without a stream at two checks this far apart, and not a membership link, is closed. */
const IDLE_CONNECTION_MS = 20_000;

interface Services extends Record<string, unknown> {
  identify: Identify;
  ping: Ping;
  dht: KadDHT;
  mdns?: PeerDiscovery;
}

export interface P2PStartOptions extends P2POptions {
  logger: Logger;
  blobs: LocalBlobs;
  /** Piece tables and bitfields served on the pieces protocol; absent: every request is NOT_FOUND. */
  pieces?: LocalPieces;
  /** Requests to fetch a blob from the origin; absent: every request is refused. */
  fetches?: LocalFetches;
  /** DNS lookup used for bootstrap names (tests inject one). */
  lookup?: Lookup;
  /** How long `provide` waits for the announcement to reach DHT peers (default 10 s). */
  provideTimeoutMs?: number;
  /** How long `provide(d, { later: true })` waits before it announces (default 2 min, plus up to as much again). */
  announceLaterMs?: number;
  /**
   * Whether this agent is downloading now. An announcement put off for later waits until it is
   * not, for at most MAX_LATER_ROUNDS delays: at 64 agents a rollout outlasted the delay, and
   * every agent's announcement of every blob (a DHT walk and a message to each closest peer)
   * landed in the middle of it, where the zone's fetchers' announcements suffice.
   */
  busy?(): boolean;
  /** A prom-client registry for libp2p's own metrics (connections, streams, DHT, …). */
  metricsRegistry?: Registry;
  /** Membership timings (tests shorten them). */
  membership?: Pick<MembershipOptions, 'suspicionMs' | 'linkTimeoutMs' | 'pingIntervalMs' | 'targetLinks' | 'maxLinks' | 'syncIntervalMs'>;
  /** Called when the live membership changes. */
  onMembersChanged?(): void;
  /**
   * Speak only the one-question-per-stream protocols (pieces, blob ranges), neither answering
   * nor asking on the swarm wire: an agent of the previous release, for mixed-version tests.
   */
  legacyWire?: boolean;
}

export interface PeerSummary {
  id: string;
  zone?: string;
  rttMs?: number;
}

export class P2PNode implements BenchDialer {
  readonly peerId: string;
  private readonly log: Logger;
  private readonly protocols: ProtocolIds;
  private readonly pieceProtocol: string;
  private readonly zones = new Map<string, string>();
  private readonly rtts = new Map<string, number>();
  /** Digests provided locally; those not yet announced to any DHT peer wait in `unannounced`. */
  private readonly provided = new Set<string>();
  private readonly unannounced = new Set<string>();
  /** Digests whose provider record reached a DHT peer (the DHT re-provides them from then on). */
  private readonly announced = new Set<string>();
  /** Announcements sent straight to the closest peers, the routing table holding every member. */
  private directAnnouncements = 0;
  private walkedAnnouncements = 0;
  private walklessLookups = 0;
  private walkedLookups = 0;
  /** Announcements in flight, so that providing a digest twice at once announces it once. */
  private readonly announcing = new Map<string, Promise<void>>();
  private announceTimer: NodeJS.Timeout | undefined;
  private retryDelay = ANNOUNCE_DEBOUNCE_MS;
  private stopping = false;
  private reaper: NodeJS.Timeout | undefined;
  private readonly provideTimeoutMs: number;
  private readonly announceLaterMs: number;
  private readonly busy: (() => boolean) | undefined;
  /** Announcements put off by `provide(d, { later: true })`. */
  private readonly deferred = new Map<string, NodeJS.Timeout>();
  /** Dials openStream attempted, by protocol (diagnostics). */
  private readonly dials = new Map<string, number>();
  private readonly protocolPrefix: string;
  private readonly legacyWire: boolean;
  /** Swarm sessions this agent opened, one per peer and blob. */
  private readonly sessions: SwarmSessions;
  /**
   * Peers found not to speak the swarm wire (an older release), until when: asked one question
   * per stream meanwhile. The entry expires because a rolling upgrade brings the peer's new
   * release back under the same id.
   */
  private readonly legacyPeers = new Map<string, number>();

  private constructor(
    /** The libp2p node, for tests and diagnostics; the rest of Shoal uses the methods. */
    readonly libp2p: Libp2p<Services>,
    private readonly bootstrapper: Bootstrapper,
    private readonly blobServer: BlobServer,
    /** Who is in the fleet: the election and on-demand dials go by it. */
    readonly membership: Membership,
    private readonly wire: MemberWire,
    private readonly budget: ConnectionBudget,
    private readonly streams: StreamCounts,
    private readonly trades: TradeCounts,
    opts: P2PStartOptions,
    log: Logger,
  ) {
    this.peerId = libp2p.peerId.toString();
    this.log = log;
    this.protocols = protocolIds(opts.protocolPrefix ?? DEFAULT_PROTOCOL_PREFIX);
    this.pieceProtocol = pieceProtocolId(opts.protocolPrefix ?? DEFAULT_PROTOCOL_PREFIX);
    this.protocolPrefix = opts.protocolPrefix ?? DEFAULT_PROTOCOL_PREFIX;
    this.provideTimeoutMs = opts.provideTimeoutMs ?? DEFAULT_PROVIDE_TIMEOUT_MS;
    this.announceLaterMs = opts.announceLaterMs ?? DEFAULT_ANNOUNCE_LATER_MS;
    this.busy = opts.busy;
    this.legacyWire = opts.legacyWire === true;
    const swarmProtocol = swarmProtocolId(this.protocolPrefix);
    this.sessions = new SwarmSessions({ open: (peer, signal) => this.openStream(peer, swarmProtocol, signal), trades, logger: log });
  }

  static async start(opts: P2PStartOptions): Promise<P2PNode> {
    const log = opts.logger.child({ mod: 'p2p' });
    const protocols = protocolIds(opts.protocolPrefix ?? DEFAULT_PROTOCOL_PREFIX);
    const entries = opts.bootstrap.map(parseBootstrapEntry); // fail fast on a bad entry
    const psk = opts.pskFile === undefined ? undefined : await readSwarmKey(opts.pskFile);
    const privateKey = await loadOrCreatePrivateKey(opts.keyFile);
    const zone = opts.zone === '' ? DEFAULT_ZONE : opts.zone;

    const services: ServiceFactoryMap<Services> = {
      identify: identify(),
      // The DHT pings every new contact while we measure its RTT and the connection monitor
      // pings too: the stock limit of one outbound ping stream per connection makes those
      // collide and the DHT then silently leaves the peer out of its routing table.
      ping: ping({ maxOutboundStreams: 8, maxInboundStreams: 8 }),
      dht: kadDHT({
        protocol: protocols.dht,
        clientMode: false,
        peerInfoMapper: passthroughMapper,
        kBucketSize: DHT_K,
        allowQueryWithZeroPeers: true,
        initialQuerySelfInterval: 200,
        // It pings every new contact (and old ones when a bucket is full), each a dial to a
        // peer not connected: one at a time, so a seed that hears of a whole fleet at once
        // does not spend its connection budget and CPU on them.
        pingNewContactConcurrency: 1,
        pingOldContactConcurrency: 1,
        reprovide: {
          validity: PROVIDER_VALIDITY_MS,
          threshold: PROVIDER_VALIDITY_MS / 2,
          interval: 10 * 60_000,
        },
      }),
    };
    // Our own service name, so Shoal agents only discover each other, not every libp2p app on the LAN.
    if (opts.mdns) services.mdns = mdns({ serviceTag: mdnsServiceTag(opts.protocolPrefix ?? DEFAULT_PROTOCOL_PREFIX) });

    // The budget needs the node and the node needs the gate: bound late.
    let node: Libp2p<Services> | undefined;
    let linked: (peer: string) => boolean = () => false;
    const maxConnections = opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    const budget = new ConnectionBudget({
      max: maxConnections,
      connections: () =>
        (node?.getConnections() ?? []).map((c) => ({
          id: c.id,
          peer: c.remotePeer.toString(),
          streams: workStreams(c.streams.map((st) => st.protocol), protocols.dht),
          openedAt: c.timeline.open,
          // An eviction must not wait on the streams it ends (a DHT query, a ping): the joiner
          // waiting for this place times out meanwhile. Half a second of grace, then abort.
          close: () => c.close({ signal: AbortSignal.timeout(500) }).catch((err: Error) => c.abort(err)),
        })),
      keep: (peer) => linked(peer),
      // The gate is asked from inside libp2p's dial job, so the job is queued while its dial lives.
      dialing: (key) =>
        node === undefined ||
        node
          .getDialQueue()
          .some((d) => (key.startsWith('addr:') ? d.multiaddrs.some((ma) => ma.toString() === key.slice(5)) : d.peerId?.toString() === key)),
      now: () => Date.now(),
      // libp2p gives a dial (and an inbound upgrade) 10 s; the place is held a little longer.
      reserveMs: 12_000,
      inboundReserve: inboundReserve(maxConnections),
    });

    const libp2p = await createLibp2p<Services>({
      privateKey,
      ...(opts.metricsRegistry && {
        metrics: prometheusMetrics({ registry: opts.metricsRegistry, collectDefaultMetrics: false, preserveExistingMetrics: true }),
      }),
      nodeInfo: { name: 'shoal', userAgent: agentVersion(zone) },
      addresses: { listen: opts.listen },
      transports: [batchedTcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [
        yamux({
          maxInboundStreams: 1024,
          maxOutboundStreams: 1024,
          streamOptions: {
            maxStreamWindowSize: STREAM_WINDOW,
            maxReadBufferLength: 2 * STREAM_WINDOW,
          },
        }),
      ],
      ...(psk === undefined ? {} : { connectionProtector: preSharedKey({ psk }) }),
      connectionManager: {
        // Every agent of a cluster can sit behind one IP in tests and on some networks.
        inboundConnectionThreshold: 100,
        maxIncomingPendingConnections: 64,
        dialTimeout: 10_000,
        // The budget's gate enforces maxConnections (making room by closing idle connections);
        // libp2p's own check refuses inbound at its limit before the gate is asked, so it sits above.
        maxConnections: 2 * maxConnections,
      },
      // Off: it pings every connection every 10 s, a stream (and a peer-store write) each time.
      // Membership links detect a dead peer themselves; other connections are dialled on demand.
      connectionMonitor: { enabled: false },
      connectionGater: {
        denyInboundConnection: async (maConn) => {
          const remote = maConn.remoteAddr.toString();
          if (!(await budget.admitInbound(remote))) {
            log.debug({ remote, ...budget.usage(), held: budget.describe() }, 'p2p inbound connection refused: budget full');
            return true;
          }
          // Its place is given back when the socket closes, opened or not (see opened below).
          maConn.addEventListener('close', () => budget.handshakeEnded(remote), { once: true });
          return false;
        },
        denyDialPeer: async (peer) => !(await budget.admitOutbound(peer.toString())),
        // A bare address (a bootstrap entry without /p2p/<id>) has no peer to reserve for yet.
        denyDialMultiaddr: async (ma) => (peerIdOf(ma) === undefined ? !(await budget.admitOutbound(`addr:${ma.toString()}`)) : false),
      },
      services,
    });
    node = libp2p;
    libp2p.addEventListener('connection:open', (evt) => {
      const c = evt.detail;
      // The connection's address is the socket's, with the peer id the handshake learnt appended.
      budget.opened(c.remotePeer.toString(), c.direction === 'inbound', c.remoteAddr.toString().split('/p2p/')[0]);
    });

    const streams = new StreamCounts();
    const trades = new TradeCounts();
    const maxUploads = opts.maxUploads ?? DEFAULT_MAX_UPLOADS;
    const askers = new Askers();
    const blobServer = new BlobServer({ blobs: opts.blobs, maxUploads, logger: log });
    // Streams beyond maxUploads must still open so the peer gets BUSY instead of a reset.
    const streamLimit = Math.max(256, maxUploads * 4);
    await libp2p.handle(protocols.blob, streams.counted('blob', blobServer.handle), {
      maxInboundStreams: streamLimit,
      maxOutboundStreams: streamLimit,
    });
    // Piece info answers are small and quick: no upload limit, only libp2p's stream cap.
    const pieceServer = pieceInfoHandler({ ...(opts.pieces === undefined ? {} : { pieces: opts.pieces }), askers, logger: log });
    await libp2p.handle(pieceProtocolId(opts.protocolPrefix ?? DEFAULT_PROTOCOL_PREFIX), streams.counted('pieces', pieceServer), {
      maxInboundStreams: 256,
      maxOutboundStreams: 256,
    });
    await libp2p.handle(
      fetchProtocolId(opts.protocolPrefix ?? DEFAULT_PROTOCOL_PREFIX),
      streams.counted('fetch', fetchRequestHandler({ ...(opts.fetches === undefined ? {} : { fetches: opts.fetches }), logger: log })),
      { maxInboundStreams: 256, maxOutboundStreams: 256 },
    );
    if (opts.legacyWire !== true) {
      // One session per peer and blob; uploads beyond maxUploads wait their turn (bounded).
      const uploads = new UploadGate(maxUploads, maxUploads * 16);
      const handler = swarmWireHandler({ ...(opts.pieces === undefined ? {} : { pieces: opts.pieces }), blobs: opts.blobs, askers, uploads, trades, logger: log });
      await libp2p.handle(swarmProtocolId(opts.protocolPrefix ?? DEFAULT_PROTOCOL_PREFIX), streams.counted('swarm', handler), {
        maxInboundStreams: 256,
        maxOutboundStreams: 256,
      });
    }
    if (opts.benchProtocol === true) {
      await libp2p.handle(protocols.bench, benchHandler(log), { maxInboundStreams: 64, maxOutboundStreams: 64 });
    }

    const prefix = opts.protocolPrefix ?? DEFAULT_PROTOCOL_PREFIX;
    const wire = new MemberWire(libp2p, membersProtocolId(prefix), log);
    const membership = new Membership({
      self: { id: libp2p.peerId.toString(), zone, addrs: libp2p.getMultiaddrs().map((ma) => ma.toString()) },
      clock: realClock,
      transport: wire,
      // The wall clock: a restarted agent's news must outrank what the fleet remembers of its last run.
      incarnation: Date.now(),
      // Membership links take at most half the connection budget; the rest is for bytes.
      ...membershipLinks(maxConnections),
      ...opts.membership,
      onChange: () => opts.onMembersChanged?.(),
      onDebug: (msg, detail) => log.debug(detail, msg),
    });
    wire.attach(membership);
    linked = (peer) => membership.neighbours().includes(peer);
    await libp2p.handle(wire.protocol, streams.counted('members', wire.handle), { maxInboundStreams: 64, maxOutboundStreams: 64 });

    const bootstrapper = new Bootstrapper({
      entries,
      intervalMs: opts.bootstrapIntervalMs ?? DEFAULT_BOOTSTRAP_INTERVAL_MS,
      logger: log,
      ...(opts.lookup === undefined ? {} : { lookup: opts.lookup }),
      // A bootstrap address is only a way in: one full state exchange with whoever answers there
      // (tried on a few addresses of a long list), after which membership finds its own links.
      wanted: () => membership.needsBootstrap(),
      maxDialsPerRound: 3,
      dial: (addr: Multiaddr) => membership.join({ addrs: [addr.toString()] }),
      isConnected: (id) => membership.neighbours().includes(id),
      selfKeys: () => new Set(libp2p.getMultiaddrs().map(hostPortKey).filter((k): k is string => k !== undefined)),
      onPeer: () => {},
    });

    // A DHT node answers GET_PROVIDERS with addresses from its peer store, and libp2p writes the
    // node's own addresses there only after a 1 s debounce: until then a provider asked directly
    // would leave itself out of the answer.
    await libp2p.peerStore.merge(libp2p.peerId, { multiaddrs: libp2p.getMultiaddrs() });

    const p2p = new P2PNode(libp2p, bootstrapper, blobServer, membership, wire, budget, streams, trades, opts, log);
    p2p.watchPeers();
    if (opts.mdns) p2p.watchMdns();
    membership.start();
    bootstrapper.start();
    p2p.startReaper();
    log.info(
      { peerId: p2p.peerId, addrs: p2p.multiaddrs(), zone, psk: psk !== undefined, bootstrap: opts.bootstrap, mdns: opts.mdns, maxConnections },
      'p2p node started',
    );
    return p2p;
  }

  multiaddrs(): string[] {
    return this.libp2p.getMultiaddrs().map((ma) => ma.toString());
  }

  /**
   * Advertises that this node serves `digest`. The local provider record is written at once
   * (a peer that asks this node finds it immediately); the announcement to the DHT peers closest
   * to the key is awaited for at most `provideTimeoutMs`. A digest provided while no DHT peer
   * answered is announced again as soon as peers join. Never throws for network reasons.
   */
  async provide(digest: string, opts: { later?: boolean } = {}): Promise<void> {
    const cid = cidForDigest(digest);
    this.provided.add(digest);
    // A blob is provided when its download starts, at its first piece and at its commit: one
    // announcement (a DHT walk and a message to each of the closest peers) is enough.
    if (this.announced.has(digest)) return;
    if (opts.later === true) {
      this.announceLater(digest);
      return;
    }
    this.cancelLater(digest);
    let pending = this.announcing.get(digest);
    if (pending === undefined) {
      pending = this.announce(digest, cid).finally(() => this.announcing.delete(digest));
      this.announcing.set(digest, pending);
    }
    await pending;
  }

  private announceLater(digest: string, round = 1): void {
    if ((round === 1 && this.deferred.has(digest)) || this.announcing.has(digest) || this.stopping) return;
    // Jittered, so a zone that got a blob together does not announce it together.
    const timer = setTimeout(() => {
      this.deferred.delete(digest);
      if (!this.provided.has(digest)) return;
      if (round < MAX_LATER_ROUNDS && this.busy?.() === true) return this.announceLater(digest, round + 1);
      void this.provide(digest);
    }, this.announceLaterMs * (1 + Math.random()));
    timer.unref();
    this.deferred.set(digest, timer);
  }

  private cancelLater(digest: string): void {
    clearTimeout(this.deferred.get(digest));
    this.deferred.delete(digest);
  }

  /** Whether this node advertises `digest` now. */
  isProviding(digest: string): boolean {
    return this.provided.has(digest);
  }

  /** Stops advertising `digest` (evicted). Records already at peers expire within hours. */
  async unprovide(digest: string): Promise<void> {
    this.provided.delete(digest);
    this.cancelLater(digest);
    this.unannounced.delete(digest);
    this.announced.delete(digest);
    try {
      await this.libp2p.contentRouting.cancelReprovide(cidForDigest(digest));
    } catch (err) {
      this.log.debug({ digest, err: (err as Error).message }, 'p2p unprovide failed');
    }
  }

  /**
   * Peer ids (never this node's) that advertise `digest`, as soon as `max` are found or when
   * `timeoutMs` passes (then with what was found so far). Throws only if `signal` aborts.
   */
  async findProviders(digest: string, opts: { timeoutMs: number; max?: number; signal?: AbortSignal }): Promise<string[]> {
    const cid = cidForDigest(digest);
    const max = opts.max ?? 20;
    const found = new Set<string>();
    if (max <= 0) return [];
    const local = new AbortController();
    const timeout = AbortSignal.timeout(opts.timeoutMs);
    const signal = AbortSignal.any([local.signal, timeout, ...(opts.signal === undefined ? [] : [opts.signal])]);
    try {
      // Just connected: the DHT adds peers to its routing table a moment after identify. A query
      // now would ask nobody, so wait for the first one (bounded by the timeout). With no
      // connection at all there is nobody to wait for.
      if (this.dhtPeerCount() === 0 && this.libp2p.getConnections().length > 0) await this.waitForDhtPeer(signal);
      const { internals, members } = this.walkless();
      const known = internals === undefined ? undefined : await providersWithoutWalk(internals, cid, members, { k: DHT_K, ask: LOOKUP_ASK, signal, self: this.libp2p.peerId });
      if (known !== undefined) {
        opts.signal?.throwIfAborted();
        this.walklessLookups++;
        for (const peer of known) if (peer.toString() !== this.peerId && found.size < max) found.add(peer.toString());
      } else {
        this.walkedLookups++;
        for await (const peer of this.libp2p.contentRouting.findProviders(cid, { signal })) {
          const id = peer.id.toString();
          if (id === this.peerId) continue;
          found.add(id);
          if (found.size >= max) break;
        }
      }
    } catch (err) {
      opts.signal?.throwIfAborted();
      if (!timeout.aborted && !this.stopping) {
        this.log.debug({ digest, err: (err as Error).message }, 'p2p provider lookup failed');
      }
    } finally {
      local.abort();
    }
    return [...found];
  }

  /**
   * Opens `digest` at `peerId` from `offset` (to offset+length, or the end). Resolves undefined
   * when the peer does not hold it; throws PeerBusyError when the peer is at its upload limit,
   * BlobProtocolError on a bad answer, and libp2p's errors when the peer cannot be reached.
   * The body streams with backpressure; destroying it (or aborting `signal`) resets the stream.
   */
  async openBlob(
    peerId: string,
    digest: string,
    offset: number,
    opts: { length?: number; signal?: AbortSignal } = {},
  ): Promise<OpenedBlob | undefined> {
    if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`invalid offset ${offset}`);
    if (opts.length !== undefined && (!Number.isSafeInteger(opts.length) || opts.length < 0)) {
      throw new RangeError(`invalid length ${opts.length}`);
    }
    cidForDigest(digest); // validates the digest
    if (opts.length !== undefined && this.speaksSwarmWire(peerId)) {
      try {
        return await this.sessions.range(peerId, digest, offset, opts.length, {
          ...(opts.signal === undefined ? {} : { signal: opts.signal }),
          timeoutMs: RESPONSE_TIMEOUT_MS,
        });
      } catch (err) {
        if (!this.olderPeer(peerId, err)) throw err;
      }
    }
    const stream = await this.openStream(peerId, this.protocols.blob, opts.signal);
    const req = opts.length === undefined ? { digest, offset } : { digest, offset, length: opts.length };
    return requestBlob(stream, peerId, req, { ...(opts.signal === undefined ? {} : { signal: opts.signal }), headerTimeoutMs: RESPONSE_TIMEOUT_MS });
  }

  /**
   * `digest`'s piece table at `peerId` and the pieces it holds verified. Resolves undefined when
   * the peer holds none of it; throws BlobProtocolError on a bad answer (an invalid table
   * included) and libp2p's errors when the peer cannot be reached. The table is the peer's claim:
   * check pieces against it and the whole blob against its digest. With `wait`, the peer answers
   * once it holds more than `wait.known` pieces or after `wait.waitMs` (a long poll).
   */
  async pieceInfo(peerId: string, digest: string, opts: { signal?: AbortSignal; wait?: PieceWait } = {}): Promise<PieceAnswer> {
    cidForDigest(digest); // validates the digest
    if (this.speaksSwarmWire(peerId)) {
      try {
        return await this.sessions.info(peerId, digest, {
          ...(opts.signal === undefined ? {} : { signal: opts.signal }),
          ...(opts.wait === undefined ? {} : { wait: opts.wait }),
          timeoutMs: RESPONSE_TIMEOUT_MS,
        });
      } catch (err) {
        if (!this.olderPeer(peerId, err)) throw err;
      }
    }
    const stream = await this.openStream(peerId, this.pieceProtocol, opts.signal);
    return requestPieceInfo(stream, peerId, digest, {
      ...(opts.signal === undefined ? {} : { signal: opts.signal }),
      ...(opts.wait === undefined ? {} : { wait: opts.wait }),
      // A long poll may be held up to MAX_WAIT_MS before the answer starts.
      timeoutMs: RESPONSE_TIMEOUT_MS + (opts.wait === undefined ? 0 : MAX_WAIT_MS),
    });
  }

  private speaksSwarmWire(peerId: string): boolean {
    if (this.legacyWire) return false;
    const until = this.legacyPeers.get(peerId);
    if (until === undefined) return true;
    if (Date.now() < until) return false;
    this.legacyPeers.delete(peerId);
    return true;
  }

  /** Whether `err` says the peer does not speak the swarm wire; if so it is remembered. */
  private olderPeer(peerId: string, err: unknown): boolean {
    if ((err as { name?: unknown } | undefined)?.name !== 'UnsupportedProtocolError') return false;
    this.log.debug({ peer: peerId }, 'p2p peer does not speak the swarm wire: one question per stream');
    this.legacyPeers.delete(peerId);
    this.legacyPeers.set(peerId, Date.now() + LEGACY_PEER_MS);
    // Bounded: the oldest entry goes first (a Map iterates in insertion order).
    if (this.legacyPeers.size > MAX_LEGACY_PEERS) this.legacyPeers.delete(this.legacyPeers.keys().next().value!);
    return true;
  }

  /** Swarm sessions this agent opened since start, and how many are open. */
  swarmSessions(): { opened: number; open: number } {
    return { opened: this.sessions.opened, open: this.sessions.size };
  }

  /** Asks `peerId` to fetch a blob from the origin; true when it is fetching (or holds) it. */
  async requestFetch(peerId: string, request: FetchRequest, opts: { signal?: AbortSignal } = {}): Promise<boolean> {
    cidForDigest(request.digest); // validates the digest
    const stream = await this.openStream(peerId, fetchProtocolId(this.protocolPrefix), opts.signal);
    return requestFetch(stream, peerId, request, opts.signal);
  }

  /**
   * A new stream to `peerId` on an open connection, else through the dialer. Going through the
   * dialer for every piece request cost a peer-store read (a lock and a record decode) each
   * time, a measurable share of an agent's CPU in a rollout.
   */
  private async openStream(peerId: string, protocol: string, signal?: AbortSignal): Promise<Stream> {
    const id = peerIdFromString(peerId);
    const conn = this.libp2p.getConnections(id).find((c) => c.status === 'open');
    const options = signal === undefined ? {} : { signal };
    if (conn !== undefined) return conn.newStream(protocol, options);
    this.dials.set(protocol, (this.dials.get(protocol) ?? 0) + 1);
    // Not connected: dial on demand, at the addresses membership gossiped (the peer store may
    // never have heard of a member this agent was not connected to).
    const addrs = this.membership.table.get(peerId)?.addrs ?? [];
    if (addrs.length > 0) return this.libp2p.dialProtocol(addrs.map((a) => multiaddr(a)), protocol, options);
    return this.libp2p.dialProtocol(id, protocol, options);
  }

  /** This agent's membership links (peers it keeps a connection to). */
  neighbours(): string[] {
    return this.membership.neighbours();
  }

  /** Live members of the fleet (this agent excluded), with their zones. */
  members(): { id: string; zone: string }[] {
    return this.membership.members().map((m: Member) => ({ id: m.id, zone: m.zone }));
  }

  /** As membership has it (see Membership.liveness). */
  liveness(peerId: string): Liveness {
    return this.membership.liveness(peerId);
  }

  /** Whether membership holds `peerId` alive (or suspected but not yet dead). */
  isMember(peerId: string): boolean {
    return this.membership.isLive(peerId);
  }

  /** Why the last failed bootstrap dial failed, if one did (kept after a later success). */
  bootstrapError(): string | undefined {
    return this.bootstrapper.lastError;
  }

  /** What membership has cost this agent so far: frames and bytes, each way. */
  membershipTraffic(): { framesSent: number; framesReceived: number; bytesSent: number; bytesReceived: number } {
    const { framesSent, framesReceived } = this.membership.counters;
    return { framesSent, framesReceived, ...this.wire.traffic };
  }

  /** Diagnostics: what holds the connection budget now. */
  connectionUsage(): ReturnType<ConnectionBudget['usage']> {
    return this.budget.usage();
  }

  /** Streams answered since start, by protocol (Shoal's own; the DHT's are in libp2p's metrics). */
  streamsAnswered(): Record<string, number> {
    return this.streams.snapshot();
  }

  /** Piece ranges traded on the swarm wire with each peer since start, both ways. */
  rangesTraded(): Record<string, number> {
    return this.trades.snapshot();
  }

  /** Open connections now, the most seen at once, and the bound. */
  connectionStats(): { open: number; peak: number; max: number; opened: number } {
    return { open: this.libp2p.getConnections().length, peak: this.budget.peak, max: this.budget.max, opened: this.budget.openedCount };
  }

  /**
   * Diagnostics: dials this agent attempted on demand since start (no connection was open), by
   * cause: Shoal's protocols (by name) and membership; and `connected`, the connections it did
   * dial, whatever the cause (libp2p's own, the DHT's, included). Attempts joined to a dial in
   * flight, refused or timed out count too, so attempts may exceed connections.
   */
  dialsByCause(): Record<string, number> {
    const ours = Object.fromEntries([...this.dials].map(([protocol, n]) => [protocol.split('/').slice(-2, -1)[0] ?? protocol, n]));
    return { ...ours, members: this.wire.traffic.dials, connected: this.budget.dialledCount };
  }

  /** Idle connections (no stream, not a membership link) are closed after a while. */
  startReaper(): void {
    const tick = (): void => {
      if (this.stopping) return;
      void this.budget.reap().finally(() => {
        if (this.stopping) return;
        this.reaper = setTimeout(tick, IDLE_CONNECTION_MS);
        this.reaper.unref();
      });
    };
    this.reaper = setTimeout(tick, IDLE_CONNECTION_MS);
    this.reaper.unref();
  }

  /** Connected peers, with the zone they announced and the last measured round-trip time. */
  peers(): PeerSummary[] {
    const byPeer = new Map<string, PeerSummary>();
    for (const conn of this.libp2p.getConnections()) {
      if (conn.status !== 'open') continue;
      const id = conn.remotePeer.toString();
      const entry = byPeer.get(id) ?? { id };
      const zone = this.zones.get(id) ?? this.membership.table.get(id)?.zone;
      if (zone !== undefined) entry.zone = zone;
      const rtt = conn.rtt ?? this.rtts.get(id);
      if (rtt !== undefined && (entry.rttMs === undefined || rtt < entry.rttMs)) entry.rttMs = rtt;
      byPeer.set(id, entry);
    }
    return [...byPeer.values()];
  }

  /** Uploads being served right now. */
  activeUploads(): number {
    return this.blobServer.activeUploads;
  }

  /** Opens a stream on the bench protocol (for rawStreamThroughput). */
  async openBenchStream(peerId: string, signal?: AbortSignal): Promise<Stream> {
    return this.openStream(peerId, this.protocols.bench, signal);
  }

  /** Dials a peer by multiaddr (tests, `shoal status` tooling); returns its peer id. */
  async dial(addr: string | Multiaddr, signal?: AbortSignal): Promise<string> {
    const conn = await this.libp2p.dial(typeof addr === 'string' ? multiaddr(addr) : addr, signal === undefined ? {} : { signal });
    return conn.remotePeer.toString();
  }

  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const timer of this.deferred.values()) clearTimeout(timer);
    this.deferred.clear();
    clearTimeout(this.announceTimer);
    clearTimeout(this.reaper);
    // Goodbye first, so the fleet forgets this agent at once instead of suspecting it.
    await this.membership.leave();
    await new Promise((resolve) => setTimeout(resolve, 50));
    await this.bootstrapper.stop();
    this.sessions.stop();
    await this.libp2p.stop();
    this.log.info({ peerId: this.peerId }, 'p2p node stopped');
  }

  // -------------------------------------------------------------------------------------------

  /** DHT announcements made so far: straight to the closest peers, or after a FIND_NODE walk. */
  announcements(): { direct: number; walked: number } {
    return { direct: this.directAnnouncements, walked: this.walkedAnnouncements };
  }

  /** Provider lookups made so far: answered without a walk (see providersWithoutWalk), or walked. */
  lookups(): { walkless: number; walked: number } {
    return { walkless: this.walklessLookups, walked: this.walkedLookups };
  }

  /** What a walk-less announcement or lookup works from: the DHT's internals and the live members. */
  private walkless(): { internals: DhtInternals | undefined; members: string[] } {
    return { internals: dhtInternals(this.libp2p.services.dht), members: this.membership.members().map((m) => m.id) };
  }

  private dhtPeerCount(): number {
    const dht = this.libp2p.services.dht as KadDHT & { routingTable?: { size: number } };
    return dht.routingTable?.size ?? 0;
  }

  private waitForDhtPeer(signal: AbortSignal): Promise<void> {
    const table = (this.libp2p.services.dht as KadDHT & { routingTable?: EventTarget }).routingTable;
    if (table === undefined) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const done = (): void => {
        table.removeEventListener('peer:add', done);
        signal.removeEventListener('abort', aborted);
        resolve();
      };
      const aborted = (): void => {
        table.removeEventListener('peer:add', done);
        reject(signal.reason);
      };
      if (signal.aborted) return reject(signal.reason);
      table.addEventListener('peer:add', done);
      signal.addEventListener('abort', aborted, { once: true });
    });
  }

  /** Sends the provider record to the closest DHT peers, bounded by provideTimeoutMs. */
  private async announce(digest: string, cid = cidForDigest(digest), reschedule = true): Promise<void> {
    let reached = 0;
    try {
      const signal = AbortSignal.timeout(this.provideTimeoutMs);
      const { internals, members } = this.walkless();
      const closest = internals === undefined ? undefined : await closestWithoutWalk(internals, cid, members, DHT_K);
      if (internals !== undefined && closest !== undefined) {
        this.directAnnouncements++;
        const self = { id: this.libp2p.peerId, addrs: this.libp2p.getMultiaddrs() };
        reached = await sendProviderRecords(internals, cid, self, closest, signal);
      } else {
        this.walkedAnnouncements++;
        // The DHT service itself (not libp2p.contentRouting) so the peers reached can be counted.
        for await (const event of this.libp2p.services.dht.provide(cid, { signal })) {
          if (event.name === 'PEER_RESPONSE' && event.messageName === 'ADD_PROVIDER') reached++;
        }
      }
    } catch (err) {
      if (this.stopping) return;
      this.log.debug({ digest, reached, err: (err as Error).message }, 'p2p provide did not finish');
    }
    if (!this.provided.has(digest)) {
      // unprovide() ran meanwhile: the DHT's provide has just rewritten the local record.
      this.unannounced.delete(digest);
      await this.libp2p.contentRouting.cancelReprovide(cid).catch(() => {});
    } else if (reached > 0) {
      this.unannounced.delete(digest);
      this.announced.add(digest);
    } else {
      this.unannounced.add(digest);
      if (reschedule) this.scheduleAnnounce(this.retryDelay);
    }
  }

  /**
   * Re-announces `unannounced` digests after `delay`. Triggered when a peer joins the routing
   * table, and after a round that reached nobody (then with a doubling delay, so an isolated
   * node does not spin).
   */
  private scheduleAnnounce(delay = ANNOUNCE_DEBOUNCE_MS): void {
    if (this.unannounced.size === 0 || this.announceTimer !== undefined || this.stopping) return;
    this.announceTimer = setTimeout(() => {
      this.announceTimer = undefined;
      if (this.dhtPeerCount() === 0) return; // the next 'peer:add' schedules again
      const digests = [...this.unannounced].filter((d) => this.provided.has(d));
      this.unannounced.clear();
      void (async () => {
        const queue = [...digests];
        const worker = async (): Promise<void> => {
          for (let d = queue.shift(); d !== undefined && !this.stopping; d = queue.shift()) await this.announce(d, undefined, false);
        };
        await Promise.all(Array.from({ length: Math.min(8, queue.length) }, worker));
        if (this.unannounced.size > 0) {
          this.retryDelay = Math.min(this.retryDelay * 2, MAX_ANNOUNCE_RETRY_MS);
          this.scheduleAnnounce(this.retryDelay);
        } else {
          this.retryDelay = ANNOUNCE_DEBOUNCE_MS;
        }
      })();
    }, delay);
    this.announceTimer.unref();
  }

  private watchPeers(): void {
    // kad-dht tags its 20 closest peers keep-alive, and libp2p re-dials a keep-alive peer on
    // every disconnect. Shoal dials on demand and lets idle connections go (the reaper, the
    // budget's evictions): together they made a connection churn at rest, a new handshake every
    // few seconds per agent, that also crowded a seed's budget while a fleet was joining.
    // kad-dht 16 has no option for its closest-peer set, so the tags are taken off here.
    this.libp2p.addEventListener('peer:update', (evt) => {
      const { peer } = evt.detail;
      const keepAlive = [...peer.tags.keys()].filter((tag) => tag.startsWith(KEEP_ALIVE));
      if (keepAlive.length === 0) return;
      void this.libp2p.peerStore.merge(peer.id, { tags: Object.fromEntries(keepAlive.map((tag) => [tag, undefined])) }).catch(() => {});
    });
    this.libp2p.addEventListener('peer:identify', (evt) => {
      const { peerId, agentVersion: av, connection } = evt.detail;
      const id = peerId.toString();
      const zone = zoneFromAgentVersion(av);
      if (zone !== undefined) this.zones.set(id, zone);
      // First RTT sample now; the connection monitor refreshes conn.rtt every 10 s.
      if (connection.rtt === undefined) void this.measureRtt(peerId);
    });
    const table = (this.libp2p.services.dht as KadDHT & { routingTable?: EventTarget }).routingTable;
    table?.addEventListener('peer:add', () => this.scheduleAnnounce());
    this.libp2p.addEventListener('peer:disconnect', (evt) => {
      const id = evt.detail.toString();
      this.zones.delete(id);
      this.rtts.delete(id);
    });
  }

  private async measureRtt(peer: PeerId): Promise<void> {
    try {
      const rtt = await this.libp2p.services.ping.ping(peer, { signal: AbortSignal.timeout(5_000) });
      this.rtts.set(peer.toString(), rtt);
    } catch {
      // the monitor's pings will fill it in, or the peer is going away
    }
  }

  private watchMdns(): void {
    this.libp2p.services.mdns?.addEventListener('peer', (evt) => {
      const { id, multiaddrs } = evt.detail;
      // mDNS is a way in, like a bootstrap address: once joined, membership knows everyone.
      if (this.stopping || id.equals(this.libp2p.peerId) || this.membership.neighbours().length > 0 || multiaddrs.length === 0) return;
      const addrs = multiaddrs.map((ma) => (peerIdOf(ma) === undefined ? ma.encapsulate(`/p2p/${id.toString()}`) : ma).toString());
      this.membership
        .join({ id: id.toString(), addrs })
        .catch((err: Error) => this.log.debug({ peer: id.toString(), err: err.message }, 'p2p mdns join failed'));
    });
  }
}

/** "_shoal._udp.local" for the default prefix. */
export function mdnsServiceTag(prefix: string): string {
  const name = prefix.split('/').filter((p) => p !== '').join('-').replace(/[^a-zA-Z0-9-]/g, '') || 'shoal';
  return `_${name}._udp.local`;
}

/** Places of a connection budget kept for inbound connections (joiners, peers fetching): an eighth, 1 to 8. */
export function inboundReserve(maxConnections: number): number {
  return Math.max(1, Math.min(8, Math.floor(maxConnections / 8)));
}

/** Membership link counts for a connection budget: 6 to 10 links, fewer under a small budget. */
export function membershipLinks(maxConnections: number): { targetLinks: number; maxLinks: number } {
  const targetLinks = Math.max(2, Math.min(6, Math.floor(maxConnections / 3)));
  return { targetLinks, maxLinks: Math.max(targetLinks + 1, Math.min(10, Math.floor(maxConnections / 2))) };
}
