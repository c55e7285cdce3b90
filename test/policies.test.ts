/**
 * Issue #13 (policies that run themselves) and #17 bug 10, through the CLI and the library, on real
 * qcow2 images checked with qemu-img: retention counted as users count, clearing policies, and
 * CLONEBOX_NOW as the clock of every command.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Clonebox, type Warning } from '../src/index.js';
import { runCli } from './helpers/cli.js';
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
      // The next auto snapshot takes a place: the oldest of the three goes then.
      expect(tree.retention.next).toEqual([{ name: 'a2', reason: 'over max-snapshots 3' }]);
      expect((await cb.snapshots.prune('web', { dryRun: true })).next.map((n) => n.name)).toEqual(['a2']);
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

/** A local time as ISO (schedules are in local time; the tests do not depend on the machine's zone). */
const local = (y: number, mo: number, d: number, h = 0, mi = 0) => new Date(y, mo - 1, d, h, mi, 0).toISOString();

/** Writes a configuration beside the disks' directory (expectIntact wants only images in it). */
async function writeConfig(f: VmFixture, text: string, name = '.clonebox.yaml'): Promise<string> {
  const { mkdir: mkdirp, writeFile } = await import('node:fs/promises');
  const dir = path.join(path.dirname(f.dir), 'conf');
  await mkdirp(dir, { recursive: true });
  const file = path.join(dir, name);
  await writeFile(file, text);
  return file;
}

