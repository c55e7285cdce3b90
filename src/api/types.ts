/**
 * The public shapes of the library: options and results of every namespace. Results are exactly the
 * objects the CLI prints with --json (snake_case keys, as docs/api.md and the CLI contract show).
 * This module stands alone (no import from the internals): the type declarations a consumer gets
 * never reach into clonebox's internal modules, and the compiler checks each internal result against
 * these shapes where the namespaces return it.
 */
import type { Readable, Writable } from 'node:stream';

/** A condition worth telling the user that does not stop the operation. */
export interface Warning {
  /**
   * RECOVERED: open() cleaned up an interrupted operation. WARNING: anything else worth a warning
   * line. NOTICE: what goes as planned but is worth telling, not a warning: what a sync tells as it
   * goes (peers that refused, chains that wait), the auto snapshots retention removed, the auto
   * snapshot taken before an operation.
   */
  code: 'RECOVERED' | 'WARNING' | 'NOTICE';
  message: string;
}

export type WarningCallback = (w: Warning) => void;

export interface ProgressEvent {
  /** What is being done: 'export', 'import', 'verify', 'receive', 'write', 'pulled'... */
  phase: string;
  done: number;
  /** Null when not known (a bundle read from a stream, bytes still to receive). */
  total: number | null;
}

export type ProgressCallback = (p: ProgressEvent) => void;

/** Taken by every long operation. */
export interface LongOptions {
  /** Aborting leaves nothing half-written (as SIGINT does for the CLI); the call rejects with ABORTED. */
  signal?: AbortSignal;
  onProgress?: ProgressCallback;
  /** Warnings of this call (default: the onWarning given to Clonebox.open). */
  onWarning?: WarningCallback;
}

/** Options that take only warnings (short operations that may still have something to say). */
export interface WarningOptions {
  onWarning?: WarningCallback;
}

export interface OpenOptions {
  /** The state directory (default $CLONEBOX_HOME, else ~/.clonebox). */
  home?: string;
  /**
   * Recover interrupted imports and pulls of VMs that never came to exist (default true). The CLI
   * turns it off for the commands that do not use the home.
   */
  recover?: boolean;
  /** Warnings of open() and, unless a call gives its own, of every call. Without it they are kept in `warnings`. */
  onWarning?: WarningCallback;
}

// ---- vms ----

export interface DiskView {
  target: string;
  path: string;
  virtual_size: number;
  /** `vm add` only: the disk's backing chain as checked, top first. */
  backing_chain?: BackingLink[];
}

/**
 * One image of a backing chain, top first (`vm add`, `image info`). A backing file is accepted when
 * its name is relative and stays in the top image's directory, it is a regular file and its format is
 * recorded; otherwise only when the user names it (`--allow-backing`, then `allowed_because` says why
 * it needed that). `refused` (image info only): why the chain is not followed past this image.
 */
export interface BackingLink {
  path: string;
  format: 'qcow2' | 'raw';
  backing_file: string | null;
  backing_format: string | null;
  allowed_because: string | null;
  refused: string | null;
}

/** `vm show --json`. */
export interface VmView {
  name: string;
  driver: 'image' | 'libvirt';
  current: string | null;
  snapshot_count: number;
  disks: DiskView[];
}

/** A libvirt domain's state as `virsh domstate` names it (`cb.vms.powerState`). */
export type PowerState = 'running' | 'idle' | 'paused' | 'in shutdown' | 'shut off' | 'crashed' | 'pmsuspended' | 'unknown';

export interface VmCreateOptions {
  /** Bytes, or a size as the CLI takes it ('20G', '512M'). */
  size: number | string;
  /** Directory for the disk (default <home>/disks/<vm>). */
  dir?: string;
  /** qcow2 cluster size, 512 to 2M (bytes or '64K'); default 64K. */
  clusterSize?: number | string;
}

export interface VmRemoveResult {
  name: string;
  deleted_files: string[];
  /** With `leaveGroups`: what changed in each group that named the VM (empty when none did). */
  left_groups: { group: string; group_deleted: boolean; snapshots_changed: string[]; snapshots_deleted: string[] }[];
}

// ---- snapshots ----

