/**
 * One error class for everything clonebox reports on purpose. The code is stable (scripts, the
 * `--json` error object and library callers rely on it); the message says what went wrong and names
 * the file, VM or peer. `hint` is an optional second line telling the user what to do next.
 *
 * Anything thrown that is not a CloneboxError is a bug and is reported as INTERNAL.
 *
 * Every code lives in ERROR_CODES below with its exit code and meaning: the ErrorCode union and the
 * per-code constructors (`CloneboxError.VM_NOT_FOUND(message, {hint})`, as hypercore-errors does it)
 * are derived from that table, so a code cannot be thrown without an entry, and docs/errors.md is
 * kept equal to it by test/errors-doc.unit.test.ts.
 */

/** What the table says about one code: the process exit code of the CLI and a one-line meaning. */
export interface ErrorSpec {
  readonly exit: 1 | 2;
  readonly meaning: string;
}

export const ERROR_CODES = {
  // Usage: the command line (or a value on it) is wrong; exit 2 and nothing was done.
  USAGE: {
    exit: 2,
    meaning: 'bad command line or option value: unknown option, missing or conflicting arguments, an unreadable time or duration, a path that is not a file',
  },
  BAD_NAME: {
    exit: 2,
    meaning: 'a VM, snapshot, team or workstation name outside `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`, or the reserved snapshot name `current`',
  },
  BAD_SIZE: {
    exit: 2,
    meaning:
      'a size that does not parse or is out of range: cluster size not a power of two from 512 to 2M, virtual size not a multiple of 512 or too large for the cluster size',
  },
  BAD_INVITE: { exit: 2, meaning: 'a team invite that does not decode or whose checksum or version is wrong; nothing is written' },
  AUTO_SNAPSHOT_FAILED: {
    exit: 1,
    meaning:
      'the automatic snapshot that `before_operations` asks for before an operation (delete, restore, import...) could not be taken; the operation did not run (`--no-auto-snapshot` runs it without one)',
  },
  CONFIG_INVALID: {
    exit: 2,
    meaning:
      'a .clonebox.yaml that is not valid: YAML syntax, an unknown key, a value of the wrong type, a bad duration, size or schedule, a VM that is not registered and whose disks the file does not name; each problem is given as FILE:LINE:COLUMN',
  },
  DISK_NAME_CLASH: {
    exit: 2,
    meaning: 'two disks of one VM differ only in their extension (`x.qcow2`, `x.img`), so their snapshot layers would share a name',
  },
  // qcow2 images
  NOT_QCOW2: { exit: 1, meaning: 'the file is not a qcow2 image (no magic, too short) or not a regular file or block device' },
  QCOW2_UNSUPPORTED: {
    exit: 1,
    meaning:
      'a qcow2 feature clonebox does not handle: a version other than 2 or 3, encryption, an external data file, unknown incompatible feature bits or compression type, a `json:` backing name',
  },
  QCOW2_CORRUPT: {
    exit: 1,
    meaning:
      'inconsistent qcow2 metadata: misaligned or overlapping table entries, contradictory subcluster bitmaps, a backing chain that loops, a compressed cluster of the wrong size',
  },
  QCOW2_TRUNCATED: { exit: 1, meaning: 'the image ends before data its header or tables point to (header, tables, clusters, backing name)' },
  QCOW2_TOO_LARGE: {
    exit: 1,
    meaning: "tables beyond clonebox's limits (L1 above 32 MiB, refcount table above 8 MiB) or a backing chain deeper than 1000 images",
  },
  BACKING_MISSING: { exit: 1, meaning: 'a backing file named by an image is missing, unreadable or not a regular file' },
  // VMs, snapshots and the home
  VM_NOT_FOUND: { exit: 1, meaning: 'no VM of that name in this home' },
  VM_EXISTS: { exit: 1, meaning: 'a VM of that name exists already (create, add, import), or `vm create` would overwrite a disk file' },
  VM_BUSY: {
    exit: 1,
    meaning: "another live clonebox process holds the VM's lock longer than `CLONEBOX_LOCK_WAIT_MS`; the hint names it (command, pid, host, since)",
  },
  VM_NOT_RUNNING: { exit: 1, meaning: 'a full snapshot (`--memory`) of a VM that is not running, which image-driver VMs never are' },
  DISK_NOT_FOUND: { exit: 1, meaning: 'a registered disk file is missing, or a libvirt domain has no disk of that target' },
  DISK_IN_USE: { exit: 1, meaning: '`vm add` of a disk file that another VM has registered' },
  SNAPSHOT_NOT_FOUND: { exit: 1, meaning: 'no snapshot of that name, or none created at or before `--at TIME`' },
  SNAPSHOT_EXISTS: { exit: 1, meaning: 'a snapshot of that name exists, or a file already sits where its layer or memory file would go' },
  SNAPSHOT_HAS_CHILDREN: { exit: 1, meaning: 'delete of a snapshot that has children without `--recursive` or `--keep-children`; the message lists them' },
  SNAPSHOT_IN_GROUP: {
    exit: 1,
    meaning: 'delete or restore of one member snapshot of a group snapshot on its own; the group snapshot is deleted and restored as a whole (`--group`)',
  },
  GROUP_NOT_FOUND: { exit: 1, meaning: 'no VM group of that name in this home' },
  GROUP_EXISTS: { exit: 1, meaning: '`group create` of a group name this home already has' },
  VM_IN_GROUP: {
    exit: 1,
    meaning:
      '`vm remove` of a VM that is a member of a group or of its group snapshots; the message names the groups (`group remove` first, or `--leave-groups`)',
  },
  GROUP_HAS_SNAPSHOTS: { exit: 1, meaning: '`group delete` of a group that still has group snapshots; delete them first (`snapshot delete --group`)' },
  SNAPSHOT_NOT_READY: { exit: 1, meaning: 'export of a snapshot that is not `ready`' },
  NO_SNAPSHOTS: { exit: 1, meaning: 'export of a VM that has no snapshots' },
  COMMAND_FAILED: { exit: 1, meaning: '`snapshot run` could not start the command' },
  NEEDS_CONFIRMATION: { exit: 1, meaning: 'a command that asks for confirmation ran without a terminal and without `--yes`' },
  ABORTED: {
    exit: 1,
    meaning:
      'stopped before it finished: the user answered no to a confirmation, or the caller aborted it (its AbortSignal, SIGINT in the CLI); nothing is left half-done',
  },
  UNSUPPORTED: {
    exit: 1,
    meaning: 'something this version cannot do: a VM record of an unknown driver, an export of a chain whose snapshots have different disk sets',
  },
  STORE_CORRUPT: {
    exit: 1,
    meaning:
      'damaged state in the home (an unparseable VM, snapshot, team or journal record, an unknown journal action, parent links that loop); clonebox stops rather than guess',
  },
  NO_SPACE: {
    exit: 1,
    meaning: 'what an import, pull or merge would write (counted before writing) exceeds the free space of the target file system; nothing is left behind',
  },
  BUDGET_EXCEEDED: {
    exit: 1,
    meaning:
      'input would make clonebox write more than `--max-write`, or holds a disk above the virtual-size cap (16 TiB unless `--max-virtual-size` raises it); nothing is left behind',
  },
  IO: { exit: 1, meaning: 'a file system error (no such file, permission denied, no space left...), naming the path' },
  INTERNAL: { exit: 1, meaning: 'a bug, or a missing native module such as zstd support; `CLONEBOX_DEBUG=1` prints the stack' },
  // Bundles
  NOT_A_BUNDLE: { exit: 1, meaning: 'the file is not a clonebox bundle' },
  BUNDLE_UNSUPPORTED: { exit: 1, meaning: 'a bundle format version this clonebox does not read' },
  BUNDLE_CORRUPT: { exit: 1, meaning: 'the bundle is damaged or was modified (any byte, including a cut)' },
  BUNDLE_CHANGED: { exit: 1, meaning: 'the bundle, or a temporary file of the import, changed while it was being read; nothing was imported' },
  BUNDLE_NOT_ENCRYPTED: {
    exit: 1,
    meaning:
      'a key or passphrase was given and the bundle (or archive repository) is not encrypted (so nothing in it is authenticated); `--allow-plain` accepts it',
  },
  KEY_REQUIRED: { exit: 1, meaning: 'the bundle (or archive repository) is encrypted and no passphrase or key file was given' },
  WRONG_KEY: { exit: 1, meaning: 'wrong passphrase or key, or a passphrase given for a key-file bundle or archive repository (or the reverse)' },
  BAD_KEY_FILE: {
    exit: 1,
    meaning:
      'a key file that is not exactly 32 raw bytes or 64 hex digits, that looks like a passphrase (32 printable characters), or that others can read (`--allow-insecure-key-file`)',
  },
  BACKING_REFUSED: {
    exit: 1,
    meaning:
      'an image whose backing chain leaves its directory (absolute or `..` path), reaches a device, or has no recorded format; `--allow-backing PATH` names a file to accept',
  },
  FILE_EXISTS: { exit: 1, meaning: 'an import, a sync pull or `key generate` would overwrite an existing file' },
  BASE_MISSING: { exit: 1, meaning: 'a `--since` bundle imported into a VM that lacks its base snapshot (by content identity)' },
  DISK_MISMATCH: { exit: 1, meaning: "the bundle's disks differ from the target VM's" },
  // Archive repositories (clonebox archive)
  ARCHIVE_NOT_FOUND: { exit: 1, meaning: 'no archive repository at that path (no `config`), and none given by `--repo` or `CLONEBOX_ARCHIVE`' },
  ARCHIVE_EXISTS: { exit: 1, meaning: '`archive init` of a directory that is not empty' },
  ARCHIVE_UNSUPPORTED: { exit: 1, meaning: 'an archive repository format version this clonebox does not read' },
  ARCHIVE_CORRUPT: {
    exit: 1,
    meaning: 'a file of the archive repository is damaged, cut short or was modified (the message names the file and what is wrong); nothing was written',
  },
  ARCHIVE_BUSY: { exit: 1, meaning: "another process holds the archive repository's lock (a gc) longer than `CLONEBOX_LOCK_WAIT_MS`" },
  ARCHIVE_APPEND_ONLY: {
    exit: 1,
    meaning: '`archive forget` or `archive gc` of an append-only repository without its delete key (`--delete-key-file`); nothing was deleted',
  },
  ARCHIVE_SNAPSHOT_NOT_FOUND: { exit: 1, meaning: 'the archive holds no snapshot of that name (or content id prefix) for that VM' },
  // Team sync
  TEAM_NOT_FOUND: { exit: 1, meaning: 'no team of that name on this workstation' },
  TEAM_EXISTS: { exit: 1, meaning: '`team create` or `team join` of a team name this workstation already has' },
  DHT_UNREACHABLE: { exit: 1, meaning: 'no DHT node answered within 10 s (or `--timeout`, when shorter); the message names the bootstrap nodes' },
  NO_PEERS: {
    exit: 1,
    meaning: 'no teammate came online during a `snapshot sync` without `--watch` (within `--timeout`, or 60 s without it); nothing was pulled',
  },
  SYNC_BUSY: { exit: 1, meaning: "another sync is running in this home, or another process holds the team's catalog" },
  SYNC_TIMEOUT: { exit: 1, meaning: 'sync did not finish within `--timeout`; blocks received so far are kept' },
  SYNC_CHAIN: {
    exit: 1,
    meaning:
      "a teammate's chain could not be pulled (blocks unavailable or corrupt, the local VM changed meanwhile, a conflicting chain); nothing local was touched",
  },
  SYNC_CATALOG: {
    exit: 1,
    meaning: "a teammate's catalog lacks an entry it refers to, holds a record of the wrong kind there, or points two snapshots at one map entry",
  },
  SYNC_LIMIT: {
    exit: 1,
    meaning: 'a teammate went beyond a per-member limit (catalog entries or bytes, members per team); the message names the member and the limit',
  },
  // libvirt driver
  LIBVIRT_UNAVAILABLE: { exit: 1, meaning: '`virsh` is not installed, or libvirt does not answer or refuses the connection at the URI' },
  LIBVIRT_ERROR: { exit: 1, meaning: "a virsh command failed for another reason; the message carries libvirt's" },
  LIBVIRT_TIMEOUT: { exit: 1, meaning: 'a virsh call, a guest shutdown or a block job did not finish within its bound (block jobs are aborted)' },
  LIBVIRT_UNSUPPORTED: {
    exit: 1,
    meaning: 'a domain clonebox cannot manage: transient, already holding libvirt snapshot metadata, a writable disk that is not a qcow2 file',
  },
  LIBVIRT_XML_INVALID: { exit: 1, meaning: 'domain or snapshot XML that does not parse or is not a `<domain>` document' },
  DOMAIN_NOT_FOUND: { exit: 1, meaning: 'no libvirt domain of that name at the URI' },
  DOMAIN_CHANGED: { exit: 1, meaning: "the domain's disks are not where clonebox left them" },
  DOMAIN_RUNNING: { exit: 1, meaning: 'the operation needs the domain shut off and it is running' },
  DOMAIN_NOT_RUNNING: { exit: 1, meaning: 'the operation needs the domain running and it is not' },
  GUEST_AGENT_UNAVAILABLE: { exit: 1, meaning: 'no QEMU guest agent answers in the domain (a quiesced snapshot then proceeds without it, with a warning)' },
  // The REST service (clonebox serve) and its client (clonebox remote)
  USER_EXISTS: { exit: 1, meaning: '`user add` of a user name the service already has' },
  USER_NOT_FOUND: { exit: 1, meaning: '`user remove` or `user passwd` of a user the service does not have' },
  TLS_UNAVAILABLE: {
    exit: 1,
    meaning: '`serve` needs a certificate: none given with `--tls-cert`/`--tls-key` and no `openssl` to make a self-signed one, or the files do not load',
  },
  REMOTE_UNREACHABLE: { exit: 1, meaning: '`remote`: the service does not answer at the URL (connection refused, TLS failure, timeout)' },
  REMOTE_REFUSED: { exit: 1, meaning: '`remote`: the service refused the credentials (401) or the role (403)' },
  REMOTE_ERROR: { exit: 1, meaning: '`remote`: the service answered with an error the client has no code for; the message is the Redfish message' },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERROR_CODES;

interface CloneboxErrorOptions {
  hint?: string;
  cause?: unknown;
}

class CloneboxErrorBase extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly exitCode: 1 | 2;

  constructor(code: ErrorCode, message: string, opts: CloneboxErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'CloneboxError';
    this.code = code;
    this.hint = opts.hint;
    // A code smuggled past the type (a cast, a JavaScript caller) must not turn reporting into a crash.
    this.exitCode = (ERROR_CODES as Record<string, ErrorSpec | undefined>)[code]?.exit ?? 1;
  }
}

