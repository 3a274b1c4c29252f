import { lookup as dnsLookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import type { Logger } from 'pino';
import { DEFAULT_P2P_PORT } from './config.js';

/** One `p2p.bootstrap` entry, parsed. */
export type BootstrapEntry =
  | { kind: 'addr'; source: string; addr: Multiaddr }
  | { kind: 'dns'; source: string; host: string; port: number; family: 0 | 4 | 6; peerId?: string };

/** Resolves a name to every address it has (getaddrinfo: /etc/hosts and cluster DNS alike). */
export type Lookup = (host: string, family: 0 | 4 | 6) => Promise<string[]>;

export const systemLookup: Lookup = async (host, family) => {
  const found = await dnsLookup(host, { all: true, family, verbatim: true });
  return found.map((a) => a.address);
};

/**
 * Parses a bootstrap entry: a multiaddr ("/ip4/10.0.0.5/tcp/4001[/p2p/<id>]",
 * "/dns4/shoal.ns.svc.cluster.local/tcp/4001"), or "host[:port]" / "[v6][:port]" where host is
 * an IP or a DNS name (port DEFAULT_P2P_PORT, 30021, when omitted). Throws on anything else.
 */
export function parseBootstrapEntry(source: string): BootstrapEntry {
  const s = source.trim();
  if (s.startsWith('/')) {
    let ma: Multiaddr;
    try {
      ma = multiaddr(s);
    } catch (err) {
      throw new Error(`invalid p2p bootstrap multiaddr ${JSON.stringify(source)}: ${(err as Error).message}`);
    }
    const parts = ma.getComponents();
    const first = parts[0];
    const tcp = parts[1];
    const p2p = parts.find((c) => c.name === 'p2p');
    if (first === undefined || tcp?.name !== 'tcp' || tcp.value === undefined) {
      throw new Error(`p2p bootstrap multiaddr ${JSON.stringify(source)} must be /<ip4|ip6|dns4|dns6|dns>/<host>/tcp/<port>[/p2p/<id>]`);
    }
    if (first.name === 'ip4' || first.name === 'ip6') return { kind: 'addr', source, addr: ma };
    if (first.name === 'dns4' || first.name === 'dns6' || first.name === 'dns') {
      const family = first.name === 'dns4' ? 4 : first.name === 'dns6' ? 6 : 0;
      return withPeer({ kind: 'dns', source, host: first.value!, port: Number(tcp.value), family }, p2p?.value);
    }
    throw new Error(`p2p bootstrap multiaddr ${JSON.stringify(source)}: /${first.name} is not supported`);
  }

  let host: string;
  let portText: string | undefined;
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(s);
  if (bracketed !== null) {
    host = bracketed[1]!;
    portText = bracketed[2];
    if (isIP(host) !== 6) throw new Error(`invalid p2p bootstrap address ${JSON.stringify(source)}`);
  } else if (isIP(s) === 6) {
    host = s; // a bare IPv6 address has no port
  } else {
    const m = /^([^:\s/]+)(?::(\d+))?$/.exec(s);
    if (m === null) throw new Error(`invalid p2p bootstrap address ${JSON.stringify(source)}: expected host[:port] or a multiaddr`);
    host = m[1]!;
    portText = m[2];
  }
  const port = portText === undefined ? DEFAULT_P2P_PORT : Number(portText);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`invalid port in p2p bootstrap address ${JSON.stringify(source)}`);
  const ipVersion = isIP(host);
  if (ipVersion !== 0) return { kind: 'addr', source, addr: multiaddr(`/ip${ipVersion}/${host}/tcp/${port}`) };
  if (!/^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?$/i.test(host)) {
    throw new Error(`invalid host name in p2p bootstrap address ${JSON.stringify(source)}`);
  }
  return { kind: 'dns', source, host, port, family: 0 };
}

function withPeer(entry: Extract<BootstrapEntry, { kind: 'dns' }>, peerId: string | undefined): BootstrapEntry {
  return peerId === undefined ? entry : { ...entry, peerId };
}

/** Every dialable address of an entry now (a DNS entry: one per A/AAAA record). */
export async function resolveEntry(entry: BootstrapEntry, lookup: Lookup = systemLookup): Promise<Multiaddr[]> {
  if (entry.kind === 'addr') return [entry.addr];
  const ips = await lookup(entry.host, entry.family);
  const suffix = entry.peerId === undefined ? '' : `/p2p/${entry.peerId}`;
  return [...new Set(ips)].map((ip) => multiaddr(`/ip${isIP(ip) === 6 ? 6 : 4}/${ip}/tcp/${entry.port}${suffix}`));
}

/** "ip:port" of a /ip4|ip6/…/tcp/… multiaddr, for comparing addresses whatever else they carry. */
export function hostPortKey(ma: Multiaddr): string | undefined {
  const [ip, tcp] = ma.getComponents();
  if (ip === undefined || tcp?.name !== 'tcp' || (ip.name !== 'ip4' && ip.name !== 'ip6')) return undefined;
  return `${ip.value}:${tcp.value}`;
}

export function peerIdOf(ma: Multiaddr): string | undefined {
  return ma.getComponents().find((c) => c.name === 'p2p')?.value;
}