/** `snapshot show --json`, and each entry of `snapshot list --json`. */
export interface SnapshotView {
  name: string;
  vm_name: string;
  type: 'disk' | 'full';
  state: 'creating' | 'ready' | 'reverting' | 'deleting' | 'failed';
  created_at: string;
  description: string | null;
  parent: string | null;
  children: string[];
  size_bytes: number;
  tags: string[];
  auto_created: boolean;
  auto_policy: string | null;
  expires_at: string | null;
  current: boolean;
  disks: { target: string; path: string }[];
  /** Filesystem-consistent: the guest agent froze the guest's filesystems for it (`--quiesce`). */
  quiesced: boolean;
  /** A member of a group snapshot: the group and the group snapshot's name (docs/groups.md); null otherwise. */
  group: { name: string; snapshot: string } | null;
}

export interface TreeNode {
  name: string;
  created_at: string;
  current: boolean;
  children: TreeNode[];
}

/** `snapshot list --tree --json`. */
export interface SnapshotTree {
  vm_name: string;
  current: string | null;
  roots: TreeNode[];
}

/** What a text rendering of the tree needs besides the tree: every snapshot's view, and the expired ones. */
export interface SnapshotTreeDetails extends SnapshotTree {
  views: SnapshotView[];
  /** Auto snapshots retention would remove now (what `snapshot prune` would delete). */
  expired: string[];
  /** Why retention keeps each auto snapshot, and why it would remove the expired ones. */
  retention: { keep: { name: string; reasons: string[] }[]; remove: { name: string; reason: string }[]; next: { name: string; reason: string }[] };
}

export interface SnapshotCreateOptions extends LongOptions {
  /** Default snap-YYYYMMDD-HHMMSS. */
  name?: string;
  description?: string | null;
  tags?: string[];
  /** Include memory state (running libvirt VMs). */
  memory?: boolean;
  /** Freeze guest filesystems through the guest agent. */
  quiesce?: boolean;
}

export interface RestoreOptions extends LongOptions {
  /** Exactly one of name and at. */
  name?: string;
  /**
   * The newest snapshot created at or before this time: as `snapshot list` shows it, ISO-8601, a date,
   * `HH:MM`, `yesterday 14:30`, `2h ago` (a time given to the second covers that whole second).
   */
  at?: string;
  /** Snapshot the current state first (as `before_operations: [restore]` does). */
  backup?: boolean;
  /** Start the VM afterwards (libvirt). */
  start?: boolean;
  /** Skip the auto snapshot `before_operations: [restore]` asks for. */
  noAutoSnapshot?: boolean;
}

/** `snapshot restore --json`. */
export interface RestoreResult {
  vm: string;
  restored: string;
  backup: string | null;
}

/** `snapshots.select()`: the snapshot a `{name}` or `{at}` selection names. */
export interface SnapshotSelection {
  snapshot: SnapshotView;
  /** For `at`: the instant (ISO-8601, UTC) the time was read as; snapshots created at or before it qualified. */
  resolved_at: string | null;
}

export interface PromoteOptions extends LongOptions {
  /** The name of the snapshot that keeps the present state (default snap-YYYYMMDD-HHMMSS). */
  keepAs?: string;
}

/** `snapshot promote --json`. */
export interface PromoteResult {
  vm: string;
  promoted: string;
  /** The snapshot that keeps the state the VM had before; null when it had nothing unsaved. */
  kept: string | null;
}

export interface BranchOptions {
  /** The snapshot the branch starts from. */
  from: string;
  description?: string | null;
}

export interface DeleteOptions extends LongOptions {
  /** Delete the whole subtree. */
  recursive?: boolean;
  /** Merge its data into its children. */
  keepChildren?: boolean;
  /** Skip the auto snapshot `before_operations: [delete]` asks for. */
  noAutoSnapshot?: boolean;
}

/** `snapshot delete --json`. */
export interface DeleteResult {
  vm: string;
  deleted: string[];
  merged_into: string[];
}

/** Options of `snapshots.diff`: the guest-aware views (docs/guest-diff.md); none of them: byte ranges only. */
export interface DiffOptions {
  /** Files added, removed, modified and changed in metadata, per partition. */
  files?: boolean;
  /** Installed, removed, upgraded and downgraded packages (dpkg, apk). */
  packages?: boolean;
  /** Changes under /etc with a unified diff of text files. */
  etc?: boolean;
  /** Largest file (bytes, each side) shown as a unified diff under /etc (default 65536). */
  maxDiffBytes?: number;
  signal?: AbortSignal;
}

