import { describe, expect, it } from 'vitest';
import { parseWwwAuthenticate } from '../../src/origin/challenge.js';

describe('parseWwwAuthenticate', () => {
  it('parses a Docker Hub bearer challenge', () => {
    const [c, ...rest] = parseWwwAuthenticate(
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"',
    );
    expect(rest).toEqual([]);
    expect(c).toEqual({
      scheme: 'bearer',
      params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/nginx:pull' },
    });
  });

  it('keeps commas inside quoted strings (scope lists)', () => {
    const [c] = parseWwwAuthenticate('Bearer realm="https://r/t",scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope"');
    expect(c?.params.scope).toBe('repository:a/b:pull,push repository:c:pull');
    expect(c?.params.error).toBe('insufficient_scope');
  });

  it('handles escapes, spaces around = and case-insensitive names', () => {
    const [c] = parseWwwAuthenticate('BEARER Realm = "https://r/t?a=\\"b\\"" , Service=svc');
    expect(c?.scheme).toBe('bearer');
    expect(c?.params).toEqual({ realm: 'https://r/t?a="b"', service: 'svc' });
  });

  it('splits several challenges in one header and across headers', () => {
    const cs = parseWwwAuthenticate(['Basic realm="Registry Realm", Bearer realm="https://a/t",service="x"', 'Negotiate abc123==']);
    expect(cs.map((c) => c.scheme)).toEqual(['basic', 'bearer', 'negotiate']);
    expect(cs[0]?.params.realm).toBe('Registry Realm');
    expect(cs[1]?.params).toEqual({ realm: 'https://a/t', service: 'x' });
    expect(cs[2]?.token68).toBe('abc123==');
  });

  it('accepts a scheme without parameters and unquoted values', () => {
    expect(parseWwwAuthenticate('Basic')).toEqual([{ scheme: 'basic', params: {} }]);
    expect(parseWwwAuthenticate('Basic realm=simple')[0]?.params.realm).toBe('simple');
  });

  it('returns nothing for absent or empty headers', () => {
    expect(parseWwwAuthenticate(undefined)).toEqual([]);
    expect(parseWwwAuthenticate('')).toEqual([]);
  });

  it('survives an unterminated quoted string', () => {
    expect(parseWwwAuthenticate('Bearer realm="https://x/t')[0]?.params.realm).toBe('https://x/t');
  });
});
