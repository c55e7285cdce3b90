/**
 * Going back in time (issue #17, bug 9 and item 19): `restore --at` with a time exactly as `snapshot
 * list` shows it, refused ambiguous times, relative times through `time-travel --to`, `snapshot
 * promote` (nothing lost, checked with qemu-img compare) and `snapshot branch` (current state untouched),
 * and "did you mean" for mistyped names.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseCliError, parseJsonOutput } from './helpers/cli.js';
import { qemuCompare } from './helpers/qemu.js';
import { VmFixture } from './helpers/snapshots.js';
import { makeTempDir } from './helpers/temp.js';

async function fixture(): Promise<VmFixture> {
  const root = await makeTempDir('clonebox-tt-');
  const dir = path.join(root, 'disks');
  await mkdir(dir);
  return VmFixture.create(path.join(root, 'home'), dir, 'web', '4M');
}

/** Two snapshots, a (pattern 1) and b (pattern 2 on top), and unsaved pattern 3 in the current state. */
async function twoSnapshots(f: VmFixture): Promise<void> {
  await f.write('write -P 1 0 64k');
  await f.snap('a');
  await f.write('write -P 2 64k 64k');
  await f.snap('b');
  await f.write('write -P 3 128k 64k');
  await f.refCurrent('present');
}

/** Sets a snapshot's creation time in its record (the times a test needs, without waiting for them). */
async function setCreated(f: VmFixture, name: string, iso: string): Promise<void> {
  const file = path.join(f.home, 'vms', f.vm, 'snapshots', `${name}.json`);
  const rec = JSON.parse(await readFile(file, 'utf8')) as { created_at: string };
  rec.created_at = iso;
  await writeFile(file, JSON.stringify(rec));
}

async function same(a: string, b: string): Promise<boolean> {
  return (await qemuCompare(a, b)).code === 0;
}

describe('restore --at', () => {
  it('picks the snapshot whose time `snapshot list` shows, in a zone other than UTC, and says what it resolved', async () => {
    const f = await fixture();
    await twoSnapshots(f);
    await setCreated(f, 'a', '2026-11-22T08:00:00.000Z');
    // b was made 734 ms into the second the list shows.
    await setCreated(f, 'b', '2026-11-22T09:00:05.734Z');
    const env = { TZ: 'Europe/Berlin' };
    const list = await f.cli(['snapshot', 'list', 'web'], env);
    expect(list.code, list.stderr).toBe(0);
    const shown = /^\*?\s+b\s+disk\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?: [+-]\d\d:\d\d)?)/m.exec(list.stdout)?.[1];
    expect(shown, list.stdout).toBe('2026-11-22 10:00:05 +01:00');
    await f.ok(['snapshot', 'restore', 'web', '--name', 'a', '--yes']);
    const r = await f.cli(['snapshot', 'restore', 'web', '--at', shown!, '--yes'], env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('restored web to b\n');
    expect(r.stderr).toContain('reads as at or before 2026-11-22T09:00:05.999Z');
    expect(await same(f.disk, f.refs.get('b')!)).toBe(true);
    // --quiet keeps the result and drops the note.
    const quiet = await f.cli(['snapshot', 'restore', 'web', '--at', shown!, '--yes', '--quiet'], env);
    expect(quiet.code, quiet.stderr).toBe(0);
    expect(quiet.stdout).toBe('restored web to b\n');
    expect(quiet.stderr).toBe('');
    const json = parseJsonOutput<{ restored: string; resolved_at: string }>(
      await f.cli(['snapshot', 'restore', 'web', '--at', '2026-11-22T09:00:05Z', '--yes', '--json'], env),
    );
    expect(json).toMatchObject({ restored: 'b', resolved_at: '2026-11-22T09:00:05.999Z' });
  });

  it('refuses an ambiguous bare number as a usage error and changes nothing', async () => {
    const f = await fixture();
    await twoSnapshots(f);
    const r = await f.cli(['snapshot', 'restore', 'web', '--at', '5', '--yes', '--json']);
    expect(r.code).toBe(2);
    const e = parseCliError(r, true);
    expect(e.code).toBe('USAGE');
    expect(e.message).toBe('ambiguous time "5"');
    expect(await same(f.disk, f.refs.get('present')!)).toBe(true);
  });

  it('time-travel --to takes relative times', async () => {
    const f = await fixture();
    await twoSnapshots(f);
    // The clock relative times count from is CLONEBOX_NOW's.
    const now = Date.parse('2026-11-22T12:00:00.000Z');
    const env = { CLONEBOX_NOW: new Date(now).toISOString() };
    await setCreated(f, 'a', new Date(now - 3 * 3600_000).toISOString());
    await setCreated(f, 'b', new Date(now - 30 * 60_000).toISOString());
    const r = await f.cli(['time-travel', 'web', '--to', '2h ago', '--yes', '--json'], env);
    expect(r.code, r.stderr).toBe(0);
    const j = parseJsonOutput<{ restored: string; resolved_at: string }>(r);
    expect(j.restored).toBe('a');
    expect(j.resolved_at).toBe('2026-11-22T10:00:00.000Z');
    expect(await same(f.disk, f.refs.get('a')!)).toBe(true);
    const none = await f.cli(['time-travel', 'web', '--to', '4 hours ago', '--yes'], env);
    expect(none.code).toBe(1);
    expect(parseCliError(none, false).message).toMatch(/^no snapshot created at or before .* \(4 hours ago\), VM web$/);
  });
});

