import type { Connection, Libp2p, Stream } from '@libp2p/interface';
import { multiaddr } from '@multiformats/multiaddr';
import { peerIdFromString } from '@libp2p/peer-id';
import type { Logger } from 'pino';
import { StreamReader } from '../stream-io.js';
import type { MemberState, MemberUpdate } from './member-table.js';
import type { Frame, Link, LinkTransport, Membership } from './membership.js';

/*
 * Membership links on libp2p: one long-lived stream per neighbour on `${prefix}/members/1.0.0`,
 * carrying frames of a 4-byte big-endian length and UTF-8 JSON. Frames are checked field by
 * field; a peer that sends a malformed one loses the link.
 */

/** A full state exchange at 10,000 members is ≈1.5 MB; anything far beyond is not a frame. */
const MAX_FRAME_BYTES = 16 * 1024 * 1024;
const DIAL_TIMEOUT_MS = 10_000;
const STATES = new Set<MemberState>(['alive', 'suspect', 'dead', 'left']);
const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

export function membersProtocolId(prefix: string): string {
  return `${prefix.endsWith('/') ? prefix.slice(0, -1) : prefix}/members/1.0.0`;
}

export function encodeFrame(frame: Frame): Uint8Array {
  const json = encoder.encode(JSON.stringify(frame));
  const out = new Uint8Array(4 + json.byteLength);
  new DataView(out.buffer).setUint32(0, json.byteLength);
  out.set(json, 4);
  return out;
}

/** A frame, or undefined when the bytes are not one. */
export function parseFrame(bytes: Uint8Array): Frame | undefined {
  let v: unknown;
  try {
    v = JSON.parse(decoder.decode(bytes));
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null) return undefined;
  const f = v as Record<string, unknown>;
  switch (f.t) {
    case 'hello': {
      const member = parseUpdate(f.member);
      return member === undefined || typeof f.join !== 'boolean' ? undefined : { t: 'hello', member, join: f.join };
    }
    case 'sync': {
      const members = parseUpdates(f.members);
      return members === undefined || typeof f.reply !== 'boolean' ? undefined : { t: 'sync', members, reply: f.reply };
    }
    case 'gossip': {
      const updates = parseUpdates(f.updates);
      return updates === undefined ? undefined : { t: 'gossip', updates };
    }
    case 'ping':
    case 'pong':
      return { t: f.t };
    case 'bye':
      return f.reason === 'trim' || f.reason === 'leave' ? { t: 'bye', reason: f.reason } : undefined;
    default:
      return undefined;
  }
}

function parseUpdates(v: unknown): MemberUpdate[] | undefined {
  if (!Array.isArray(v) || v.length > 1_000_000) return undefined;
  const out: MemberUpdate[] = [];
  for (const item of v) {
    const u = parseUpdate(item);
    if (u === undefined) return undefined;
    out.push(u);
  }
  return out;
}

function parseUpdate(v: unknown): MemberUpdate | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const u = v as Record<string, unknown>;
  const { id, zone, addrs, state, incarnation } = u;
  if (typeof id !== 'string' || id.length === 0 || id.length > 128) return undefined;
  if (typeof zone !== 'string' || zone.length > 63) return undefined;
  if (!Array.isArray(addrs) || addrs.length > 32 || !addrs.every((a) => typeof a === 'string' && a.length <= 512)) return undefined;
  if (typeof state !== 'string' || !STATES.has(state as MemberState)) return undefined;
  if (typeof incarnation !== 'number' || !Number.isSafeInteger(incarnation) || incarnation < 0) return undefined;
  return { id, zone, addrs: addrs as string[], state: state as MemberState, incarnation };
}

class WireLink implements Link {
  private closing = false;

  constructor(
    readonly peer: string,
    readonly outbound: boolean,
    private readonly stream: Stream,
    private readonly traffic: WireTraffic,
  ) {}

  send(frame: Frame): void {
    if (this.closing || this.stream.writeStatus !== 'writable') return;
    // Control frames are small and few; a peer that stops reading loses the link to its timeout.
    const bytes = encodeFrame(frame);
    this.traffic.bytesSent += bytes.length;
    this.stream.send(bytes);
  }

  close(): void {
    if (this.closing) return;
    this.closing = true;
    this.stream.close({ signal: AbortSignal.timeout(2_000) }).catch(() => this.stream.abort(new Error('membership link closed')));
  }
}

/** Membership's own bytes on the wire, length prefixes included (libp2p framing not). */
export interface WireTraffic {
  bytesSent: number;
  bytesReceived: number;
  /** Connections membership dialled (it had none to the member). */
  dials: number;
}

export class MemberWire implements LinkTransport {
  private membership: Membership | undefined;
  readonly traffic: WireTraffic = { bytesSent: 0, bytesReceived: 0, dials: 0 };

  constructor(
    private readonly libp2p: Libp2p,
    readonly protocol: string,
    private readonly log: Logger,
  ) {}

  attach(membership: Membership): void {
    this.membership = membership;
  }

  /** The inbound side: libp2p's handler for the protocol. */
  readonly handle = (stream: Stream, connection: Connection): void => {
    this.run(new WireLink(connection.remotePeer.toString(), false, stream, this.traffic), stream);
  };

  async dial(target: { id?: string; addrs: string[] }): Promise<Link> {
    const signal = AbortSignal.timeout(DIAL_TIMEOUT_MS);
    let conn: Connection | undefined;
    if (target.id !== undefined) conn = this.libp2p.getConnections(peerIdFromString(target.id)).find((c) => c.status === 'open');
    if (conn === undefined) {
      const addrs = target.addrs.map((a) => multiaddr(a));
      if (addrs.length === 0) throw new Error('member has no address');
      this.traffic.dials++;
      conn = await this.libp2p.dial(addrs.length === 1 ? addrs[0]! : addrs, { signal });
    }
    const stream = await conn.newStream(this.protocol, { signal });
    const link = new WireLink(conn.remotePeer.toString(), true, stream, this.traffic);
    this.run(link, stream);
    return link;
  }

  /** Registers the link, then delivers its frames until it ends. */
  private run(link: WireLink, stream: Stream): void {
    const membership = this.membership;
    if (membership === undefined) {
      stream.abort(new Error('membership not started'));
      return;
    }
    membership.opened(link);
    const reader = new StreamReader(stream, MAX_FRAME_BYTES + 4);
    void (async () => {
      try {
        for (;;) {
          if (await reader.ended()) break;
          const n = new DataView((await reader.readExactly(4)).slice().buffer).getUint32(0);
          if (n > MAX_FRAME_BYTES) throw new Error(`membership frame of ${n} bytes`);
          this.traffic.bytesReceived += 4 + n;
          const frame = parseFrame(await reader.readExactly(n));
          if (frame === undefined) throw new Error('malformed membership frame');
          membership.received(link, frame);
        }
      } catch (err) {
        this.log.debug({ peer: link.peer, err: (err as Error).message }, 'membership link failed');
        if (stream.status === 'open') stream.abort(err as Error);
      } finally {
        reader.dispose();
        link.close();
        membership.closed(link);
      }
    })();
  }
}
