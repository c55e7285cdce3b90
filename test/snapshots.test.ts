/**
 * Snapshot manager on the image driver, through the CLI, on real qcow2 images written with qemu-io and
 * checked with qemu-img compare / check against raw references taken before each change.
 */

import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI_PATH, parseJsonOutput } from './helpers/cli.js';
import { run } from './helpers/process.js';
import { qemuImg } from './helpers/qemu.js';
import { type SnapView, VmFixture } from './helpers/snapshots.js';
import { makeTempDir } from './helpers/temp.js';

async function fixture(name = 'web', size = '16M'): Promise<VmFixture> {
  const root = await makeTempDir('clonebox-snap-');
  const dir = path.join(root, 'disks');
  await mkdir(dir);
  return VmFixture.create(path.join(root, 'home'), dir, name, size);
}

const SNAPSHOT_KEYS = [
  'auto_created',
  'auto_policy',
  'children',
  'created_at',
  'current',
  'description',
  'disks',
  'expires_at',
  'group',
  'name',
  'parent',
  'quiesced',
  'size_bytes',
  'state',
  'tags',
  'type',
  'vm_name',
];

describe('snapshot create / list / show', () => {
  it('seals the disk as a layer, keeps the disk path, and reports the contract shape', async () => {
    const f = await fixture();
    await f.write('write -P 0x11 0 1M');
    const s1 = await f.snap('s1', ['--description', 'first', '--tags', 'a,b']);
    expect(Object.keys(s1).sort()).toEqual(SNAPSHOT_KEYS);
    expect(s1).toMatchObject({
      name: 's1',
      vm_name: 'web',
      type: 'disk',
      state: 'ready',
      description: 'first',
      parent: null,
      children: [],
      tags: ['a', 'b'],
      auto_created: false,
      auto_policy: null,
      current: true,
      size_bytes: 1024 * 1024,
    });
    expect(s1.disks).toEqual([{ target: 'vda', path: path.join(f.dir, 'web@s1.qcow2') }]);
    // The registered disk path is now an empty overlay on the layer.
    const info = JSON.parse((await qemuImg(['info', '--output=json', f.disk])).stdout) as { 'backing-filename': string };
    expect(info['backing-filename']).toBe('web@s1.qcow2');
    const show = await f.json<{ disks: { path: string }[]; current: string }>(['vm', 'show', 'web']);
    expect(show.current).toBe('s1');
    expect(show.disks[0]!.path).toBe(f.disk);

    await f.write('write -P 0x22 1M 512k');
    const s2 = await f.snap('s2');
    expect(s2.parent).toBe('s1');
    const list = await f.list();
    expect(list.map((s) => s.name)).toEqual(['s2', 's1']); // newest first
    expect(list[1]!.children).toEqual(['s2']);
    expect(list.map((s) => s.current)).toEqual([true, false]);
    await f.refCurrent('now');
    await f.expectIntact(f.refs.get('now')!);

    const shown = await f.json<SnapView>(['snapshot', 'show', 'web', '--name', 's1']);
    expect(shown.children).toEqual(['s2']);
  });

  it('names snapshots automatically and refuses duplicates and bad names', async () => {
    const f = await fixture();
    const a = await f.json<SnapView>(['snapshot', 'create', 'web']);
    expect(a.name).toMatch(/^snap-\d{8}-\d{6}$/);
    const b = await f.json<SnapView>(['snapshot', 'create', 'web']);
    expect(b.name).not.toBe(a.name);
    const dup = await f.cli(['snapshot', 'create', 'web', '--name', a.name, '--json']);
    expect(dup.code).toBe(1);
    expect(parseJsonOutput<{ error: { code: string } }>(dup).error.code).toBe('SNAPSHOT_EXISTS');
    const bad = await f.cli(['snapshot', 'create', 'web', '--name', '../x']);
    expect(bad.code).toBe(2);
    const missing = await f.cli(['snapshot', 'create', 'nope', '--json']);
    expect(missing.code).toBe(1);
    expect(parseJsonOutput<{ error: { code: string } }>(missing).error.code).toBe('VM_NOT_FOUND');
    const mem = await f.cli(['snapshot', 'create', 'web', '--memory']);
    expect(mem.code).toBe(1);
    expect(mem.stderr).toContain('full snapshot requires a running VM');
    const q = await f.cli(['snapshot', 'create', 'web', '--quiesce', '--name', 'q']);
    expect(q.code).toBe(0);
    expect(q.stderr).toContain('warning');
  });

  it('snapshots every disk of a multi-disk VM together', async () => {
    const root = await makeTempDir('clonebox-snap-');
    const home = path.join(root, 'home');
    const a = path.join(root, 'a.qcow2');
    const b = path.join(root, 'b.qcow2');
    await qemuImg(['create', '-f', 'qcow2', a, '8M']);
    await qemuImg(['create', '-f', 'qcow2', b, '4M']);
    const f = new VmFixture(home, root, 'two');
    await f.ok(['vm', 'add', 'two', '--disk', a, '--disk', b]);
    const s = await f.json<SnapView>(['snapshot', 'create', 'two', '--name', 's1']);
    expect(s.disks.map((d) => d.target)).toEqual(['vda', 'vdb']);
    expect(s.disks.map((d) => path.basename(d.path))).toEqual(['a@s1.qcow2', 'b@s1.qcow2']);
  });
});