/** One file-level change (`snapshot diff --files --json`). */
export interface GuestFileChange {
  path: string;
  change: 'added' | 'removed' | 'modified' | 'metadata' | 'renamed';
  /** `renamed`: the path in the older state (the same file, by inode and birth; `fields` says what else changed). */
  path_before?: string;
  type: 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket' | 'unknown';
  type_before?: GuestFileChange['type'];
  size_before: number | null;
  size_after: number | null;
  mtime_before: string | null;
  mtime_after: string | null;
  /** What differs: content, type, mode, owner, target, size, device. */
  fields?: string[];
  mode_before?: string;
  mode_after?: string;
  owner_before?: string;
  owner_after?: string;
  target_before?: string;
  target_after?: string;
  /** Number of names of a file with hard links. */
  links?: number;
  /** A directory added or removed whole: entries beneath it and their bytes. */
  entries?: number;
  bytes?: number;
}

/** One change under /etc (`--etc`). */
export interface GuestEtcChange extends GuestFileChange {
  diff?: string;
  binary?: boolean;
  too_large?: boolean;
}

/** One partition of a disk in the guest-aware diff. */
export interface GuestPartitionDiff {
  /** 1-4 primary or GPT entry number, 5+ logical, 0 the whole disk (no partition table). */
  index: number;
  start: number;
  size: number;
  /** `mbr:0x83`, `gpt:<type guid>` or `none`. */
  type: string;
  filesystem: 'ext2' | 'ext3' | 'ext4' | 'xfs' | 'btrfs' | 'lvm2' | 'luks' | 'ntfs' | 'vfat' | 'swap' | 'unknown';
  status: 'compared' | 'unchanged' | 'unsupported' | 'error';
  /** Why a partition was not compared. */
  message?: string;
  warnings: string[];
  summary?: { added: number; removed: number; modified: number; metadata: number; renamed: number; bytes_added: number; bytes_removed: number };
  files?: GuestFileChange[];
  packages?: {
    manager: 'dpkg' | 'apk';
    path: string;
    changes: { name: string; change: 'installed' | 'removed' | 'upgraded' | 'downgraded' | 'changed'; from: string | null; to: string | null }[];
  }[];
  etc?: GuestEtcChange[];
  stats?: { changed_blocks: number; inodes_compared: number; owner_scan: boolean; dirs_searched: number; dirs_walked: number; bytes_read: number };
}

/** `snapshot diff --json`. */
export interface DiffResult {
  from: string;
  to: string;
  disks: {
    target: string;
    granularity: number;
    changed_bytes: number;
    ranges: { offset: number; length: number }[];
    /** With --files, --packages or --etc. */
    guest?: { scheme: 'mbr' | 'gpt' | 'none'; warnings: string[]; partitions: GuestPartitionDiff[] };
  }[];
}

/** `snapshot stats --json`. */
export interface StatsResult {
  virtual_size: number;
  physical_bytes: number;
  allocated_bytes: number;
  unique_bytes: number;
  savings_percent: number;
}

/** What a text rendering adds: layer files and snapshots counted. */
export interface StatsDetails extends StatsResult {
  layers: number;
  snapshots: number;
}

/** Retention policy of auto snapshots (keys as `snapshot policy --json` shows them). */
export interface Policy {
  keep_last?: number;
  keep_hourly?: number;
  keep_daily?: number;
  keep_weekly?: number;
  keep_monthly?: number;
  keep_yearly?: number;
  /** A duration such as '7d' or '1y2m': every snapshot within it of the newest one. */
  keep_within?: string;
  /** A duration: every snapshot younger than it (age from now; a named policy's `keep: "5d"`). */
  keep_for?: string;
  max_snapshots?: number;
  /** Bytes, or a size such as '10G'. */
  max_size?: number | string;
}

/** Changes to a policy: a value sets the key, null drops it (counts and sizes of 0 are refused). */
export type PolicyChanges = { [K in keyof Policy]?: Policy[K] | null };

/** `snapshot policy --json`: the policy after the change (max_size in bytes). */
export interface PolicyResult {
  vm: string;
  policy: Omit<Policy, 'max_size'> & { max_size?: number };
}

