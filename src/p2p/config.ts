/** Options of the libp2p node (the `p2p` section of the agent config, plus paths the agent derives). */
export interface P2POptions {
  /** Multiaddrs to listen on, e.g. ["/ip4/0.0.0.0/tcp/30021"]. */
  listen: string[];
  /**
   * Multiaddrs (with or without /p2p/<id>), "host:port" or "/dns4|dns6|dns/<name>/tcp/<port>" entries.
   * DNS names may resolve to many A/AAAA records (a headless Service): every address is dialled,
   * and names are re-resolved every `bootstrapIntervalMs`.
   */
  bootstrap: string[];
  /** ms between bootstrap re-resolutions and re-dials (default 30 s). */
  bootstrapIntervalMs?: number;
  /** Discover peers with mDNS on the local link (default false). */
  mdns: boolean;
  /** Swarm key file ("/key/swarm/psk/1.0.0/\n/base16/\n<64 hex>"): only peers with the same key connect. */
  pskFile?: string;
  /** Locality label announced to peers (default "default"). */
  zone: string;
  /** Where the node's private key persists (created with mode 0600 on first start). */
  keyFile: string;
  /** Prefix of Shoal's private protocols, DHT included (default '/shoal'). */
  protocolPrefix?: string;
  /** Concurrent blob uploads served; requests beyond it are answered BUSY (default 16). */
  maxUploads?: number;
  /** Open connections at most, inbound and outbound together (default 64). */
  maxConnections?: number;
  /** Serve `${prefix}/bench/1.0.0` (zero bytes on demand) for throughput comparisons (default false). */
  benchProtocol?: boolean;
}

export const DEFAULT_PROTOCOL_PREFIX = '/shoal';
export const DEFAULT_ZONE = 'default';
export const DEFAULT_MAX_UPLOADS = 16;
export const DEFAULT_BOOTSTRAP_INTERVAL_MS = 30_000;
export const DEFAULT_MAX_CONNECTIONS = 64;
/** The p2p port of the default `p2p.listen`, assumed for a bootstrap host given without one. */
export const DEFAULT_P2P_PORT = 30021;

export interface ProtocolIds {
  dht: string;
  blob: string;
  bench: string;
}

export function protocolIds(prefix = DEFAULT_PROTOCOL_PREFIX): ProtocolIds {
  const p = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
  if (!p.startsWith('/')) throw new Error(`p2p protocol prefix must start with "/": ${prefix}`);
  return {
    dht: `${p}/kad/1.0.0`,
    blob: `${p}/blob/1.0.0`,
    bench: `${p}/bench/1.0.0`,
  };
}
