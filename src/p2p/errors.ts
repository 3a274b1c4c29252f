/** The peer is serving its maximum number of uploads; try another peer or later. */
export class PeerBusyError extends Error {
  override readonly name = 'PeerBusyError';
  constructor(readonly peerId: string, readonly digest: string) {
    super(`peer ${peerId} is busy (too many uploads) for ${digest}`);
  }
}

/** The peer answered ERROR, broke the wire format, or ended the body early. */
export class BlobProtocolError extends Error {
  override readonly name = 'BlobProtocolError';
  constructor(message: string, readonly peerId?: string) {
    super(peerId === undefined ? message : `peer ${peerId}: ${message}`);
  }
}

/** A swarm key file could not be read or is not a valid v1 PSK. */
export class SwarmKeyError extends Error {
  override readonly name = 'SwarmKeyError';
  constructor(readonly file: string, reason: string) {
    super(`invalid p2p swarm key file ${file}: ${reason}`);
  }
}

/** The node key file exists but does not hold a private key. */
export class NodeKeyError extends Error {
  override readonly name = 'NodeKeyError';
  constructor(readonly file: string, reason: string) {
    super(`invalid p2p key file ${file}: ${reason}`);
  }
}