describe('snapshot promote', () => {
  it('makes a snapshot current and keeps the present state as a snapshot on its own branch', async () => {
    const f = await fixture();
    await twoSnapshots(f);
    const r = parseJsonOutput<{ vm: string; promoted: string; kept: string }>(await f.ok(['snapshot', 'promote', 'web', 'a', '--json']));
    expect(r.vm).toBe('web');
    expect(r.promoted).toBe('a');
    expect(r.kept).toMatch(/^snap-\d{8}-\d{6}/);
    const list = await f.list();
    const kept = list.find((s) => s.name === r.kept)!;
    expect(kept.parent).toBe('b');
    expect(kept.auto_created).toBe(false);
    expect(list.find((s) => s.current)?.name).toBe('a');
    // Nothing lost: the present state is in the kept snapshot, a and b are as they were.
    expect(await same(kept.disks[0]!.path, f.refs.get('present')!)).toBe(true);
    expect(await same(f.disk, f.refs.get('a')!)).toBe(true);
    f.refs.set(r.kept, f.refs.get('present')!);
    await f.expectIntact(f.refs.get('a')!);
    // With nothing unsaved, promote just switches.
    const again = parseJsonOutput<{ kept: string | null }>(await f.ok(['snapshot', 'promote', 'web', r.kept, '--json']));
    expect(again.kept).toBeNull();
    expect(await same(f.disk, f.refs.get('present')!)).toBe(true);
    expect((await f.list()).length).toBe(3);
  });

  it('--keep-as names the kept snapshot; a taken name changes nothing', async () => {
    const f = await fixture();
    await twoSnapshots(f);
    const clash = await f.cli(['snapshot', 'promote', 'web', 'a', '--keep-as', 'b']);
    expect(clash.code).toBe(1);
    expect(await same(f.disk, f.refs.get('present')!)).toBe(true);
    const human = await f.ok(['snapshot', 'promote', 'web', 'a', '--keep-as', 'wip']);
    expect(human.stdout).toBe('web is now at a; the state it had is kept as snapshot wip\n');
  });
});

describe('snapshot branch', () => {
  it('starts a branch at a snapshot without touching the current state', async () => {
    const f = await fixture();
    await twoSnapshots(f);
    const v = parseJsonOutput<{ name: string; parent: string; current: boolean; disks: { path: string }[] }>(
      await f.ok(['snapshot', 'branch', 'web', 'exp', '--from', 'a', '--json']),
    );
    expect(v).toMatchObject({ name: 'exp', parent: 'a', current: false });
    expect(await same(v.disks[0]!.path, f.refs.get('a')!)).toBe(true);
    expect(await same(f.disk, f.refs.get('present')!)).toBe(true);
    expect((await f.list()).find((s) => s.current)?.name).toBe('b');
    // Work continues on the branch after a promote; a's content stays.
    await f.ok(['snapshot', 'promote', 'web', 'exp', '--keep-as', 'wip']);
    await f.write('write -P 9 0 4k');
    await f.refCurrent('exp-work');
    await f.ok(['snapshot', 'create', 'web', '--name', 'exp2']);
    const list = await f.list();
    expect(list.find((s) => s.name === 'exp2')?.parent).toBe('exp');
    expect(await same(list.find((s) => s.name === 'a')!.disks[0]!.path, f.refs.get('a')!)).toBe(true);
    expect(await same(list.find((s) => s.name === 'exp2')!.disks[0]!.path, f.refs.get('exp-work')!)).toBe(true);
  });

  it('refuses an existing name and an unknown base', async () => {
    const f = await fixture();
    await twoSnapshots(f);
    const taken = await f.cli(['snapshot', 'branch', 'web', 'b', '--from', 'a', '--json']);
    expect(parseCliError(taken, true).code).toBe('SNAPSHOT_EXISTS');
    const unknown = await f.cli(['snapshot', 'branch', 'web', 'x', '--from', 'nope', '--json']);
    expect(parseCliError(unknown, true).code).toBe('SNAPSHOT_NOT_FOUND');
  });
});

describe('vm list', () => {
  it('shows the space each VM takes on disk', async () => {
    const f = await fixture();
    await twoSnapshots(f);
    const r = await f.ok(['vm', 'list']);
    expect(r.stdout).toMatch(/^NAME +DRIVER +DISKS +SIZE +ON DISK +SNAPSHOTS +CURRENT$/m);
    // 192 KiB of data in three images, plus their metadata.
    const row = /^web +image +1 +4\.00 MiB +([\d.]+) KiB +2 +b$/m.exec(r.stdout);
    expect(row, r.stdout).not.toBeNull();
    expect(Number(row![1])).toBeGreaterThanOrEqual(192);
  });
});

describe('did you mean', () => {
  it('suggests the nearest VM or snapshot name in the NOT_FOUND hint', async () => {
    const f = await fixture();
    await twoSnapshots(f);
    await f.ok(['snapshot', 'create', 'web', '--name', 'before-upgrade']);
    const snap = parseCliError(await f.cli(['snapshot', 'show', 'web', '--name', 'before-upgarde']), false);
    expect(snap.hint).toBe('did you mean before-upgrade?');
    const vm = parseCliError(await f.cli(['vm', 'show', 'wbe']), false);
    expect(vm.hint).toBe('did you mean web?');
    const far = parseCliError(await f.cli(['snapshot', 'show', 'web', '--name', 'zzzzzz']), false);
    expect(far.hint).toBe('see `clonebox snapshot list web`');
  });
});
