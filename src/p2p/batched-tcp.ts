import type { Socket } from 'node:net';
import { tcp, type TCPComponents, type TCPOptions } from '@libp2p/tcp';
import type { MultiaddrConnection, Transport, Upgrader } from '@libp2p/interface';
import type { Uint8ArrayList } from 'uint8arraylist';

/*
 * libp2p's TCP connection writes each buffer of a send to the socket on its own, and Noise makes
 * two buffers of every 64 KiB message (a 2-byte length and the ciphertext): a 1 MiB Yamux frame
 * cost 32 socket writes, half of them 2-byte TCP segments (Nagle is off), and as many reads on
 * the other side. Here a send's buffers go to the socket corked, so the kernel gets them in one
 * writev. The whole send is accepted (the layers above bound a send to about one frame); the
 * answer says whether the socket wants a 'drain' before the next, as libp2p's own does.
 */

/** The part of libp2p's TCP connection this relies on (checked at run time). */
interface SocketConnection {
  socket: Socket;
  sendData(data: Uint8ArrayList): { sentBytes: number; canSendMore: boolean };
}

function hasSocket(conn: unknown): conn is SocketConnection {
  const c = conn as Partial<SocketConnection>;
  return typeof c.sendData === 'function' && typeof c.socket?.cork === 'function';
}

/** Makes a TCP connection send each batch of buffers with one writev; others are left as they are. */
export function batchWrites<T extends MultiaddrConnection>(conn: T): T {
  if (!hasSocket(conn)) return conn;
  const { socket } = conn;
  conn.sendData = (data: Uint8ArrayList) => {
    socket.cork();
    for (const buf of data) socket.write(buf);
    socket.uncork();
    return { sentBytes: data.byteLength, canSendMore: socket.writableLength < socket.writableHighWaterMark };
  };
  return conn;
}

function batchingUpgrader(upgrader: Upgrader): Upgrader {
  return new Proxy(upgrader, {
    get(target, prop, receiver) {
      if (prop === 'upgradeInbound' || prop === 'upgradeOutbound') {
        const upgrade = Reflect.get(target, prop, receiver) as (conn: MultiaddrConnection, opts: unknown) => Promise<unknown>;
        return (conn: MultiaddrConnection, opts: unknown) => upgrade.call(target, batchWrites(conn), opts);
      }
      return Reflect.get(target, prop, receiver) as unknown;
    },
  });
}

/** libp2p's TCP transport whose connections write each send with one syscall. */
export function batchedTcp(init?: TCPOptions): (components: TCPComponents) => Transport {
  const factory = tcp(init);
  return (components) => {
    const transport = factory(components);
    const dial = transport.dial.bind(transport);
    const createListener = transport.createListener.bind(transport);
    transport.dial = (ma, options) => dial(ma, { ...options, upgrader: batchingUpgrader(options.upgrader) });
    transport.createListener = (options) => createListener({ ...options, upgrader: batchingUpgrader(options.upgrader) });
    return transport;
  };
}