/** `snapshot prune --json`. */
export interface PruneResult {
  vm: string;
  dry_run: boolean;
  keep: { name: string; reasons: string[] }[];
  remove: { name: string; reason: string }[];
  /** Kept now, but removed by the policy's next auto snapshot (were it taken now): what would go next. */
  next: { name: string; reason: string }[];
}

export interface RunOptions extends WarningOptions {
  /** Name of the auto snapshot. */
  name?: string;
  /** Restore the snapshot when the command exits non-zero. */
  rollbackOnFail?: boolean;
  /**
   * The operation the command performs ('upgrade', ...): the auto snapshot records it as its
   * auto_policy `before-<op>` (default: `run`).
   */
  op?: string;
}

/** `snapshot run`: the command ran with inherited stdio; its exit status (128 + signal number when killed). */
export interface RunResult {
  snapshot: string;
  exit_code: number;
  rolled_back: boolean;
}

// ---- groups ----

/** `group show --json`, and each entry of `group list --json`. */
export interface GroupView {
  name: string;
  description: string | null;
  created_at: string;
  /** Member VM names, sorted (the order their locks are taken in). */
  members: string[];
  /** Members that are no longer registered VMs: group snapshots are refused until they are removed from the group. */
  missing: string[];
  snapshot_count: number;
  /** The newest group snapshot's name, or null. */
  latest: string | null;
}

/** `group policy` (a group's named policy; docs/groups.md): what `cb.groups.policy()` takes. */
export interface GroupPolicySpec {
  /** Retention over the group snapshots this policy made (the keys of `snapshot policy`). */
  policy: Policy;
  /** When it runs: daily "HH:MM" or cron expressions. */
  when: string[];
  /** IANA time zone the times are read in (default: local). */
  timezone?: string | null;
}

/** A group's named policies: `cb.groups.policy()`, `group policy --json`. */
export interface GroupPolicies {
  group: string;
  /** `when` in cron form (a daily "HH:MM" as `M H * * *`); `since`: when the schedule was set. */
  policies: Record<string, { policy: Omit<Policy, 'max_size'> & { max_size?: number }; when: string[]; timezone: string | null; since: string }>;
}

export interface GroupCreateOptions {
  /** The member VMs (at least one; each registered). */
  vms: string[];
  description?: string | null;
}

/** One member of a group snapshot: the VM and its member snapshot's name in that VM's list. */
export interface GroupSnapshotMember {
  vm: string;
  snapshot: string;
}

/** `snapshot create --group --json`, `snapshot show --group --json`, each entry of `snapshot list --group --json`. */
export interface GroupSnapshotView {
  name: string;
  group: string;
  state: 'creating' | 'ready' | 'reverting' | 'deleting';
  created_at: string;
  description: string | null;
  tags: string[];
  /** 'full' when every member holds memory state (`--memory`). */
  type: 'disk' | 'full';
  /** Sorted by VM name. */
  members: GroupSnapshotMember[];
  /**
   * How the members were held at one point: 'locks' (image-driver VMs, whose images only clonebox
   * writes), 'paused' (running domains suspended), 'frozen' (filesystems frozen by the guest agent,
   * `--quiesce`), 'mixed' (frozen where an agent answered, paused where not).
   */
  consistency: 'locks' | 'paused' | 'frozen' | 'mixed';
  /** Milliseconds the running domains were paused or frozen; null when none was running. */
  pause_ms: number | null;
  /** Every member snapshot was quiesced by its guest agent. */
  quiesced: boolean;
  auto_created: boolean;
  auto_policy: string | null;
}

export interface GroupSnapshotCreateOptions extends LongOptions {
  /** Default snap-YYYYMMDD-HHMMSS; every member snapshot gets this name. */
  name?: string;
  description?: string | null;
  tags?: string[];
  /** Include memory state (running libvirt members). */
  memory?: boolean;
  /** Freeze guest filesystems through the guest agent where one answers (others are paused). */
  quiesce?: boolean;
}

export interface GroupRestoreOptions extends LongOptions {
  /** The group snapshot. */
  name: string;
  /** Start the libvirt members afterwards. */
  start?: boolean;
  /** Skip the group auto snapshot `before_operations: [restore]` (of the group or a member) asks for. */
  noAutoSnapshot?: boolean;
}

/** `snapshot restore --group --json`. */
export interface GroupRestoreResult {
  group: string;
  restored: string;
  members: GroupSnapshotMember[];
  /** The group auto snapshot taken first (`before_operations: [restore]`), or null. */
  auto_snapshot: string | null;
}

