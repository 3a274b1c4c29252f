import { describe, expect, it } from 'vitest';
import { parseRange } from '../../src/http/range.js';
import { RegistryError } from '../../src/oci/errors.js';

describe('parseRange', () => {
  it('is absent without a header', () => {
    expect(parseRange(undefined, 10)).toBeUndefined();
  });
  it.each([
    ['bytes=0-4', { start: 0, end: 4 }],
    ['bytes=5-', { start: 5, end: 9 }],
    ['bytes=-3', { start: 7, end: 9 }],
    ['bytes=-30', { start: 0, end: 9 }],
    ['bytes=8-100', { start: 8, end: 9 }],
  ])('%s', (header, range) => {
    expect(parseRange(header, 10)).toEqual(range);
  });
  it.each(['bytes=10-', 'bytes=5-2', 'bytes=0-1,3-4', 'items=0-1', 'bytes=-', 'bytes=-0', 'bytes=abc', `bytes=${'9'.repeat(30)}-`])(
    '%s is refused with 416',
    (header) => {
      let caught: unknown;
      try {
        parseRange(header, 10);
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(RegistryError);
      expect((caught as RegistryError).status).toBe(416);
      expect((caught as RegistryError).code).toBe('RANGE_INVALID');
    },
  );
});
