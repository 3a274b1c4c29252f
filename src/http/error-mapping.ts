import { DigestMismatchError } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import { OriginError } from '../origin/errors.js';
import { BlobNotFoundError, BlobUnavailableError } from '../fetch/errors.js';

/** What a client is asking for, so "not found" can name the right thing. */
export type Subject = 'manifest' | 'blob';

/** Turns any failure of a pull into the spec's error for the client. */
export function toRegistryError(err: unknown, subject: Subject): RegistryError {
  if (err instanceof RegistryError) return err;
  if (err instanceof BlobNotFoundError) return new RegistryError('BLOB_UNKNOWN', 'blob unknown to registry');
  if (err instanceof BlobUnavailableError && err.cause !== undefined) {
    const inner = toRegistryError(err.cause, subject);
    return new RegistryError(inner.code, err.message, inner.detail, inner.status);
  }
  if (err instanceof DigestMismatchError) {
    // The origin (or a peer) sent bytes that are not what the digest names: nothing was kept.
    return new RegistryError('DIGEST_INVALID', err.message, { expected: err.expected }, 502);
  }
  if (err instanceof OriginError) {
    switch (err.kind) {
      case 'unauthorized':
        return new RegistryError('UNAUTHORIZED', `origin refused this agent's credentials: ${err.message}`);
      case 'denied':
        return new RegistryError('DENIED', `origin denied access: ${err.message}`);
      case 'not-found':
        return subject === 'manifest'
          ? new RegistryError('MANIFEST_UNKNOWN', 'manifest unknown', { origin: err.message })
          : new RegistryError('BLOB_UNKNOWN', 'blob unknown to registry', { origin: err.message });
      case 'toomanyrequests':
        return new RegistryError('TOOMANYREQUESTS', `origin rate limit: ${err.message}`);
      case 'unavailable':
        return new RegistryError('UNAVAILABLE', `origin unavailable: ${err.message}`);
      case 'protocol':
        return new RegistryError('UNAVAILABLE', `origin answered unexpectedly: ${err.message}`, undefined, 502);
    }
  }
  return new RegistryError('UNKNOWN', 'internal error', undefined, 500);
}