describe('.clonebox.yaml: apply, config show / check (issue #13, 1)', () => {
  it('each kind of error exits 2 with FILE:LINE:COLUMN and says what is allowed', async () => {
    const f = await fixture();
    const cases: [string, string, RegExp][] = [
      ['unknown key', 'vm:\n  name: web\n  colour: blue\n', /:3:3: unknown key "colour" in vm \(allowed: name, disks, libvirt, snapshots\)/],
      ['wrong type', 'vm:\n  name: web\n  snapshots:\n    auto_snapshot:\n      policy: {keep_last: "five"}\n', /:5:27: .*keep_last must be a whole number/],
      ['bad duration', 'vm:\n  name: web\npolicies:\n  p: {keep: "3 fortnights"}\n', /:4:13: policies\.p\.keep: invalid duration "3 fortnights"/],
      ['bad cron', 'vm:\n  name: web\npolicies:\n  p: {when: "61 * * * *"}\n', /:4:13: policies\.p\.when: invalid schedule "61 \* \* \* \*"/],
      ['bad daily time', 'vm:\n  name: web\npolicies:\n  p: {when: ["00:00", "25:00"]}\n', /:4:23: policies\.p\.when: invalid schedule "25:00"/],
      ['unknown VM without disks', 'vm:\n  name: ghost\n', /:2:9: VM ghost is not registered and the file does not say where its disks are/],
      [
        'zero count',
        'vm:\n  name: web\n  snapshots:\n    auto_snapshot:\n      policy: {max_snapshots: 0}\n',
        /:5:31: .*max_snapshots must be a whole number of at least 1/,
      ],
      ['YAML syntax', 'vm:\n  name: [web\n', /:3:1: YAML: /],
    ];
    for (const [what, text, re] of cases) {
      const file = await writeConfig(f, text, `${what.replace(/ /g, '-')}.yaml`);
      const r = await f.cli(['apply', file, '--json']);
      expect(r.code, what).toBe(2);
      expect(r.stderr, what).toMatch(re);
      expect(r.stderr, what).toContain(`${file}:`);
      expect(JSON.parse(r.stdout).error.code, what).toBe('CONFIG_INVALID');
    }
    // Several problems are all reported, each with its position.
    const many = await writeConfig(f, 'vm:\n  name: web\n  colour: blue\npolicies:\n  p: {keep: 0, when: "xx"}\n', 'many.yaml');
    const r = await f.cli(['config', 'check', many]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/3 problems/);
    expect(r.stderr).toMatch(/many\.yaml:3:3: /);
    expect(r.stderr).toMatch(/many\.yaml:5:13: /);
    expect(r.stderr).toMatch(/many\.yaml:5:22: /);
  });

  it("the design's file registers the VM, applies, and applying twice changes nothing", async () => {
    const { readFile, stat } = await import('node:fs/promises');
    const { qemuCreate } = await import('./helpers/qemu.js');
    const f = await fixture();
    await qemuCreate(path.join(f.dir, 'dev.qcow2'), '16M');
    const conf = path.join(path.dirname(f.dir), 'conf');
    await writeConfig(
      f,
      `# .clonebox.yaml
vm:
  name: my-dev-vm
  disks: [../disks/dev.qcow2]
  snapshots:
    auto_snapshot:
      enabled: true
      before_operations: [upgrade, delete, config-change]
      policy: {keep_last: 5, keep_daily: 7, keep_weekly: 4, max_size_gb: 50}
policies:
  dev-daily:       {keep: "5d", when: "00:00"}
  critical-weekly: {keep: "4w", size_limit: "10GB", when: ["0 3 * * 1"], timezone: "Europe/Paris"}
`,
    );
    const check = await f.cli(['config', 'check', conf]);
    expect(check.code, check.stderr).toBe(0);
    const first = await runCli(['apply', '--json'], { home: f.home, cwd: conf });
    expect(first.code, first.stderr).toBe(0);
    const a = JSON.parse(first.stdout);
    expect(a).toMatchObject({ vm: 'my-dev-vm', registered: true, changed: true });
    expect(a.config.vm.snapshots.auto_snapshot).toEqual({
      enabled: true,
      before_operations: ['upgrade', 'delete', 'config-change'],
      policy: { keep_last: 5, keep_daily: 7, keep_weekly: 4, max_size: 50 * 1024 ** 3 },
    });
    expect(a.config.vm.snapshots.policies).toEqual({
      'dev-daily': { keep_for: '5d', when: ['0 0 * * *'], timezone: null },
      'critical-weekly': { keep_for: '4w', max_size: 10 * 1024 ** 3, when: ['0 3 * * 1'], timezone: 'Europe/Paris' },
    });
    const vmJson = path.join(f.home, 'vms', 'my-dev-vm', 'vm.json');
    const before = { text: await readFile(vmJson, 'utf8'), mtime: (await stat(vmJson)).mtimeMs };
    const second = JSON.parse((await runCli(['apply', '.', '--json'], { home: f.home, cwd: conf })).stdout);
    expect(second).toMatchObject({ registered: false, changed: false });
    expect(await readFile(vmJson, 'utf8')).toBe(before.text);
    expect((await stat(vmJson)).mtimeMs).toBe(before.mtime);
    // `.` names the file's VM wherever a command takes a VM; config show prints YAML that applies as is.
    const shown = await runCli(['config', 'show', '.'], { home: f.home, cwd: conf });
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toContain('name: my-dev-vm');
    await writeConfig(f, shown.stdout, 'shown.yaml');
    const again = JSON.parse((await f.cli(['apply', path.join(conf, 'shown.yaml'), '--json'])).stdout);
    expect(again).toMatchObject({ vm: 'my-dev-vm', changed: false });
    const pol = await f.cli(['snapshot', 'policy', path.join(conf, '.clonebox.yaml'), '--json']);
    expect(JSON.parse(pol.stdout).vm).toBe('my-dev-vm');
  });
});

