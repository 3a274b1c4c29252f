/** Grammars of the OCI distribution spec for repository names and tags. */
const NAME_COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME = new RegExp(`^${NAME_COMPONENT}(?:/${NAME_COMPONENT})*$`);
const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
/** Docker's limit on a full repository name. */
const MAX_NAME_LENGTH = 255;

export function isValidName(name: string): boolean {
  return name.length <= MAX_NAME_LENGTH && NAME.test(name);
}

export function isValidTag(tag: string): boolean {
  return TAG.test(tag);
}

/** `docker.io` is served at registry-1.docker.io, and one-segment names live under `library/`. */
export const DOCKER_HUB = 'docker.io';
export const DOCKER_HUB_API = 'https://registry-1.docker.io';

export function normaliseRepository(registry: string, name: string): string {
  return registry === DOCKER_HUB && !name.includes('/') ? `library/${name}` : name;
}

/** An image reference as a user types it: `[registry/]name[:tag][@digest]`. */
export interface ImageReference {
  registry: string;
  repository: string;
  /** A tag or a digest. */
  reference: string;
}

export class InvalidReferenceError extends Error {
  constructor(input: string, reason: string) {
    super(`invalid image reference ${JSON.stringify(input)}: ${reason}`);
    this.name = 'InvalidReferenceError';
  }
}

/** Parses `registry/name:tag`, `name@sha256:…`; a first segment without `.`/`:` is not a registry. */
export function parseImageReference(input: string, defaultRegistry = DOCKER_HUB): ImageReference {
  let rest = input;
  let reference = 'latest';
  const at = rest.indexOf('@');
  if (at >= 0) {
    reference = rest.slice(at + 1);
    rest = rest.slice(0, at);
  } else {
    const colon = rest.lastIndexOf(':');
    if (colon > rest.lastIndexOf('/')) {
      reference = rest.slice(colon + 1);
      rest = rest.slice(0, colon);
    }
  }
  let registry = defaultRegistry;
  const slash = rest.indexOf('/');
  if (slash > 0) {
    const first = rest.slice(0, slash);
    if (first.includes('.') || first.includes(':') || first === 'localhost') {
      registry = first;
      rest = rest.slice(slash + 1);
    }
  }
  if (!isValidName(rest)) throw new InvalidReferenceError(input, `bad repository name ${JSON.stringify(rest)}`);
  if (at < 0 && !isValidTag(reference)) throw new InvalidReferenceError(input, `bad tag ${JSON.stringify(reference)}`);
  return { registry, repository: normaliseRepository(registry, rest), reference };
}
