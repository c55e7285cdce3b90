/**
 * Group extras (issue #14), on tiny image-driver VMs through the library API, checked with qemu-img:
 *   - `vm remove` of a group's VM: VM_IN_GROUP naming the group and what to do; `leaveGroups` takes it
 *     out of the group and of its group snapshots (one naming it alone goes; a group left empty goes),
 *     and the group still restores its other members; a SIGKILL at every journal step of it leaves, after
 *     the next command, the VM either still in the group or gone with no group record naming it;
 *   - `groups:` in .clonebox.yaml: line-numbered errors, apply creates and changes a group, idempotent;
 *   - `before_operations: [restore, delete]` of a group: ONE group auto snapshot before a group restore
 *     and a group delete, holding the state from before; `noAutoSnapshot` skips it.
 */
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Clonebox } from '../src/index.js';
import { parseConfig } from '../src/snapshots/config-file.js';
import { runCli } from './helpers/cli.js';
import { qemuCompare, qemuIo, qemuRaw } from './helpers/qemu.js';
import { makeTempDir } from './helpers/temp.js';

interface Pair {
  root: string;
  home: string;
  cb: Clonebox;
  disk: (vm: string) => string;
  /** A raw copy of the VM's current state. */
  ref: (vm: string, label: string) => Promise<string>;
}

async function setup(vms: string[]): Promise<Pair> {
  const root = await makeTempDir('clonebox-groups-extras-');
  const home = path.join(root, 'home');
  const cb = await Clonebox.open({ home, onWarning: () => undefined });
  for (const v of vms) {
    await mkdir(path.join(root, v));
    await cb.vms.create(v, { size: '16M', dir: path.join(root, v) });
  }
  const disk = (vm: string) => path.join(root, vm, `${vm}.qcow2`);
  const ref = async (vm: string, label: string) => {
    const out = path.join(root, `ref-${vm}-${label}.raw`);
    await qemuRaw(disk(vm), out);
    return out;
  };
  return { root, home, cb, disk, ref };
}

async function codeOf(p: Promise<unknown>): Promise<{ code: string; message: string; hint: string }> {
  try {
    await p;
  } catch (err) {
    const e = err as { code: string; message: string; hint?: string };
    return { code: e.code, message: e.message, hint: e.hint ?? '' };
  }
  throw new Error('expected an error');
}

/** Every journal.json left anywhere in the home (none after a finished or recovered operation). */
async function journals(home: string): Promise<string[]> {
  const found: string[] = [];
  for (const kind of ['vms', 'groups']) {
    for (const n of await readdir(path.join(home, kind)).catch(() => [] as string[])) {
      if ((await readdir(path.join(home, kind, n)).catch(() => [] as string[])).includes('journal.json')) found.push(`${kind}/${n}`);
    }
  }
  return found;
}

