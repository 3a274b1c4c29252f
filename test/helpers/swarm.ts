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

/** Starts agents that all bootstrap from the first one, and waits until each sees a peer. */
export async function startSwarm(count: number, opts: TestAgentOptions): Promise<TestAgent[]> {
  const first = await startAgent(opts);
  const rest = await Promise.all(
    Array.from({ length: count - 1 }, () =>
      startAgent({ ...opts, p2p: { ...opts.p2p, bootstrap: bootstrapOf(first) } }),
    ),
  );
  const all = [first, ...rest];
  await Promise.all(all.map((a) => waitForPeers(a, 1)));
  return all;
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

/**
 * Starts `count` agents that all know each other (each bootstraps from every earlier one, as
 * agents do from a headless Service listing them all), and waits until each sees every other
 * with its zone. `zoneOf(i)` names agent i's zone.
 */
export async function startMesh(
  count: number,
  opts: TestAgentOptions,
  zoneOf: (index: number) => string = () => 'default',
): Promise<TestAgent[]> {
  const agents: TestAgent[] = [];
  for (let i = 0; i < count; i++) {
    const bootstrap = agents.flatMap((a) => bootstrapOf(a));
    agents.push(await startAgent({ ...opts, p2p: { ...opts.p2p, zone: zoneOf(i), bootstrap } }));
  }
  await waitFor(
    'a full mesh with zones',
    async () => agents.every((a) => {
      const peers = a.agent.p2p!.peers();
      return peers.length >= count - 1 && peers.every((p) => p.zone !== undefined);
    }),
    { timeoutMs: 30_000 },
  );
  return agents;
}
