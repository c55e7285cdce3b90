/**
 * Landing a chain of layers: what `snapshot import` (bundle/import.ts) and a team-sync pull
 * (sync/pull.ts) share once they know which snapshots arrive and where their layers go.
 *
 *  - every new file (layer or overlay) is written under a hidden temporary name beside its final
 *    place (landingTemp), so that a crash never leaves a half-written file under a name anything reads;
 *  - layers are written block by block in guest order; a cluster larger than a block is assembled in
 *    memory and written whole (LayerAssembler), because the qcow2 writer takes whole clusters;
 *  - a fast-forward puts new empty overlays on the newest landed snapshot (landOverlays), each
 *    announced to the journal before it is created;
 *  - one journal commit renames every temporary into place and writes the snapshot records and the VM
 *    record last (commitLanding): a VM, or its new snapshots, exist exactly when that commit ran.
 *
 * The callers differ in how the layers get written (import: inside the journal's prepare phase, pull:
 * before the VM lock is taken) and in what they check; the order of journal steps each one makes is
 * part of what the crash tests replay (CLONEBOX_CRASH_AT), so this module adds none of its own.
 */

import { randomBytes } from 'node:crypto';
import { lstat } from 'node:fs/promises';
import path from 'node:path';
import { BLOCK_SIZE } from '../content/digest.js';
import { CloneboxError } from '../errors.js';
import { createOverlay } from '../qcow2/overlay.js';
import { isEmptyImage } from '../qcow2/reader.js';
import type { Qcow2Writer } from '../qcow2/writer.js';
import { appendEvents } from '../store/events.js';
import type { Home } from '../store/home.js';
import type { Action, Journal } from '../store/journal.js';
import { type VmRecord, vmFile } from '../store/registry.js';
import { type SnapshotRecord, snapshotsDir } from '../store/snapshots.js';

/**
 * A hidden temporary name beside `final`: `.<name>.<op>-<pid>-<random>`. The journal's rollback and
 * the home sweep find and delete these by the files the journal lists.
 */
export function landingTemp(final: string, op: 'import' | 'sync'): string {
  return path.join(path.dirname(final), `.${path.basename(final)}.${op}-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/** A file landing: written at `temp`, renamed to `final` by the commit. */
export interface Landing {
  temp: string;
  final: string;
}

/**
 * Feeds a new layer's blocks (guest order) to its writer. Blocks of at most one cluster are written as
 * they come; for a cluster larger than BLOCK_SIZE the blocks are gathered until the cluster (or the
 * disk) ends, then written in one piece.
 */
export class LayerAssembler {
  private pend: Buffer | null = null;
  private pendStart = 0;
  private pendFill = 0;

  /** `outOfOrder`: the error for a block that does not continue the cluster being assembled. */
  constructor(
    private readonly writer: Qcow2Writer,
    private readonly outOfOrder: () => Error,
  ) {}

  /** A cluster is half assembled (the caller decides whether that is an error where it stands). */
  get pending(): boolean {
    return this.pend !== null;
  }

  /**
   * Writes (or gathers) `data` at guest `offset`. Returns the host offset the bytes went to when they
   * were written as they are (see Qcow2Writer.write), else -1.
   */
  async block(offset: number, data: Buffer): Promise<number> {
    const w = this.writer;
    const cs = w.clusterSize;
    // Blocks start and end on cluster boundaries (or at the end of the disk): write as they come.
    if (cs <= BLOCK_SIZE) return w.write(offset, data);
    if (!this.pend) {
      this.pend = Buffer.alloc(cs);
      this.pendStart = offset;
      this.pendFill = 0;
    }
    if (offset !== this.pendStart + this.pendFill) throw this.outOfOrder();
    data.copy(this.pend, this.pendFill);
    this.pendFill += data.length;
    if (this.pendFill === Math.min(cs, w.virtualSize - this.pendStart)) {
      await w.write(this.pendStart, this.pend.subarray(0, this.pendFill));
      this.pend = null;
    }
    return -1;
  }
}

/**
 * Refuses a landing that would rename over an existing file: a layer's place, or the disk of a new VM
 * (a file left by `vm remove` without `--delete-files` is someone's data). Checked when the landing is
 * planned and again under the VM lock just before the commit. A dangling symlink counts as a file.
 */
export async function refuseExisting(finals: string[], hint: string): Promise<void> {
  for (const f of finals) {
    const there = await lstat(f).then(
      () => true,
      (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return false;
        throw err;
      },
    );
    if (there) throw new CloneboxError('FILE_EXISTS', `file already exists, ${f}`, { hint });
  }
}

/** The current state of a VM is its snapshot's, unchanged: every disk's overlay is empty. */
export async function currentIsClean(disks: { path: string }[]): Promise<boolean> {
  return (await Promise.all(disks.map((d) => isEmptyImage(d.path)))).every(Boolean);
}

/** A new writable overlay at disk `final` on `backing` (absolute), for a fast-forward. */
export interface OverlayPlan {
  final: string;
  backing: string;
  virtualSize: number;
  clusterSize: number;
}

/** Creates the fast-forward overlays under temporary names, each announced to the journal first. */
export async function landOverlays(j: Journal, plans: OverlayPlan[], op: 'import' | 'sync'): Promise<Landing[]> {
  const out: Landing[] = [];
  for (const o of plans) {
    const temp = landingTemp(o.final, op);
    await j.willCreate(temp);
    await createOverlay(temp, o.backing, o, 0o600);
    out.push({ temp, final: o.final });
  }
  return out;
}

/**
 * The commit: renames every landed file into place, writes the snapshot records, then the VM record
 * (a VM exists exactly when its vm.json does). Past this call the landing completes even across a
 * crash: the journal rolls it forward.
 */
export async function commitLanding(j: Journal, home: Home, vmName: string, files: Landing[], records: SnapshotRecord[], vm: VmRecord): Promise<void> {
  const actions: Action[] = [];
  for (const f of files) actions.push({ do: 'rename', from: f.temp, to: f.final });
  for (const r of records) actions.push({ do: 'write_json', path: path.join(snapshotsDir(home, vmName), `${r.name}.json`), value: r });
  actions.push({ do: 'write_json', path: vmFile(home, vmName), value: vm });
  await j.commit(actions);
  // Imports and pulls register snapshots too: a long-running reader of the home (clonebox serve)
  // tells its clients, parents first. The log is a notification channel: a failed append does not
  // fail what committed (the records are the truth).
  await appendEvents(
    home,
    records.map((r) => ({ vm: vmName, snapshot: r.name, op: 'created' as const })),
  );
}
