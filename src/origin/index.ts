export {
  OriginClient,
  MAX_MANIFEST_BYTES,
  type OriginOptions,
  type OriginLogger,
  type ManifestHead,
  type ManifestResponse,
  type BlobResponse,
} from './client.js';
export { OriginError, isOriginError, type OriginErrorKind } from './errors.js';
export {
  CredentialSource,
  credentialSource,
  dockerConfigCredentials,
  type Credentials,
  type RegistryCredentialsConfig,
} from './credentials.js';
export { parseWwwAuthenticate, type Challenge } from './challenge.js';