export interface BootstrapperOptions {
  entries: BootstrapEntry[];
  intervalMs: number;
  logger: Logger;
  lookup?: Lookup;
  /** Dials an address (with or without /p2p/<id>) and returns the peer id learnt. */
  dial(addr: Multiaddr): Promise<string>;
  /** Whether a connection to this peer is open. */
  isConnected(peerId: string): boolean;
  /** "ip:port" keys of this node's own addresses, so a name that includes us is not dialled. */
  selfKeys(): Set<string>;
  /** Called with every peer learnt from a bootstrap address (the node keeps it connected). */
  onPeer(peerId: string, addr: Multiaddr): void;
  /** Dials in flight at once. */
  concurrency?: number;
  /** Whether a round is needed now (default: always); while not, rounds are skipped. */
  wanted?(): boolean;
  /** Addresses dialled per round at most, picked at random (default: all). */
  maxDialsPerRound?: number;
}

/**
 * While a round is wanted (not in the fleet yet), rounds repeat after 1 s, doubling up to 4 s:
 * a seed that is busy at the moment a whole fleet starts is asked again soon, and an agent
 * outside costs a few dials every 4 s.
 */
const FIRST_RETRY_MS = 1_000;
const MAX_RETRY_MS = 4_000;
/** Consecutive failed rounds before the agent warns that it is not getting in. */
const WARN_AFTER_ROUNDS = 3;

/**
 * Dials the bootstrap addresses now and every `intervalMs`: names are re-resolved each round so
 * agents that joined a headless Service since are found, and an address whose peer is no longer
 * connected is dialled again. Addresses without /p2p/<id> are dialled bare; the id is learnt
 * from the handshake and remembered so a connected peer is not dialled twice.
 */
export class Bootstrapper {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private retry = FIRST_RETRY_MS / 2;
  /** "ip:port" → the peer id last seen there. */
  private readonly known = new Map<string, string>();
  private failedRounds = 0;
  /** Why the last failed dial of a bootstrap address failed, for diagnostics. */
  lastError: string | undefined;

  constructor(private readonly opts: BootstrapperOptions) {}

  start(): void {
    if (this.opts.entries.length === 0) return;
    const tick = (): void => {
      if (this.stopped) return;
      this.running = this.round().finally(() => {
        this.running = undefined;
        if (!this.stopped) {
          // Not in yet (every address refused, or the seed was busy): try again soon.
          const wanted = this.opts.wanted?.() ?? false;
          this.retry = wanted ? Math.min(this.retry * 2, MAX_RETRY_MS, this.opts.intervalMs) : FIRST_RETRY_MS / 2;
          this.timer = setTimeout(tick, wanted ? this.retry : this.opts.intervalMs);
          this.timer.unref();
        }
      });
    };
    tick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  /** One round: resolve every entry, dial each address not already connected. */
  async round(): Promise<void> {
    if (this.opts.wanted?.() === false) return;
    const lookup = this.opts.lookup ?? systemLookup;
    const targets: Multiaddr[] = [];
    await Promise.all(
      this.opts.entries.map(async (entry) => {
        try {
          targets.push(...(await resolveEntry(entry, lookup)));
        } catch (err) {
          this.opts.logger.warn({ bootstrap: entry.source, err: (err as Error).message }, 'p2p bootstrap name did not resolve');
        }
      }),
    );
    const self = this.opts.selfKeys();
    const todo = targets.filter((addr) => {
      const key = hostPortKey(addr);
      if (key !== undefined && self.has(key)) return false;
      const id = peerIdOf(addr) ?? (key === undefined ? undefined : this.known.get(key));
      return id === undefined || !this.opts.isConnected(id);
    });
    const max = this.opts.maxDialsPerRound ?? todo.length;
    const queue = max >= todo.length ? [...todo] : shuffle(todo).slice(0, max);
    let answered = 0;
    const worker = async (): Promise<void> => {
      for (let addr = queue.shift(); addr !== undefined && !this.stopped; addr = queue.shift()) {
        if (await this.dialOne(addr)) answered++;
      }
    };
    const dialled = queue.length;
    await Promise.all(Array.from({ length: Math.min(this.opts.concurrency ?? 8, queue.length) }, worker));
    this.failedRounds = dialled > 0 && answered === 0 ? this.failedRounds + 1 : 0;
    if (this.failedRounds === WARN_AFTER_ROUNDS && !this.stopped) {
      this.opts.logger.warn({ bootstrap: this.opts.entries.map((e) => e.source), rounds: this.failedRounds, err: this.lastError }, 'p2p bootstrap: no address answered yet; still trying');
    }
  }

  private async dialOne(addr: Multiaddr): Promise<boolean> {
    const key = hostPortKey(addr);
    try {
      const id = await this.opts.dial(addr);
      if (key !== undefined) this.known.set(key, id);
      this.opts.onPeer(id, addr);
      return true;
    } catch (err) {
      // A peer behind a remembered address may have been replaced: forget it, dial bare next time.
      if (key !== undefined) this.known.delete(key);
      this.lastError = `${addr.toString()}: ${(err as Error).message}`;
      if (!this.stopped) {
        this.opts.logger.debug({ addr: addr.toString(), err: (err as Error).message }, 'p2p bootstrap dial failed');
      }
      return false;
    }
  }
}

function shuffle<T>(items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}
