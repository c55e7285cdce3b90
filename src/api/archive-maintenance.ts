/**
 * The deleting side of `cb.archive` (forget, gc) and check: the work is in src/archive/forget.ts, gc.ts
 * and check.ts. The Archive class (api/archive.ts) has one method per call, delegating here with its
 * repository opener. In an append-only repository forget and gc need the delete key (`deleteKeyFile`).
 */

import type { CheckResult } from '../archive/check.js';
import type { ForgetResult } from '../archive/forget.js';
import type { GcResult } from '../archive/gc.js';
import type { Repo } from '../archive/repo.js';
import type { KeySource } from '../bundle/crypto.js';
import { parseSize } from '../names.js';
import type { Policy as StoredPolicy } from '../snapshots/policy.js';
import type { Session } from './session.js';
import type { KeyOptions, Policy } from './types.js';

export type { CheckProblem as ArchiveCheckProblem, CheckResult as ArchiveCheckResult } from '../archive/check.js';
export type { ForgetEntry as ArchiveForgetEntry, ForgetResult as ArchiveForgetResult } from '../archive/forget.js';
export type { GcResult as ArchiveGcResult } from '../archive/gc.js';

interface RepoKeyOptions extends KeyOptions {
  /** The repository directory (default: $CLONEBOX_ARCHIVE). */
  repo?: string;
}

/** What forget and gc take besides the repository: the delete key of an append-only repository. */
export interface ArchiveDeleteOptions extends RepoKeyOptions {
  /** The delete key file made at `archive init --append-only` (needed only by append-only repositories). */
  deleteKeyFile?: string;
  signal?: AbortSignal;
}

export interface ArchiveForgetOptions extends ArchiveDeleteOptions {
  /** The retention rules of `snapshot policy` (keys as there). At least one. */
  policy: Policy;
  /** Only say what would be forgotten. */
  dryRun?: boolean;
}

export interface ArchiveGcOptions extends ArchiveDeleteOptions {
  /** Only count what would be removed. */
  dryRun?: boolean;
}

export interface ArchiveCheckOptions extends RepoKeyOptions {
  /** Read every block and verify it against its id. */
  readData?: boolean;
  signal?: AbortSignal;
}

/** Opens the repository the options name, with the key given (the Archive class's opener). */
export type RepoOpener = (opts: RepoKeyOptions, key: KeySource | null) => Promise<Repo>;
type WithKey = <T>(o: KeyOptions, fn: (key: KeySource | null) => Promise<T>) => Promise<T>;

async function deleteKey(o: ArchiveDeleteOptions): Promise<KeySource | null> {
  if (o.deleteKeyFile === undefined) return null;
  const { loadKeySource } = await import('../bundle/crypto.js');
  return loadKeySource({ keyFile: o.deleteKeyFile, allowInsecureKeyFile: o.allowInsecureKeyFile });
}

function wipe(k: KeySource | null): void {
  if (k) (k.kind === 'passphrase' ? k.passphrase : k.key).fill(0);
}

function storedPolicy(p: Policy): StoredPolicy {
  const { max_size, ...rest } = p;
  return { ...rest, ...(max_size === undefined ? {} : { max_size: typeof max_size === 'string' ? parseSize(max_size) : max_size }) };
}

export function archiveForget(s: Session, open: RepoOpener, withKey: WithKey, vm: string, opts: ArchiveForgetOptions): Promise<ForgetResult> {
  return s.run(async () => {
    const { forgetSnapshots } = await import('../archive/forget.js');
    const dk = await deleteKey(opts);
    try {
      return await withKey(opts, async (key) =>
        forgetSnapshots(await open(opts, key), vm, { policy: storedPolicy(opts.policy), dryRun: opts.dryRun, deleteKey: dk }),
      );
    } finally {
      wipe(dk);
    }
  });
}

export function archiveGc(s: Session, open: RepoOpener, withKey: WithKey, opts: ArchiveGcOptions): Promise<GcResult> {
  return s.run(async () => {
    const { collectGarbage } = await import('../archive/gc.js');
    const dk = await deleteKey(opts);
    try {
      return await withKey(opts, async (key) => collectGarbage(await open(opts, key), { dryRun: opts.dryRun, deleteKey: dk, signal: s.signal(opts.signal) }));
    } finally {
      wipe(dk);
    }
  });
}

export function archiveCheck(s: Session, open: RepoOpener, withKey: WithKey, opts: ArchiveCheckOptions): Promise<CheckResult> {
  return s.run(async () => {
    const { checkRepository } = await import('../archive/check.js');
    return withKey(opts, async (key) => checkRepository(await open(opts, key), { readData: opts.readData, signal: s.signal(opts.signal) }));
  });
}

/** `archive init --append-only --delete-key-file F`: the delete key's check, written once beside the config. */
export async function writeDeleteKey(repo: Repo, deleteKeyFile: string, allowInsecureKeyFile?: boolean): Promise<void> {
  const { writeAppendOnly } = await import('../archive/append-only.js');
  const dk = await deleteKey({ deleteKeyFile, ...(allowInsecureKeyFile === undefined ? {} : { allowInsecureKeyFile }) });
  try {
    await writeAppendOnly(repo, dk!);
  } finally {
    wipe(dk);
  }
}
