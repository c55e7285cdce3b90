/**
 * What `snapshot export` (src/bundle/export.ts) and `archive push` (src/archive/push.ts) share when
 * they read a VM's chain out of the home: the line root..N, each layer checked to stand on its
 * parent's, the data bytes to read (for progress), and the content ids computed on the way, kept.
 */
import path from 'node:path';
import { openLayer } from '../content/layer.js';
import { CloneboxError } from '../errors.js';
import { checkedBackingChain } from '../qcow2/backing.js';
import { Qcow2Image } from '../qcow2/reader.js';
import type { Home } from '../store/home.js';
import type { Lock } from '../store/lock.js';
import { lockVm, type VmRecord } from '../store/registry.js';
import { readSnapshotRecord, type SnapshotRecord, saveSnapshotRecord } from '../store/snapshots.js';

export function snapshotNotFound(vm: string, name: string): CloneboxError {
  return new CloneboxError('SNAPSHOT_NOT_FOUND', `no such snapshot ${name}, VM ${vm}`, { hint: `see \`clonebox snapshot list ${vm}\`` });
}

/** The line from the root to `last` (which exists in `byName`), parents first. */
export function lineTo(vm: string, byName: Map<string, SnapshotRecord>, last: string): SnapshotRecord[] {
  const line: SnapshotRecord[] = [];
  for (let cur: string | null = last; cur !== null; cur = byName.get(cur)?.parent ?? null) {
    const rec = byName.get(cur);
    if (!rec) throw new CloneboxError('STORE_CORRUPT', `snapshot ${line[line.length - 1]?.name} names a missing parent ${cur}, VM ${vm}`);
    if (line.length > byName.size) throw new CloneboxError('STORE_CORRUPT', `snapshot parents form a loop, VM ${vm}`);
    line.push(rec);
  }
  return line.reverse();
}

/** One layer of a chain, checked: whether it is read resolved (a root on a base image) and its geometry. */
export interface CheckedLayer {
  target: string;
  path: string;
  resolved: boolean;
  virtualSize: number;
  clusterSize: number;
}

/**
 * Snapshot `s`'s layers in target order, each checked to stand on its parent's layer (what makes the
 * chain rebuildable). A root on a base image carries that base's bytes: its chain must still pass the
 * rules `vm add` applied (the header may have changed since); a libvirt domain's chain is the domain's.
 */
export async function checkedLayers(vm: VmRecord, s: SnapshotRecord, byName: Map<string, SnapshotRecord>): Promise<CheckedLayer[]> {
  const out: CheckedLayer[] = [];
  for (const d of [...s.disks].sort((a, b) => (a.target < b.target ? -1 : 1))) {
    const img = await Qcow2Image.open(d.path);
    try {
      const backing = img.backingPath();
      let resolved = false;
      if (s.parent === null) {
        resolved = backing !== null;
        if (resolved && vm.driver === 'image') await checkedBackingChain(d.path, vm.allowed_backing ?? []);
      } else {
        const want = byName.get(s.parent)?.disks.find((x) => x.target === d.target)?.path ?? null;
        if (want === null || backing === null || path.resolve(backing) !== path.resolve(want)) {
          throw new CloneboxError('STORE_CORRUPT', `layer ${d.path} stands on ${backing ?? 'nothing'}, not on its parent's layer ${want}`);
        }
      }
      out.push({ target: d.target, path: d.path, resolved, virtualSize: img.virtualSize, clusterSize: img.clusterSize });
    } finally {
      await img.close();
    }
  }
  return out;
}

/** Bytes of data the layers hold (what reading them costs; counted before, for progress). */
export async function layersDataBytes(layers: { path: string; resolved: boolean }[]): Promise<number> {
  let n = 0;
  for (const l of layers) {
    const src = await openLayer(l.path, l.resolved);
    try {
      for await (const p of src.pieces()) if (p.kind === 'data') n += p.length;
    } finally {
      await src.close();
    }
  }
  return n;
}

/**
 * Records the content ids an export or a push computed, for snapshots that had none, under the VM lock
 * again (the pin kept them from being merged meanwhile). A VM busy past the lock wait is left as it is:
 * the ids are computed again next time, from the same unchanged layers.
 */
export async function keepContentIds(home: Home, vm: string, computed: { rec: SnapshotRecord; id: string }[], op: string): Promise<void> {
  const missing = computed.filter((c) => !c.rec.content_id);
  if (missing.length === 0) return;
  let lock: Lock;
  try {
    lock = await lockVm(home, vm, op);
  } catch (err) {
    if (err instanceof CloneboxError && err.code === 'VM_BUSY') return;
    throw err;
  }
  try {
    for (const { rec, id } of missing) {
      const cur = readSnapshotRecord(home, vm, rec.name);
      if (!cur || cur.content_id || JSON.stringify(cur.disks) !== JSON.stringify(rec.disks)) continue;
      rec.content_id = id;
      await saveSnapshotRecord(home, { ...cur, content_id: id });
    }
  } finally {
    await lock.release();
  }
}
