/** Error codes of the OCI distribution spec (plus Docker's TOOMANYREQUESTS), with their HTTP status. */
export const ERROR_STATUS = {
  BLOB_UNKNOWN: 404,
  BLOB_UPLOAD_INVALID: 400,
  DIGEST_INVALID: 400,
  MANIFEST_UNKNOWN: 404,
  MANIFEST_INVALID: 400,
  NAME_INVALID: 400,
  NAME_UNKNOWN: 404,
  SIZE_INVALID: 400,
  UNAUTHORIZED: 401,
  DENIED: 403,
  UNSUPPORTED: 405,
  TOOMANYREQUESTS: 429,
  RANGE_INVALID: 416,
  /** Not in the spec's table; Docker's distribution uses them and clients understand them. */
  UNAVAILABLE: 503,
  UNKNOWN: 500,
} as const;

export type RegistryErrorCode = keyof typeof ERROR_STATUS;

/** An error to be answered to a registry client as the spec's JSON body. */
export class RegistryError extends Error {
  readonly status: number;
  constructor(
    readonly code: RegistryErrorCode,
    message: string,
    readonly detail?: unknown,
    status?: number,
  ) {
    super(message);
    this.name = 'RegistryError';
    this.status = status ?? ERROR_STATUS[code];
  }

  toJSON(): { errors: { code: string; message: string; detail?: unknown }[] } {
    const error: { code: string; message: string; detail?: unknown } = { code: this.code, message: this.message };
    if (this.detail !== undefined) error.detail = this.detail;
    return { errors: [error] };
  }
}