describe('vm remove of a group member', () => {
  it('is refused naming the group; --leave-groups takes it out of the group and its group snapshots', async () => {
    const t = await setup(['db', 'web']);
    await t.cb.groups.create('app', { vms: ['db', 'web'] });
    await t.cb.groups.create('solo', { vms: ['db'] });
    await qemuIo(t.disk('web'), 'write -P 3 0 1M');
    const webAtG1 = await t.ref('web', 'g1');
    await t.cb.groups.createSnapshot('app', { name: 'g1' });
    await t.cb.groups.createSnapshot('solo', { name: 's1' });

    const refused = await codeOf(t.cb.vms.remove('db'));
    expect(refused.code).toBe('VM_IN_GROUP');
    expect(refused.message).toContain('app (member; group snapshots g1)');
    expect(refused.message).toContain('solo (member; group snapshots s1)');
    expect(refused.hint).toContain('clonebox group remove app --vm db');
    expect(refused.hint).toContain('--leave-groups');
    // Out of the group record, but still named by its group snapshots: still refused, with that hint.
    await t.cb.groups.remove('app', ['db']);
    const stillNamed = await codeOf(t.cb.vms.remove('db'));
    expect(stillNamed.code).toBe('VM_IN_GROUP');
    expect(stillNamed.message).toContain('app (group snapshots g1)');
    expect((await t.cb.vms.list()).map((v) => v.name)).toEqual(['db', 'web']);

    const r = await t.cb.vms.remove('db', { leaveGroups: true });
    expect(r.left_groups).toEqual([
      { group: 'app', group_deleted: false, snapshots_changed: ['g1'], snapshots_deleted: [] },
      { group: 'solo', group_deleted: true, snapshots_changed: [], snapshots_deleted: ['s1'] },
    ]);
    expect((await t.cb.vms.list()).map((v) => v.name)).toEqual(['web']);
    expect((await t.cb.groups.list()).map((g) => g.name)).toEqual(['app']);
    expect((await t.cb.groups.showSnapshot('app', 'g1')).members).toEqual([{ vm: 'web', snapshot: 'g1' }]);
    expect(await journals(t.home)).toEqual([]);
    // The group snapshot still restores what it took of the members it kept.
    await qemuIo(t.disk('web'), 'write -P 9 0 2M');
    await t.cb.groups.restore('app', { name: 'g1' });
    expect((await qemuCompare(t.disk('web'), webAtG1)).code).toBe(0);
  }, 60_000);

  it('a SIGKILL at every step of vm remove --leave-groups: after the next command, before or after, never a mix', async () => {
    const t = await setup(['db', 'web']);
    await t.cb.groups.create('app', { vms: ['db', 'web'] });
    await t.cb.groups.createSnapshot('app', { name: 'g1' });
    await t.cb.groups.create('solo', { vms: ['db'] });
    await t.cb.groups.createSnapshot('solo', { name: 's1' });
    const base = path.join(t.root, 'base');
    // The home at this point, copied for each crash point (a copy is cheaper than building it again).
    const { cp } = await import('node:fs/promises');
    await cp(t.home, base, { recursive: true });
    let after = 0;
    let between = 0;
    for (let n = 1; n <= 30; n++) {
      const home = path.join(t.root, `crash-${n}`);
      await cp(base, home, { recursive: true });
      const r = await runCli(['vm', 'remove', 'db', '--leave-groups'], { home, env: { CLONEBOX_CRASH_AT: String(n) } });
      const finished = r.code === 0;
      if (!finished) expect(r.code, r.stderr).not.toBe(1); // killed, not refused
      // The next command (in this process: only the killed run needs one of its own).
      const cb = await Clonebox.open({ home, onWarning: () => undefined });
      const groups = await cb.groups.list();
      const vms = (await cb.vms.list()).map((v) => v.name);
      const g1 = await cb.groups.showSnapshot('app', 'g1');
      const app = groups.find((g) => g.name === 'app')!;
      if (vms.includes('db')) {
        // Before, or between the two groups (out of app, still in solo); running it again finishes.
        expect(groups.find((g) => g.name === 'solo')?.members).toEqual(['db']);
        const inApp = app.members.includes('db');
        if (!inApp) between++;
        expect(g1.members.some((m) => m.vm === 'db')).toBe(inApp);
        await cb.vms.remove('db', { leaveGroups: true });
      } else {
        after++;
        expect(groups.map((g) => g.name)).toEqual(['app']);
      }
      expect((await cb.vms.list()).map((v) => v.name)).toEqual(['web']);
      expect((await cb.groups.list()).map((g) => [g.name, g.members])).toEqual([['app', ['web']]]);
      expect((await cb.groups.showSnapshot('app', 'g1')).members).toEqual([{ vm: 'web', snapshot: 'g1' }]);
      expect(await journals(home)).toEqual([]);
      if (finished) break;
    }
    expect(between).toBeGreaterThan(0);
    expect(after).toBeGreaterThan(0);
  }, 240_000);
});