describe('schedules (issue #13, 2)', () => {
  it('dev-daily {keep: "5d", when: "00:00"} over 30 simulated days, hour by hour with catch-up (library)', async () => {
    const f = await fixture();
    await f.write('write -P 7 0 1M');
    await f.refCurrent('cur');
    const file = await writeConfig(f, 'vm:\n  name: web\npolicies:\n  dev-daily: {keep: "5d", when: "00:00"}\n');
    const saved = process.env.CLONEBOX_NOW;
    const cb = await Clonebox.open({ home: f.home, onWarning: () => undefined });
    try {
      process.env.CLONEBOX_NOW = new Date(Date.parse(local(2030, 1, 1)) - 3_600_000).toISOString();
      await cb.config.apply(file);
      const taken: string[] = [];
      for (let h = 0; h < 30 * 24; h++) {
        // 17 minutes past each hour: the 00:00 run is caught up at 00:17.
        const at = new Date(Date.parse(local(2030, 1, 1, 0, 17)) + h * 3_600_000);
        process.env.CLONEBOX_NOW = at.toISOString();
        const r = await cb.schedule.runDue();
        expect(r.ran).toBe(true);
        expect(r.failed).toEqual([]);
        const day = Math.floor(h / 24);
        expect(r.taken.length, `hour ${h}`).toBe(h % 24 === 0 ? 1 : 0);
        taken.push(...r.taken.map((t) => t.snapshot));
        const autos = (await cb.snapshots.list('web')).filter((s) => s.auto_policy === 'dev-daily');
        // Exactly the snapshots of the last five days (today's included): younger than 5 days.
        const expected = taken.slice(Math.max(0, day - 4), day + 1).reverse();
        expect(
          autos.map((s) => s.name),
          `hour ${h}`,
        ).toEqual(expected);
      }
      const list = await cb.snapshots.list('web');
      expect(list.length).toBe(5);
      expect(list[0]!.expires_at).toBe(null); // the current snapshot never expires
      expect(list[1]!.expires_at).toBe(new Date(Date.parse(list[1]!.created_at) + 5 * 86_400_000).toISOString());
      for (const s of list) f.refs.set(s.name, f.refs.get('cur')!);
      await f.expectIntact(f.refs.get('cur')!);
    } finally {
      if (saved === undefined) delete process.env.CLONEBOX_NOW;
      else process.env.CLONEBOX_NOW = saved;
      await cb.close();
    }
  }, 300_000);

  it('a run after a 3-day gap takes one snapshot, not three; runs are idempotent (CLI)', async () => {
    const f = await fixture();
    await f.write('write -P 7 0 64k');
    const file = await writeConfig(f, 'vm:\n  name: web\npolicies:\n  dev-daily: {keep: "5d", when: "00:00"}\n');
    const at = (iso: string) => ({ CLONEBOX_NOW: iso });
    expect((await f.cli(['apply', file], at(local(2030, 3, 1, 12)))).code).toBe(0);
    const run = async (iso: string) => {
      const r = await f.cli(['schedule', 'run', '--json'], at(iso));
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as { taken: { snapshot: string }[]; ran: boolean };
    };
    expect((await run(local(2030, 3, 1, 23, 59))).taken).toEqual([]); // not due before its first 00:00
    expect((await run(local(2030, 3, 2, 0, 0))).taken.length).toBe(1);
    expect((await run(local(2030, 3, 2, 0, 0))).taken).toEqual([]); // the same minute again: nothing
    expect((await run(local(2030, 3, 2, 9, 0))).taken).toEqual([]);
    // Off for three days: 3, 4 and 5 March at 00:00 were missed.
    const gap = await run(local(2030, 3, 5, 8, 30));
    expect(gap.taken.length).toBe(1);
    expect((await run(local(2030, 3, 5, 8, 31))).taken).toEqual([]);
    expect((await f.list()).length).toBe(2);
    const ls = JSON.parse((await f.cli(['schedule', 'list', '--json'], at(local(2030, 3, 5, 9)))).stdout);
    expect(ls).toEqual([
      { vm: 'web', policy: 'dev-daily', when: ['0 0 * * *'], timezone: null, last_run: local(2030, 3, 5, 8, 30), next_run: local(2030, 3, 6), due: false },
    ]);
    const text = await f.cli(['schedule', 'list'], at(local(2030, 3, 6, 0, 1)));
    expect(text.stdout).toContain('due now');
  });

  it('enabled: false: nothing is scheduled and no snapshot is taken before operations (library)', async () => {
    const f = await fixture();
    await f.write('write -P 7 0 64k');
    await f.snap('s1');
    const file = await writeConfig(
      f,
      'vm:\n  name: web\n  snapshots:\n    auto_snapshot: {enabled: false, before_operations: [delete]}\npolicies:\n  hourly: {when: "0 * * * *", keep: 3}\n',
    );
    const saved = process.env.CLONEBOX_NOW;
    const cb = await Clonebox.open({ home: f.home, onWarning: () => undefined });
    try {
      process.env.CLONEBOX_NOW = local(2030, 5, 1, 10);
      expect((await cb.config.apply(file)).config.vm.snapshots.auto_snapshot.enabled).toBe(false);
      process.env.CLONEBOX_NOW = local(2030, 5, 2, 10);
      expect(await cb.schedule.list()).toEqual([
        { vm: 'web', policy: 'hourly', when: ['0 * * * *'], timezone: null, last_run: null, next_run: null, due: false },
      ]);
      expect((await cb.schedule.runDue()).taken).toEqual([]);
      expect((await cb.snapshots.delete('web', 's1')).deleted).toEqual(['s1']);
      expect(await cb.snapshots.list('web')).toEqual([]);
    } finally {
      if (saved === undefined) delete process.env.CLONEBOX_NOW;
      else process.env.CLONEBOX_NOW = saved;
      await cb.close();
    }
  });

  it('install prints (or writes) a systemd user service and timer', async () => {
    const f = await fixture();
    const r = await f.json<{ service: { text: string }; timer: { text: string }; written: null }>(['schedule', 'install']);
    expect(r.written).toBe(null);
    expect(r.service.text).toMatch(/^ExecStart=.*clonebox\.js --home .* schedule run$/m);
    expect(r.timer.text).toContain('OnCalendar=*-*-* *:*:00');
    expect(r.timer.text).toContain('Persistent=true');
    const dir = path.join(f.dir, 'units');
    const w = await f.json<{ written: string[] }>(['schedule', 'install', '--dir', dir]);
    const { readFile } = await import('node:fs/promises');
    expect(await readFile(w.written[0]!, 'utf8')).toBe(r.service.text);
    expect(await readFile(w.written[1]!, 'utf8')).toBe(r.timer.text);
  });
});

