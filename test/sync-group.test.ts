/**
 * A VM group shared to a team (`snapshot share --group`) and pulled by `snapshot sync`, between homes
 * on one machine: a private DHT on 127.0.0.1 (never the public DHT), the sharer running `snapshot sync
 * --watch` as a child process, receivers running `snapshot sync --json`.
 *
 * Covered: the group and both members arrive, identical to the source, and a group restore brings both
 * members back to the group snapshot (qemu-img compare); a receiver whose --max-write refuses one
 * member registers no group and names the missing member, and a later sync that brings the member
 * registers it; a receiver holding another group of that name keeps it untouched (GROUP_EXISTS); a sync
 * SIGKILLed in the group's commit leaves, after the next command, the whole group.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectSameChain } from './helpers/chains.js';
import { cb, runCli } from './helpers/cli.js';
import { useSyncTestbed } from './helpers/dht.js';
import { qemuCompare, qemuIo } from './helpers/qemu.js';

const MiB = 1024 * 1024;
const tb = useSyncTestbed('clonebox-sync-group-');
const { home, ok, json, randomFile, diskOf } = tb;

interface GroupsDoc {
  group: string;
  peer: string;
  registered: string[];
  waiting: { snapshot: string; missing: string[] }[];
}
interface SyncDoc {
  peers: string[];
  chains: { vm: string; snapshots: string[] }[];
  groups: GroupsDoc[];
}
interface SnapshotDoc {
  name: string;
  disks: { target: string; path: string }[];
  group: { name: string; snapshot: string } | null;
}
interface GroupSnapshotDoc {
  name: string;
  members: { vm: string; snapshot: string }[];
}

const sync = (h: string, extra: string[] = []) => tb.sync<SyncDoc>(h, 'crew', 60, extra);
let invite = '';
let sharer: ReturnType<typeof tb.watch>;
const A = () => home('a');

/** The group `shop` as a home holds it: its members, and each member snapshot's group tag. */
async function groupState(h: string): Promise<{ members: string[]; snapshots: GroupSnapshotDoc[]; tags: Record<string, unknown> }> {
  const g = await json<{ members: string[] }>(h, ['group', 'show', 'shop']);
  const snapshots = await json<GroupSnapshotDoc[]>(h, ['snapshot', 'list', '--group', 'shop']);
  const tags: Record<string, unknown> = {};
  for (const vm of ['app', 'db']) tags[vm] = (await json<SnapshotDoc[]>(h, ['snapshot', 'list', vm])).find((s) => s.name === 's1')?.group;
  return { members: g.members, snapshots: snapshots.map((s) => ({ name: s.name, members: s.members })), tags };
}

const whole = {
  members: ['app', 'db'],
  snapshots: [
    {
      name: 's1',
      members: [
        { vm: 'app', snapshot: 's1' },
        { vm: 'db', snapshot: 's1' },
      ],
    },
  ],
  tags: { app: { name: 'shop', snapshot: 's1' }, db: { name: 'shop', snapshot: 's1' } },
};

async function join(h: string, name: string): Promise<void> {
  await ok(h, ['team', 'join', 'crew', '--invite', invite, '--name', name]);
}

