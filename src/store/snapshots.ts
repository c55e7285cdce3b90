/**
 * Snapshot metadata records: <home>/vms/<vm>/snapshots/<name>.json, one file per snapshot, each
 * replaced atomically. The fields are the contract's snapshot object plus clonebox's own bookkeeping.
 */

import { readFileSync, statSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { CloneboxError, ioError } from '../errors.js';
import { ensureDir, writeJsonAtomic } from '../fsutil.js';
import type { MemberTag } from './groups.js';
import { type Home, vmDir } from './home.js';

type SnapshotState = 'creating' | 'ready' | 'reverting' | 'deleting' | 'failed';

/**
 * Where a snapshot came from. A record without one (older homes, and every snapshot made here) reads as
 * made here. A sync pull extends or moves a VM only when every snapshot it holds was pulled from the
 * same catalog (the same author), and a workstation never publishes pulled snapshots as its own.
 */
export type SnapshotOrigin =
  | { kind: 'local' }
  /** `snapshot import`: the bundle's file name (or "stdin"). */
  | { kind: 'bundle'; bundle: string }
  /** A sync pull: the team, the author's recorded name, identity key and catalog key (hex). */
  | { kind: 'pulled'; team: string; member: string; member_key: string | null; catalog_key: string };

/** A record's origin; absent reads as made here. */
export function originOf(rec: { origin?: SnapshotOrigin | null }): SnapshotOrigin {
  return rec.origin ?? { kind: 'local' };
}

export interface SnapshotRecord {
  name: string;
  vm_name: string;
  type: 'disk' | 'full';
  state: SnapshotState;
  created_at: string;
  description: string | null;
  parent: string | null;
  tags: string[];
  auto_created: boolean;
  auto_policy: string | null;
  expires_at: string | null;
  /** Sealed layer per disk: a qcow2 whose backing chain gives the disk as it was at this snapshot. */
  disks: { target: string; path: string }[];
  /** Allocated bytes in this snapshot's own layers (recomputed when a merge rewrites them). */
  size_bytes: number;
  /** Content identity (set by the bundle/sync code): derived from the parent's id and the layer content. */
  content_id?: string | null;
  /**
   * Set (true) when `content_id` is a claim that could not be derived from the layers (a bundle's id of
   * a merged layer, or an id standing on such a one): such an id is never matched as a `--since` base
   * or a sync chain base (snapshots/identity.ts, `trustedContentId`).
   */
  content_id_unverified?: boolean;
  /** Path of the saved memory state for `full` snapshots (libvirt driver). */
  memory_path?: string | null;
  /** The guest agent froze the guest's filesystems for this snapshot (absent in older records: false). */
  quiesced?: boolean;
  /** Provenance (absent: made here). */
  origin?: SnapshotOrigin | null;
  /**
   * Set on a member snapshot of a group snapshot (store/groups.ts): the group and the group snapshot's
   * name. Absent or null: a snapshot of this VM alone. Such a snapshot is deleted and restored only
   * with its group snapshot, and retention never prunes it on its own.
   */
  group?: MemberTag | null;
}

/** What a snapshot's record says of it that travels with it out of the home (a bundle's meta, an archive record). */
export type SnapshotMeta = Pick<
  SnapshotRecord,
  'name' | 'parent' | 'type' | 'created_at' | 'description' | 'tags' | 'auto_created' | 'auto_policy' | 'expires_at'
>;

/** Those fields alone, of a home's record or of a bundle's or an archive's copy of one. */
export function snapshotMeta(s: SnapshotMeta): SnapshotMeta {
  return {
    name: s.name,
    parent: s.parent,
    type: s.type,
    created_at: s.created_at,
    description: s.description,
    tags: s.tags,
    auto_created: s.auto_created,
    auto_policy: s.auto_policy,
    expires_at: s.expires_at,
  };
}

export function snapshotsDir(home: Home, vm: string): string {
  return path.join(vmDir(home, vm), 'snapshots');
}

/** The names of a VM's snapshot records: a directory listing, no record read. */
export async function listSnapshotNames(home: Home, vm: string): Promise<string[]> {
  const dir = snapshotsDir(home, vm);
  try {
    return (await readdir(dir)).filter((n) => n.endsWith('.json') && !n.startsWith('.')).map((n) => n.slice(0, -'.json'.length));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw ioError(err, 'cannot list snapshots', dir);
  }
}

export async function listSnapshotRecords(home: Home, vm: string): Promise<SnapshotRecord[]> {
  const dir = snapshotsDir(home, vm);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw ioError(err, 'cannot list snapshots', dir);
  }
  const out: SnapshotRecord[] = [];
  for (const n of names) {
    if (!n.endsWith('.json') || n.startsWith('.')) continue;
    const file = path.join(dir, n);
    try {
      // Synchronous reads: with a thousand small records they are several times faster than
      // promise-based ones, and a CLI process has nothing else to do meanwhile.
      out.push(JSON.parse(readFileSync(file, 'utf8')) as SnapshotRecord);
    } catch (err) {
      throw new CloneboxError('STORE_CORRUPT', `snapshot record is damaged (${(err as Error).message}), ${file}`);
    }
  }
  return out;
}

/** One snapshot's record, or null when there is none (a command that needs a few, not the whole history). */
export function readSnapshotRecord(home: Home, vm: string, name: string): SnapshotRecord | null {
  const file = path.join(snapshotsDir(home, vm), `${name}.json`);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw ioError(err, 'cannot read snapshot record', file);
  }
  try {
    return JSON.parse(text) as SnapshotRecord;
  } catch (err) {
    throw new CloneboxError('STORE_CORRUPT', `snapshot record is damaged (${(err as Error).message}), ${file}`);
  }
}

export async function saveSnapshotRecord(home: Home, rec: SnapshotRecord): Promise<void> {
  const dir = snapshotsDir(home, rec.vm_name);
  await ensureDir(dir);
  await writeJsonAtomic(path.join(dir, `${rec.name}.json`), rec);
}

/**
 * A value that changes whenever a record of the VM is written, added or removed: every record write
 * creates a temporary file and renames it into <vm>/ or <vm>/snapshots/, which changes that directory's
 * mtime (nanoseconds). A long-running reader (the REST service) compares it instead of re-reading
 * every record on every request. VM_NOT_FOUND when the VM's directory does not exist.
 *
 * File times tick coarsely (a kernel tick, a few ms): two changes within one tick leave the same
 * mtime. So a directory changed less than STAMP_SETTLE_MS ago gives null ("just changed: read the
 * records"), and a stamp is only returned once a later change would be sure to show.
 */
const STAMP_SETTLE_MS = 100n;

export function recordsStamp(home: Home, vm: string): string | null {
  // Synchronous: two stats cost microseconds, a round trip through the thread pool costs more.
  const a = statSync(vmDir(home, vm), { bigint: true, throwIfNoEntry: false });
  const b = statSync(snapshotsDir(home, vm), { bigint: true, throwIfNoEntry: false });
  if (!a) throw new CloneboxError('VM_NOT_FOUND', `no such VM ${vm}`, { hint: 'see `clonebox vm list`' });
  const newest = [a.mtimeNs, a.ctimeNs, b?.mtimeNs ?? 0n, b?.ctimeNs ?? 0n].reduce((x, y) => (y > x ? y : x));
  if (BigInt(Date.now()) * 1_000_000n - newest < STAMP_SETTLE_MS * 1_000_000n) return null;
  return `${a.mtimeNs}.${a.ctimeNs}.${b?.mtimeNs ?? 0n}.${b?.ctimeNs ?? 0n}`;
}