export interface GroupDeleteOptions extends LongOptions {
  /** Also delete the member snapshots' descendants. */
  recursive?: boolean;
  /** Merge each member snapshot's data into its children. */
  keepChildren?: boolean;
  /** Skip the group auto snapshot `before_operations: [delete]` (of the group or a member) asks for. */
  noAutoSnapshot?: boolean;
}

/** `snapshot delete --group --json`. */
export interface GroupDeleteResult {
  group: string;
  deleted: string;
  members: { vm: string; deleted: string[]; merged_into: string[] }[];
  /** The group auto snapshot taken first (`before_operations: [delete]`), or null. */
  auto_snapshot: string | null;
}

// ---- bundles ----

/** Where a bundle is read from: a file path, or a Node stream that gives it. */
export type BundleInput = string | Readable;

/**
 * A key for an encrypted bundle: a key file, a passphrase file, the 32 key bytes or the passphrase
 * itself (at most one of the four). Bytes given here are copied and the copies zeroed after the call;
 * the caller zeroes its own. A string passphrase cannot be zeroed (JavaScript strings are immutable):
 * prefer bytes.
 */
export interface KeyOptions {
  keyFile?: string;
  /** The key itself: exactly 32 bytes. */
  key?: Uint8Array;
  passphraseFile?: string;
  passphrase?: string | Uint8Array;
  /**
   * Asked for the passphrase when the bundle turns out to need one and none was given (the CLI
   * prompts on a terminal); return null to give none. Import, verify and inspect only.
   */
  askPassphrase?: (file: string) => Promise<Uint8Array | null>;
  /** Accept a plain bundle although a key was given (else BUNDLE_NOT_ENCRYPTED). Import, verify, inspect. */
  allowPlain?: boolean;
  /** Accept a key file that others can read (else BAD_KEY_FILE). */
  allowInsecureKeyFile?: boolean;
}

export interface ExportOptions extends LongOptions, KeyOptions {
  /** A file path, or a Node stream that takes the bundle. */
  output: string | Writable;
  /** Last snapshot to include (default: the current one); with `group`, the last group snapshot (default: the newest). */
  name?: string;
  /** Include only the snapshots after this one (the importing VM must hold it). Not with `group`. */
  since?: string;
  /**
   * Export a VM group (pass null as the VM): every member's chain up to its member snapshot of group
   * snapshot `name`, in one bundle whose blocks are deduplicated across the VMs (format version 2).
   */
  group?: string;
  /** Encrypt (needs a key). */
  encrypt?: boolean;
  /** zstd level, 1-19 (default 3). */
  level?: number;
  /**
   * Replace an existing bundle at `output` (otherwise an existing file is FILE_EXISTS). Never replaces a
   * file inside the home, a VM's disk, layer or memory state, or a file that is not a bundle.
   */
  force?: boolean;
}

/** `snapshot export --json`. `file` is '-' when the output was a stream. */
export interface ExportResult {
  file: string;
  /** Every snapshot of the bundle, chain after chain. */
  snapshots: string[];
  /** Per VM, its snapshots in the bundle: one entry, or one per member of a group bundle. */
  chains: { vm: string; snapshots: string[] }[];
  /** The group of a group bundle (`group` option), else null. */
  group: string | null;
  logical_bytes: number;
  unique_bytes: number;
  stored_bytes: number;
  blocks: number;
  unique_blocks: number;
  encrypted: boolean;
  seconds: number;
  bundle_bytes: number;
  since: string | null;
}

export interface ImportOptions extends LongOptions, KeyOptions {
  /** Directory for the disks of a new VM (default <home>/disks/<vm>). */
  dir?: string;
  /** Refuse (BUDGET_EXCEEDED) once the import would write more than this many bytes. Free space is always checked (NO_SPACE). */
  maxWrite?: number;
  /** Refuse (BUDGET_EXCEEDED) a bundle holding a disk larger than this (default 16 TiB). */
  maxVirtualSize?: number;
}

/** Import of a group bundle: pass null as the VM; the members keep their own names. */
export interface GroupImportOptions extends ImportOptions {
  /** The name the group is registered under (the bundle's own group name, or another). */
  group: string;
  /** With a group: each member's disks go to <dir>/<vm> (default <home>/disks/<vm>). */
  dir?: string;
}

