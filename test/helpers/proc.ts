import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { atExit } from './cleanup.js';

export interface RunResult {
  code: number;
  stdout: string;
  /** stdout as raw bytes (for digests of tool output) */
  stdoutBuf: Buffer;
  stderr: string;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Kill the command after this many ms (default 120 s) so a hung tool fails the test instead of the suite. */
  timeoutMs?: number;
}

/** Runs a command to completion and captures its output; never rejects on a non-zero exit. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    const unregister = atExit(() => child.kill('SIGKILL'), 0);
    child.once('exit', unregister);
    child.once('error', (e) => {
      clearTimeout(timer);
      unregister();
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const stdoutBuf = Buffer.concat(out);
      resolve({
        code: code ?? (signal ? 128 : 1),
        stdout: stdoutBuf.toString('utf8'),
        stdoutBuf,
        stderr: Buffer.concat(err).toString('utf8') + (signal ? `\n[killed by ${signal}]` : ''),
      });
    });
  });
}

/** Like run(), but throws with the tool's stderr when it exits non-zero. */
export async function runOk(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
  }
  return r;
}

export interface Daemon {
  child: ChildProcess;
  logFile: string;
  /** Resolves with the exit code (or null) once the process has exited. */
  exited: Promise<number | null>;
  /** SIGTERM, then SIGKILL after graceMs; resolves once the process is gone. */
  stop(graceMs?: number): Promise<void>;
  log(): Promise<string>;
}

/** Starts a long-running process whose stdout+stderr go to logFile (appended: restarts keep history). */
export function startDaemon(cmd: string, args: string[], logFile: string, env?: NodeJS.ProcessEnv): Daemon {
  const fd = openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(cmd, args, { stdio: ['ignore', fd, fd], env: env ?? process.env });
  } finally {
    closeSync(fd); // the child holds its own copy
  }
  // Killed at exit if still alive, so an aborted test run leaks no process.
  const unregister = atExit(() => child.kill('SIGKILL'), 0);
  const exited = new Promise<number | null>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
    child.once('exit', (code) => resolve(code));
    child.once('error', () => resolve(null));
  });
  void exited.then(unregister);
  return {
    child,
    logFile,
    exited,
    async stop(graceMs = 5_000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
    log: () => readFile(logFile, 'utf8').catch(() => ''),
  };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Polls check() until it returns true; fails early if the daemon exits, with its log, so a
 * bad config shows its real error instead of a timeout.
 */
export async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  opts: { timeoutMs?: number; daemon?: Daemon } = {},
): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  let exited = false;
  void opts.daemon?.exited.then(() => {
    exited = true;
  });
  for (let delay = 20; ; delay = Math.min(delay * 2, 250)) {
    if (await check().catch(() => false)) return;
    if (exited) {
      throw new Error(`${what}: process exited early; log:\n${(await opts.daemon?.log()) ?? ''}`);
    }
    if (Date.now() > deadline) {
      throw new Error(`${what}: not ready in time; log:\n${(await opts.daemon?.log()) ?? ''}`);
    }
    await sleep(delay);
  }
}
