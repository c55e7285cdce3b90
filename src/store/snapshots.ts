/**
 * Snapshot metadata records: <home>/vms/<vm>/snapshots/<name>.json, one file per snapshot, each
 * replaced atomically. The fields are the contract's snapshot object plus clonebox's own bookkeeping.
 */

import { readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { CloneboxError, ioError } from '../errors.js';
import { ensureDir, writeJsonAtomic } from '../fsutil.js';
import { type Home, vmDir } from './home.js';

type SnapshotState = 'creating' | 'ready' | 'reverting' | 'deleting' | 'failed';

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
}

export function snapshotsDir(home: Home, vm: string): string {
  return path.join(vmDir(home, vm), 'snapshots');
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

export async function saveSnapshotRecord(home: Home, rec: SnapshotRecord): Promise<void> {
  const dir = snapshotsDir(home, rec.vm_name);
  await ensureDir(dir);
  await writeJsonAtomic(path.join(dir, `${rec.name}.json`), rec);
}
