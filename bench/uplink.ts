import { run } from '../test/helpers/proc.js';

/**
 * A thin uplink made of real network plumbing: a network namespace for the origin, joined to
 * this one by a veth pair whose namespace side is shaped with tc (a token bucket filter), so
 * every byte the origin sends crosses a link of `bytesPerSecond`. Root only. The addresses
 * live on the veth pair this bench creates and nowhere else.
 */
export interface ShapedNamespace {
  name: string;
  /** The origin's address inside the namespace. */
  address: string;
  remove(): Promise<void>;
}

async function ip(args: string[]): Promise<void> {
  const r = await run('ip', args);
  if (r.code !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`);
}

export async function canShape(): Promise<boolean> {
  if (process.getuid?.() !== 0) return false;
  return (await run('tc', ['-V']).catch(() => ({ code: 1 }))).code === 0;
}

export async function shapedNamespace(bytesPerSecond: number): Promise<ShapedNamespace> {
  const id = (process.pid % 10000).toString();
  const name = `shoal-uplink-${id}`;
  const outer = `shu${id}a`;
  const inner = `shu${id}b`;
  const address = '10.213.0.2';
  await ip(['netns', 'add', name]);
  const remove = async () => {
    await run('ip', ['netns', 'del', name]);
    await run('ip', ['link', 'del', outer]);
  };
  try {
    await ip(['link', 'add', outer, 'type', 'veth', 'peer', 'name', inner]);
    await ip(['link', 'set', inner, 'netns', name]);
    await ip(['addr', 'add', '10.213.0.1/30', 'dev', outer]);
    await ip(['link', 'set', outer, 'up']);
    const inNs = (args: string[]) => ip(['netns', 'exec', name, 'ip', ...args]);
    await inNs(['addr', 'add', `${address}/30`, 'dev', inner]);
    await inNs(['link', 'set', inner, 'up']);
    await inNs(['link', 'set', 'lo', 'up']);
    const bits = Math.round(bytesPerSecond * 8);
    const tc = await run('ip', ['netns', 'exec', name, 'tc', 'qdisc', 'add', 'dev', inner, 'root', 'tbf', 'rate', `${bits}bit`, 'burst', '1mb', 'latency', '200ms']);
    if (tc.code !== 0) throw new Error(`tc: ${tc.stderr.trim()}`);
  } catch (err) {
    await remove();
    throw err;
  }
  return { name, address, remove };
}
