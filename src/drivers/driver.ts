/**
 * What a driver does for the snapshot manager. The manager owns metadata, journal and locking; a driver
 * owns the disks: it PREPARES a change (creating only new files, each announced to the journal first)
 * and returns the idempotent actions that COMMIT it. The manager commits the driver's actions together
 * with its own record writes in one journal, so a crash finishes or rolls back both.
 */
import type { Action, Journal } from '../store/journal.js';
import type { VmRecord } from '../store/registry.js';
import type { SnapshotRecord } from '../store/snapshots.js';

export interface LayerRef {
  target: string;
  path: string;
}

export interface PreparedSnapshot {
  /** Sealed layer per disk once committed. */
  layers: LayerRef[];
  type: 'disk' | 'full';
  memoryPath: string | null;
  actions: Action[];
  /** Disks of the VM record after commit (paths may change with some drivers). */
  disks: LayerRef[];
  warnings: string[];
}

export interface PreparedSwitch {
  actions: Action[];
  disks: LayerRef[];
}

export interface SnapshotDriver {
  readonly name: 'image' | 'libvirt';
  /** Seals every disk's current state as the layers of snapshot `name` and continues on new overlays. */
  prepareSnapshot(vm: VmRecord, name: string, opts: { memory: boolean; quiesce: boolean }, j: Journal): Promise<PreparedSnapshot>;
  /** New empty overlays on `snap`'s layers, replacing the current state when committed. */
  prepareRestore(vm: VmRecord, snap: SnapshotRecord, j: Journal): Promise<PreparedSwitch>;
  /**
   * Rewrites the current state of every disk so that it no longer depends on the layers being removed:
   * same content, backing file `newBase[target]` (null: self-contained).
   */
  prepareRebaseCurrent(vm: VmRecord, newBase: Map<string, string | null>, j: Journal): Promise<PreparedSwitch>;
  /** Runs after a restore commit when the user asked to start the VM. */
  start?(vm: VmRecord): Promise<void>;
  /**
   * A digest of the VM's configuration outside clonebox's disks (a libvirt domain's XML without the
   * disk sources snapshots move), for `before_operations: [config-change]`. Drivers without such a
   * configuration leave it out.
   */
  configFingerprint?(vm: VmRecord): Promise<string>;
}
