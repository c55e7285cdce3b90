/**
 * Helpers for snapshot-manager tests: build a VM through the CLI, write known patterns into its
 * current disk with qemu-io, keep raw reference copies of each state, and check a VM against them.
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'vitest';
import type { SnapshotView } from '../../src/snapshots/model.js';
import { CliHome } from './cli.js';
import type { RunResult } from './process.js';
import { qemuCheck, qemuCompare, qemuIo, qemuRaw } from './qemu.js';

/** The contract's snapshot object, as the CLI prints it. */
export type SnapView = SnapshotView;

export class VmFixture extends CliHome {
  /** Raw reference image of each snapshot (by name) and of the current state. */
  readonly refs = new Map<string, string>();
  private n = 0;

  constructor(
    home: string,
    readonly dir: string,
    readonly vm: string,
  ) {
    super(home);
  }

  /** `env`: extra environment variables for this run. */
  override cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<RunResult> {
    return super.cli(args, { env });
  }

  get disk(): string {
    return path.join(this.dir, `${this.vm}.qcow2`);
  }

  static async create(home: string, dir: string, vm: string, size = '16M'): Promise<VmFixture> {
    const f = new VmFixture(home, dir, vm);
    await f.ok(['vm', 'create', vm, '--size', size, '--dir', dir]);
    return f;
  }

  /** qemu-io commands on the current disk (the image driver's registered path). */
  async write(...cmds: string[]): Promise<void> {
    await qemuIo(this.disk, cmds);
  }

  /** A raw copy of the current state, to compare against later. */
  async refCurrent(label: string): Promise<string> {
    const out = path.join(this.dir, `ref-${label}-${this.n++}.raw`);
    await qemuRaw(this.disk, out);
    this.refs.set(label, out);
    return out;
  }

  /** Snapshot the current state and keep its raw reference under the snapshot's name. */
  async snap(name: string, extra: string[] = []): Promise<SnapView> {
    await this.refCurrent(name);
    return this.json<SnapView>(['snapshot', 'create', this.vm, '--name', name, ...extra]);
  }

  async list(): Promise<SnapView[]> {
    return this.json<SnapView[]>(['snapshot', 'list', this.vm]);
  }

  /**
   * Checks that every listed snapshot is ready and identical to its reference, the current state is
   * identical to `current`, every image passes qemu-img check, and no stray files are left.
   */
  async expectIntact(current: string, allowed?: Set<string>): Promise<SnapView[]> {
    const list = await this.list();
    for (const s of list) {
      expect(s.state, `state of ${s.name}`).toBe('ready');
      if (allowed) expect(allowed.has(s.name), `unexpected snapshot ${s.name}`).toBe(true);
      const ref = this.refs.get(s.name);
      expect(ref, `reference for ${s.name}`).toBeDefined();
      for (const d of s.disks) {
        const cmp = await qemuCompare(d.path, ref!);
        expect(cmp.code, `snapshot ${s.name} differs from its reference: ${cmp.stdout}`).toBe(0);
        const chk = await qemuCheck(d.path);
        expect(chk.code, `qemu-img check ${d.path}: ${chk.stdout}`).toBe(0);
      }
    }
    const cmp = await qemuCompare(this.disk, current);
    expect(cmp.code, `current state differs: ${cmp.stdout}`).toBe(0);
    expect((await qemuCheck(this.disk)).code).toBe(0);
    const expected = new Set([path.basename(this.disk), ...list.flatMap((s) => s.disks.map((d) => path.basename(d.path)))]);
    const files = (await readdir(this.dir)).filter((f) => !f.startsWith('ref-'));
    expect(files.sort()).toEqual([...expected].sort());
    return list;
  }
}
