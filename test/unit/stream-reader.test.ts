import type { Stream } from '@libp2p/interface';
import { describe, expect, it } from 'vitest';
import { StreamReader } from '../../src/p2p/stream-io.js';

/** The part of a libp2p stream StreamReader uses: message, end and close events, pause/resume. */
class FakeStream extends EventTarget {
  readableEnded = false;
  readStatus = 'readable';
  pause(): void {
    this.readStatus = 'paused';
  }
  resume(): void {
    this.readStatus = 'readable';
  }
  deliver(data: Uint8Array): void {
    this.dispatchEvent(Object.assign(new Event('message'), { data }));
  }
  end(): void {
    this.readableEnded = true;
    this.dispatchEvent(new Event('end'));
  }
}

function bytes(from: number, n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (from + i) % 256);
}

describe('StreamReader.readChunks', () => {
  it('hands over the bytes as views of the messages they came in, without a copy', async () => {
    const stream = new FakeStream();
    const reader = new StreamReader(stream as unknown as Stream);
    const a = bytes(0, 300);
    const b = bytes(300, 300);
    stream.deliver(a);
    stream.deliver(b);
    expect(Array.from(await reader.readExactly(5))).toEqual(Array.from(bytes(0, 5)));
    const chunks = await reader.readChunks(500);
    // Views of the delivered buffers: a copy would be a new ArrayBuffer.
    expect(chunks.map((c) => c.buffer)).toEqual([a.buffer, b.buffer]);
    expect(chunks.map((c) => c.byteLength)).toEqual([295, 205]);
    expect(Array.from(Buffer.concat(chunks))).toEqual(Array.from(bytes(5, 500)));
    // What is left is read next, from the same place.
    expect(Array.from(await reader.readExactly(95))).toEqual(Array.from(bytes(505, 95)));
    reader.dispose();
  });

  it('waits for the bytes to arrive, and fails when the stream ends short', async () => {
    const stream = new FakeStream();
    const reader = new StreamReader(stream as unknown as Stream);
    const pending = reader.readChunks(10);
    stream.deliver(bytes(0, 4));
    stream.deliver(bytes(4, 8));
    expect(Buffer.concat(await pending).equals(Buffer.from(bytes(0, 10)))).toBe(true);
    const short = reader.readChunks(10);
    stream.end();
    await expect(short).rejects.toThrow(/ended after 2 of 10 bytes/);
  });
});
