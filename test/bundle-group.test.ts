/**
 * Group bundles (issue 14): `snapshot export --group` puts every member's chain in one bundle whose
 * blocks are deduplicated across the VMs, and `snapshot import --group` lands every member and the
 * group, or nothing — also when killed (SIGKILL) at any journal step.
 *
 * The dedup property is checked on sizes, which are deterministic: two VMs cloned from one base of
 * random data, each with different random writes. The group bundle must stay within 1.1× of one VM's
 * bundle plus the other VM's different data (random, so its compressed size is its size).
 */

import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { expectSameChain } from './helpers/chains.js';
import { CliHome, parseJsonOutput, runCli } from './helpers/cli.js';
import { qemuImg, qemuIo } from './helpers/qemu.js';
import { rng } from './helpers/random.js';
import { makeTempDir } from './helpers/temp.js';

const MiB = 1024 * 1024;

interface ExportDoc {
  snapshots: string[];
  chains: { vm: string; snapshots: string[] }[];
  group: string | null;
  bundle_bytes: number;
  unique_blocks: number;
  blocks: number;
}

/** Two VMs `a` and `b` on one base image of random data, in group `g`, with group snapshots s1 and s2. */
async function twoClones(tag: string, baseMiB: number, writeMiB: number) {
  const root = await makeTempDir(`clonebox-bundle-group-${tag}-`);
  const disks = path.join(root, 'disks');
  await mkdir(disks);
  const src = new CliHome(path.join(root, 'home-a'), { timeoutMs: 300_000 });
  const base = path.join(disks, 'base.qcow2');
  const rnd = path.join(root, 'base.bin');
  await writeFile(rnd, rng(1).bytes(baseMiB * MiB));
  await qemuImg(['create', '-q', '-f', 'qcow2', base, `${baseMiB}M`]);
  await qemuIo(base, [`write -s ${rnd} 0 ${baseMiB}M`]);
  const diff: string[] = [];
  for (const [i, vm] of ['a', 'b'].entries()) {
    const top = path.join(disks, `${vm}.qcow2`);
    await qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top]);
    await src.ok(['vm', 'add', vm, '--disk', top]);
    const d = path.join(root, `${vm}.bin`);
    await writeFile(d, rng(10 + i).bytes(writeMiB * MiB));
    diff.push(d);
  }
  await src.ok(['group', 'create', 'g', '--vm', 'a', '--vm', 'b']);
  await src.ok(['snapshot', 'create', '--group', 'g', '--name', 's1']);
  // Different data in each clone, at different places.
  await qemuIo(path.join(disks, 'a.qcow2'), [`write -s ${diff[0]} 0 ${writeMiB}M`]);
  await qemuIo(path.join(disks, 'b.qcow2'), [`write -s ${diff[1]} ${baseMiB / 2}M ${writeMiB}M`]);
  await src.ok(['snapshot', 'create', '--group', 'g', '--name', 's2']);
  return { root, src, disks };
}