describe('restore, branches and --at', () => {
  it('restores content exactly, starts branches, and refuses without --yes when there is no TTY', async () => {
    const f = await fixture();
    await f.write('write -P 1 0 1M');
    await f.snap('s1');
    await f.write('write -P 2 1M 1M', 'write -z 0 64k');
    await f.snap('s2');
    await f.write('write -P 3 2M 64k');
    const refused = await f.cli(['snapshot', 'restore', 'web', '--name', 's1']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/--yes/);

    await f.ok(['snapshot', 'restore', 'web', '--name', 's1', '--yes']);
    await f.expectIntact(f.refs.get('s1')!);
    await f.write('write -P 4 3M 64k');
    const s3 = await f.snap('s3');
    expect(s3.parent).toBe('s1');
    const tree = await f.json<{ vm_name: string; current: string; roots: { name: string; current: boolean; children: { name: string }[] }[] }>([
      'snapshot',
      'list',
      'web',
      '--tree',
    ]);
    expect(tree.current).toBe('s3');
    expect(tree.roots.map((r) => r.name)).toEqual(['s1']);
    expect(tree.roots[0]!.children.map((c) => c.name).sort()).toEqual(['s2', 's3']);
    const text = await f.ok(['snapshot', 'list', 'web', '--tree']);
    expect(text.stdout).toContain('├── s2');
    expect(text.stdout).toContain('└── * s3');

    // --at picks the newest snapshot at or before the time.
    const list = await f.list();
    const s2 = list.find((s) => s.name === 's2')!;
    const r = await f.json<{ restored: string }>(['snapshot', 'restore', 'web', '--at', s2.created_at, '--yes']);
    expect(r.restored).toBe('s2');
    await f.expectIntact(f.refs.get('s2')!);
    const early = await f.cli(['snapshot', 'restore', 'web', '--at', '2000-01-01T00:00:00Z', '--yes']);
    expect(early.code).toBe(1);
  });

  it('--backup snapshots the current state first', async () => {
    const f = await fixture();
    await f.write('write -P 1 0 64k');
    await f.snap('s1');
    await f.write('write -P 9 0 64k');
    const before = await f.refCurrent('before');
    const r = await f.json<{ restored: string; backup: string }>(['snapshot', 'restore', 'web', '--name', 's1', '--backup', '--yes']);
    expect(r.backup).toMatch(/^snap-/);
    const b = (await f.list()).find((s) => s.name === r.backup)!;
    expect(b.auto_created).toBe(true);
    expect(b.tags).toContain('auto');
    f.refs.set(r.backup, before);
    await f.expectIntact(f.refs.get('s1')!);
  });
});

