/**
 * Issue #13 (policies that run themselves) and #17 bug 10, through the CLI and the library, on real
 * qcow2 images checked with qemu-img: retention counted as users count, clearing policies, and
 * CLONEBOX_NOW as the clock of every command.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Clonebox, type Warning } from '../src/index.js';
import { VmFixture } from './helpers/snapshots.js';
import { makeTempDir } from './helpers/temp.js';

async function fixture(name = 'web', size = '16M'): Promise<VmFixture> {
  const root = await makeTempDir('clonebox-pol-');
  const dir = path.join(root, 'disks');
  await mkdir(dir);
  return VmFixture.create(path.join(root, 'home'), dir, name, size);
}

/** Five auto snapshots, each after a different write, with a reference of each state. */
async function fiveAutos(f: VmFixture, take: (name: string) => Promise<void>): Promise<void> {
  await f.write('write -P 1 0 64k');
  await f.snap('manual');
  for (let i = 0; i < 5; i++) {
    await f.write(`write -P ${20 + i} ${(i + 1) * 65536} 64k`);
    await f.refCurrent(`a${i}`);
    await take(`a${i}`);
  }
  await f.write('write -P 99 1M 64k'); // the current state differs from every snapshot
  await f.refCurrent('cur');
}

describe('retention counts like users count (issue #13, 4)', () => {
  it("the design's test through the CLI: max_snapshots 3, five auto snapshots, three remain", async () => {
    const f = await fixture();
    await f.ok(['snapshot', 'policy', 'web', '--max-snapshots', '3']);
    await fiveAutos(f, async (name) => {
      const r = await f.ok(['snapshot', 'run', 'web', '--name', name, '--', 'true']);
      // Routine pruning is said, but not as a warning (#17 bug 10).
      expect(r.stderr).not.toContain('warning');
    });
    const list = await f.expectIntact(f.refs.get('cur')!, new Set(['manual', 'a2', 'a3', 'a4']));
    expect(list.filter((s) => s.auto_created).map((s) => s.name)).toEqual(['a4', 'a3', 'a2']);
    expect(list.find((s) => s.name === 'a2')!.parent).toBe('manual');
  });

  it("the design's test through the library, with the pruning reported as a NOTICE", async () => {
    const f = await fixture();
    const seen: Warning[] = [];
    const cb = await Clonebox.open({ home: f.home, onWarning: (w) => seen.push(w) });
    try {
      await cb.snapshots.policy('web', { max_snapshots: 3 });
      await fiveAutos(f, async (name) => {
        await cb.snapshots.run('web', ['true'], { name });
      });
      expect(seen.filter((w) => w.code === 'WARNING')).toEqual([]);
      expect(seen.filter((w) => w.code === 'NOTICE').map((w) => w.message)).toEqual([
        'retention removed a0 (over max-snapshots 3)',
        'retention removed a1 (over max-snapshots 3)',
      ]);
      await f.expectIntact(f.refs.get('cur')!, new Set(['manual', 'a2', 'a3', 'a4']));
      const tree = await cb.snapshots.treeDetails('web');
      expect(tree.retention.keep.map((k) => k.name)).toEqual(['a4', 'a3', 'a2']);
      expect(tree.retention.keep[0]!.reasons).toContain('current');
    } finally {
      await cb.close();
    }
  });
});

describe('policies can be cleared; 0 is refused (#17 bug 10)', () => {
  it('--keep-last 0 and --max-size 0 exit 2 and change nothing; none and --clear drop rules', async () => {
    const f = await fixture();
    await f.ok(['snapshot', 'policy', 'web', '--keep-last', '2', '--max-size', '1G']);
    for (const args of [
      ['--keep-last', '0'],
      ['--max-size', '0'],
      ['--max-snapshots', '0'],
    ]) {
      const r = await f.cli(['snapshot', 'policy', 'web', ...args]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/at least 1/);
    }
    expect((await f.json<{ policy: object }>(['snapshot', 'policy', 'web'])).policy).toEqual({ keep_last: 2, max_size: 1024 ** 3 });
    expect((await f.json<{ policy: object }>(['snapshot', 'policy', 'web', '--keep-last', 'none'])).policy).toEqual({ max_size: 1024 ** 3 });
    expect((await f.json<{ policy: object }>(['snapshot', 'policy', 'web', '--clear'])).policy).toEqual({});
    const shown = await f.ok(['snapshot', 'policy', 'web']);
    expect(shown.stdout).toContain('no retention policy');
  });
});

describe('CLONEBOX_NOW (issue #13, 5)', () => {
  it('every command records that time, and a bad value is a usage error', async () => {
    const f = await fixture();
    const at = '2030-01-02T03:04:05.000Z';
    await f.write('write -P 1 0 64k');
    const r = await f.cli(['snapshot', 'create', 'web', '--json'], { CLONEBOX_NOW: at });
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout) as { created_at: string; name: string };
    expect(s.created_at).toBe(at);
    const bad = await f.cli(['snapshot', 'create', 'web'], { CLONEBOX_NOW: 'tomorrow-ish' });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('CLONEBOX_NOW');
  });
});
