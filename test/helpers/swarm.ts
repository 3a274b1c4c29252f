import { waitFor } from './proc.js';
import { startAgent, type TestAgent, type TestAgentOptions } from './agent.js';

/** Waits until the agent has at least `count` peers. */
export async function waitForPeers(agent: TestAgent, count: number, timeoutMs = 20_000): Promise<void> {
  await waitFor(`${count} peers`, async () => (agent.agent.p2p?.peers().length ?? 0) >= count, { timeoutMs });
}

/** The multiaddrs a peer dials to join through `agent`. */
export function bootstrapOf(agent: TestAgent): string[] {
  return agent.agent.p2p!.multiaddrs();
}

/** Starts agents that all bootstrap from the first one, and waits until their membership converged. */
export async function startSwarm(count: number, opts: TestAgentOptions): Promise<TestAgent[]> {
  return startFleet(count, opts);
}

/** A counter's value in an agent's /metrics text (summed over label sets matching `labels`). */
export async function metric(agent: TestAgent, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${agent.url}/metrics`)).text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^(\w+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const found = Object.fromEntries(
      (m[2] ?? '')
        .split(',')
        .filter(Boolean)
        .map((kv) => kv.split('=').map((s) => s.replace(/^"|"$/g, '')) as [string, string]),
    );
    if (Object.entries(labels).every(([k, v]) => found[k] === v)) total += Number(m[3]);
  }
  return total;
}

/** Whether every agent's membership lists every other agent (and no one else). */
export function converged(agents: TestAgent[]): boolean {
  const ids = new Set(agents.map((a) => a.agent.p2p!.peerId));
  return agents.every((a) => {
    const members = a.agent.p2p!.members();
    return members.length === ids.size - 1 && members.every((m) => ids.has(m.id));
  });
}

/**
 * Starts `count` agents, each given one bootstrap address (the first agent's), as a hand-written
 * config or an edge site has, and waits until their membership has converged (every agent knows
 * every other, with its zone) — not for connections, which stay bounded. `zoneOf(i)` names agent
 * i's zone.
 */
export async function startFleet(
  count: number,
  opts: TestAgentOptions,
  zoneOf: (index: number) => string = () => 'default',
): Promise<TestAgent[]> {
  const first = await startAgent({ ...opts, p2p: { ...opts.p2p, zone: zoneOf(0) } });
  const started = await Promise.allSettled(
    Array.from({ length: count - 1 }, (_, i) => startAgent({ ...opts, p2p: { ...opts.p2p, zone: zoneOf(i + 1), bootstrap: bootstrapOf(first) } })),
  );
  const agents = [first, ...started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))];
  try {
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason as Error;
    await waitFor('membership converged', async () => converged(agents), { timeoutMs: 30_000 });
  } catch (err) {
    const views = agents
      .map((a) => `${a.agent.p2p!.members().length}/${a.agent.p2p!.membership.neighbours().length}${a.agent.p2p!.members().length === 0 ? ` (${a.agent.p2p!.bootstrapError() ?? 'no bootstrap error'})` : ''}`)
      .join(' ');
    // A fleet that did not form is stopped here: the caller never got it, so it cannot.
    await Promise.all(agents.map((a) => a.close()));
    throw new Error(`${(err as Error).message}\nmembers/links per agent: ${views}`);
  }
  return agents;
}