/** `snapshot import --group --json`. */
export interface GroupImportResult {
  group: string;
  /** Every member VM, each new, by name. */
  members: ImportResult[];
  bytes_written: number;
  seconds: number;
}

/** `snapshot import --json`. */
export interface ImportResult {
  vm: string;
  snapshots: string[];
  bytes_written: number;
  seconds: number;
  /** The VM's current snapshot after the import. */
  current: string | null;
  /** For a --since bundle: the local snapshot the imported ones stand on. */
  base: string | null;
}

export type VerifyOptions = LongOptions & KeyOptions;

/** `snapshot verify --json`. Problems found in the bundle are the result (ok false), not a rejection. */
export interface VerifyResult {
  ok: boolean;
  snapshots: string[];
  blocks_checked: number;
  errors: { code: string; message: string }[];
  encrypted: boolean | null;
  packs: number;
  bytes: number;
}

/** `snapshot inspect --json`. */
export interface InspectResult {
  file: string;
  format_version: number;
  encrypted: boolean;
  key: 'none' | 'passphrase' | 'key-file';
  /** False when the bundle is encrypted and no key was given: only the header was read. */
  readable: boolean;
  /**
   * Always false: sizes, digests and content ids below are the bundle's own claims (its seal), read
   * without checking a block (`verify` checks them). In a plain bundle nobody vouches for them at all.
   */
  claims_verified: false;
  bundle_bytes: number | null;
  /** The VM of a single-VM bundle; null for a group bundle (see `chains`). */
  vm: string | null;
  /** The group of a group bundle (format version 2), else null. */
  group: { name: string; members: string[]; snapshots: { name: string; created_at: string; members: Record<string, string> }[] } | null;
  /** Per VM, the names of its snapshots in the bundle (one entry unless a group bundle). */
  chains: { vm: string; snapshots: string[] }[];
  created_at: string | null;
  since: { name: string; content_id: string } | null;
  snapshots: {
    /** The VM whose chain holds the snapshot. */
    vm: string;
    name: string;
    parent: string | null;
    created_at: string;
    description: string | null;
    tags: string[];
    content_id: string;
    data_bytes: number;
    zero_bytes: number;
    disks: { target: string; virtual_size: number; cluster_size: number; data_bytes: number; zero_bytes: number; blocks: number }[];
  }[];
  packs: number;
  logical_bytes: number;
  unique_bytes: number;
  stored_bytes: number;
  blocks: number;
  unique_blocks: number;
  frames: number;
  dedup_savings_percent: number;
  compression_savings_percent: number;
  total_savings_percent: number;
}

/** `key generate --json`. */
export interface KeyFileResult {
  file: string;
}

// ---- teams ----

/** `team show --json` (and `team join --json`). */
export interface TeamView {
  team: string;
  self: { name: string; public_key: string };
  members: { name: string; public_key: string; first_seen: string; last_seen: string; via?: string }[];
  bootstrap: string[];
}

/** `team create --json` and `team invite --json`. The invite is a secret. */
export interface TeamInvite {
  team: string;
  invite: string;
}

export interface TeamCreateOptions {
  /** This workstation's name (default: the host name). */
  name?: string;
  /** Private DHT bootstrap nodes ('host:port'). */
  bootstrap?: string[];
}

export interface TeamJoinOptions extends TeamCreateOptions {
  /**
   * The invite's text. A secret: on a command line it is visible to other users of the machine, so
   * the CLI takes it from a file or stdin (`inviteFrom`) too. Exactly one of the two.
   */
  invite?: string;
  /** A file holding the invite (its first non-empty line), or a stream that gives it (stdin). */
  inviteFrom?: string | NodeJS.ReadableStream;
}

/** This workstation's identity. */
export interface Workstation {
  name: string;
  public_key: string;
}

// ---- sync ----

export interface ShareOptions extends WarningOptions {
  team: string;
  /** Share only the snapshots from the root to this one (default: all, and the later ones). */
  name?: string;
}

/** `snapshot share --json`. `published` is null when a running sync holds the catalog (it publishes). */
export interface ShareResult {
  vm: string;
  team: string;
  upto: string | null;
  published: string[] | null;
}

