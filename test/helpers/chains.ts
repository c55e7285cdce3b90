/**
 * Comparing a VM's snapshot chain in two homes (after an export/import or a sync pull), through the
 * CLI's `snapshot list --json` and the QEMU tools.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'vitest';
import type { SnapshotView } from '../../src/snapshots/model.js';
import { CliHome } from './cli.js';
import { qemuCheck, qemuCompare, qemuMapAlone } from './qemu.js';

export interface SameChainOptions {
  /** Only these snapshots of a (default: all of them). */
  names?: readonly string[];
  /** b lists exactly a's snapshots, with the same parents, types and children. */
  sameTree?: boolean;
  /**
   * Each non-root layer holds the same allocation (qemu-img map of the layer alone; a root may differ
   * when it stood on a base image) and the snapshot records carry the same content id.
   */
  sameLayers?: boolean;
}

async function contentId(home: string, vm: string, name: string): Promise<string | null | undefined> {
  const rec = JSON.parse(await readFile(path.join(home, 'vms', vm, 'snapshots', `${name}.json`), 'utf8')) as { content_id?: string | null };
  return rec.content_id;
}

/**
 * Every snapshot of `vmA` in home `a` (or those named) has a same-named snapshot of `vmB` in home `b` with
 * the same description, tags and creation time, and every disk of it reads the same bytes (qemu-img
 * compare) and passes qemu-img check. Returns the names of a's snapshots, newest first.
 */
export async function expectSameChain(a: string, vmA: string, b: string, vmB: string, opts: SameChainOptions = {}): Promise<string[]> {
  const timeouts = { timeoutMs: 120_000 };
  const la = await new CliHome(a, timeouts).json<SnapshotView[]>(['snapshot', 'list', vmA]);
  const lb = await new CliHome(b, timeouts).json<SnapshotView[]>(['snapshot', 'list', vmB]);
  if (opts.sameTree) {
    const pick = (s: SnapshotView) => ({
      name: s.name,
      parent: s.parent,
      description: s.description,
      tags: s.tags,
      created_at: s.created_at,
      type: s.type,
      children: s.children,
    });
    const sorted = (l: SnapshotView[]) => l.map(pick).sort((x, y) => x.name.localeCompare(y.name));
    expect(sorted(lb)).toEqual(sorted(la));
  }
  for (const name of opts.names ?? la.map((s) => s.name)) {
    const x = la.find((s) => s.name === name);
    expect(x, `snapshot ${name} in ${vmA}`).toBeDefined();
    const y = lb.find((s) => s.name === name);
    expect(y, `snapshot ${name} in ${vmB}`).toBeDefined();
    expect({ d: y!.description, t: y!.tags, c: y!.created_at }).toEqual({ d: x!.description, t: x!.tags, c: x!.created_at });
    for (const d of x!.disks) {
      const e = y!.disks.find((z) => z.target === d.target);
      expect(e, `disk ${d.target} of ${name} in ${vmB}`).toBeDefined();
      const cmp = await qemuCompare(d.path, e!.path);
      expect(cmp.code, `${name}/${d.target}: ${cmp.stdout}`).toBe(0);
      const chk = await qemuCheck(e!.path);
      expect(chk.code, `qemu-img check ${e!.path}: ${chk.stdout}`).toBe(0);
      expect(chk.result['check-errors']).toBe(0);
      if (opts.sameLayers && x!.parent !== null) {
        expect(await qemuMapAlone(e!.path), `map of ${e!.path}`).toEqual(await qemuMapAlone(d.path));
      }
    }
    if (opts.sameLayers) expect(await contentId(b, vmB, name)).toBe(await contentId(a, vmA, name));
  }
  return la.map((s) => s.name);
}
