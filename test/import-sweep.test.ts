/**
 * The home sweep (src/store/sweep.ts): an import into a NEW VM killed (SIGKILL) at every journal step
 * is cleaned up by the next, unrelated command (`vm list`, or a snapshot of another VM), not only by a
 * retry of the same import: no hidden temporary file and no vms/<vm> directory is left (or, killed
 * past its commit point, the VM is complete and identical to its source), one warning line says so,
 * and the same bundle imports again. An import still running (its lock held by a live process) is
 * left alone, and a damaged journal is reported, never acted on.
 */

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseJsonOutput, runCli } from './helpers/cli.js';
import type { RunResult } from './helpers/process.js';
import { qemuCheck, qemuCompare, qemuIo } from './helpers/qemu.js';
import { rng } from './helpers/random.js';
import { makeTempDir } from './helpers/temp.js';

const WARNING = /^clonebox: warning: (removed the remains of|completed) an interrupted import of VM 'dst'.*$/gm;

async function setup() {
  const root = await makeTempDir('clonebox-import-sweep-');
  const home = path.join(root, 'home');
  const srcDisks = path.join(root, 'src-disks');
  await mkdir(srcDisks);
  const cli = (args: string[], opts: { env?: NodeJS.ProcessEnv; input?: Buffer } = {}) => runCli(args, { home, ...opts });
  const ok = async (args: string[], opts: { env?: NodeJS.ProcessEnv; input?: Buffer } = {}) => {
    const r = await cli(args, opts);
    if (r.code !== 0) throw new Error(`clonebox ${args.join(' ')}: ${r.stderr}`);
    return r;
  };
  await ok(['vm', 'create', 'src', '--size', '8M', '--dir', srcDisks]);
  const data = path.join(root, 'data.bin');
  await writeFile(data, rng(7).bytes(1024 * 1024));
  await qemuIo(path.join(srcDisks, 'src.qcow2'), [`write -s ${data} 0 1M`, 'write -z 2M 64k']);
  await ok(['snapshot', 'create', 'src', '--name', 'a']);
  await qemuIo(path.join(srcDisks, 'src.qcow2'), ['write -P 0x3 4M 128k']);
  await ok(['snapshot', 'create', 'src', '--name', 'b']);
  const bundle = path.join(root, 'b.bundle');
  await ok(['snapshot', 'export', 'src', '-o', bundle]);
  await ok(['vm', 'create', 'other', '--size', '1M']);
  return { root, home, srcDisks, bundle, cli, ok, dstDisks: path.join(home, 'disks', 'dst'), dstVm: path.join(home, 'vms', 'dst') };
}

type Env = Awaited<ReturnType<typeof setup>>;

/** dst is complete: snapshots a and b and the current state identical to the source's, images clean. */
async function expectComplete(e: Env, what: string): Promise<void> {
  const list = parseJsonOutput<{ name: string; disks: { path: string }[] }[]>(await e.ok(['snapshot', 'list', 'dst', '--json']));
  expect(list.map((s) => s.name).sort(), what).toEqual(['a', 'b']);
  const cur = path.join(e.dstDisks, 'dst.qcow2');
  const pairs = [
    ...list.map((s) => [`snapshot ${s.name}`, path.join(e.srcDisks, `src@${s.name}.qcow2`), s.disks[0]!.path] as const),
    ['current state', path.join(e.srcDisks, 'src@b.qcow2'), cur] as const,
  ];
  await Promise.all(
    pairs.map(async ([label, src, dst]) => {
      expect((await qemuCompare(src, dst)).code, `${what}: ${label}`).toBe(0);
      expect((await qemuCheck(dst)).code, `${what}: check ${label}`).toBe(0);
    }),
  );
  expect((await readdir(e.dstDisks)).sort(), `${what}: files`).toEqual(['dst.qcow2', 'dst@a.qcow2', 'dst@b.qcow2']);
}

const warnings = (r: RunResult) => r.stderr.match(WARNING) ?? [];