/** `CloneboxError.<CODE>(message, opts)`: one constructor per code. */
export type CloneboxErrorConstructors = {
  readonly [C in ErrorCode]: (message: string, opts?: CloneboxErrorOptions) => CloneboxError & { readonly code: C };
};

function constructors(): CloneboxErrorConstructors {
  const out: Partial<Record<ErrorCode, (message: string, opts?: CloneboxErrorOptions) => CloneboxErrorBase>> = {};
  for (const code of Object.keys(ERROR_CODES) as ErrorCode[]) {
    const make = (message: string, opts?: CloneboxErrorOptions): CloneboxErrorBase => {
      const err = new CloneboxErrorBase(code, message, opts);
      // The stack starts where the error was made, not in this table's plumbing.
      Error.captureStackTrace(err, make);
      return err;
    };
    out[code] = make;
  }
  return out as CloneboxErrorConstructors;
}

/**
 * `new CloneboxError(code, message, {hint, cause})` or `CloneboxError.CODE(message, {hint, cause})`;
 * `err instanceof CloneboxError` recognises both. The type of the same name is the instance type.
 */
export const CloneboxError: typeof CloneboxErrorBase & CloneboxErrorConstructors = Object.assign(CloneboxErrorBase, constructors());
export type CloneboxError = CloneboxErrorBase;

export function usageError(message: string, hint?: string): CloneboxError {
  return new CloneboxError('USAGE', message, hint === undefined ? {} : { hint });
}

/** Wraps a Node system error (ENOENT, EACCES, ENOSPC...) into a coded error that names the path. */
export function ioError(err: unknown, what: string, path: string): CloneboxError {
  if (err instanceof CloneboxError) return err;
  const e = err as NodeJS.ErrnoException;
  const reason =
    e?.code === 'ENOENT'
      ? 'no such file'
      : e?.code === 'EACCES' || e?.code === 'EPERM'
        ? 'permission denied'
        : e?.code === 'ENOSPC'
          ? 'no space left on device'
          : e?.code === 'EISDIR'
            ? 'is a directory'
            : e?.code === 'ENOTDIR'
              ? 'not a directory'
              : e?.code === 'EROFS'
                ? 'read-only file system'
                : (e?.message ?? String(err));
  return new CloneboxError('IO', `${what}: ${reason}, ${path}`, { cause: err });
}
