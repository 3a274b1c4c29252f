import { describe, expect, it } from 'vitest';
import { parseDuration, parseSize } from '../../src/config/units.js';

describe('parseSize', () => {
  it.each([
    [123, 123],
    ['123', 123],
    ['0', 0],
    ['100B', 100],
    ['100KB', 100_000],
    ['100kb', 100_000],
    ['1.5GB', 1_500_000_000],
    ['2TB', 2_000_000_000_000],
    ['512MiB', 512 * 1024 * 1024],
    ['512 MiB', 512 * 1024 * 1024],
    ['20GiB', 20 * 2 ** 30],
    ['20gib', 20 * 2 ** 30],
    ['1KiB', 1024],
    ['1.5KiB', 1536],
    ['1TiB', 2 ** 40],
    ['512Mi', 512 * 2 ** 20],
    [' 10MB ', 10_000_000],
  ] as const)('%j is %d bytes', (input, bytes) => {
    expect(parseSize(input)).toBe(bytes);
  });

  it('rounds a fraction of a byte down', () => {
    expect(parseSize('1.0001KB')).toBe(1000);
  });

  it.each(['', 'abc', '20 GiBs', '20XB', 'GiB', '1.2.3MB', '1e3', '20GiB extra', 'NaN', 'Infinity'])(
    'rejects %j',
    (input) => {
      expect(() => parseSize(input)).toThrow(/invalid size/);
    },
  );

  it('rejects negatives, NaN, infinities and fractional byte counts', () => {
    expect(() => parseSize(-1)).toThrow(/must not be negative/);
    expect(() => parseSize('-5MB')).toThrow(/must not be negative/);
    expect(() => parseSize(Number.NaN)).toThrow(/finite/);
    expect(() => parseSize(Number.POSITIVE_INFINITY)).toThrow(/finite/);
    expect(() => parseSize(1.5)).toThrow(/whole number/);
  });

  it('rejects sizes beyond what a double holds exactly', () => {
    expect(() => parseSize('99999999TiB')).toThrow(/too large/);
  });

  it('names the input in the error', () => {
    expect(() => parseSize('lots')).toThrow('invalid size "lots"');
  });
});

describe('parseDuration', () => {
  it.each([
    [0, 0],
    [250, 250],
    ['250', 250],
    ['500ms', 500],
    ['30s', 30_000],
    ['1.5s', 1_500],
    ['5m', 300_000],
    ['24h', 86_400_000],
    ['7d', 604_800_000],
    ['1h30m', 5_400_000],
    ['1m30s', 90_000],
    ['1h 30m', 5_400_000],
    ['2s500ms', 2_500],
    ['30S', 30_000],
    ['5 m', 300_000],
  ] as const)('%j is %d ms', (input, ms) => {
    expect(parseDuration(input)).toBe(ms);
  });

  it('rounds to whole milliseconds', () => {
    expect(parseDuration('0.4ms')).toBe(0);
    expect(parseDuration(1.6)).toBe(2);
  });

  it.each(['', ' ', 'abc', '30x', 's', '1h30', '5 minutes', '1h-30m', '30s!', 'ms5', '1e3'])(
    'rejects %j',
    (input) => {
      expect(() => parseDuration(input)).toThrow(/invalid duration/);
    },
  );

  it('rejects negatives, NaN and infinities', () => {
    expect(() => parseDuration(-1)).toThrow(/must not be negative/);
    expect(() => parseDuration('-5s')).toThrow(/must not be negative/);
    expect(() => parseDuration(Number.NaN)).toThrow(/finite/);
    expect(() => parseDuration(Number.POSITIVE_INFINITY)).toThrow(/finite/);
  });

  it('names the input in the error', () => {
    expect(() => parseDuration('soon')).toThrow('invalid duration "soon"');
  });
});
