import { describe, expect, it } from 'vitest';
import { Askers } from '../../src/p2p/askers.js';

describe('Askers', () => {
  it('names the other recent askers of a digest, latest first, up to max', () => {
    let now = 0;
    const askers = new Askers(60_000, 1024, () => now);
    expect(askers.ask('d', 'a')).toEqual([]);
    now = 10;
    expect(askers.ask('d', 'b')).toEqual(['a']);
    now = 20;
    expect(askers.ask('d', 'c')).toEqual(['b', 'a']);
    now = 30;
    expect(askers.ask('d', 'a')).toEqual(['c', 'b']); // never the asker itself
    expect(askers.ask('d', 'x', 1)).toEqual(['a']);
    expect(askers.ask('other', 'a')).toEqual([]); // per digest
  });

  it('forgets askers after the ttl, and the least recently asked digest beyond the cap', () => {
    let now = 0;
    const askers = new Askers(1000, 2, () => now);
    askers.ask('d1', 'a');
    now = 500;
    askers.ask('d1', 'b');
    now = 1200;
    expect(askers.ask('d1', 'c')).toEqual(['b']); // a asked 1200 ms ago
    askers.ask('d2', 'a');
    askers.ask('d3', 'a'); // over the cap: d1 (least recently asked) goes
    expect(askers.ask('d1', 'z')).toEqual([]);
    expect(askers.ask('d3', 'z')).toEqual(['a']);
  });
});
