/** No source had the blob (every source answered "not here"). */
export class BlobNotFoundError extends Error {
  constructor(readonly digest: string) {
    super(`blob ${digest} is not available from any source`);
    this.name = 'BlobNotFoundError';
  }
}

/** Sources had the blob but every attempt failed; `cause` is the last failure. */
export class BlobUnavailableError extends Error {
  constructor(
    readonly digest: string,
    readonly failures: { source: string; error: string }[],
    options?: { cause?: unknown },
  ) {
    super(`blob ${digest} could not be fetched: ${failures.map((f) => `${f.source}: ${f.error}`).join('; ')}`, options);
    this.name = 'BlobUnavailableError';
  }
}