/** Kills an import into the new VM dst at every journal step; counts what recovery did. */
async function crashEveryStep(e: Env, stdin: boolean): Promise<{ steps: number; rolledBack: number; completed: number; registered: number }> {
  const seen = { rolledBack: 0, completed: 0, registered: 0 };
  const importArgs = ['snapshot', 'import', 'dst', stdin ? '-' : e.bundle, '--json'];
  const input = stdin ? await readFile(e.bundle) : undefined;
  const withInput = input ? { input } : {};
  for (let n = 1; n < 60; n++) {
    const what = `${stdin ? 'stdin' : 'file'} step ${n}`;
    const crashed = await e.cli(importArgs, { env: { CLONEBOX_CRASH_AT: String(n) }, ...withInput });
    if (crashed.code === 0) {
      // More crash points than the import has: it ran to the end.
      await e.ok(['vm', 'remove', 'dst', '--delete-files', '--yes']);
      return { steps: n - 1, ...seen };
    }
    expect(crashed.signal, `${what}: ${crashed.stderr}`).toBe('SIGKILL');
    expect(existsSync(path.join(e.dstVm, 'journal.json')), `${what}: journal left by the crash`).toBe(true);
    // Killed after its last action (vm.json written) but before the journal was removed: the VM is
    // registered, and its own recovery (the next command on dst) finishes the journal, not the sweep.
    const registered = existsSync(path.join(e.dstVm, 'vm.json'));

    // An unrelated command sweeps: `vm list` on odd steps, a snapshot of another VM on even ones; the
    // other one runs next and must find nothing left to do.
    const list = () => e.cli(['vm', 'list', '--json']);
    const mutate = () => e.cli(['snapshot', 'create', 'other', '--name', `${stdin ? 'in' : 'file'}-${n}`, '--json']);
    const [first, second] = n % 2 ? [await list(), await mutate()] : [await mutate(), await list()];
    expect(first.code, `${what}: ${first.stderr}`).toBe(0);
    expect(second.code, `${what}: ${second.stderr}`).toBe(0);
    parseJsonOutput(first); // the warning is on stderr only
    expect(warnings(first), `${what}: stderr ${first.stderr}`).toHaveLength(registered ? 0 : 1);
    expect(warnings(second), `${what}: stderr ${second.stderr}`).toHaveLength(0);
    expect(second.stderr, what).not.toContain('warning');

    const hidden = existsSync(e.dstDisks) ? (await readdir(e.dstDisks)).filter((f) => f.startsWith('.')) : [];
    expect(hidden, `${what}: temporary files left`).toEqual([]);
    const vms = parseJsonOutput<{ name: string }[]>(n % 2 ? first : second).map((v) => v.name);
    if (registered || warnings(first)[0]!.includes('completed')) {
      seen[registered ? 'registered' : 'completed']++;
      // Killed past the commit point: rolled forward, the VM exists and is whole.
      expect(vms, what).toContain('dst');
      await expectComplete(e, what);
      const again = await e.cli(importArgs, withInput);
      expect(parseJsonOutput<{ error: { code: string } }>(again).error.code, what).toBe('VM_EXISTS');
    } else {
      seen.rolledBack++;
      expect(warnings(first)[0], what).toMatch(
        /removed the remains of an interrupted import of VM 'dst' \((no temporary files yet|\d+ temporary files?, [\d.]+ (B|KiB|MiB))\)$/,
      );
      expect(vms, what).not.toContain('dst');
      expect(existsSync(e.dstVm), `${what}: vms/dst left`).toBe(false);
      expect(existsSync(e.dstDisks), `${what}: disks/dst left`).toBe(false);
      const again = await e.cli(importArgs, withInput);
      expect(again.code, `${what}: ${again.stderr}`).toBe(0);
      expect(again.stderr, what).not.toContain('warning');
      await expectComplete(e, what);
    }
    await e.ok(['vm', 'remove', 'dst', '--delete-files', '--yes']);
  }
  throw new Error('the import never ran to its end');
}

