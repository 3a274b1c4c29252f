#!/usr/bin/env node
import './polyfill.js';
import { parseArgs } from 'node:util';
import { Agent } from './agent.js';
import { ConfigError, loadConfig } from './config/load.js';
import { writeContainerdHosts } from './config/containerd-hosts.js';

const USAGE = `usage: shoal <command> [options]

commands:
  agent [--config FILE]                       run the agent (default ./agent.config.json)
  containerd-config [--config FILE] --dir DIR [--mirror URL]
                                              write <DIR>/<registry>/hosts.toml for every configured registry
`;

/** Exit statuses: 2 for a bad command line or config, 1 for a failure at run time. */
class UsageError extends Error {}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'agent':
      return runAgent(rest);
    case 'containerd-config':
      return runContainerdConfig(rest);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}`);
  }
}

function options<T extends Record<string, { type: 'string' | 'boolean'; default?: string }>>(args: string[], spec: T) {
  try {
    return parseArgs({ args, options: spec, allowPositionals: false, strict: true }).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

async function runAgent(args: string[]): Promise<number> {
  const values = options(args, { config: { type: 'string', default: './agent.config.json' } });
  const config = await loadConfig(values.config as string);
  const agent = await Agent.start(config);
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      agent.logger.info({ signal }, 'shutting down');
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  await agent.stop();
  return 0;
}

async function runContainerdConfig(args: string[]): Promise<number> {
  const values = options(args, {
    config: { type: 'string', default: './agent.config.json' },
    dir: { type: 'string' },
    mirror: { type: 'string' },
  });
  if (!values.dir) throw new UsageError('containerd-config needs --dir (e.g. /etc/containerd/certs.d)');
  const config = await loadConfig(values.config as string);
  const result = await writeContainerdHosts({
    config,
    dir: values.dir as string,
    ...(values.mirror !== undefined && { mirror: values.mirror as string }),
  });
  for (const file of result.written) process.stdout.write(`wrote ${file}\n`);
  for (const file of result.unchanged) process.stdout.write(`unchanged ${file}\n`);
  for (const file of result.backups) process.stdout.write(`backup ${file}\n`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof ConfigError || err instanceof UsageError) {
      process.stderr.write(`shoal: ${err.message}\n`);
      if (err instanceof UsageError) process.stderr.write(USAGE);
      process.exitCode = 2;
      return;
    }
    process.stderr.write(`shoal: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