describe('snapshot share --group / sync', () => {
  beforeAll(async () => {
    await ok(A(), ['vm', 'create', 'db', '--size', '16M']);
    await ok(A(), ['vm', 'create', 'app', '--size', '16M']);
    // app writes 6 MiB, db 1 MiB: a --max-write between them refuses app alone.
    await qemuIo(await diskOf(A(), 'app'), `write -s ${await randomFile('r6', 6 * MiB)} 0 6M`);
    await qemuIo(await diskOf(A(), 'db'), `write -s ${await randomFile('r1', MiB)} 0 1M`);
    await ok(A(), ['group', 'create', 'shop', '--vm', 'db', '--vm', 'app']);
    await ok(A(), ['snapshot', 'create', '--group', 'shop', '--name', 's1']);
    invite = (await json<{ invite: string }>(A(), ['team', 'create', 'crew', '--name', 'ws-a'])).invite;
    // A VM and --group exclude each other (a usage error, exit 2).
    expect((await cb(A(), ['snapshot', 'share', 'db', '--group', 'shop', '--team', 'crew'])).code).toBe(2);
    const shared = await json<{ vms: string[]; published: string[] }>(A(), ['snapshot', 'share', '--group', 'shop', '--team', 'crew']);
    expect(shared).toMatchObject({ vms: ['app', 'db'], published: ['s1'] });
    sharer = tb.watch(A(), 'crew');
  });

  afterAll(async () => {
    await sharer?.stop();
  });

  it('arrives whole: both members identical to the source, and a group restore brings both back', async () => {
    const B = home('b');
    await join(B, 'ws-b');
    const r = await sync(B);
    expect(r.code, r.stderr).toBe(0);
    expect(r.doc.groups).toEqual([{ group: 'shop', peer: 'ws-a', registered: ['s1'], waiting: [] }]);
    expect(await groupState(B)).toEqual(whole);
    for (const vm of ['app', 'db']) await expectSameChain(A(), vm, B, vm, { sameTree: true });

    // Both members written after the snapshot, then restored as one.
    for (const vm of ['app', 'db']) await qemuIo(await diskOf(B, vm), 'write -P 0x5a 0 2M');
    await ok(B, ['snapshot', 'restore', '--group', 'shop', '--name', 's1', '--yes']);
    for (const vm of ['app', 'db']) {
      const src = (await json<SnapshotDoc[]>(A(), ['snapshot', 'list', vm])).find((s) => s.name === 's1')!.disks[0]!.path;
      expect((await qemuCompare(src, await diskOf(B, vm))).code, vm).toBe(0);
    }
  });

  /** The crash points C's completing sync passed (test 3 kills E's at one of them). */
  let stepsC: string[] = [];
  const syncWith = (h: string, env: NodeJS.ProcessEnv) =>
    runCli(['--home', h, 'snapshot', 'sync', '--team', 'crew', '--bootstrap', tb.bs, '--timeout', '60', '--json'], { home: null, env, timeoutMs: 90_000 });

  it('is not registered while a member is missing, and is once the member arrives', async () => {
    // C and E end in the same state (db pulled, app refused by --max-write); E is for the next test.
    const C = home('c');
    const E = home('e');
    // F, meanwhile, holds a group of that name with another member: left untouched, GROUP_EXISTS.
    const F = home('f');
    await join(C, 'ws-c');
    await join(E, 'ws-e');
    await join(F, 'ws-f');
    await ok(F, ['vm', 'create', 'solo', '--size', '1M']);
    await ok(F, ['group', 'create', 'shop', '--vm', 'solo']);
    const [r, e, f] = await Promise.all([sync(C, ['--max-write', '3M']), sync(E, ['--max-write', '3M']), sync(F)]);
    expect(f.code).not.toBe(0);
    expect(f.stderr).toContain("group shop here has members solo, not ws-a's app, db");
    expect((await json<{ members: string[] }>(F, ['group', 'show', 'shop'])).members).toEqual(['solo']);
    expect(await json(F, ['snapshot', 'list', '--group', 'shop'])).toEqual([]);
    expect((await json<SnapshotDoc[]>(F, ['snapshot', 'list', 'app'])).map((s) => [s.name, s.group])).toEqual([['s1', null]]);
    for (const x of [r, e]) {
      expect(x.code).not.toBe(0);
      expect(x.stderr).toContain("pull of ws-a's app would write more than the limit");
      expect(x.stderr).toContain('group shop from ws-a: group snapshot s1 is not registered yet: app not complete here');
    }
    expect(await json(C, ['group', 'list'])).toEqual([]);
    expect((await json<SnapshotDoc[]>(C, ['snapshot', 'list', 'db'])).map((s) => [s.name, s.group])).toEqual([['s1', null]]);

    const logC = path.join(tb.root, 'crash-c.log');
    const again = await syncWith(C, { CLONEBOX_CRASH_LOG: logC });
    expect(again.code, again.stderr).toBe(0);
    expect((JSON.parse(again.stdout) as SyncDoc).groups).toEqual([{ group: 'shop', peer: 'ws-a', registered: ['s1'], waiting: [] }]);
    expect(await groupState(C)).toEqual(whole);
    stepsC = (await readFile(logC, 'utf8')).trim().split('\n');
  });

  it('a sync killed in the group commit leaves the whole group after the next command', async () => {
    // E is where C was: C's run shows where the group journal's steps fall among the run's crash points.
    const E = home('e');
    const redirect = stepsC.indexOf('journal.group-redirect'); // 0-based: the group journal was persisted just before
    expect(redirect).toBeGreaterThan(0);
    // Steps (1-based): redirect+1, +2 the two redirects, +3 the commit written, +4 the first action done.
    const at = redirect + 4;
    expect(stepsC[at - 1]).toBe('journal.action');
    const logE = path.join(tb.root, 'crash-e.log');
    const killed = await syncWith(E, { CLONEBOX_CRASH_AT: String(at), CLONEBOX_CRASH_LOG: logE });
    expect(killed.signal).toBe('SIGKILL');
    expect((await readFile(logE, 'utf8')).trim().split('\n')).toEqual(stepsC.slice(0, at));
    // A member VM's next command finds its redirect and finishes the group's commit.
    await ok(E, ['snapshot', 'list', 'app']);
    expect(await groupState(E)).toEqual(whole);
    expect((await sync(E)).doc.groups).toEqual([{ group: 'shop', peer: 'ws-a', registered: [], waiting: [] }]);
  });
});
