/**
 * The snapshot tree as the contract shows it: records plus derived fields (children, current,
 * expires_at), ancestry and subtree queries. Pure functions over records; no I/O.
 */
import { now as clockNow } from '../clock.js';
import type { VmRecord } from '../store/registry.js';
import type { SnapshotRecord } from '../store/snapshots.js';

export interface SnapshotView {
  name: string;
  vm_name: string;
  type: 'disk' | 'full';
  state: SnapshotRecord['state'];
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
  /** A member of a group snapshot (store/groups.ts): its group and group snapshot; null otherwise. */
  group: { name: string; snapshot: string } | null;
}

export interface TreeNode {
  name: string;
  created_at: string;
  current: boolean;
  children: TreeNode[];
}

function pad(n: number, w = 2): string {
  return String(n).padStart(w, '0');
}

/** The default name of a new snapshot, `snap-YYYYMMDD-HHMMSS` (local time), made unique among `existing`. */
export function autoSnapshotName(existing: Set<string>, now: Date = clockNow()): string {
  const base = `snap-${now.getFullYear()}${pad(now.getMonth() + 1)}${pad(now.getDate())}-${pad(now.getHours())}${pad(now.getMinutes())}${pad(now.getSeconds())}`;
  if (!existing.has(base)) return base;
  for (let i = 2; ; i++) if (!existing.has(`${base}-${i}`)) return `${base}-${i}`;
}

/** Newest first; equal times fall back to name so the order is stable. */
export function newestFirst(a: { created_at: string; name: string }, b: { created_at: string; name: string }): number {
  return a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : a.name < b.name ? 1 : a.name > b.name ? -1 : 0;
}

export function childrenIndex(recs: SnapshotRecord[]): Map<string | null, SnapshotRecord[]> {
  const idx = new Map<string | null, SnapshotRecord[]>();
  const names = new Set(recs.map((r) => r.name));
  for (const r of recs) {
    // A parent that no longer exists (should not happen) makes the snapshot a root rather than vanish.
    const p = r.parent !== null && names.has(r.parent) ? r.parent : null;
    const list = idx.get(p) ?? [];
    list.push(r);
    idx.set(p, list);
  }
  for (const l of idx.values()) l.sort((a, b) => -newestFirst(a, b)); // oldest child first in trees
  return idx;
}

export function toView(vm: VmRecord, r: SnapshotRecord, idx: Map<string | null, SnapshotRecord[]>, expiresAt: string | null = r.expires_at): SnapshotView {
  return {
    name: r.name,
    vm_name: r.vm_name,
    type: r.type,
    state: r.state,
    created_at: r.created_at,
    description: r.description,
    parent: r.parent,
    children: (idx.get(r.name) ?? []).map((c) => c.name),
    size_bytes: r.size_bytes ?? 0,
    tags: r.tags,
    auto_created: r.auto_created,
    auto_policy: r.auto_policy,
    expires_at: expiresAt,
    current: vm.current === r.name,
    disks: r.disks.map((d) => ({ target: d.target, path: d.path })),
    quiesced: r.quiesced === true,
    group: r.group ? { name: r.group.name, snapshot: r.group.snapshot } : null,
  };
}

export function buildTree(vm: VmRecord, recs: SnapshotRecord[]): { vm_name: string; current: string | null; roots: TreeNode[] } {
  const idx = childrenIndex(recs);
  const node = (r: SnapshotRecord, depth: number): TreeNode => ({
    name: r.name,
    created_at: r.created_at,
    current: vm.current === r.name,
    // Depth is bounded by the number of records; recursion depth stays well within limits for
    // thousands of snapshots in one line (each frame is small).
    children: (idx.get(r.name) ?? []).map((c) => node(c, depth + 1)),
  });
  return { vm_name: vm.name, current: vm.current, roots: (idx.get(null) ?? []).map((r) => node(r, 0)) };
}

/** `name` and its ancestors, nearest first. */
export function ancestry(recs: SnapshotRecord[], name: string | null): SnapshotRecord[] {
  const by = new Map(recs.map((r) => [r.name, r]));
  const out: SnapshotRecord[] = [];
  const seen = new Set<string>();
  let cur = name;
  while (cur !== null && !seen.has(cur)) {
    const r = by.get(cur);
    if (!r) break;
    seen.add(cur);
    out.push(r);
    cur = r.parent;
  }
  return out;
}

/** `name` and all its descendants. */
export function subtree(recs: SnapshotRecord[], name: string): SnapshotRecord[] {
  const idx = childrenIndex(recs);
  const out: SnapshotRecord[] = [];
  const stack = recs.filter((r) => r.name === name);
  while (stack.length) {
    const r = stack.pop()!;
    out.push(r);
    stack.push(...(idx.get(r.name) ?? []));
  }
  return out;
}
