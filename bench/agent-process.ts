import { fork, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';

/** A bench agent in a child process (bench/agent-child.ts), driven over IPC. */
export class AgentProcess {
  private next = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  private constructor(private readonly child: ChildProcess) {
    child.on('message', (m: { id?: number; result?: unknown; error?: string }) => {
      if (m.id === undefined) return;
      const waiter = this.pending.get(m.id);
      this.pending.delete(m.id);
      if (m.error !== undefined) waiter?.reject(new Error(m.error));
      else waiter?.resolve(m.result);
    });
  }

  /**
   * `profile`: with BENCH_CPU_PROF set, whether this agent writes a CPU profile (default yes).
   * Profiling all 64 agents of a fleet starves membership on two cores; a few show the rest.
   * Sampled every 10 ms (BENCH_CPU_PROF_INTERVAL µs): the default 1 ms distorts a rollout.
   */
  static async start(config: Record<string, unknown>, extra: { hosts?: Record<string, string[]>; profile?: boolean } = {}): Promise<AgentProcess> {
    const { profile = true, ...childExtra } = extra;
    const prof = process.env.BENCH_CPU_PROF && profile ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`, `--cpu-prof-interval=${process.env.BENCH_CPU_PROF_INTERVAL ?? 10_000}`] : [];
    const child = fork(resolve('bench/agent-child.ts'), [JSON.stringify(config), JSON.stringify(childExtra)], {
      execArgv: ['--import', 'tsx', ...(process.env.BENCH_NODE_ARGS?.split(' ').filter(Boolean) ?? []), ...prof],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    await new Promise<void>((ok, fail) => {
      child.once('message', () => ok());
      child.once('exit', (code) => fail(new Error(`bench agent exited with ${code}`)));
    });
    const agent = new AgentProcess(child);
    child.once('exit', (code, signal) => {
      agent.exited = true;
      // An agent that dies mid-run is a finding, not noise: say so where the figures go.
      if (!agent.stopping) console.error(`bench agent ${child.pid} exited (code ${code}, signal ${signal}) before it was stopped`);
      for (const waiter of agent.pending.values()) waiter.reject(new Error(`bench agent ${child.pid} exited`));
      agent.pending.clear();
    });
    return agent;
  }

  private exited = false;
  private stopping = false;

  get pid(): number {
    return this.child.pid!;
  }

  call<T>(message: Record<string, unknown>): Promise<T> {
    const id = this.next++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.child.send({ ...message, id });
    });
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.exited) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    await this.call({ cmd: 'stop' }).catch(() => undefined);
    await exited;
  }
}
