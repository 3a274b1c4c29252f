import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Partials } from '../../src/fetch/partials.js';
import { PieceNews } from '../../src/fetch/piece-news.js';

const a = `sha256:${'a'.repeat(64)}`;
const b = `sha256:${'b'.repeat(64)}`;

/** Whether `promise` has settled by the time pending callbacks have run. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  void promise.then(() => (done = true));
  await new Promise((r) => setImmediate(r));
  return done;
}

describe('PieceNews', () => {
  it('wakes those waiting on a digest, and only them', async () => {
    const news = new PieceNews();
    const never = new AbortController().signal;
    const onA = news.next(a, never);
    const onB = news.next(b, never);
    news.notify(a);
    expect(await settled(onA)).toBe(true);
    expect(await settled(onB)).toBe(false);
    // A waiter is woken once: the next change needs a new wait.
    expect(news.size).toBe(1);
    news.notify(b);
    expect(await settled(onB)).toBe(true);
    expect(news.size).toBe(0);
  });

  it('lets a waiter go when its signal aborts, leaving nothing behind', async () => {
    const news = new PieceNews();
    const controller = new AbortController();
    const waiting = news.next(a, controller.signal);
    expect(news.size).toBe(1);
    controller.abort();
    expect(await settled(waiting)).toBe(true);
    expect(news.size).toBe(0);
    expect(await settled(news.next(a, AbortSignal.abort()))).toBe(true);
    expect(news.size).toBe(0);
  });
});

describe('Partials tell PieceNews of every change', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-news-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('on start, on each verified piece and on finish', async () => {
    const news = new PieceNews();
    const partials = new Partials(dir, news);
    const never = new AbortController().signal;

    let waiting = news.next(a, never);
    const partial = await partials.start(a);
    expect(await settled(waiting)).toBe(true);

    partial.have = [false, false];
    waiting = news.next(a, never);
    partials.markHave(partial, 1);
    expect(await settled(waiting)).toBe(true);
    expect(partial.have).toEqual([false, true]);

    waiting = news.next(a, never);
    await partials.finish(partial);
    expect(await settled(waiting)).toBe(true);
  });
});