/** `snapshot share --group` (a null VM and `group`): share a VM group's members and group snapshots. */
export interface ShareGroupOptions extends WarningOptions {
  team: string;
  group: string;
}

/** `snapshot share --group --json`. `published` (group snapshots in the catalog) is null when a running sync holds the catalog. */
export interface ShareGroupResult {
  group: string;
  team: string;
  /** The member VMs now shared, whole chains. */
  vms: string[];
  published: string[] | null;
}

/** `snapshot unshare --json`. */
export interface UnshareResult {
  vm: string;
  team: string;
  was_shared: boolean;
}

export interface SyncProgressEvent extends ProgressEvent {
  /**
   * wait: no teammate online yet (done: seconds waited, total: seconds it waits before NO_PEERS; chain
   * ''); receive: bytes of blocks received; write: bytes of a snapshot's layers written; pulled: a
   * chain registered.
   */
  phase: 'wait' | 'receive' | 'write' | 'pulled';
  /** The chain: '<vm> from <member>' (and ' (via <member>)' when relayed). */
  chain: string;
  /** write: the snapshot being written. */
  snapshot?: string;
  /** pulled: the local VM and the block counts (done and total: the snapshots added). */
  vm?: string;
  blocks_fetched?: number;
  blocks_reused?: number;
}

export interface SyncRunOptions extends Omit<LongOptions, 'onProgress'> {
  team: string;
  /** DHT bootstrap nodes ('host:port'; default: the team's setting, else the public DHT). */
  bootstrap?: string[];
  /** Keep serving and pulling until the signal aborts (then it resolves normally). */
  watch?: boolean;
  /** Seconds before it gives up (default 300). */
  timeout?: number;
  onProgress?: (p: SyncProgressEvent) => void;
  /** Phase timings for profiling: milliseconds since the process started, and what happened. */
  onTrace?: (ms: number, what: string) => void;
  /** Refuse (BUDGET_EXCEEDED) a pulled chain whose new layers would write more than this many bytes. Free space is always checked (NO_SPACE). */
  maxWrite?: number;
  /** Refuse (BUDGET_EXCEEDED) a pulled chain holding a disk larger than this (default 16 TiB). */
  maxVirtualSize?: number;
}

/** `snapshot sync --json`. A run where a chain failed rejects instead (the first chain's code). */
export interface SyncResult {
  peers: string[];
  chains: {
    vm: string;
    snapshots: string[];
    blocks_fetched: number;
    blocks_reused: number;
    bytes_received: number;
    peer: string;
    remote_vm: string;
    via?: string;
    unavailable?: string[];
  }[];
  bytes_received: number;
  shared: { vm: string; snapshots: string[] }[];
  /**
   * Teammates' shared groups (`snapshot share --group`): the group snapshots this run registered, and
   * those waiting because a member's snapshot is not complete here (`missing`: the teammate's VM names).
   */
  groups: { group: string; peer: string; registered: string[]; waiting: { snapshot: string; missing: string[] }[] }[];
}

// ---- images ----

/** `image info --json`. */
export interface ImageInfo {
  format: 'qcow2';
  version: 2 | 3;
  virtual_size: number;
  cluster_size: number;
  backing_file: string | null;
  backing_format: string | null;
  compression_type: 'zlib' | 'zstd';
  extended_l2: boolean;
  data_bytes: number;
  zero_bytes: number;
  /** The backing chain, top first, as far as clonebox would follow it (see BackingLink). */
  backing_chain: BackingLink[];
}

/** Each entry of `image map --json`: a guest range this file alone holds. */
export interface Extent {
  offset: number;
  length: number;
  kind: 'data' | 'zero' | 'unallocated';
}

// ---- events ----

/** One line of the home's event log: a snapshot made, restored, changed (merged) or deleted by any process. */
export interface HomeEvent {
  /** ISO-8601, when the change committed. */
  time: string;
  vm: string;
  snapshot: string;
  op: 'created' | 'restored' | 'changed' | 'deleted';
  /** The process that made the change. */
  pid: number;
}

/** A follower of the event log (`cb.events.tail()`). */
export interface HomeEventTail {
  /** Events appended since the last read, oldest first. */
  read(): Promise<HomeEvent[]>;
  /** Calls fn when the log may have grown (then read()). */
  onAppend(fn: () => void): void;
  close(): Promise<void>;
}

// ---- dht, demo ----

