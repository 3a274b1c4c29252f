import { describe, expect, it } from 'vitest';
import { configDigest, referencedDigests } from '../../src/oci/manifest.js';

const a = `sha256:${'a'.repeat(64)}`;
const b = `sha256:${'b'.repeat(64)}`;
const c = `sha256:${'c'.repeat(64)}`;
const json = (doc: unknown): Uint8Array => Buffer.from(JSON.stringify(doc));

describe('manifest documents', () => {
  const image = json({ config: { digest: a }, layers: [{ digest: b }, { digest: 'sha256:nothex' }], subject: { digest: c } });

  it('name every valid digest they point at', () => {
    expect(referencedDigests(image).sort()).toEqual([a, b, c]);
    expect(referencedDigests(json({ manifests: [{ digest: a }, { digest: a }] }))).toEqual([a]);
    expect(referencedDigests(Buffer.from('not json'))).toEqual([]);
    expect(referencedDigests(json(null))).toEqual([]);
  });

  it("name an image's config, and no config for an index or a bad document", () => {
    expect(configDigest(image)?.value).toBe(a);
    expect(configDigest(json({ manifests: [{ digest: a }] }))).toBeUndefined();
    expect(configDigest(json({ config: { digest: 'sha256:nothex' } }))).toBeUndefined();
    expect(configDigest(Buffer.from('{'))).toBeUndefined();
  });
});
