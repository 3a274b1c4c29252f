// The p2p layer's public surface: the rest of Shoal imports from here.
export { P2PNode, mdnsServiceTag, type P2PStartOptions, type PeerSummary } from './node.js';
export type { LocalBlobs, OpenedBlob } from './blob-protocol.js';
export {
  DEFAULT_BOOTSTRAP_INTERVAL_MS,
  DEFAULT_MAX_UPLOADS,
  DEFAULT_P2P_PORT,
  DEFAULT_PROTOCOL_PREFIX,
  DEFAULT_ZONE,
  protocolIds,
  type P2POptions,
} from './config.js';
export { cidForDigest } from './cid.js';
export { BlobProtocolError, NodeKeyError, PeerBusyError, SwarmKeyError } from './errors.js';
export { parseBootstrapEntry } from './bootstrap.js';
export { generateSwarmKey, readSwarmKey } from './psk.js';
export { rawStreamThroughput, type ThroughputResult } from './bench-protocol.js';
export { MemoryBlobs, patternFill } from './memory-blobs.js';
