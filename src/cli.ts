#!/usr/bin/env node
import './polyfill.js';
import { parseArgs } from 'node:util';
import { Agent } from './agent.js';
import { ConfigError, loadConfig } from './config/load.js';
import { defaultMirror, writeContainerdHosts } from './config/containerd-hosts.js';
import { DEFAULT_LISTEN } from './config/schema.js';
import type { PreheatProgress } from './fetch/preheat.js';
import { formatBytes, ProgressBar } from './progress-bar.js';
import type { AgentStatus } from './http/status-routes.js';
import { formatStatus } from './status-text.js';
import { access } from 'node:fs/promises';

const USAGE = `usage: shoal <command> [options]

commands:
  agent [--config FILE]                       run the agent (default ./agent.config.json)
  containerd-config [--config FILE] --dir DIR [--mirror URL]
                                              write <DIR>/<registry>/hosts.toml for every configured registry
  pull REF [--platform OS/ARCH] [--agent URL] [--config FILE]
                                              ask a running agent to fetch an image ahead of a rollout
  status [--json] [--agent URL] [--config FILE]
                                              print a running agent's peers, transfers, cache and recent errors
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
    case 'pull':
      return runPull(rest);
    case 'status':
      return runStatus(rest);
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
  return parse(args, spec, false).values;
}

function parse<T extends Record<string, { type: 'string' | 'boolean'; default?: string }>>(
  args: string[],
  spec: T,
  allowPositionals: boolean,
) {
  try {
    return parseArgs({ args, options: spec, allowPositionals, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

/** The agent to talk to: --agent, else the config's registry.listen, else the default. */
async function agentUrl(agent: string | undefined, configFile: string): Promise<string> {
  if (agent) return agent.replace(/\/+$/, '');
  try {
    await access(configFile);
  } catch {
    return `http://${DEFAULT_LISTEN}`;
  }
  return defaultMirror((await loadConfig(configFile)).registry.listen);
}

async function runStatus(args: string[]): Promise<number> {
  const values = options(args, {
    json: { type: 'boolean' },
    agent: { type: 'string' },
    config: { type: 'string', default: './agent.config.json' },
  });
  const base = await agentUrl(values.agent as string | undefined, values.config as string);
  let status: AgentStatus;
  try {
    const res = await fetch(`${base}/status`);
    if (res.status !== 200) throw new Error(`answered ${res.status}`);
    status = (await res.json()) as AgentStatus;
  } catch (err) {
    process.stderr.write(`shoal: cannot read the agent's status at ${base}: ${(err as Error).message}\n`);
    return 1;
  }
  process.stdout.write(values.json ? `${JSON.stringify(status, null, 2)}\n` : formatStatus(status));
  return 0;
}

async function runPull(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    { platform: { type: 'string' }, agent: { type: 'string' }, config: { type: 'string', default: './agent.config.json' } },
    true,
  );
  if (positionals.length !== 1) throw new UsageError('pull needs exactly one image reference, e.g. shoal pull ghcr.io/org/app:v1');
  const base = await agentUrl(values.agent as string | undefined, values.config as string);
  const query = new URLSearchParams({ ref: positionals[0]! });
  if (values.platform) query.set('platform', values.platform as string);
  let res: Response;
  try {
    res = await fetch(`${base}/preheat?${query}`, { method: 'POST' });
  } catch (err) {
    process.stderr.write(`shoal: cannot reach the agent at ${base}: ${(err as Error).message}\n`);
    return 1;
  }
  if (res.status !== 200 || !res.body) {
    const body = (await res.json().catch(() => undefined)) as { errors?: { code: string; message: string }[] } | undefined;
    const error = body?.errors?.[0];
    process.stderr.write(`shoal: ${error ? `${error.code}: ${error.message}` : `agent answered ${res.status}`}\n`);
    return res.status >= 400 && res.status < 500 ? 2 : 1;
  }
  const bar = new ProgressBar(process.stderr);
  let buffered = '';
  let outcome: { status: string; code?: string; message?: string; blobs?: number; bytes?: number } | undefined;
  for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
    buffered += Buffer.from(chunk).toString('utf8');
    let newline: number;
    while ((newline = buffered.indexOf('\n')) >= 0) {
      const event = JSON.parse(buffered.slice(0, newline)) as NonNullable<typeof outcome> & PreheatProgress;
      buffered = buffered.slice(newline + 1);
      if (event.status === 'progress') bar.update(event);
      else outcome = event;
    }
  }
  bar.end();
  if (outcome?.status === 'done') {
    process.stdout.write(`pulled ${positionals[0]}: ${outcome.blobs} blobs, ${formatBytes(outcome.bytes ?? 0)}\n`);
    return 0;
  }
  process.stderr.write(`shoal: pull failed: ${outcome?.code ?? 'error'}: ${outcome?.message ?? 'the agent closed the connection'}\n`);
  return 1;
}

async function runAgent(args: string[]): Promise<number> {
  const values = options(args, { config: { type: 'string', default: './agent.config.json' } });
  const config = await loadConfig(values.config as string);
  const agent = await Agent.start(config);
  let stopping = false;
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      if (stopping) {
        // A second Ctrl-C means "now"; a repeated SIGTERM changes nothing (the kubelet's
        // SIGKILL ends the grace period).
        if (signal === 'SIGINT') process.exit(130);
        agent.logger.info({ signal }, 'already shutting down');
        return;
      }
      stopping = true;
      agent.logger.info({ signal }, 'shutting down');
      resolve();
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
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
