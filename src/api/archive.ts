/**
 * `cb.archive`: a deduplicated archive repository for the snapshot chains of many VMs over time (the
 * work is in src/archive/; docs/archive.md for users, docs/archive-format.md for the format). Every call
 * names the repository with `repo`, else the CLONEBOX_ARCHIVE environment variable. An encrypted
 * repository needs its key for every call (the same options as bundles: a key file or a passphrase).
 */

import type { ArchiveImportResult } from '../archive/bundles.js';
import type { PushResult } from '../archive/push.js';
import type { ArchiveListEntry, ArchiveShowResult, ArchiveStats } from '../archive/stats.js';
import type { KeySource } from '../bundle/crypto.js';
import { usageError } from '../errors.js';
import {
  type ArchiveCheckOptions,
  type ArchiveCheckResult,
  type ArchiveForgetOptions,
  type ArchiveForgetResult,
  type ArchiveGcOptions,
  type ArchiveGcResult,
  archiveCheck,
  archiveForget,
  archiveGc,
  writeDeleteKey,
} from './archive-maintenance.js';
import { hasKey, withKey } from './bundles.js';
import type { Session } from './session.js';
import type { KeyOptions, LongOptions } from './types.js';

export type { ArchiveImportResult } from '../archive/bundles.js';
export type { PushResult as ArchivePushResult } from '../archive/push.js';
export type { ArchiveListEntry, ArchiveShowResult, ArchiveStats, ArchiveVmStats } from '../archive/stats.js';

/** Which repository, and its key. */
export interface ArchiveRepoOptions extends KeyOptions {
  /** The repository directory (default: $CLONEBOX_ARCHIVE). */
  repo?: string;
}

export interface ArchiveInitOptions extends ArchiveRepoOptions {
  /** Encrypt (needs a key file or a passphrase). */
  encrypt?: boolean;
  /** zstd level of the repository, 1-19 (default 3). */
  level?: number;
  /** Mark the repository append-only: forget and gc then need the delete key (`deleteKeyFile`, required with it). */
  appendOnly?: boolean;
  /** The delete key of an append-only repository: a 32-byte key file (`clonebox key generate`), kept away from the workstations that push. */
  deleteKeyFile?: string;
}

export interface ArchiveInitResult {
  repo: string;
  encrypted: boolean;
  append_only: boolean;
  level: number;
}

export interface ArchivePushOptions extends ArchiveRepoOptions, LongOptions {
  /** Push only root..name (default: every snapshot of the VM, the whole tree). */
  name?: string;
}

export interface ArchiveRestoreOptions extends ArchiveRepoOptions, LongOptions {
  /** Name of the new VM (default: the archived VM's). */
  as?: string;
  /** Directory of the new VM's disks (default <home>/disks/<vm>). */
  dir?: string;
}

export interface ArchiveRestoreResult {
  vm: string;
  from_vm: string;
  snapshots: string[];
  current: string;
  content_id: string;
  bytes_written: number;
  seconds: number;
}

export interface ArchiveExportOptions extends ArchiveRepoOptions, LongOptions {
  /** The bundle file to write. */
  output: string;
  /** Encrypt the bundle with the key given (the repository's, when it is encrypted). */
  encrypt?: boolean;
  /** zstd level of the bundle, 1-19 (default 3). */
  level?: number;
  /** Replace an existing bundle at `output`. */
  force?: boolean;
}

export interface ArchiveExportResult {
  file: string;
  vm: string;
  snapshots: string[];
  logical_bytes: number;
  stored_bytes: number;
  bundle_bytes: number;
  encrypted: boolean;
  seconds: number;
}

export interface ArchiveImportOptions extends ArchiveRepoOptions, LongOptions {
  /** Store the chain under this VM name (default: the bundle's). */
  as?: string;
}

export class Archive {
  constructor(private readonly s: Session) {}

  /** The repository the options name, opened with `key` (`allowPlain`: a key given to a plain repository is not refused). */
  private async open(opts: ArchiveRepoOptions, key: KeySource | null, allowPlain = opts.allowPlain) {
    const { Repo, resolveRepoDir } = await import('../archive/repo.js');
    return Repo.open(resolveRepoDir(opts.repo), key, { allowPlain, askPassphrase: opts.askPassphrase });
  }

  /** Creates a repository in `dir` (a new or empty directory). */
  init(dir: string, opts: ArchiveInitOptions = {}): Promise<ArchiveInitResult> {
    return this.s.run(async () => {
      if (opts.encrypt && !hasKey(opts)) throw usageError('--encrypt needs --passphrase-file FILE or --key-file FILE');
      if (!opts.encrypt && hasKey(opts)) throw usageError('a key was given without --encrypt', 'add --encrypt to encrypt the repository');
      if (opts.appendOnly && opts.deleteKeyFile === undefined) {
        throw usageError(
          '--append-only needs --delete-key-file FILE',
          'make one with `clonebox key generate -o FILE` and keep it away from the workstations that push',
        );
      }
      if (!opts.appendOnly && opts.deleteKeyFile !== undefined) throw usageError('--delete-key-file is for --append-only repositories');
      const { Repo } = await import('../archive/repo.js');
      const r = await withKey(opts, (key) => Repo.init(dir, { key, level: opts.level, appendOnly: opts.appendOnly }));
      if (opts.deleteKeyFile !== undefined) await writeDeleteKey(r, opts.deleteKeyFile, opts.allowInsecureKeyFile);
      return { repo: r.dir, encrypted: r.encrypted, append_only: r.appendOnly, level: r.level };
    });
  }

