import type { Connection, Stream } from '@libp2p/interface';

type Handler = (stream: Stream, connection: Connection) => void | Promise<void>;

/**
 * Streams this agent has answered, by protocol, since start. Every stream is inbound at exactly
 * one agent, so the fleet's sum is its whole control traffic: the figure the wire's design is
 * judged by (streams per agent per rollout), which no libp2p metric counts (its stream gauge
 * shows only the open ones).
 */
export class StreamCounts {
  private readonly counts = new Map<string, number>();

  /** `handler`, counting each stream it is given under `protocol`. */
  counted(protocol: string, handler: Handler): Handler {
    return (stream, connection) => {
      this.counts.set(protocol, (this.counts.get(protocol) ?? 0) + 1);
      return handler(stream, connection);
    };
  }

  snapshot(): Record<string, number> {
    return Object.fromEntries(this.counts);
  }
}
