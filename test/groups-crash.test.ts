/**
 * Group operations are all or nothing (issue #14): a group snapshot create, restore and delete over
 * two image-driver VMs is killed with SIGKILL at every journal step in turn (CLONEBOX_CRASH_AT=N). The
 * next command, either a single-VM one (which meets its VM's redirect to the group journal) or a group
 * one, must leave BOTH members entirely before or entirely after the operation: the same snapshot set
 * on each, every snapshot identical to its reference, each current state the before or the after one,
 * agreeing with each other and with the group's own list, no journal and no stray file.
 */

import { existsSync } from 'node:fs';
import { cp, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { GroupSnapshotView } from '../src/index.js';
import { qemuCompare } from './helpers/qemu.js';
import { VmFixture } from './helpers/snapshots.js';
import { makeTempDir } from './helpers/temp.js';

interface Pair {
  web: VmFixture;
  db: VmFixture;
}

/** Both members' current states as references named `label`, then a group snapshot of that name. */
async function groupSnap(p: Pair, name: string): Promise<void> {
  await p.web.refCurrent(name);
  await p.db.refCurrent(name);
  await p.web.ok(['snapshot', 'create', '--group', 'app', '--name', name]);
}

async function base(p: Pair): Promise<void> {
  await p.web.write('write -P 1 0 1M', 'write -P 5 8M 256k');
  await p.db.write('write -P 21 0 512k');
  await groupSnap(p, 'g1');
  await p.web.write('write -P 2 1M 512k', 'write -z 8M 64k');
  await p.db.write('write -P 22 4M 1M');
  await groupSnap(p, 'g2');
  await p.web.ok(['snapshot', 'restore', '--group', 'app', '--name', 'g1', '--yes']);
  await p.web.write('write -P 3 2M 512k');
  await p.db.write('write -P 23 6M 64k');
  await p.web.refCurrent('cur');
  await p.db.refCurrent('cur');
}

interface Scenario {
  name: string;
  build(p: Pair): Promise<void>;
  op: string[];
  before: string[];
  after: string[];
  currentBefore: string;
  currentAfter: string;
}

const scenarios: Scenario[] = [
  {
    name: 'snapshot create --group',
    build: async (p) => {
      await base(p);
      for (const f of [p.web, p.db]) f.refs.set('g3', f.refs.get('cur')!);
    },
    op: ['snapshot', 'create', '--group', 'app', '--name', 'g3'],
    before: ['g1', 'g2'],
    after: ['g1', 'g2', 'g3'],
    currentBefore: 'cur',
    currentAfter: 'cur',
  },
  {
    name: 'snapshot restore --group',
    build: base,
    op: ['snapshot', 'restore', '--group', 'app', '--name', 'g2', '--yes'],
    before: ['g1', 'g2'],
    after: ['g1', 'g2'],
    currentBefore: 'cur',
    currentAfter: 'g2',
  },
  {
    name: 'snapshot delete --group --keep-children (merges on both members)',
    build: base,
    op: ['snapshot', 'delete', '--group', 'app', '--name', 'g1', '--keep-children'],
    before: ['g1', 'g2'],
    after: ['g2'],
    currentBefore: 'cur',
    currentAfter: 'cur',
  },
];

describe('group operations killed at every journal step', () => {
  for (const sc of scenarios) {
    it(`${sc.name}: both members before or both after`, { timeout: 900_000 }, async () => {
      const root = await makeTempDir('clonebox-gcrash-');
      const work = path.join(root, 'work');
      const tpl = path.join(root, 'template');
      const home = path.join(work, 'home');
      await mkdir(path.join(work, 'disks-web'), { recursive: true });
      await mkdir(path.join(work, 'disks-db'), { recursive: true });
      const p: Pair = {
        web: await VmFixture.create(home, path.join(work, 'disks-web'), 'web'),
        db: await VmFixture.create(home, path.join(work, 'disks-db'), 'db'),
      };
      await p.web.ok(['group', 'create', 'app', '--vm', 'web', '--vm', 'db']);
      await sc.build(p);
      await cp(work, tpl, { recursive: true });
      const journals = [
        path.join(home, 'vms', 'web', 'journal.json'),
        path.join(home, 'vms', 'db', 'journal.json'),
        path.join(home, 'groups', 'app', 'journal.json'),
      ];

      let crashes = 0;
      let completed = false;
      for (let n = 1; n <= 80 && !completed; n++) {
        await rm(work, { recursive: true, force: true });
        await cp(tpl, work, { recursive: true });
        const r = await p.web.cli(sc.op, { CLONEBOX_CRASH_AT: String(n) });
        if (r.signal === 'SIGKILL') {
          crashes++;
          expect(existsSync(journals[2]!), `group journal after crash at ${n}`).toBe(true);
          // The next command: a single-VM one on either member (it meets the redirect), or a group one.
          const next = [
            ['snapshot', 'list', 'db', '--json'],
            ['snapshot', 'list', '--group', 'app', '--json'],
            ['snapshot', 'list', 'web', '--json'],
          ][n % 3]!;
          const again = await p.web.cli(next);
          expect(again.code, `${next.join(' ')} after a crash at ${n}: ${again.stderr}`).toBe(0);
        } else {
          expect(r.code, `${sc.op.join(' ')} at n=${n}: ${r.stderr}`).toBe(0);
          completed = true;
        }
        const sets = await Promise.all([p.web, p.db].map(async (f) => (await f.list()).map((s) => s.name).sort()));
        const groupSet = (await p.web.json<GroupSnapshotView[]>(['snapshot', 'list', '--group', 'app'])).map((s) => s.name).sort();
        // A member the operation had not reached keeps nothing to recover; once each member has been
        // opened, no journal or redirect is left anywhere.
        for (const j of journals) expect(existsSync(j), `${j} after recovery (n=${n})`).toBe(false);
        const isAfter = sets.every((s) => JSON.stringify(s) === JSON.stringify([...sc.after].sort()));
        const isBefore = sets.every((s) => JSON.stringify(s) === JSON.stringify([...sc.before].sort()));
        expect(isAfter || isBefore, `crash at ${n}: web ${sets[0]}, db ${sets[1]}`).toBe(true);
        expect(groupSet, `group list after a crash at ${n}`).toEqual(isAfter ? [...sc.after].sort() : [...sc.before].sort());
        // Each current state is the before or the after one, and both members agree on which.
        const curAfter = await Promise.all([p.web, p.db].map(async (f) => (await qemuCompare(f.disk, f.refs.get(sc.currentAfter)!)).code === 0));
        if (sc.currentAfter !== sc.currentBefore) expect(curAfter[0], `members disagree after a crash at ${n}`).toBe(curAfter[1]);
        for (const f of [p.web, p.db]) {
          await f.expectIntact(f.refs.get(curAfter[0] ? sc.currentAfter : sc.currentBefore)!, new Set(isAfter ? sc.after : sc.before));
        }
        if (completed) expect(isAfter).toBe(true);
      }
      expect(completed).toBe(true);
      expect(crashes).toBeGreaterThanOrEqual(6);
    });
  }
});
