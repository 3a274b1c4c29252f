/**
 * Parsing of `WWW-Authenticate` (RFC 7235 §4.1). Registries send e.g.
 * `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push"`:
 * commas inside quoted strings, several challenges in one header, escaped quotes.
 */
export interface Challenge {
  /** Lower-cased auth scheme, e.g. `bearer`, `basic`. */
  scheme: string;
  /** Parameters by lower-cased name; values unquoted and unescaped. */
  params: Record<string, string>;
  /** A token68 credential-style argument, for schemes that use one instead of parameters. */
  token68?: string;
}

const TCHAR = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;
const TOKEN68 = /^[A-Za-z0-9\-._~+/]+=*/;

export function parseWwwAuthenticate(header: string | readonly string[] | undefined): Challenge[] {
  if (header === undefined) return [];
  const headers = typeof header === 'string' ? [header] : header;
  const out: Challenge[] = [];
  for (const h of headers) parseInto(h, out);
  return out;
}

function parseInto(text: string, out: Challenge[]): void {
  const n = text.length;
  let i = 0;
  const isWs = (c: string | undefined): boolean => c === ' ' || c === '\t';
  const skipWs = (): void => {
    while (i < n && isWs(text[i])) i++;
  };
  const readToken = (): string => {
    const start = i;
    while (i < n && TCHAR.test(text[i]!)) i++;
    return text.slice(start, i);
  };
  const readQuoted = (): string => {
    i++; // opening quote
    let value = '';
    while (i < n) {
      const c = text[i]!;
      if (c === '\\' && i + 1 < n) {
        value += text[i + 1];
        i += 2;
      } else if (c === '"') {
        i++;
        return value;
      } else {
        value += c;
        i++;
      }
    }
    return value; // unterminated: keep what there is rather than fail the whole header
  };

  let current: Challenge | undefined;
  while (i < n) {
    while (i < n && (isWs(text[i]) || text[i] === ',')) i++;
    if (i >= n) break;
    const name = readToken();
    if (!name) {
      i++; // a stray character; skip it
      continue;
    }
    skipWs();
    if (text[i] === '=') {
      // `name=value` belongs to the challenge being read.
      i++;
      skipWs();
      const value = text[i] === '"' ? readQuoted() : readToken();
      if (current && !Object.hasOwn(current.params, name.toLowerCase())) current.params[name.toLowerCase()] = value;
      continue;
    }
    // A token not followed by `=` starts a new challenge.
    current = { scheme: name.toLowerCase(), params: {} };
    out.push(current);
    const rest = text.slice(i);
    const t68 = TOKEN68.exec(rest);
    if (t68) {
      let j = i + t68[0].length;
      while (j < n && isWs(text[j])) j++;
      // Only a token68 if nothing but a separator follows; `realm=x` also matches the pattern's prefix.
      if (j >= n || text[j] === ',') {
        current.token68 = t68[0];
        i = j;
      }
    }
  }
}
