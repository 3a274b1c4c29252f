import { Membership, type Clock, type Frame, type Link, type MembershipOptions, type Timer } from '../../src/p2p/membership/membership.js';

/** Virtual time: timers run in order when the test advances the clock. */
export class VirtualClock implements Clock {
  private t = 0;
  private seq = 0;
  private readonly timers = new Map<number, { at: number; fn: () => void }>();

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): Timer {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(timer: Timer): void {
    this.timers.delete(timer as number);
  }

  /** Runs every timer due within `ms`, letting promises settle between them. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      await settle();
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of this.timers) if (entry[1].at <= end && (next === undefined || entry[1].at < next[1].at || (entry[1].at === next[1].at && entry[0] < next[0]))) next = entry;
      if (next === undefined) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
    }
    this.t = end;
    await settle();
  }
}

async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

/** A modelled network of Membership instances: frames arrive after `latencyMs`. */
export class MemberNet {
  readonly clock = new VirtualClock();
  readonly nodes = new Map<string, { membership: Membership; zone: string; up: boolean; silent: boolean; frozenUntil: number }>();
  private readonly links = new Set<MemLink>();
  private seed = 1;

  constructor(
    private readonly latencyMs = 1,
    private readonly options: Partial<MembershipOptions> = {},
  ) {}

  /** Deterministic randomness per run. */
  random = (): number => {
    this.seed = (this.seed * 1103515245 + 12345) % 2 ** 31;
    return this.seed / 2 ** 31;
  };

  add(id: string, zone: string, incarnation = 1): Membership {
    // Each agent's timers go through its own view of the clock, so one can be starved of CPU.
    const clock: Clock = {
      now: () => this.clock.now(),
      setTimeout: (fn, ms) => this.clock.setTimeout(() => this.whenAwake(id, fn, 0), ms),
      clearTimeout: (t) => this.clock.clearTimeout(t),
    };
    const membership = new Membership({
      self: { id, zone, addrs: [`/mem/${id}`] },
      clock,
      incarnation,
      random: this.random,
      transport: { dial: (target) => this.dial(id, target) },
      ...this.options,
    });
    this.nodes.set(id, { membership, zone, up: true, silent: false, frozenUntil: 0 });
    membership.start();
    return membership;
  }

  get(id: string): Membership {
    return this.nodes.get(id)!.membership;
  }

  /** The process dies: its links close at the far end (a reset), nothing more is sent. */
  kill(id: string): void {
    const node = this.nodes.get(id)!;
    node.up = false;
    node.membership.stop();
    for (const link of [...this.links]) if (link.from === id || link.peer === id) this.cut(link);
  }

  /** Every link of the agent breaks (its connections were closed), the process lives on. */
  isolate(id: string): void {
    for (const link of [...this.links]) if (link.from === id) this.cut(link);
  }

  /** The process hangs: links stay open but carry nothing either way. */
  hang(id: string): void {
    this.nodes.get(id)!.silent = true;
  }

  /**
   * The process gets no CPU for `ms` (a loaded machine): its timers and the frames that reach it
   * wait, and when it runs again its timers fire before it reads what arrived, as Node's event
   * loop runs expired timers before polling sockets.
   */
  starve(id: string, ms: number): void {
    this.nodes.get(id)!.frozenUntil = this.clock.now() + ms;
  }

  private whenAwake(id: string, fn: () => void, after: number): void {
    const until = this.nodes.get(id)?.frozenUntil ?? 0;
    if (until > this.clock.now()) this.clock.setTimeout(fn, until - this.clock.now() + after);
    else fn();
  }

  linksOf(id: string): number {
    return this.get(id).neighbours().length;
  }

  private async dial(from: string, target: { id?: string; addrs: string[] }): Promise<Link> {
    await new Promise<void>((resolve) => this.clock.setTimeout(resolve, this.latencyMs));
    const id = target.id ?? target.addrs[0]?.replace('/mem/', '');
    const remote = id === undefined ? undefined : this.nodes.get(id);
    if (remote === undefined || !remote.up || remote.silent || !this.nodes.get(from)?.up) throw new Error(`cannot reach ${id}`);
    const near = new MemLink(this, from, id!, true);
    const far = new MemLink(this, id!, from, false);
    near.other = far;
    far.other = near;
    this.links.add(near);
    this.links.add(far);
    remote.membership.opened(far);
    this.get(from).opened(near);
    return near;
  }

  deliver(link: MemLink, frame: Frame): void {
    const sender = this.nodes.get(link.from)!;
    if (!sender.up || sender.silent || link.cut) return;
    const receive = (): void => {
      const to = this.nodes.get(link.peer);
      if (!to?.up || to.silent || !this.links.has(link.other!)) return;
      to.membership.received(link.other!, JSON.parse(JSON.stringify(frame)) as Frame);
    };
    this.clock.setTimeout(() => this.whenAwake(link.peer, receive, 1), this.latencyMs);
  }

  /** Both ends learn the link ended, after what was sent before (a stream delivers in order). */
  cut(link: MemLink): void {
    if (link.cut) return;
    link.cut = link.other!.cut = true;
    this.clock.setTimeout(() => {
      for (const end of [link, link.other!]) {
        // A starved end reads what was sent before the close first, then the close.
        this.whenAwake(
          end.from,
          () => {
            this.links.delete(end);
            const node = this.nodes.get(end.from);
            if (node?.up) node.membership.closed(end);
          },
          1,
        );
      }
    }, this.latencyMs);
  }
}

export class MemLink implements Link {
  other: MemLink | undefined;
  cut = false;

  constructor(
    private readonly net: MemberNet,
    readonly from: string,
    readonly peer: string,
    readonly outbound: boolean,
  ) {}

  send(frame: Frame): void {
    this.net.deliver(this, frame);
  }

  close(): void {
    this.net.cut(this);
  }
}