describe('delete', () => {
  async function tree3(): Promise<VmFixture> {
    // s1 ── s2 ── s4
    //   └── s3 (current, with changes on top)
    const f = await fixture();
    await f.write('write -P 1 0 2M', 'write -P 5 8M 1M');
    await f.snap('s1');
    await f.write('write -P 2 1M 1M', 'write -z 8M 64k');
    await f.snap('s2');
    await f.write('write -P 4 4M 1M');
    await f.snap('s4');
    await f.ok(['snapshot', 'restore', 'web', '--name', 's1', '--yes']);
    await f.write('write -P 3 2M 1M', 'write -P 1 0 64k'); // the second write rewrites identical bytes
    await f.snap('s3');
    await f.write('write -P 7 6M 64k');
    await f.refCurrent('cur');
    return f;
  }

  it('refuses a snapshot with children and lists them', async () => {
    const f = await tree3();
    const r = await f.cli(['snapshot', 'delete', 'web', '--name', 's1', '--json']);
    expect(r.code).toBe(1);
    expect(parseJsonOutput<{ error: { code: string; message: string } }>(r).error).toMatchObject({ code: 'SNAPSHOT_HAS_CHILDREN' });
    expect(r.stderr).toContain('s2');
    expect(r.stderr).toContain('s3');
  });

  it('--keep-children merges into every child and keeps every state identical', async () => {
    const f = await tree3();
    await f.ok(['snapshot', 'delete', 'web', '--name', 's1', '--keep-children']);
    const list = await f.expectIntact(f.refs.get('cur')!, new Set(['s2', 's3', 's4']));
    expect(list.find((s) => s.name === 's2')!.parent).toBeNull();
    expect(list.find((s) => s.name === 's3')!.parent).toBeNull();
    expect(list.find((s) => s.name === 's4')!.parent).toBe('s2');
  });

  it('deleting the current snapshot merges it into the current state', async () => {
    const f = await tree3();
    await f.ok(['snapshot', 'delete', 'web', '--name', 's3']);
    await f.expectIntact(f.refs.get('cur')!, new Set(['s1', 's2', 's4']));
    const show = await f.json<{ current: string }>(['vm', 'show', 'web']);
    expect(show.current).toBe('s1');
  });

  it('deletes a leaf, and --recursive deletes a subtree (also one holding the current state)', async () => {
    const f = await tree3();
    await f.ok(['snapshot', 'delete', 'web', '--name', 's4']);
    await f.expectIntact(f.refs.get('cur')!, new Set(['s1', 's2', 's3']));
    const refused = await f.cli(['snapshot', 'delete', 'web', '--name', 's1', '--recursive']);
    expect(refused.code).toBe(1); // needs --yes without a TTY
    await f.ok(['snapshot', 'delete', 'web', '--name', 's1', '--recursive', '--yes']);
    await f.expectIntact(f.refs.get('cur')!, new Set());
    expect(await f.list()).toEqual([]);
  });
});

describe('diff', () => {
  it('reports exactly the clusters whose content differs', async () => {
    const f = await fixture();
    await f.write('write -P 1 0 1M', 'write -P 2 4M 64k');
    await f.snap('a');
    // Changes: 1M..1M+128k new data, an identical rewrite at 0 (no change), a zeroed cluster at 4M,
    // an unaligned 100-byte write inside the cluster at 2M+64k.
    await f.write('write -P 3 1M 128k', 'write -P 1 0 64k', 'write -z 4M 64k', 'write -P 9 2162700 100');
    await f.snap('b');
    const d = await f.json<{
      from: string;
      to: string;
      disks: { target: string; granularity: number; changed_bytes: number; ranges: { offset: number; length: number }[] }[];
    }>(['snapshot', 'diff', 'web', '--from', 'a', '--to', 'b']);
    expect(d.from).toBe('a');
    expect(d.to).toBe('b');
    expect(d.disks).toEqual([
      {
        target: 'vda',
        granularity: 65536,
        changed_bytes: 128 * 1024 + 65536 + 65536,
        ranges: [
          { offset: 1048576, length: 131072 },
          { offset: 2162688, length: 65536 },
          { offset: 4194304, length: 65536 },
        ],
      },
    ]);
    // Against the current state, and across branches.
    await f.write('write -P 5 8M 64k');
    const c = await f.json<{ disks: { ranges: { offset: number; length: number }[] }[] }>(['snapshot', 'diff', 'web', '--from', 'b', '--to', 'current']);
    expect(c.disks[0]!.ranges).toEqual([{ offset: 8 * 1048576, length: 65536 }]);
    await f.ok(['snapshot', 'restore', 'web', '--name', 'a', '--yes']);
    await f.write('write -P 6 12M 64k');
    await f.snap('c');
    const x = await f.json<{ disks: { ranges: { offset: number; length: number }[] }[] }>(['snapshot', 'diff', 'web', '--from', 'b', '--to', 'c']);
    expect(x.disks[0]!.ranges).toEqual([
      { offset: 1048576, length: 131072 },
      { offset: 2162688, length: 65536 },
      { offset: 4194304, length: 65536 },
      { offset: 12 * 1048576, length: 65536 },
    ]);
  });
});

