import { pino } from 'pino';
import { Agent } from '../../src/agent.js';
import { parseConfig } from '../../src/config/load.js';
import { makeTempDir, removeTempDir } from './tmp.js';

export interface TestAgentOptions {
  /** registry host (as clients name it) → config entry (url, credentials…) */
  registries: Record<string, Record<string, unknown>>;
  default?: string;
  /** storage dir to reuse (restart tests); a fresh temp dir otherwise */
  dir?: string;
  maxSize?: string;
  upstreams?: Record<string, unknown>;
  p2p?: Record<string, unknown>;
  logLevel?: string;
  /** Where the agent's JSON log lines go (with logLevel); silent by default. */
  logStream?: NodeJS.WritableStream;
}

export interface TestAgent {
  agent: Agent;
  url: string;
  /** host:port, as used in image references through the agent */
  host: string;
  dir: string;
  stop(): Promise<void>;
  /** stop and remove the storage dir */
  close(): Promise<void>;
}

/** Starts a real agent in this process on a free loopback port, its config checked like the CLI's. */
export async function startAgent(opts: TestAgentOptions): Promise<TestAgent> {
  const dir = opts.dir ?? (await makeTempDir('shoal-agent-'));
  const config = parseConfig({
    registry: { listen: '127.0.0.1:0' },
    storage: { dir, maxSize: opts.maxSize ?? '10GiB' },
    upstreams: {
      default: opts.default ?? Object.keys(opts.registries)[0],
      retries: 1,
      ...opts.upstreams,
      registries: opts.registries,
    },
    // Loopback only, any free port: tests never listen on other interfaces.
    p2p: { listen: ['/ip4/127.0.0.1/tcp/0'], ...opts.p2p },
  });
  const level = opts.logLevel ?? process.env.SHOAL_TEST_LOG ?? 'silent';
  const logger = opts.logStream ? pino({ level }, opts.logStream) : pino({ level });
  const agent = await Agent.start(config, { logger });
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await agent.stop();
  };
  return {
    agent,
    url: agent.url,
    host: agent.url.replace(/^http:\/\//, ''),
    dir,
    stop,
    close: async () => {
      await stop();
      if (!opts.dir) await removeTempDir(dir);
    },
  };
}
