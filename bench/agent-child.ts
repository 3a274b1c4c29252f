/**
 * A Shoal agent in its own process for benchmarks, driven over IPC by the parent: it reports its
 * addresses, and on request times a raw libp2p stream from itself to a peer (the bench protocol),
 * so both measurements run between the same two processes.
 */
import '../src/polyfill.js';
import { Agent } from '../src/agent.js';
import { parseConfig } from '../src/config/load.js';
import { rawStreamThroughput } from '../src/p2p/bench-protocol.js';

type Command = { id: number; cmd: 'info' } | { id: number; cmd: 'raw'; peerId: string; bytes: number } | { id: number; cmd: 'stop' };

const config = parseConfig(JSON.parse(process.argv[2] ?? '{}'));
const agent = await Agent.start(config, { benchProtocol: true });

process.on('message', (message: Command) => {
  void (async () => {
    try {
      switch (message.cmd) {
        case 'info':
          return reply(message.id, { url: agent.url, peerId: agent.p2p!.peerId, addrs: agent.p2p!.multiaddrs(), pid: process.pid });
        case 'raw':
          return reply(message.id, await rawStreamThroughput(agent.p2p!, message.peerId, message.bytes));
        case 'stop':
          await agent.stop();
          reply(message.id, {});
          process.exit(0);
      }
    } catch (err) {
      process.send?.({ id: message.id, error: String((err as Error).stack ?? err) });
    }
  })();
});
process.send?.({ ready: true });

function reply(id: number, result: unknown): void {
  process.send?.({ id, result });
}