describe('stats, policy, prune, run', () => {
  it('stats counts physical, allocated and deduplicated bytes', async () => {
    const f = await fixture();
    await f.write('write -P 1 0 1M');
    await f.snap('s1');
    await f.write('write -P 1 1M 1M'); // the same 64k block again: dedups against s1
    await f.snap('s2');
    const s = await f.json<Record<string, number>>(['snapshot', 'stats', 'web']);
    expect(Object.keys(s).sort()).toEqual(['allocated_bytes', 'physical_bytes', 'savings_percent', 'unique_bytes', 'virtual_size']);
    expect(s.virtual_size).toBe(16 * 1048576);
    expect(s.allocated_bytes).toBe(2 * 1048576);
    expect(s.unique_bytes).toBe(65536);
    expect(s.savings_percent).toBeCloseTo(96.9, 1);
    expect(s.physical_bytes).toBeGreaterThan(2 * 1048576);
  });

  it('prunes auto snapshots by policy, never manual or current ones', async () => {
    const f = await fixture();
    await f.write('write -P 1 0 64k');
    await f.snap('manual');
    const autos: string[] = [];
    for (let i = 0; i < 4; i++) {
      await f.write(`write -P ${10 + i} ${i * 65536} 64k`);
      await f.refCurrent(`auto${i}`);
      const r = await f.ok(['snapshot', 'run', 'web', '--name', `auto${i}`, '--', 'true']);
      expect(r.code).toBe(0);
      autos.push(`auto${i}`);
    }
    const p = await f.json<{ policy: Record<string, unknown> }>(['snapshot', 'policy', 'web', '--keep-last', '2']);
    expect(p.policy).toEqual({ keep_last: 2 });
    const dry = await f.json<{ dry_run: boolean; remove: { name: string }[]; keep: { name: string }[] }>(['snapshot', 'prune', 'web', '--dry-run']);
    expect(dry.dry_run).toBe(true);
    // auto3 is current: always kept, and it takes one of the two places (issue #13: counted as users count).
    expect(dry.keep.map((k) => k.name)).toEqual(['auto3', 'auto2']);
    expect(dry.remove.map((r) => r.name)).toEqual(['auto1', 'auto0']);
    expect((await f.list()).length).toBe(5); // dry run changed nothing
    await f.refCurrent('cur');
    await f.ok(['snapshot', 'prune', 'web']);
    const list = await f.expectIntact(f.refs.get('cur')!, new Set(['manual', 'auto2', 'auto3']));
    expect(list.find((s) => s.name === 'auto2')!.parent).toBe('manual');
    const bad = await f.cli(['snapshot', 'policy', 'web', '--keep-last', 'x']);
    expect(bad.code).toBe(2);
    const badDur = await f.cli(['snapshot', 'policy', 'web', '--keep-within', '3 fortnights']);
    expect(badDur.code).toBe(2);
  });

  it('run exits with the command status and rolls back on failure', async () => {
    const f = await fixture();
    await f.write('write -P 1 0 64k');
    await f.snap('base');
    await f.refCurrent('before');
    const r = await f.cli([
      'snapshot',
      'run',
      'web',
      '--name',
      'pre',
      '--rollback-on-fail',
      '--',
      'sh',
      '-c',
      `qemu-io -f qcow2 -c 'write -P 0x66 0 1M' ${f.disk} >/dev/null; exit 3`,
    ]);
    expect(r.code).toBe(3);
    expect(r.stderr).toContain('rolled back');
    f.refs.set('pre', f.refs.get('before')!);
    await f.expectIntact(f.refs.get('before')!);
    const pre = (await f.list()).find((s) => s.name === 'pre')!;
    expect(pre.auto_created).toBe(true);
    expect(pre.tags).toEqual(['auto']);
    // Without --rollback-on-fail the change stays.
    const r2 = await f.cli([
      'snapshot',
      'run',
      'web',
      '--name',
      'pre2',
      '--',
      'sh',
      '-c',
      `qemu-io -f qcow2 -c 'write -P 0x67 0 64k' ${f.disk} >/dev/null; exit 4`,
    ]);
    expect(r2.code).toBe(4);
    const vmJson = JSON.parse(await readFile(path.join(f.home, 'vms', 'web', 'vm.json'), 'utf8')) as { current: string };
    expect(vmJson.current).toBe('pre2');
  });
});

