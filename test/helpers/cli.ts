import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { freePort } from './ports.js';
import { run, waitFor, type RunResult } from './proc.js';
import { makeTempDir, removeTempDir } from './tmp.js';

export const CLI = resolve('dist/cli.js');

/** Runs `shoal ARGS` (the built CLI) to completion. */
export function shoal(args: string[], timeoutMs = 60_000): Promise<RunResult> {
  return run(process.execPath, [CLI, ...args], { timeoutMs });
}

export interface AgentProcess {
  url: string;
  host: string;
  dir: string;
  configFile: string;
  pid: number;
  /** SIGTERM, and wait for exit; resolves with the exit code */
  stop(): Promise<number | null>;
  /** stop and remove the agent's dir */
  close(): Promise<void>;
  stderr(): string;
}

/**
 * Runs `shoal agent --config FILE` as a separate process, as a node would, on a free port. The
 * port is free when picked but may be taken before the agent binds it (another test's process
 * got it first): the agent then exits with EADDRINUSE, and a new port is tried.
 */
export async function startAgentProcess(config: Record<string, unknown>): Promise<AgentProcess> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startAgentProcessOnce(config);
    } catch (err) {
      if (attempt >= 3 || !String(err).includes('EADDRINUSE')) throw err;
    }
  }
}

async function startAgentProcessOnce(config: Record<string, unknown>): Promise<AgentProcess> {
  const dir = await makeTempDir('shoal-agentproc-');
  const port = await freePort();
  const full = {
    registry: { listen: `127.0.0.1:${port}` },
    storage: { dir: join(dir, 'store') },
    log: { level: 'warn' },
    p2p: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    ...config,
  };
  const configFile = join(dir, 'agent.config.json');
  await writeFile(configFile, JSON.stringify(full, null, 2));
  const nodeArgs = process.env.SHOAL_AGENT_NODE_ARGS?.split(' ').filter(Boolean) ?? [];
  const child = spawn(process.execPath, [...nodeArgs, CLI, 'agent', '--config', configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString('utf8')));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    return exited;
  };
  try {
    await waitFor('agent /readyz', async () => (await fetch(`${url}/readyz`).catch(() => undefined))?.status === 200, {
      timeoutMs: 30_000,
    });
  } catch (err) {
    await stop();
    await removeTempDir(dir);
    throw new Error(`agent did not become ready: ${String(err)}\n${stderr}`);
  }
  return {
    url,
    host: `127.0.0.1:${port}`,
    dir,
    configFile,
    pid: child.pid!,
    stop,
    close: async () => {
      await stop();
      await removeTempDir(dir);
    },
    stderr: () => stderr,
  };
}