describe('snapshots before risky operations (issue #13, 3)', () => {
  /** s1 ← s2, s1 ← s3 (current), and unsnapshotted changes on top; references of every state. */
  async function tree(f: VmFixture, ops: string[]): Promise<void> {
    await f.write('write -P 1 0 1M', 'write -P 5 8M 256k');
    await f.snap('s1');
    await f.write('write -P 2 1M 512k');
    await f.snap('s2');
    await f.ok(['snapshot', 'restore', 'web', '--name', 's1', '--yes']);
    await f.write('write -P 3 2M 512k');
    await f.snap('s3');
    await f.write('write -P 7 6M 64k');
    await f.refCurrent('cur');
    const file = await writeConfig(f, `vm:\n  name: web\n  snapshots:\n    auto_snapshot:\n      before_operations: [${ops.join(', ')}]\n`);
    expect((await f.cli(['apply', file])).code).toBe(0);
  }
  const NOW = { CLONEBOX_NOW: '2030-06-01T12:00:00Z' };
  const autoName = () => {
    const d = new Date(NOW.CLONEBOX_NOW);
    const p = (n: number) => String(n).padStart(2, '0');
    return `snap-${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
  };

  it('before_operations: [delete] then snapshot delete: the auto snapshot exists first, every other state identical', async () => {
    const f = await fixture();
    await tree(f, ['delete']);
    // Deleting the current snapshot: the auto snapshot (of the current state) stands on it, and takes its data.
    const r = await f.cli(['snapshot', 'delete', 'web', '--name', 's3', '--json'], NOW);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`took automatic snapshot ${autoName()} of web before deleting s3`);
    expect(JSON.parse(r.stdout)).toEqual({ vm: 'web', deleted: ['s3'], merged_into: [autoName()] });
    f.refs.set(autoName(), f.refs.get('cur')!);
    const list = await f.expectIntact(f.refs.get('cur')!, new Set(['s1', 's2', autoName()]));
    const auto = list.find((s) => s.name === autoName())!;
    expect(auto).toMatchObject({ auto_created: true, auto_policy: 'before-delete', parent: 's1', current: true });
  });

  it('--recursive spares the auto snapshot; --no-auto-snapshot takes none; a failed one stops the delete', async () => {
    const f = await fixture();
    await tree(f, ['delete']);
    await f.refCurrent('cur');
    const r = await f.cli(['snapshot', 'delete', 'web', '--name', 's1', '--recursive', '--yes', '--json'], NOW);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).deleted.sort()).toEqual(['s1', 's2', 's3']);
    f.refs.set(autoName(), f.refs.get('cur')!);
    const list = await f.expectIntact(f.refs.get('cur')!, new Set([autoName()]));
    expect(list[0]).toMatchObject({ name: autoName(), parent: null, current: true });

    const g = await fixture();
    await tree(g, ['delete']);
    // The auto snapshot's layer name is taken: it cannot be made, so nothing is deleted.
    await mkdir(path.join(g.dir, `web@${autoName()}.qcow2`));
    const failed = await g.cli(['snapshot', 'delete', 'web', '--name', 's2', '--json'], NOW);
    expect(failed.code).toBe(1);
    expect(JSON.parse(failed.stdout).error.code).toBe('AUTO_SNAPSHOT_FAILED');
    expect(failed.stderr).toMatch(/cannot take the automatic snapshot before deleting snapshot s2 of web .*nothing was changed/);
    expect(failed.stderr).toContain('--no-auto-snapshot');
    expect((await g.list()).map((s) => s.name).sort()).toEqual(['s1', 's2', 's3']);
    const { rmdir } = await import('node:fs/promises');
    const skipped = await g.cli(['snapshot', 'delete', 'web', '--name', 's2', '--no-auto-snapshot'], NOW);
    expect(skipped.code, skipped.stderr).toBe(0);
    await rmdir(path.join(g.dir, `web@${autoName()}.qcow2`));
    await g.expectIntact(g.refs.get('cur')!, new Set(['s1', 's3']));
  });

  it('before_operations: [restore] snapshots the current state first; snapshot run --op names the operation', async () => {
    const f = await fixture();
    await tree(f, ['restore', 'upgrade']);
    const r = await f.cli(['snapshot', 'restore', 'web', '--name', 's2', '--yes', '--json'], NOW);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ vm: 'web', restored: 's2', backup: autoName(), resolved_at: null });
    expect(r.stderr).toContain(`took automatic snapshot ${autoName()} of web before restoring s2`);
    f.refs.set(autoName(), f.refs.get('cur')!);
    const list = await f.expectIntact(f.refs.get('s2')!, new Set(['s1', 's2', 's3', autoName()]));
    expect(list.find((s) => s.name === autoName())).toMatchObject({ auto_policy: 'before-restore', parent: 's3' });
    await f.refCurrent('now');
    const run = await f.cli(['snapshot', 'run', 'web', '--op', 'upgrade', '--name', 'pre-up', '--', 'true']);
    expect(run.code, run.stderr).toBe(0);
    f.refs.set('pre-up', f.refs.get('now')!);
    const after = await f.expectIntact(f.refs.get('now')!);
    expect(after.find((s) => s.name === 'pre-up')).toMatchObject({ auto_policy: 'before-upgrade', description: 'automatic snapshot before upgrade: true' });
  });
});
