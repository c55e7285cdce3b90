/**
 * Crash safety: each multi-step operation is killed with SIGKILL at every journal step in turn
 * (CLONEBOX_CRASH_AT=N makes clonebox kill itself at step N). The next command must finish or roll
 * back the operation, leaving every snapshot identical to its reference, the current state identical
 * to either the before or the after state, no half-made snapshot listed, and no stray files.
 */

import { existsSync } from 'node:fs';
import { cp, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { qemuCompare } from './helpers/qemu.js';
import { VmFixture } from './helpers/snapshots.js';
import { makeTempDir } from './helpers/temp.js';

interface Scenario {
  name: string;
  /** Builds the VM state to start from; returns the fixture and the label of the current-state ref. */
  build(f: VmFixture): Promise<void>;
  op: string[];
  /** Snapshot sets allowed after recovery: before (rolled back) or after (completed). */
  before: string[];
  after: string[];
  /** Reference label of the current state before and after the operation. */
  currentBefore: string;
  currentAfter: string;
}

async function base(f: VmFixture): Promise<void> {
  await f.write('write -P 1 0 1M', 'write -P 5 8M 256k');
  await f.snap('s1');
  await f.write('write -P 2 1M 512k', 'write -z 8M 64k');
  await f.snap('s2');
  await f.ok(['snapshot', 'restore', 'web', '--name', 's1', '--yes']);
  await f.write('write -P 3 2M 512k');
  await f.snap('s3');
  await f.write('write -P 7 6M 64k');
  await f.refCurrent('cur');
}

const scenarios: Scenario[] = [
  {
    name: 'create',
    build: async (f) => {
      await base(f);
      f.refs.set('s4', f.refs.get('cur')!); // the new snapshot holds the current state
    },
    op: ['snapshot', 'create', 'web', '--name', 's4'],
    before: ['s1', 's2', 's3'],
    after: ['s1', 's2', 's3', 's4'],
    currentBefore: 'cur',
    currentAfter: 'cur',
  },
  {
    name: 'restore',
    build: base,
    op: ['snapshot', 'restore', 'web', '--name', 's2', '--yes'],
    before: ['s1', 's2', 's3'],
    after: ['s1', 's2', 's3'],
    currentBefore: 'cur',
    currentAfter: 's2',
  },
  {
    name: 'delete --keep-children',
    build: base,
    op: ['snapshot', 'delete', 'web', '--name', 's1', '--keep-children'],
    before: ['s1', 's2', 's3'],
    after: ['s2', 's3'],
    currentBefore: 'cur',
    currentAfter: 'cur',
  },
  {
    name: 'delete current (merge into current state)',
    build: base,
    op: ['snapshot', 'delete', 'web', '--name', 's3'],
    before: ['s1', 's2', 's3'],
    after: ['s1', 's2'],
    currentBefore: 'cur',
    currentAfter: 'cur',
  },
  {
    name: 'prune',
    build: async (f) => {
      await base(f);
      await f.refCurrent('a1');
      await f.ok(['snapshot', 'run', 'web', '--name', 'a1', '--', 'true']);
      await f.write('write -P 8 3M 64k');
      await f.refCurrent('a2');
      await f.ok(['snapshot', 'run', 'web', '--name', 'a2', '--', 'true']);
      await f.write('write -P 9 4M 64k');
      await f.refCurrent('cur');
      // The current snapshot a2 counts and takes the one place: a1 goes.
      await f.ok(['snapshot', 'policy', 'web', '--max-snapshots', '1']);
    },
    op: ['snapshot', 'prune', 'web'],
    before: ['s1', 's2', 's3', 'a1', 'a2'],
    after: ['s1', 's2', 's3', 'a2'],
    currentBefore: 'cur',
    currentAfter: 'cur',
  },
  {
    // Two journaled steps: keep the present state as a snapshot, then restore. A crash between them
    // leaves the present state kept and still current.
    name: 'promote',
    build: async (f) => {
      await base(f);
      f.refs.set('kept', f.refs.get('cur')!);
    },
    op: ['snapshot', 'promote', 'web', 's2', '--keep-as', 'kept'],
    before: ['s1', 's2', 's3'],
    after: ['s1', 's2', 's3', 'kept'],
    currentBefore: 'cur',
    currentAfter: 's2',
  },
  {
    name: 'branch',
    build: async (f) => {
      await base(f);
      f.refs.set('b1', f.refs.get('s1')!);
    },
    op: ['snapshot', 'branch', 'web', 'b1', '--from', 's1'],
    before: ['s1', 's2', 's3'],
    after: ['s1', 's2', 's3', 'b1'],
    currentBefore: 'cur',
    currentAfter: 'cur',
  },
];

describe('SIGKILL at every journal step', () => {
  for (const sc of scenarios) {
    it(`${sc.name}: recovered by the next command`, { timeout: 600_000 }, async () => {
      const root = await makeTempDir('clonebox-crash-');
      const work = path.join(root, 'work');
      const tpl = path.join(root, 'template');
      await mkdir(path.join(work, 'disks'), { recursive: true });
      const f = await VmFixture.create(path.join(work, 'home'), path.join(work, 'disks'), 'web');
      await sc.build(f);
      await cp(work, tpl, { recursive: true });

      let crashes = 0;
      let completed = false;
      for (let n = 1; n <= 60 && !completed; n++) {
        await rm(work, { recursive: true, force: true });
        await cp(tpl, work, { recursive: true });
        const r = await f.cli(sc.op, { CLONEBOX_CRASH_AT: String(n) });
        if (r.signal === 'SIGKILL') {
          crashes++;
          expect(existsSync(path.join(work, 'home', 'vms', 'web', 'journal.json')), `journal after crash at ${n}`).toBe(true);
        } else {
          expect(r.code, `${sc.op.join(' ')} at n=${n}: ${r.stderr}`).toBe(0);
          completed = true;
        }
        // Any command recovers; list is the most innocent one.
        const names = (await f.list()).map((s) => s.name).sort();
        const isAfter = JSON.stringify(names) === JSON.stringify([...sc.after].sort());
        const isBefore = JSON.stringify(names) === JSON.stringify([...sc.before].sort());
        expect(isAfter || isBefore, `crash at ${n}: snapshots ${names.join(',')}`).toBe(true);
        expect(existsSync(path.join(work, 'home', 'vms', 'web', 'journal.json'))).toBe(false);
        // The current state equals one of the two, consistent with what the records say.
        const curAfter = (await qemuCompare(f.disk, f.refs.get(sc.currentAfter)!)).code === 0;
        const cur = curAfter ? sc.currentAfter : sc.currentBefore;
        await f.expectIntact(f.refs.get(cur)!, new Set(isAfter ? sc.after : sc.before));
        if (completed) {
          expect(isAfter).toBe(true);
          expect(curAfter).toBe(true);
        }
      }
      expect(completed).toBe(true);
      expect(crashes).toBeGreaterThanOrEqual(4);
    });
  }
});

/**
 * `schedule run` (issue #13): killed at every journal step of its pass (the scheduled snapshot, then
 * the retention that removes the policy's older snapshot) and run again at the same time, it ends with
 * exactly one new snapshot, the old one pruned, every state intact and no stray file.
 */
describe('schedule run killed at every step and run again', () => {
  it('no duplicate snapshot, nothing half-written', async () => {
    const { writeFile, readdir } = await import('node:fs/promises');
    const root = await makeTempDir('clonebox-crash-');
    const work = path.join(root, 'work');
    const tpl = path.join(root, 'template');
    await mkdir(path.join(work, 'disks'), { recursive: true });
    const f = await VmFixture.create(path.join(work, 'home'), path.join(work, 'disks'), 'web');
    const at = (d: number) => ({ CLONEBOX_NOW: new Date(2030, 0, d, 0, 5).toISOString() });
    const autoName = (d: number) => `snap-203001${String(d).padStart(2, '0')}-000500`;
    await base(f);
    const conf = path.join(work, 'clonebox.yaml');
    await writeFile(conf, 'vm:\n  name: web\npolicies:\n  nightly: {keep: 1, when: "00:00"}\n');
    expect((await f.cli(['apply', conf], { CLONEBOX_NOW: new Date(2030, 0, 1).toISOString() })).code).toBe(0);
    // The first night: n1 holds the current state.
    f.refs.set(autoName(2), f.refs.get('cur')!);
    const first = await f.cli(['schedule', 'run'], at(2));
    expect(first.code, first.stderr).toBe(0);
    await f.write('write -P 11 5M 64k');
    const cur2 = await f.refCurrent('cur2');
    f.refs.set(autoName(3), cur2);
    const before = ['s1', 's2', 's3', autoName(2)];
    const after = ['s1', 's2', 's3', autoName(3)];
    await cp(work, tpl, { recursive: true });

    let crashes = 0;
    let completed = false;
    for (let n = 1; n <= 60 && !completed; n++) {
      await rm(work, { recursive: true, force: true });
      await cp(tpl, work, { recursive: true });
      const r = await f.cli(['schedule', 'run'], { ...at(3), CLONEBOX_CRASH_AT: String(n) });
      if (r.signal === 'SIGKILL') {
        crashes++;
        // What the crash left, as the next command sees it: the state before, after, or in between.
        const names = (await f.list()).map((s) => s.name).sort();
        expect(
          [before, after, [...before, autoName(3)]].map((l) => JSON.stringify([...l].sort())),
          `crash at ${n}: ${names}`,
        ).toContain(JSON.stringify(names));
        // Run again at the same time (cron's next minute would do the same).
        const again = await f.cli(['schedule', 'run', '--json'], at(3));
        expect(again.code, again.stderr).toBe(0);
        expect(JSON.parse(again.stdout).ran).toBe(true);
      } else {
        expect(r.code, `schedule run at n=${n}: ${r.stderr}`).toBe(0);
        completed = true;
      }
      expect(existsSync(path.join(work, 'home', 'vms', 'web', 'journal.json'))).toBe(false);
      expect(existsSync(path.join(work, 'home', 'schedule.lock'))).toBe(false);
      const list = await f.expectIntact(cur2, new Set(after));
      expect(list.map((s) => s.name).sort(), `after crash at ${n} and a rerun`).toEqual([...after].sort());
      expect((await readdir(path.join(work, 'home', 'vms', 'web'))).filter((x) => x.includes('.tmp'))).toEqual([]);
    }
    expect(completed).toBe(true);
    expect(crashes).toBeGreaterThanOrEqual(4);
  }, 900_000);
});