describe('groups in .clonebox.yaml', () => {
  it('line-numbered errors for bad groups', () => {
    const text = [
      'vm:',
      '  name: db',
      'groups:',
      '  - name: shop',
      '    members: [db, db]',
      '    colour: red',
      '    auto_snapshot:',
      '      before_operations: [restore, upgrade]',
      '  - name: shop',
      '    members: []',
      '  - members: [app]',
      '    policies:',
      '      nightly: {when: "25:00"}',
    ].join('\n');
    let message = '';
    try {
      parseConfig('/p/.clonebox.yaml', text);
    } catch (err) {
      expect((err as { code: string }).code).toBe('CONFIG_INVALID');
      message = (err as Error).message;
    }
    expect(message).toContain('/p/.clonebox.yaml:5:14: groups.shop.members names db twice');
    expect(message).toContain('/p/.clonebox.yaml:6:5: unknown key "colour" in groups[0]');
    expect(message).toContain('/p/.clonebox.yaml:8:26: operation "upgrade" is not a group operation');
    expect(message).toContain('/p/.clonebox.yaml:9:11: group shop is named twice');
    expect(message).toContain('/p/.clonebox.yaml:10:14: groups.shop.members needs at least one VM');
    expect(message).toContain('/p/.clonebox.yaml:11:5: groups[2] needs a `name:`');
    expect(message).toMatch(/\/p\/\.clonebox\.yaml:13:\d+: groups\[2\]\.policies\.nightly\.when/);
  });

  it('apply creates the group, changes it with the file, and is idempotent', async () => {
    const t = await setup(['db', 'web', 'cache']);
    const file = path.join(t.root, '.clonebox.yaml');
    const yaml = (members: string, ops: string) =>
      [
        'vm:',
        '  name: db',
        'groups:',
        '  - name: shop',
        `    members: [${members}]`,
        '    description: the shop',
        '    auto_snapshot:',
        `      before_operations: [${ops}]`,
        '    policies:',
        '      nightly: {when: "02:00", keep_last: 3}',
      ].join('\n');
    await writeFile(file, yaml('db, web', 'restore'));
    const a = await t.cb.config.apply(file);
    expect(a.groups).toEqual([{ name: 'shop', created: true, changed: true }]);
    expect(await t.cb.groups.show('shop')).toMatchObject({ members: ['db', 'web'], description: 'the shop' });
    expect(Object.keys((await t.cb.groups.policy('shop')).policies)).toEqual(['nightly']);
    const again = await t.cb.config.apply(file);
    expect(again).toMatchObject({ changed: false, groups: [{ name: 'shop', created: false, changed: false }] });
    await writeFile(file, yaml('cache, db', 'restore, delete'));
    expect((await t.cb.config.apply(file)).groups).toEqual([{ name: 'shop', created: false, changed: true }]);
    expect((await t.cb.groups.show('shop')).members).toEqual(['cache', 'db']);
    // A member that is not registered: nothing of the groups is written, the error points at members.
    await writeFile(file, yaml('db, nosuch', 'restore'));
    const bad = await codeOf(t.cb.config.apply(file));
    expect(bad.code).toBe('CONFIG_INVALID');
    expect(bad.message).toContain(`${file}:5:14: VM nosuch of group shop is not registered`);
    expect((await t.cb.groups.show('shop')).members).toEqual(['cache', 'db']);
  }, 60_000);
});

