import { tryParseDigest, type Digest } from './digest.js';

/** A manifest's top-level JSON object; undefined for anything else. */
function parseDocument(bytes: Uint8Array): Record<string, unknown> | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    return undefined;
  }
  return doc && typeof doc === 'object' ? (doc as Record<string, unknown>) : undefined;
}

/** A descriptor's digest, when it has a valid one. */
function descriptorDigest(descriptor: unknown): Digest | undefined {
  const digest = (descriptor as { digest?: unknown } | undefined)?.digest;
  return typeof digest === 'string' ? tryParseDigest(digest) : undefined;
}

/**
 * Every digest a manifest points at: an index's manifests, an image's config, layers and
 * subject. Unparseable documents point at nothing (they grant nothing).
 */
export function referencedDigests(bytes: Uint8Array): string[] {
  const d = parseDocument(bytes);
  if (d === undefined) return [];
  const descriptors: unknown[] = [
    ...(Array.isArray(d.manifests) ? d.manifests : []),
    ...(Array.isArray(d.layers) ? d.layers : []),
    ...(Array.isArray(d.blobs) ? d.blobs : []),
    d.config,
    d.subject,
  ];
  const out = new Set<string>();
  for (const descriptor of descriptors) {
    const digest = descriptorDigest(descriptor);
    if (digest !== undefined) out.add(digest.value);
  }
  return [...out];
}

/** An image manifest's config blob; undefined for an index or a document without a valid one. */
export function configDigest(bytes: Uint8Array): Digest | undefined {
  const d = parseDocument(bytes);
  return d === undefined ? undefined : descriptorDigest(d.config);
}