describe('home sweep of interrupted imports', () => {
  it('cleans up an import killed at every journal step, from a file and from stdin', async () => {
    // The two runs use separate homes, in parallel.
    const [ef, es] = await Promise.all([setup(), setup()]);
    const [file, stdin] = await Promise.all([crashEveryStep(ef, false), crashEveryStep(es, true)]);
    // Both phases were hit: rolled back before the commit point, rolled forward after it.
    for (const r of [file, stdin]) {
      expect(r.rolledBack, JSON.stringify(r)).toBeGreaterThan(2);
      expect(r.completed, JSON.stringify(r)).toBeGreaterThan(2);
      expect(r.rolledBack + r.completed + r.registered).toBe(r.steps);
    }
    expect(stdin.rolledBack, 'a stdin import has one more prepare step (its spool file)').toBe(file.rolledBack + 1);
    // The other VM went through it all unharmed.
    for (const [e, r] of [
      [ef, file],
      [es, stdin],
    ] as const) {
      expect(parseJsonOutput<unknown[]>(await e.ok(['snapshot', 'list', 'other', '--json'])).length).toBe(r.steps);
    }
  }, 120_000);

  it('leaves an import whose lock holder is alive (or on another host) alone; sweeps it once the holder is dead', async () => {
    const e = await setup();
    // A real interrupted import with temporary layers on disk...
    const crashed = await e.cli(['snapshot', 'import', 'dst', e.bundle], { env: { CLONEBOX_CRASH_AT: '4' } });
    expect(crashed.signal, crashed.stderr).toBe('SIGKILL');
    const temps = (await readdir(e.dstDisks)).filter((f) => f.startsWith('.'));
    expect(temps.length).toBeGreaterThan(0);
    // ...whose lock now names a live process on this host: as if the import were still running.
    const holder = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
    const exited = new Promise((r) => holder.on('exit', r));
    const lockFile = path.join(e.dstVm, 'lock');
    const lockAs = (pid: number, host: string) =>
      writeFile(lockFile, JSON.stringify({ pid, host, command: 'snapshot import', since: new Date().toISOString() }));
    try {
      await lockAs(holder.pid!, os.hostname());
      const untouched = async (what: string) => {
        for (const args of [
          ['vm', 'list'],
          ['snapshot', 'create', 'other', '--name', `x${Math.random().toString(36).slice(2, 8)}`],
        ]) {
          const r = await e.ok(args);
          expect(r.stderr, `${what}: ${args.join(' ')}`).toBe('');
        }
        expect((await readdir(e.dstDisks)).filter((f) => f.startsWith('.')).sort(), what).toEqual(temps.sort());
        expect((await readdir(e.dstVm)).sort(), what).toEqual(['journal.json', 'lock']);
      };
      await untouched('live holder');
      // A holder on another host sharing the home cannot be judged from here: left alone too.
      await lockAs(999_999_999, 'some-other-host.example');
      await untouched('holder on another host');
      await lockAs(holder.pid!, os.hostname());
    } finally {
      holder.kill('SIGKILL');
      await exited;
    }
    // The holder died: the next command sweeps.
    const r = await e.ok(['vm', 'list']);
    expect(warnings(r), r.stderr).toHaveLength(1);
    expect(r.stderr).toMatch(new RegExp(`removed the remains of an interrupted import of VM 'dst' \\(${temps.length} temporary files?, `));
    expect(existsSync(e.dstVm)).toBe(false);
    expect(existsSync(e.dstDisks)).toBe(false);
    await e.ok(['snapshot', 'import', 'dst', e.bundle]);
    await expectComplete(e, 'import after the sweep');
  }, 60_000);

  it('reports a damaged journal of a VM that does not exist and deletes nothing', async () => {
    const e = await setup();
    const dir = path.join(e.home, 'vms', 'junk');
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'journal.json'), '{"format": 1, "phase": "prep');
    const disks = path.join(e.home, 'disks', 'junk');
    await mkdir(disks, { recursive: true });
    await writeFile(path.join(disks, '.junk@a.qcow2.import-1-abcd'), 'data the user may want');
    for (const args of [
      ['vm', 'list', '--json'],
      ['snapshot', 'create', 'other', '--name', 'y'],
    ]) {
      const r = await e.cli(args);
      expect(r.code, r.stderr).toBe(0);
      const lines = r.stderr.split('\n').filter((l) => l.startsWith('clonebox: warning:'));
      expect(lines, r.stderr).toHaveLength(1);
      expect(lines[0]).toContain('operation journal is damaged');
      expect(lines[0]).toContain('nothing was deleted');
      expect(lines[0]).toContain(`then remove ${dir}`);
    }
    expect((await readdir(dir)).sort()).toEqual(['journal.json']);
    expect(await readdir(disks)).toEqual(['.junk@a.qcow2.import-1-abcd']);
    expect(parseJsonOutput<{ name: string }[]>(await e.ok(['vm', 'list', '--json'])).map((v) => v.name)).toEqual(['other', 'src']);
  }, 60_000);
});