export interface DhtOptions extends WarningOptions {
  /** IPv4 address to listen on (default 127.0.0.1). */
  host?: string;
  /** UDP port of the bootstrap address (default 49737; 0: any free port). */
  port?: number;
}

/** A private DHT running in this process until closed. */
export interface PrivateDht {
  /** What teammates pass as bootstrap: 'host:port'. */
  bootstrap: string;
  host: string;
  port: number;
  nodes: number;
  close(): Promise<void>;
}

export interface DemoOptions {
  /** Working directory (default: a new temporary directory). */
  dir?: string;
  /** Each line of the story as it runs. */
  onLog?: (line: string) => void;
}

/** `demo --json`. */
export interface DemoResult {
  dir: string;
  home: string;
  vm: string;
  steps: { command: string; output: string[] }[];
  stats: { allocated_bytes: number; unique_bytes: number; savings_percent: number; physical_bytes: number };
  seconds: number;
}

// ---- config (.clonebox.yaml) and schedules ----

/** A named policy as `config show` gives it: retention keys, plus its schedule. */
export interface NamedPolicyView extends Omit<Policy, 'max_size'> {
  max_size?: number;
  /** Cron expressions (a daily "HH:MM" is shown in its cron form); empty: not scheduled. */
  when: string[];
  timezone: string | null;
}

/** `config show --json`: the effective configuration of a VM, in the file's schema (applying it changes nothing). */
export interface EffectiveConfig {
  vm: {
    name: string;
    driver: 'image' | 'libvirt';
    disks?: string[];
    libvirt?: { domain: string; uri: string };
    snapshots: {
      auto_snapshot: { enabled: boolean; before_operations: string[]; policy: Omit<Policy, 'max_size'> & { max_size?: number } };
      policies: Record<string, NamedPolicyView>;
    };
  };
  /** The file last applied to this VM, or null. */
  source: string | null;
}

/** `config check --json`. */
export interface ConfigCheckResult {
  file: string;
  vm: string;
  policies: string[];
  /** The groups the file names (`groups:`). */
  groups: string[];
}

/** `apply --json`. */
export interface ConfigApplyResult {
  file: string;
  vm: string;
  /** True when apply registered the VM (the file names its disks or libvirt domain). */
  registered: boolean;
  /** False when the VM and every group of the file already had exactly this configuration (nothing was written). */
  changed: boolean;
  config: EffectiveConfig;
  /** Each group of the file's `groups:`: created, changed, or already matching. */
  groups: { name: string; created: boolean; changed: boolean }[];
}

/** One policy in `schedule list --json`. */
export interface ScheduleEntry {
  /** The VM, or for a group's policy the group's name. */
  vm: string;
  /** Set for a group's policy (its runs take group snapshots; docs/groups.md); absent for a VM's. */
  group?: string;
  policy: string;
  when: string[];
  timezone: string | null;
  /** ISO time of the last scheduled snapshot of this policy, or null. */
  last_run: string | null;
  /** ISO time it is next due, or null when it is not scheduled or auto snapshots are disabled. */
  next_run: string | null;
  /** Due now: the next `schedule run` takes a snapshot. */
  due: boolean;
}

/** `schedule run --json`: what one pass did. */
export interface ScheduleRunResult {
  /** The time the pass ran at (CLONEBOX_NOW when set). */
  at: string;
  /** False when another `schedule run` held the lock: this pass did nothing. */
  ran: boolean;
  /** `group` is set for a group's policy (docs/groups.md): `vm` is then the group's name, `snapshot` a group snapshot. */
  taken: { vm: string; group?: string; policy: string; snapshot: string }[];
  pruned: { vm: string; group?: string; snapshot: string; reason: string }[];
  /** Policies that were due but failed (the pass goes on with the others). */
  failed: { vm: string; group?: string; policy: string; error: string }[];
}

export interface ScheduleInstallOptions {
  /** Write the units to ~/.config/systemd/user (or this directory) instead of only returning them. */
  write?: boolean;
  dir?: string;
  /** The command the service runs (default: this clonebox, with the home made explicit). */
  command?: string[];
}

/** `schedule install --json`: the systemd user units. */
export interface ScheduleInstallResult {
  service: { name: string; text: string };
  timer: { name: string; text: string };
  /** Where they were written, or null when only printed. */
  written: string[] | null;
}
