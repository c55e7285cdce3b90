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
      await f.ok(['snapshot', 'policy', 'web', '--max-snapshots', '0']);
    },
    op: ['snapshot', 'prune', 'web'],
    before: ['s1', 's2', 's3', 'a1', 'a2'],
    after: ['s1', 's2', 's3', 'a2'],
    currentBefore: 'cur',
    currentAfter: 'cur',
  },
];

describe('SIGKILL at every journal step', () => {
  for (const sc of scenarios) {
    it(`${sc.name}: recovered by the next command`, async () => {
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
