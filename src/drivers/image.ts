/**
 * The image driver: a VM is a set of plain qcow2 files. The registered disk path always holds the
 * current writable state; a snapshot renames it to `<stem>@<snapshot>.qcow2` in the same directory
 * (so relative backing names stay valid and no data is copied) and puts a new empty overlay at the
 * disk path. Nothing here costs more for a bigger disk: only headers and L1 tables are written.
 */
import path from 'node:path';
import { CloneboxError } from '../errors.js';
import { pathExists } from '../fsutil.js';
import { createOverlay } from '../qcow2/overlay.js';
import { imageGeometry } from '../qcow2/probe.js';
import { rebaseImage } from '../qcow2/rebase.js';
import type { Action, Journal } from '../store/journal.js';
import type { VmRecord } from '../store/registry.js';
import type { SnapshotRecord } from '../store/snapshots.js';
import type { LayerRef, PreparedSnapshot, PreparedSwitch, SnapshotDriver } from './driver.js';

function diskStem(diskPath: string): string {
  const base = path.basename(diskPath);
  return base.replace(/\.(qcow2|qcow|img)$/i, '');
}

export function layerPathFor(diskPath: string, snapshot: string): string {
  return path.join(path.dirname(diskPath), `${diskStem(diskPath)}@${snapshot}.qcow2`);
}

/** Where a new VM's disk `target` goes in `dir` (import and sync pulls): `<vm>.qcow2` for vda, else `<vm>-<target>.qcow2`. */
export function newDiskPath(dir: string, vm: string, target: string): string {
  return path.join(dir, target === 'vda' ? `${vm}.qcow2` : `${vm}-${target}.qcow2`);
}

/** The temporary name of a new image that will replace `diskPath` at commit. */
function nextPathFor(diskPath: string, op: string): string {
  return path.join(path.dirname(diskPath), `.${path.basename(diskPath)}.${op}-${process.pid}.new`);
}

export class ImageDriver implements SnapshotDriver {
  readonly name = 'image' as const;

  async prepareSnapshot(vm: VmRecord, name: string, opts: { memory: boolean; quiesce: boolean }, j: Journal): Promise<PreparedSnapshot> {
    if (opts.memory) {
      throw new CloneboxError('VM_NOT_RUNNING', `full snapshot requires a running VM, ${vm.name}`, {
        hint: 'image-driver VMs have no running state; take a disk snapshot (without --memory)',
      });
    }
    const warnings: string[] = [];
    if (opts.quiesce) warnings.push(`no guest agent for image-driver VM ${vm.name}; snapshot taken without quiescing`);
    const layers: LayerRef[] = [];
    const actions: Action[] = [];
    const nexts: { disk: string; next: string; layer: string }[] = [];
    for (const d of vm.disks) {
      const layer = layerPathFor(d.path, name);
      if (await pathExists(layer)) {
        throw new CloneboxError('SNAPSHOT_EXISTS', `layer file already exists, ${layer}`, { hint: 'choose another snapshot name or move the file away' });
      }
      if (nexts.some((n) => n.layer === layer)) {
        // Two disks named alike in one directory (x.qcow2 and x.img) would share a layer name: refuse
        // rather than let the second rename overwrite the first disk's layer.
        throw new CloneboxError(
          'DISK_NAME_CLASH',
          `disks ${nexts.find((n) => n.layer === layer)!.disk} and ${d.path} would share the layer ${layer}, VM ${vm.name}`,
          {
            hint: 'rename one of the disk files (and register the VM again) so that their names differ before the extension',
          },
        );
      }
      nexts.push({ disk: d.path, next: nextPathFor(d.path, 'snap'), layer });
    }
    await j.willCreate(...nexts.map((n) => n.next));
    for (const n of nexts) {
      await createOverlay(n.next, n.layer, await imageGeometry(n.disk), 0o600);
    }
    for (const [i, n] of nexts.entries()) {
      actions.push({ do: 'rename', from: n.disk, to: n.layer }, { do: 'rename', from: n.next, to: n.disk });
      layers.push({ target: vm.disks[i]!.target, path: n.layer });
    }
    return { layers, type: 'disk', memoryPath: null, actions, disks: vm.disks.map((d) => ({ ...d })), warnings };
  }

  async prepareRestore(vm: VmRecord, snap: SnapshotRecord, j: Journal): Promise<PreparedSwitch> {
    const actions: Action[] = [];
    const plan: { next: string; layer: string; disk: string }[] = [];
    for (const d of vm.disks) {
      const layer = snap.disks.find((l) => l.target === d.target);
      if (!layer) throw new CloneboxError('STORE_CORRUPT', `snapshot ${snap.name} has no layer for disk ${d.target}, ${vm.name}`);
      plan.push({ next: nextPathFor(d.path, 'restore'), layer: layer.path, disk: d.path });
    }
    await j.willCreate(...plan.map((p) => p.next));
    for (const p of plan) {
      await createOverlay(p.next, p.layer, await imageGeometry(p.layer), 0o600);
      actions.push({ do: 'rename', from: p.next, to: p.disk });
    }
    return { actions, disks: vm.disks.map((d) => ({ ...d })) };
  }

  async prepareRebaseCurrent(vm: VmRecord, newBase: Map<string, string | null>, j: Journal): Promise<PreparedSwitch> {
    const actions: Action[] = [];
    const plan = vm.disks.map((d) => ({ disk: d.path, next: nextPathFor(d.path, 'merge'), base: newBase.get(d.target) ?? null }));
    await j.willCreate(...plan.map((p) => p.next));
    for (const p of plan) {
      await rebaseImage(p.disk, p.base, p.next);
      actions.push({ do: 'rename', from: p.next, to: p.disk });
    }
    return { actions, disks: vm.disks.map((d) => ({ ...d })) };
  }
}