describe('group bundles', () => {
  it('store shared blocks once and import into identical chains, the group and its snapshots', async () => {
    const { root, src } = await twoClones('dedup', 64, 4);
    const groupBundle = path.join(root, 'g.bundle');
    const ex = await src.json<ExportDoc>(['snapshot', 'export', '--group', 'g', '-o', groupBundle]);
    expect(ex.group).toBe('g');
    expect(ex.chains).toEqual([
      { vm: 'a', snapshots: ['s1', 's2'] },
      { vm: 'b', snapshots: ['s1', 's2'] },
    ]);
    const one = await src.json<ExportDoc>(['snapshot', 'export', 'a', '-o', path.join(root, 'a.bundle')]);
    const other = await src.json<ExportDoc>(['snapshot', 'export', 'b', '-o', path.join(root, 'b.bundle')]);
    // b's different data is random: compressed, it is as large as it is.
    const differentCompressed = 4 * MiB;
    expect(ex.bundle_bytes).toBeLessThanOrEqual(1.1 * (one.bundle_bytes + differentCompressed));
    expect(ex.bundle_bytes).toBeLessThan(0.7 * (one.bundle_bytes + other.bundle_bytes));

    const inspect = await src.json<{ format_version: number; vm: string | null; group: { name: string; snapshots: { name: string }[] } }>([
      'snapshot',
      'inspect',
      groupBundle,
    ]);
    expect(inspect.format_version).toBe(2);
    expect(inspect.vm).toBe(null);
    expect(inspect.group.snapshots.map((s) => s.name)).toEqual(['s1', 's2']);
    // A single-VM bundle stays version 1 (older readers read it).
    expect((await src.json<{ format_version: number }>(['snapshot', 'inspect', path.join(root, 'a.bundle')])).format_version).toBe(1);
    expect((await src.json<{ ok: boolean }>(['snapshot', 'verify', groupBundle])).ok).toBe(true);

    const dst = new CliHome(path.join(root, 'home-b'), { timeoutMs: 300_000 });
    const im = await dst.json<{ group: string; members: { vm: string; snapshots: string[]; current: string }[] }>([
      'snapshot',
      'import',
      '--group',
      'g',
      groupBundle,
      '--dir',
      path.join(root, 'disks-b'),
    ]);
    expect(im.members.map((m) => [m.vm, m.snapshots, m.current])).toEqual([
      ['a', ['s1', 's2'], 's2'],
      ['b', ['s1', 's2'], 's2'],
    ]);
    for (const vm of ['a', 'b']) await expectSameChain(src.home, vm, dst.home, vm, { sameTree: true, sameLayers: true });
    expect((await readdir(path.join(root, 'disks-b'))).sort()).toEqual(['a', 'b']);
    const shown = await dst.json<{ members: string[]; snapshot_count: number }>(['group', 'show', 'g']);
    expect(shown.members).toEqual(['a', 'b']);
    expect(shown.snapshot_count).toBe(2);
    const gsnaps = await dst.json<{ name: string; members: { vm: string; snapshot: string }[]; consistency: string }[]>(['snapshot', 'list', '--group', 'g']);
    const srcSnaps = await src.json<typeof gsnaps>(['snapshot', 'list', '--group', 'g']);
    expect(gsnaps.map((s) => [s.name, s.members, s.consistency])).toEqual(srcSnaps.map((s) => [s.name, s.members, s.consistency]));
    const memberSnaps = await dst.json<{ name: string; group: { name: string; snapshot: string } | null }[]>(['snapshot', 'list', 'a']);
    expect(memberSnaps.map((s) => s.group).sort((x, y) => (x!.snapshot < y!.snapshot ? -1 : 1))).toEqual([
      { name: 'g', snapshot: 's1' },
      { name: 'g', snapshot: 's2' },
    ]);
    // The imported group restores as a whole.
    await dst.ok(['snapshot', 'restore', '--group', 'g', '--name', 's1', '--yes']);

    // A group bundle is not a VM's, a VM's bundle not a group's: refused with what to run instead.
    const asVm = await dst.cli(['snapshot', 'import', 'x', groupBundle, '--json']);
    expect(asVm.code).not.toBe(0);
    expect(parseJsonOutput<{ error: { code: string; message: string } }>(asVm).error.message).toMatch(/group bundle/);
    const asGroup = await dst.cli(['snapshot', 'import', '--group', 'h', path.join(root, 'a.bundle'), '--json']);
    expect(parseJsonOutput<{ error: { code: string } }>(asGroup).error.code).toBe('USAGE');
    // Members that exist, or a group that exists: nothing is written.
    const again = await dst.cli(['snapshot', 'import', '--group', 'g2', groupBundle, '--json']);
    expect(parseJsonOutput<{ error: { code: string } }>(again).error.code).toBe('VM_EXISTS');
    expect((await dst.json<{ name: string }[]>(['group', 'list'])).map((g) => g.name)).toEqual(['g']);
    const third = new CliHome(path.join(root, 'home-c'), { timeoutMs: 300_000 });
    await third.ok(['group', 'list']);
    await mkdir(path.join(root, 'disks-c'));
    const c = path.join(root, 'disks-c', 'c.qcow2');
    await qemuImg(['create', '-q', '-f', 'qcow2', c, '1M']);
    await third.ok(['vm', 'add', 'c', '--disk', c]);
    await third.ok(['group', 'create', 'g', '--vm', 'c']);
    const taken = await third.cli(['snapshot', 'import', '--group', 'g', groupBundle, '--json']);
    expect(parseJsonOutput<{ error: { code: string } }>(taken).error.code).toBe('GROUP_EXISTS');
    expect((await third.json<{ name: string }[]>(['vm', 'list'])).map((v) => v.name)).toEqual(['c']);
  }, 900_000);

  it('an import killed at any journal step leaves every member and the group imported, or none of them', async () => {
    const { root, src } = await twoClones('crash', 8, 1);
    const bundle = path.join(root, 'g.bundle');
    await src.ok(['snapshot', 'export', '--group', 'g', '-o', bundle]);
    let completedAt = 0;
    for (let n = 1; n < 80; n++) {
      const home = path.join(root, `h${n}`);
      const dir = path.join(root, `d${n}`);
      const crashed = await runCli(['snapshot', 'import', '--group', 'g', bundle, '--dir', dir, '--json'], {
        home,
        env: { CLONEBOX_CRASH_AT: String(n) },
      });
      if (crashed.code === 0) {
        completedAt = n;
        break;
      }
      expect(crashed.signal, `step ${n}: ${crashed.stderr}`).toBe('SIGKILL');
      // The next command, whatever it is, sees all or nothing (its home sweep recovered the import).
      const h = new CliHome(home);
      const vms = (await h.json<{ name: string }[]>(['vm', 'list'])).map((v) => v.name);
      const hasGroup = await readFile(path.join(home, 'groups', 'g', 'group.json')).then(
        () => true,
        () => false,
      );
      if (vms.length === 0) {
        expect(hasGroup, `step ${n}`).toBe(false);
        await h.ok(['snapshot', 'import', '--group', 'g', bundle, '--dir', dir]);
      } else {
        expect(vms, `step ${n}`).toEqual(['a', 'b']);
        expect(hasGroup, `step ${n}`).toBe(true);
      }
      // A command on a member finishes what the commit had left (its redirect leads to the group
      // journal: the last actions remove the redirects); `vm list` opens no VM.
      // A member whose redirect was already removed keeps the killed process's lock file until a
      // command takes its lock (a stale lock is taken over); listing each member does.
      for (const vm of ['a', 'b']) await h.ok(['snapshot', 'list', vm]);
      // Killed after the last redirect went, the group journal is left for a group command to finish.
      await h.ok(['snapshot', 'list', '--group', 'g']);
      // Then everything is there once, with nothing left over (records read directly: fewer processes).
      for (const vm of ['a', 'b']) {
        expect((await readdir(path.join(home, 'vms', vm, 'snapshots'))).sort(), `step ${n} ${vm}`).toEqual(['s1.json', 's2.json']);
        expect(await readdir(path.join(home, 'vms', vm)).then((f) => f.filter((x) => x !== 'snapshots').sort()), `step ${n} ${vm}`).toEqual(['vm.json']);
        expect((await readdir(path.join(dir, vm))).sort(), `step ${n}: files left`).toEqual([`${vm}.qcow2`, `${vm}@s1.qcow2`, `${vm}@s2.qcow2`]);
      }
      expect(await readdir(path.join(home, 'groups', 'g')).then((f) => f.sort())).toEqual(['group.json', 'snapshots']);
      expect((await readdir(path.join(home, 'groups', 'g', 'snapshots'))).sort()).toEqual(['s1.json', 's2.json']);
      expect(JSON.parse(await readFile(path.join(home, 'groups', 'g', 'group.json'), 'utf8')).members).toEqual(['a', 'b']);
    }
    expect(completedAt, `the import has ${completedAt - 1} crash points`).toBeGreaterThan(10);
  }, 900_000);
});
