import { tryParseDigest } from './digest.js';

/**
 * Every digest a manifest points at: an index's manifests, an image's config, layers and
 * subject. Unparseable documents point at nothing (they grant nothing).
 */
export function referencedDigests(bytes: Uint8Array): string[] {
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    return [];
  }
  if (!doc || typeof doc !== 'object') return [];
  const d = doc as { manifests?: unknown; config?: unknown; layers?: unknown; subject?: unknown; blobs?: unknown };
  const descriptors: unknown[] = [
    ...(Array.isArray(d.manifests) ? d.manifests : []),
    ...(Array.isArray(d.layers) ? d.layers : []),
    ...(Array.isArray(d.blobs) ? d.blobs : []),
    d.config,
    d.subject,
  ];
  const out = new Set<string>();
  for (const descriptor of descriptors) {
    const digest = (descriptor as { digest?: unknown } | undefined)?.digest;
    if (typeof digest === 'string' && tryParseDigest(digest)) out.add(digest);
  }
  return [...out];
}
