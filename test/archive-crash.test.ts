/**
 * archive push, forget and gc killed (SIGKILL) at every crash point in turn (CLONEBOX_CRASH_AT=N; the
 * named step comes from CLONEBOX_CRASH_LOG): after the kill `archive check --read-data` passes, every
 * snapshot the repository holds restores identical (qemu-img compare) to its source layer, and running
 * the command again completes it, leaving nothing for gc or check to complain about.
 */
import { existsSync } from 'node:fs';
import { cp, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { type ArchiveFixture, checkArchive, expectRestorable, makeArchive } from './helpers/archive-repo.js';
import type { RunResult } from './helpers/process.js';
import { makeTempDir } from './helpers/temp.js';

interface Scenario {
  name: string;
  /** Brings the template to the state before the operation. */
  build(f: ArchiveFixture): Promise<void>;
  op: (f: ArchiveFixture) => string[];
  /** What the archive may list after a crash (the state before or after the operation). */
  listed: string[][];
  /** What it lists once the operation ran again to its end. */
  after: string[];
}

const scenarios: Scenario[] = [
  {
    name: 'push',
    build: async () => undefined,
    op: (f) => ['archive', 'push', 'web', '--repo', f.repo],
    listed: [[], ['s1', 's2', 's3']],
    after: ['s1', 's2', 's3'],
  },
  {
    name: 'forget',
    build: async (f) => {
      await f.cli.ok(['archive', 'push', 'web', '--repo', f.repo]);
    },
    op: (f) => ['archive', 'forget', 'web', '--keep-last', '1', '--repo', f.repo],
    listed: [
      ['s1', 's2', 's3'],
      ['s1', 's3'],
    ],
    after: ['s1', 's3'],
  },
  {
    name: 'gc',
    build: async (f) => {
      await f.cli.ok(['archive', 'push', 'web', '--repo', f.repo]);
      await f.cli.ok(['archive', 'forget', 'web', '--keep-last', '1', '--repo', f.repo]);
    },
    op: (f) => ['archive', 'gc', '--repo', f.repo],
    listed: [['s1', 's3']],
    after: ['s1', 's3'],
  },
];

async function listed(f: ArchiveFixture): Promise<string[]> {
  return (await f.cli.json<{ name: string }[]>(['archive', 'list', 'web', '--repo', f.repo])).map((s) => s.name).sort();
}

describe('archive operations killed at every crash point', () => {
  for (const sc of scenarios) {
    it(`${sc.name}: check --read-data passes, every snapshot restores, the rerun completes`, { timeout: 1_800_000 }, async () => {
      const root = await makeTempDir('clonebox-archive-crash-');
      const work = path.join(root, 'work');
      const tpl = path.join(root, 'template');
      const f0 = await makeArchive(work, { push: false });
      await sc.build(f0);
      await cp(work, tpl, { recursive: true });
      const log = path.join(root, 'crash.log');
      const steps = new Set<string>();
      let completed = false;
      for (let n = 1; n <= 80 && !completed; n++) {
        await rm(work, { recursive: true, force: true });
        await cp(tpl, work, { recursive: true });
        await rm(log, { force: true });
        const r: RunResult = await f0.cli.cli(sc.op(f0), { env: { CLONEBOX_CRASH_AT: String(n), CLONEBOX_CRASH_LOG: log } });
        const passed = existsSync(log) ? (await readFile(log, 'utf8')).trim().split('\n') : [];
        const step = passed.at(-1) ?? '(none)';
        if (r.signal !== 'SIGKILL') {
          expect(r.code, `${sc.name} at n=${n}: ${r.stderr}`).toBe(0);
          completed = true;
        } else steps.add(step);
        const at = `${sc.name} killed at ${n} (${step})`;
        const c = await checkArchive(f0.cli, f0.repo);
        expect(c.ok, `${at}: ${JSON.stringify(c.errors)}`).toBe(true);
        const names = await listed(f0);
        expect(
          sc.listed.map((l) => JSON.stringify(l)),
          `${at}: lists ${names}`,
        ).toContain(JSON.stringify(names));
        await expectRestorable(f0, f0.repo, names, at);
        // The rerun completes, and leaves nothing behind.
        const again = await f0.cli.cli(sc.op(f0));
        expect(again.code, `${at}, rerun: ${again.stderr}`).toBe(0);
        expect(await listed(f0), `${at}, rerun`).toEqual(sc.after);
        await f0.cli.ok(['archive', 'gc', '--repo', f0.repo]);
        const c2 = await checkArchive(f0.cli, f0.repo);
        expect(c2.ok, `${at}, after rerun and gc: ${JSON.stringify(c2.errors)}`).toBe(true);
        expect(c2.notes, `${at}, after rerun and gc`).toEqual([]);
        // (what a rerun leaves is the same every time: restored once, at the end)
        if (completed) await expectRestorable(f0, f0.repo, sc.after, `${at}, after rerun`);
      }
      expect(completed, `${sc.name} ran to its end within 80 crash points`).toBe(true);
      expect(steps.size, `${sc.name}: named steps killed at: ${[...steps].join(', ')}`).toBeGreaterThanOrEqual(2);
    });
  }
});