  /** Stores a VM's snapshots (the whole tree, or root..name); only blocks the repository lacks are written. */
  push(vm: string, opts: ArchivePushOptions = {}): Promise<PushResult> {
    return this.s.run(async () => {
      const { pushVm } = await import('../archive/push.js');
      return withKey(opts, async (key) =>
        pushVm(this.s.home, await this.open(opts, key), vm, { name: opts.name, signal: this.s.signal(opts.signal), onProgress: opts.onProgress }),
      );
    });
  }

  /** Archived snapshots, of every VM or of `vm`. */
  list(vm?: string, opts: ArchiveRepoOptions = {}): Promise<ArchiveListEntry[]> {
    return this.s.run(async () => {
      const { listArchive } = await import('../archive/stats.js');
      return withKey(opts, async (key) => listArchive(await this.open(opts, key), vm));
    });
  }

  /** One archived snapshot: its metadata, disks and the line a restore rebuilds. By name, or by a content id prefix. */
  show(vm: string, snapshot: string, opts: ArchiveRepoOptions = {}): Promise<ArchiveShowResult> {
    return this.s.run(async () => {
      const { showArchived } = await import('../archive/stats.js');
      return withKey(opts, async (key) => showArchived(await this.open(opts, key), vm, snapshot));
    });
  }

  /** Logical size, stored size, dedup and compression savings, per VM and in all. */
  stats(opts: ArchiveRepoOptions = {}): Promise<ArchiveStats> {
    return this.s.run(async () => {
      const { archiveStats } = await import('../archive/stats.js');
      return withKey(opts, async (key) => archiveStats(await this.open(opts, key)));
    });
  }

  /**
   * Writes root..snapshot of an archived VM as a normal bundle (what `snapshot export` of that chain
   * writes), touching no VM. The key given opens an encrypted repository and, with `encrypt`, encrypts the bundle.
   */
  export(vm: string, snapshot: string, opts: ArchiveExportOptions): Promise<ArchiveExportResult> {
    return this.s.run(async () => {
      if (opts.encrypt && !hasKey(opts)) throw usageError('--encrypt needs --passphrase-file FILE or --key-file FILE');
      const { exportArchived } = await import('../archive/bundles.js');
      return withKey(opts, async (key) => {
        const repo = await this.open(opts, key, opts.allowPlain || Boolean(opts.encrypt));
        const r = await exportArchived(repo, vm, snapshot, {
          output: opts.output,
          key: opts.encrypt ? key : null,
          level: opts.level,
          force: opts.force,
          signal: this.s.signal(opts.signal),
          onProgress: opts.onProgress,
        });
        return {
          file: r.file,
          vm,
          snapshots: r.snapshots,
          logical_bytes: r.logical_bytes,
          stored_bytes: r.stored_bytes,
          bundle_bytes: r.bundle_bytes,
          encrypted: r.encrypted,
          seconds: r.seconds,
        };
      });
    });
  }

  /** Stores a bundle's chain (a whole one, not a `--since` bundle). The key given opens the repository and the bundle. */
  import(file: string, opts: ArchiveImportOptions = {}): Promise<ArchiveImportResult> {
    return this.s.run(async () => {
      const { importBundleToArchive } = await import('../archive/bundles.js');
      return withKey(opts, async (key) => {
        const repo = await this.open(opts, key, true);
        return importBundleToArchive(repo, file, {
          bundleKey: key,
          as: opts.as,
          allowPlain: opts.allowPlain || (key !== null && repo.encrypted),
          signal: this.s.signal(opts.signal),
          onProgress: opts.onProgress,
        });
      });
    });
  }

  /** Rebuilds root..snapshot of an archived VM as qcow2 layers, registered as a new VM; all or nothing. */
  restore(vm: string, snapshot: string, opts: ArchiveRestoreOptions = {}): Promise<ArchiveRestoreResult> {
    return this.s.run(async () => {
      const { restoreSnapshot } = await import('../archive/restore.js');
      return withKey(opts, async (key) =>
        restoreSnapshot(this.s.home, await this.open(opts, key), vm, snapshot, {
          as: opts.as,
          dir: opts.dir,
          signal: this.s.signal(opts.signal),
          onProgress: opts.onProgress,
        }),
      );
    });
  }

  /** Forgets a VM's archived snapshots that no rule of `opts.policy` keeps (the rules of `snapshot policy`); gc then frees their blocks. */
  forget(vm: string, opts: ArchiveForgetOptions): Promise<ArchiveForgetResult> {
    return archiveForget(this.s, (o, k) => this.open(o, k), withKey, vm, opts);
  }

  /** Removes the blocks, packs and layer maps no archived snapshot needs. */
  gc(opts: ArchiveGcOptions = {}): Promise<ArchiveGcResult> {
    return archiveGc(this.s, (o, k) => this.open(o, k), withKey, opts);
  }

  /** Checks every record, layer map, index file and pack (with `readData`, every block). */
  check(opts: ArchiveCheckOptions = {}): Promise<ArchiveCheckResult> {
    return archiveCheck(this.s, (o, k) => this.open(o, k), withKey, opts);
  }
}
