/**
 * VM groups (issue #14) on two image-driver VMs, through the CLI, checked with qemu-img:
 *   - the group records and their errors (unknown VM or group, a name taken, --group beside a VM);
 *   - a group snapshot, writes to both VMs, a group restore: both identical under `qemu-img compare`
 *     to the state at the snapshot; member snapshots in each VM's list, tagged with the group;
 *   - a member snapshot is deleted only with its group snapshot; a group with snapshots is not deleted;
 *   - two group operations over the same VMs at once both finish (the lock order);
 *   - a group's named policy taken by `schedule run` under CLONEBOX_NOW, with its retention.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { GroupSnapshotView, GroupView, ScheduleEntry, SnapshotView } from '../src/index.js';
import { parseCliError } from './helpers/cli.js';
import { qemuCompare } from './helpers/qemu.js';
import { VmFixture } from './helpers/snapshots.js';
import { makeTempDir } from './helpers/temp.js';

async function pair(): Promise<{ web: VmFixture; db: VmFixture }> {
  const root = await makeTempDir('clonebox-groups-');
  const home = path.join(root, 'home');
  await mkdir(path.join(root, 'web'));
  await mkdir(path.join(root, 'db'));
  return { web: await VmFixture.create(home, path.join(root, 'web'), 'web'), db: await VmFixture.create(home, path.join(root, 'db'), 'db') };
}

describe('groups of image-driver VMs', () => {
  it('group records: create, add, remove, list, show, and their errors', async () => {
    const { web, db } = await pair();
    const g = await web.json<GroupView>(['group', 'create', 'app', '--vm', 'web', '--vm', 'db']);
    expect(g).toMatchObject({ name: 'app', members: ['db', 'web'], missing: [], snapshot_count: 0, latest: null });
    const err = async (args: string[], code: string) => {
      const r = await web.cli([...args, '--json']);
      expect(r.code, r.stderr).not.toBe(0);
      expect(parseCliError(r, true).code).toBe(code);
      return parseCliError(r, true);
    };
    expect((await err(['group', 'create', 'app', '--vm', 'web'], 'GROUP_EXISTS')).message).toContain('app');
    expect((await err(['group', 'create', 'other', '--vm', 'wbe'], 'VM_NOT_FOUND')).hint).toContain('did you mean web?');
    expect((await err(['group', 'show', 'ap'], 'GROUP_NOT_FOUND')).hint).toContain('did you mean app?');
    await err(['snapshot', 'create', 'web', '--group', 'app'], 'USAGE');
    await err(['snapshot', 'create'], 'USAGE');
    await err(['group', 'remove', 'app', '--vm', 'web', '--vm', 'db'], 'USAGE'); // no member left
    await db.ok(['vm', 'create', 'cache', '--size', '16M', '--dir', db.dir]);
    expect((await web.json<GroupView>(['group', 'add', 'app', '--vm', 'cache'])).members).toEqual(['cache', 'db', 'web']);
    expect((await web.json<GroupView>(['group', 'remove', 'app', '--vm', 'cache'])).members).toEqual(['db', 'web']);
    expect((await web.json<GroupView[]>(['group', 'list'])).map((x) => x.name)).toEqual(['app']);
  }, 120_000);

  it('group snapshot, writes to both, group restore: both identical to the state at the snapshot', async () => {
    const { web, db } = await pair();
    await web.ok(['group', 'create', 'app', '--vm', 'web', '--vm', 'db']);
    await web.write('write -P 1 0 1M');
    await db.write('write -P 2 2M 1M');
    const refWeb = await web.refCurrent('g1');
    const refDb = await db.refCurrent('g1');
    const g1 = await web.json<GroupSnapshotView>(['snapshot', 'create', '--group', 'app', '--name', 'g1']);
    expect(g1).toMatchObject({
      name: 'g1',
      group: 'app',
      consistency: 'locks',
      pause_ms: null,
      members: [
        { vm: 'db', snapshot: 'g1' },
        { vm: 'web', snapshot: 'g1' },
      ],
    });
    for (const f of [web, db]) {
      const s = (await f.list()).find((x) => x.name === 'g1')!;
      expect(s.group).toEqual({ name: 'app', snapshot: 'g1' });
      expect(s.current).toBe(true);
    }
    await web.write('write -P 7 0 3M');
    await db.write('write -P 8 1M 3M');
    expect((await qemuCompare(web.disk, refWeb)).code).not.toBe(0);
    const r = await web.json<{ restored: string; members: { vm: string }[] }>(['snapshot', 'restore', '--group', 'app', '--name', 'g1', '--yes']);
    expect(r.restored).toBe('g1');
    expect((await qemuCompare(web.disk, refWeb)).code).toBe(0);
    expect((await qemuCompare(db.disk, refDb)).code).toBe(0);
    await web.expectIntact(refWeb, new Set(['g1']));
    await db.expectIntact(refDb, new Set(['g1']));

    // A member snapshot goes only with its group snapshot; a group keeps its record while it has one.
    const single = await web.cli(['snapshot', 'delete', 'web', '--name', 'g1', '--json']);
    expect(parseCliError(single, true).code).toBe('SNAPSHOT_IN_GROUP');
    const del = await web.cli(['group', 'delete', 'app', '--json']);
    expect(parseCliError(del, true).code).toBe('GROUP_HAS_SNAPSHOTS');
    const gone = await web.json<{ deleted: string; members: { vm: string; deleted: string[] }[] }>(['snapshot', 'delete', '--group', 'app', '--name', 'g1']);
    expect(gone.members.map((m) => m.deleted)).toEqual([['g1'], ['g1']]);
    expect(await web.list()).toEqual([]);
    expect(await db.list()).toEqual([]);
    await web.expectIntact(refWeb, new Set());
    await db.expectIntact(refDb, new Set());
    await web.ok(['group', 'delete', 'app']);
  }, 180_000);

  it('two group operations over the same VMs at once both finish (locks in one order)', async () => {
    const { web, db } = await pair();
    await web.ok(['group', 'create', 'one', '--vm', 'web', '--vm', 'db']);
    await web.ok(['group', 'create', 'two', '--vm', 'db', '--vm', 'web']);
    const env = { CLONEBOX_LOCK_WAIT_MS: '120000' };
    const [a, b] = await Promise.all([
      web.cli(['snapshot', 'create', '--group', 'one', '--name', 'x1'], env),
      db.cli(['snapshot', 'create', '--group', 'two', '--name', 'x2'], env),
    ]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    for (const f of [web, db]) expect((await f.list()).map((s) => s.name).sort()).toEqual(['x1', 'x2']);
  }, 180_000);

  it("a group's named policy: `schedule run` takes group snapshots and prunes them by its retention", async () => {
    const { web, db } = await pair();
    await web.ok(['group', 'create', 'app', '--vm', 'web', '--vm', 'db']);
    const day = (d: number) => ({ CLONEBOX_NOW: new Date(2030, 0, d, 0, 5).toISOString() });
    const set = await web.cli(['group', 'policy', 'app', 'nightly', '--when', '00:00', '--keep-last', '1', '--json'], day(1));
    expect(set.code, set.stderr).toBe(0);
    const entries = JSON.parse((await web.cli(['schedule', 'list', '--json'], day(2))).stdout) as ScheduleEntry[];
    expect(entries).toContainEqual(expect.objectContaining({ vm: 'app', group: 'app', policy: 'nightly', due: true }));
    await web.write('write -P 3 0 64k');
    const first = await web.cli(['schedule', 'run', '--json'], day(2));
    expect(first.code, first.stderr).toBe(0);
    const n1 = `snap-20300102-000500`;
    expect(JSON.parse(first.stdout).taken).toEqual([{ vm: 'app', group: 'app', policy: 'nightly', snapshot: n1 }]);
    await db.write('write -P 4 0 64k');
    const cur = { web: await web.refCurrent('cur'), db: await db.refCurrent('cur') };
    const second = await web.cli(['schedule', 'run', '--json'], day(3));
    expect(second.code, second.stderr).toBe(0);
    const out = JSON.parse(second.stdout) as { taken: { snapshot: string }[]; pruned: { snapshot: string; group?: string }[] };
    const n2 = `snap-20300103-000500`;
    expect(out.taken.map((t) => t.snapshot)).toEqual([n2]);
    expect(out.pruned).toContainEqual(expect.objectContaining({ snapshot: n1, group: 'app' }));
    const list = await web.json<GroupSnapshotView[]>(['snapshot', 'list', '--group', 'app']);
    expect(list.map((s) => [s.name, s.auto_created, s.auto_policy])).toEqual([[n2, true, 'nightly']]);
    for (const f of [web, db] as const) {
      const snaps = await f.list();
      expect(snaps.map((s: SnapshotView) => s.name)).toEqual([n2]);
      f.refs.set(n2, cur[f.vm as 'web' | 'db']);
      await f.expectIntact(cur[f.vm as 'web' | 'db'], new Set([n2]));
    }
  }, 240_000);
});