describe('locking', () => {
  it('a live holder makes the second command wait, then fail with VM busy; a dead holder is taken over', async () => {
    const f = await fixture();
    const lockFile = path.join(f.home, 'vms', 'web', 'lock');
    const { writeFile, rm } = await import('node:fs/promises');
    const os = await import('node:os');
    await writeFile(lockFile, JSON.stringify({ pid: process.pid, host: os.hostname(), command: 'test holder', since: new Date().toISOString() }));
    const t0 = Date.now();
    const busy = await f.cli(['snapshot', 'create', 'web', '--json'], { CLONEBOX_LOCK_WAIT_MS: '400' });
    expect(busy.code).toBe(1);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(400);
    expect(parseJsonOutput<{ error: { code: string } }>(busy).error.code).toBe('VM_BUSY');
    expect(busy.stderr).toContain('VM is busy, web');
    expect(busy.stderr).toContain('test holder');
    // A holder that died (a pid that has exited) is recovered.
    const { spawnSync } = await import('node:child_process');
    const dead = spawnSync('true').pid!;
    await writeFile(lockFile, JSON.stringify({ pid: dead, host: os.hostname(), command: 'dead', since: new Date().toISOString() }));
    const ok = await f.cli(['snapshot', 'create', 'web', '--name', 'after-takeover']);
    expect(ok.code, ok.stderr).toBe(0);
    await rm(lockFile, { force: true });
  });

  it('concurrent creates on one VM are serialized into one consistent chain', async () => {
    const f = await fixture();
    await f.write('write -P 1 0 64k');
    const rs = await Promise.all([1, 2, 3, 4].map((i) => f.cli(['snapshot', 'create', 'web', '--name', `c${i}`], { CLONEBOX_LOCK_WAIT_MS: '30000' })));
    for (const r of rs) expect(r.code, r.stderr).toBe(0);
    const list = await f.list();
    expect(list.length).toBe(4);
    // A single line: exactly one root, every other snapshot's parent is another one of them.
    expect(list.filter((s) => s.parent === null).length).toBe(1);
    expect(new Set(list.map((s) => s.parent)).size).toBe(4);
    await f.refCurrent('cur');
    for (const s of list) f.refs.set(s.name, f.refs.get('cur')!);
    await f.expectIntact(f.refs.get('cur')!);
  });
});

describe('regressions', () => {
  it('refuses two disks whose layers would share a name (x.qcow2 and x.img)', async () => {
    const root = await makeTempDir('clonebox-snap-');
    await qemuImg(['create', '-f', 'qcow2', path.join(root, 'x.qcow2'), '1M']);
    await qemuImg(['create', '-f', 'qcow2', path.join(root, 'x.img'), '1M']);
    const f = new VmFixture(path.join(root, 'home'), root, 'v');
    const r = await f.cli(['vm', 'add', 'v', '--disk', path.join(root, 'x.qcow2'), '--disk', path.join(root, 'x.img'), '--json']);
    expect(r.code).toBe(2);
    expect(parseJsonOutput<{ error: { code: string } }>(r).error.code).toBe('DISK_NAME_CLASH');
  });

  it('a lock file holding garbage is stale, not a hang', async () => {
    const f = await fixture();
    const { writeFile } = await import('node:fs/promises');
    await writeFile(path.join(f.home, 'vms', 'web', 'lock'), 'garbage, not JSON');
    const r = await f.cli(['snapshot', 'create', 'web', '--name', 'x'], { CLONEBOX_LOCK_WAIT_MS: '1000' });
    expect(r.code, r.stderr).toBe(0);
  });

  it('output into a closed pipe ends quietly', async () => {
    const f = await fixture();
    for (let i = 0; i < 3; i++) await f.ok(['snapshot', 'create', 'web', '--name', `s${i}`]);
    const r = await run('sh', ['-c', `"${process.execPath}" "${CLI_PATH}" snapshot list web --tree | true`], {
      env: { ...process.env, CLONEBOX_HOME: f.home },
    });
    // `true` exits at once, so clonebox writes into a pipe with no reader (EPIPE).
    expect(r.stderr).not.toMatch(/EPIPE|Error/);
  });
});
