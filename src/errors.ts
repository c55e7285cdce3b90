/**
 * One error class for everything clonebox reports on purpose. The code is stable (scripts and the
 * `--json` error object rely on it); the message says what went wrong and names the file, VM or peer.
 * `hint` is an optional second line telling the user what to do next.
 *
 * Anything thrown that is not a CloneboxError is a bug and is reported as INTERNAL.
 */
export type ErrorCode =
  // usage (exit 2)
  | 'USAGE'
  | 'BAD_NAME'
  | 'BAD_SIZE'
  // qcow2 engine
  | 'NOT_QCOW2'
  | 'QCOW2_UNSUPPORTED'
  | 'QCOW2_CORRUPT'
  | 'QCOW2_TRUNCATED'
  | 'QCOW2_TOO_LARGE'
  | 'BACKING_MISSING'
  // store / registry
  | 'VM_EXISTS'
  | 'VM_NOT_FOUND'
  | 'VM_BUSY'
  | 'DISK_NOT_FOUND'
  | 'DISK_IN_USE'
  | 'SNAPSHOT_EXISTS'
  | 'SNAPSHOT_NOT_FOUND'
  | 'SNAPSHOT_HAS_CHILDREN'
  | 'NEEDS_CONFIRMATION'
  | 'STORE_CORRUPT'
  | 'IO'
  | 'INTERNAL'
  | 'DISK_NAME_CLASH'
  // bundles
  | 'BUNDLE_CORRUPT'
  | 'BUNDLE_CHANGED'
  | 'NOT_A_BUNDLE'
  | 'BUNDLE_UNSUPPORTED'
  | 'KEY_REQUIRED'
  | 'WRONG_KEY'
  | 'BAD_KEY_FILE'
  | 'FILE_EXISTS'
  | 'BASE_MISSING'
  | 'DISK_MISMATCH'
  | 'NO_SNAPSHOTS'
  | 'SNAPSHOT_NOT_READY'
  // libvirt
  | 'LIBVIRT_UNAVAILABLE'
  | 'LIBVIRT_UNSUPPORTED'
  | 'LIBVIRT_ERROR'
  | 'LIBVIRT_TIMEOUT'
  | 'DOMAIN_NOT_FOUND'
  | 'DOMAIN_CHANGED'
  // sync
  | 'DHT_UNREACHABLE'
  | 'BAD_INVITE'
  | 'SYNC_BUSY'
  | 'SYNC_TIMEOUT'
  | 'SYNC_CHAIN'
  | (string & {});

export class CloneboxError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly exitCode: 1 | 2;

  constructor(code: ErrorCode, message: string, opts: { hint?: string; exitCode?: 1 | 2; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'CloneboxError';
    this.code = code;
    this.hint = opts.hint;
    this.exitCode = opts.exitCode ?? (code === 'USAGE' || code === 'BAD_NAME' || code === 'BAD_SIZE' ? 2 : 1);
  }
}

export function usageError(message: string, hint?: string): CloneboxError {
  return new CloneboxError('USAGE', message, hint === undefined ? { exitCode: 2 } : { exitCode: 2, hint });
}

/** Wraps a Node system error (ENOENT, EACCES, ENOSPC...) into a coded error that names the path. */
export function ioError(err: unknown, what: string, path: string): CloneboxError {
  if (err instanceof CloneboxError) return err;
  const e = err as NodeJS.ErrnoException;
  const reason = e?.code === 'ENOENT' ? 'no such file' : e?.code === 'EACCES' || e?.code === 'EPERM' ? 'permission denied'
    : e?.code === 'ENOSPC' ? 'no space left on device' : e?.code === 'EISDIR' ? 'is a directory' : (e?.message ?? String(err));
  return new CloneboxError('IO', `${what}: ${reason}, ${path}`, { cause: err });
}