describe('before_operations of a group', () => {
  it('one group auto snapshot before a group restore and a group delete; noAutoSnapshot skips it', async () => {
    const t = await setup(['db', 'web']);
    const file = path.join(t.root, '.clonebox.yaml');
    await writeFile(
      file,
      ['vm:', '  name: db', 'groups:', '  - name: shop', '    members: [db, web]', '    auto_snapshot:', '      before_operations: [restore, delete]'].join(
        '\n',
      ),
    );
    await t.cb.config.apply(file);
    await qemuIo(t.disk('db'), 'write -P 1 0 1M');
    await qemuIo(t.disk('web'), 'write -P 2 1M 1M');
    const at = { db: await t.ref('db', 'g1'), web: await t.ref('web', 'g1') };
    await t.cb.groups.createSnapshot('shop', { name: 'g1' });
    await qemuIo(t.disk('db'), 'write -P 5 0 2M');
    await qemuIo(t.disk('web'), 'write -P 6 0 2M');
    const before = { db: await t.ref('db', 'before'), web: await t.ref('web', 'before') };

    const r = await t.cb.groups.restore('shop', { name: 'g1' });
    expect(r.auto_snapshot).toMatch(/^snap-/);
    const auto = await t.cb.groups.showSnapshot('shop', r.auto_snapshot!);
    expect(auto).toMatchObject({ auto_created: true, auto_policy: 'before-restore', members: [{ vm: 'db' }, { vm: 'web' }] });
    for (const vm of ['db', 'web'] as const) {
      expect((await qemuCompare(t.disk(vm), at[vm])).code).toBe(0);
      // The auto snapshot holds the state from before the restore (its layer, read with its backing chain).
      const s = (await t.cb.snapshots.list(vm)).find((x) => x.name === r.auto_snapshot)!;
      expect(s.group).toEqual({ name: 'shop', snapshot: r.auto_snapshot });
      expect((await qemuCompare(s.disks[0]!.path, before[vm])).code).toBe(0);
    }
    const skipped = await t.cb.groups.restore('shop', { name: 'g1', noAutoSnapshot: true });
    expect(skipped.auto_snapshot).toBeNull();
    expect((await t.cb.groups.snapshots('shop')).length).toBe(2);

    // A group delete of g1 (current on both, and the parent of the first auto snapshot): the auto
    // snapshot is taken, g1 merged into both.
    await qemuIo(t.disk('db'), 'write -P 7 3M 1M');
    const cur = await t.ref('db', 'cur');
    expect((await codeOf(t.cb.groups.deleteSnapshot('shop', 'g1'))).code).toBe('SNAPSHOT_HAS_CHILDREN');
    expect((await t.cb.groups.snapshots('shop')).length).toBe(2); // refused before any auto snapshot
    const d = await t.cb.groups.deleteSnapshot('shop', 'g1', { keepChildren: true });
    expect(d.auto_snapshot).toMatch(/^snap-/);
    expect((await t.cb.groups.snapshots('shop')).map((s) => s.name).sort()).toEqual([r.auto_snapshot, d.auto_snapshot].sort());
    expect((await qemuCompare(t.disk('db'), cur)).code).toBe(0);
    const s = (await t.cb.snapshots.list('db')).find((x) => x.name === d.auto_snapshot)!;
    expect((await qemuCompare(s.disks[0]!.path, cur)).code).toBe(0);
    const first = (await t.cb.snapshots.list('web')).find((x) => x.name === r.auto_snapshot)!;
    expect((await qemuCompare(first.disks[0]!.path, before.web)).code).toBe(0);

    // --recursive: the new auto snapshot (in the deleted subtree) is spared and keeps the state.
    await t.cb.groups.createSnapshot('shop', { name: 'g2' });
    await qemuIo(t.disk('web'), 'write -P 4 5M 1M');
    const webNow = await t.ref('web', 'now');
    const rec = await t.cb.groups.deleteSnapshot('shop', 'g2', { recursive: true });
    expect(rec.auto_snapshot).toMatch(/^snap-/);
    expect(rec.members.map((m) => m.deleted)).toEqual([['g2'], ['g2']]);
    const spared = (await t.cb.snapshots.list('web')).find((x) => x.name === rec.auto_snapshot)!;
    expect((await qemuCompare(spared.disks[0]!.path, webNow)).code).toBe(0);
    expect((await qemuCompare(t.disk('web'), webNow)).code).toBe(0);
    expect(await journals(t.home)).toEqual([]);
  }, 60_000);
});
