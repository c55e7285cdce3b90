/**
 * Where `snapshot export` writes (issue 17, bugs 1, 4 and 5): an existing file is never replaced
 * without --force, and --force replaces only a bundle outside the home, never a VM's disk or layer; a
 * wrong -o fails at once as IO naming the path; a full disk is IO, not INTERNAL; a signal leaves no
 * temporary file, and one a SIGKILL left is swept by the next export to that name.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, readdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI_PATH, CliHome, parseCliError } from './helpers/cli.js';
import { run } from './helpers/process.js';
import { qemuCheck, qemuIo } from './helpers/qemu.js';
import { makeTempDir } from './helpers/temp.js';

const M = 1024 * 1024;

interface Fixture {
  dir: string;
  home: string;
  cb: CliHome;
  disk: string;
  /** Layers of s0 (small) and s1 (32 MiB of random data: slow to compress at --level 19). */
  layers: { s0: string; s1: string };
}

async function fixture(): Promise<Fixture> {
  const dir = await makeTempDir('clonebox-exportout-');
  const home = path.join(dir, 'home');
  const cb = new CliHome(home, { timeoutMs: 120_000 });
  const v = await cb.json<{ disks: { path: string }[] }>(['vm', 'create', 'v', '--size', '64M']);
  const disk = v.disks[0]!.path;
  await qemuIo(disk, 'write -P 0x5a 0 1M');
  const s0 = await cb.json<{ disks: { path: string }[] }>(['snapshot', 'create', 'v', '--name', 's0']);
  const noise = path.join(dir, 'noise.raw');
  await writeFile(noise, randomBytes(32 * M));
  const w = await qemuIo(disk, `write -s ${noise} 0 32M`);
  expect(w.code, w.stderr).toBe(0);
  const s1 = await cb.json<{ disks: { path: string }[] }>(['snapshot', 'create', 'v', '--name', 's1']);
  return { dir, home, cb, disk, layers: { s0: s0.disks[0]!.path, s1: s1.disks[0]!.path } };
}

async function temps(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n.includes('.tmp-'));
}

async function sha(file: string): Promise<string> {
  const { createHash } = await import('node:crypto');
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
}

/** Starts an export that runs for a while, and resolves once its temporary file exists. */
async function slowExport(f: Fixture, out: string): Promise<{ child: ChildProcess; exited: Promise<number | null> }> {
  const child = spawn(process.execPath, [CLI_PATH, '--home', f.home, 'snapshot', 'export', 'v', '--level', '19', '-o', out], { stdio: 'ignore' });
  const exited = new Promise<number | null>((r) => child.once('exit', (code, sig) => r(code ?? (sig ? -1 : null))));
  const deadline = Date.now() + 30_000;
  while ((await temps(path.dirname(out))).length === 0) {
    if (Date.now() > deadline) throw new Error('the export made no temporary file in 30 s');
    await new Promise((r) => setTimeout(r, 20));
  }
  return { child, exited };
}

describe('snapshot export -o (issue 17)', () => {
  it('never replaces a file without --force; --force replaces a bundle, never a disk, a layer, a file in the home or a non-bundle', async () => {
    const f = await fixture();
    const out = path.join(f.dir, 'v.cbx');
    await writeFile(out, 'precious');
    const e = await f.cb.cli(['snapshot', 'export', 'v', '--name', 's0', '-o', out, '--json']);
    expect(e.code).toBe(1);
    expect(parseCliError(e, true).code).toBe('FILE_EXISTS');
    expect(await readFile(out, 'utf8')).toBe('precious');
    // Not a bundle: refused even with --force.
    const nb = await f.cb.cli(['snapshot', 'export', 'v', '--name', 's0', '-o', out, '--force', '--json']);
    expect(parseCliError(nb, true).code).toBe('FILE_EXISTS');
    expect(nb.stderr).toContain('not a clonebox bundle');
    expect(await readFile(out, 'utf8')).toBe('precious');

    // The VM's disk, a layer, and a symlink to a layer: refused with --force, bytes untouched.
    const disk0 = await sha(f.disk);
    const layer0 = await sha(f.layers.s0);
    const link = path.join(f.dir, 'link.cbx');
    await symlink(f.layers.s0, link);
    for (const target of [f.disk, f.layers.s0, link]) {
      for (const force of [[], ['--force']]) {
        const r = await f.cb.cli(['snapshot', 'export', 'v', '--name', 's0', '-o', target, ...force, '--json']);
        expect(r.code, `${target} ${force}`).toBe(1);
        expect(parseCliError(r, true).code).toBe('FILE_EXISTS');
      }
    }
    expect(await sha(f.disk)).toBe(disk0);
    expect(await sha(f.layers.s0)).toBe(layer0);
    expect((await qemuCheck(f.disk)).code).toBe(0);
    const shown = await f.cb.json<{ disks: unknown[] }>(['vm', 'show', 'v']);
    expect(shown.disks).toHaveLength(1);

    // A bundle inside the home: refused with --force too (the home is clonebox's).
    const inHome = path.join(f.home, 'old.cbx');
    await f.cb.ok(['snapshot', 'export', 'v', '--name', 's0', '-o', inHome]);
    const ih = await f.cb.cli(['snapshot', 'export', 'v', '--name', 's0', '-o', inHome, '--force', '--json']);
    expect(parseCliError(ih, true).code).toBe('FILE_EXISTS');
    expect(ih.stderr).toContain('inside the clonebox home');

    // A bundle outside the home: --force replaces it (a new, complete bundle).
    const b = path.join(f.dir, 'b.cbx');
    await f.cb.ok(['snapshot', 'export', 'v', '--name', 's0', '-o', b]);
    const before = await sha(b);
    const again = await f.cb.cli(['snapshot', 'export', 'v', '--name', 's0', '-o', b, '--json']);
    expect(parseCliError(again, true).code).toBe('FILE_EXISTS');
    expect(await sha(b)).toBe(before);
    await f.cb.ok(['snapshot', 'export', 'v', '--name', 's0', '-o', b, '--force']);
    expect(await sha(b)).not.toBe(before); // a new bundle id
    const ver = await f.cb.cli(['snapshot', 'verify', b, '--json']);
    expect(ver.code, ver.stderr).toBe(0);
    expect(await temps(f.dir)).toEqual([]);
  });

  it('holds the VM lock only to resolve the chain: a snapshot create runs during an export, a delete of an exported snapshot waits', async () => {
    const f = await fixture();
    const out = path.join(f.dir, 'busy.cbx');
    const quick = { env: { CLONEBOX_LOCK_WAIT_MS: '1000' } };
    const { child, exited } = await slowExport(f, out);
    const created = await f.cb.cli(['snapshot', 'create', 'v', '--name', 'during', '--json'], quick);
    expect(created.code, created.stderr).toBe(0);
    // s0 is in the chain being read: deleting it (merging it into s1) must wait.
    const del = await f.cb.cli(['snapshot', 'delete', 'v', '--name', 's0', '--keep-children', '--json'], quick);
    expect(del.code, del.stderr).toBe(1);
    expect(parseCliError(del, true).code).toBe('VM_BUSY');
    expect(del.stderr).toContain('snapshot export');
    const rm = await f.cb.cli(['vm', 'remove', 'v', '--json'], quick);
    expect(parseCliError(rm, true).code).toBe('VM_BUSY');
    // A snapshot outside the chain is free.
    expect((await f.cb.cli(['snapshot', 'delete', 'v', '--name', 'during', '--json'], quick)).code).toBe(0);
    child.kill('SIGKILL'); // its pin stays behind, held by a dead pid: not a pin any more
    await exited;
    const after = await f.cb.cli(['snapshot', 'delete', 'v', '--name', 's0', '--keep-children', '--json'], quick);
    expect(after.code, after.stderr).toBe(0);
    expect(await readdir(path.join(f.home, 'vms', 'v', 'pins'))).toEqual([]);
  });

  it('says what it did in words that fit: one snapshot, one pack, standard output', async () => {
    const f = await fixture();
    const b = path.join(f.dir, 'one.cbx');
    const ex = await f.cb.ok(['snapshot', 'export', 'v', '--name', 's0', '-o', b]);
    expect(ex.stdout).toContain(`exported 1 snapshot of v to ${b}`);
    expect(ex.stdout).not.toMatch(/\(s\)|\b1 blocks\b/);
    const ins = await f.cb.ok(['snapshot', 'inspect', b]);
    expect(ins.stdout).toMatch(/in 1 frame, 1 pack \(/);
    const ver = await f.cb.ok(['snapshot', 'verify', b]);
    expect(ver.stdout).toMatch(/^ok: 1 snapshot, 1 block checked in 1 pack$/m);
    const piped = await run('sh', ['-c', `exec "${process.execPath}" "${CLI_PATH}" --home "${f.home}" snapshot export v --name s0 -o - >/dev/null`]);
    expect(piped.code, piped.stderr).toBe(0);
    expect(piped.stderr).toContain('exported 1 snapshot of v to standard output');
  });

  it('a wrong -o is IO naming the path, before any work; a full disk is IO, not INTERNAL, and leaves nothing', async () => {
    const f = await fixture();
    const cases: [string, string][] = [
      [`${f.dir}/`, 'is a directory'],
      [f.dir, 'is a directory'],
      [path.join(f.dir, 'missing', 'x.cbx'), path.join(f.dir, 'missing')],
    ];
    for (const [out, says] of cases) {
      const t0 = Date.now();
      // --level 19 over 32 MiB of noise takes many seconds: failing fast shows nothing was exported.
      const r = await f.cb.cli(['snapshot', 'export', 'v', '--level', '19', '-o', out, '--json']);
      expect(r.code, out).toBe(1);
      expect(parseCliError(r, true).code).toBe('IO');
      expect(r.stderr).toContain(says);
      expect(Date.now() - t0).toBeLessThan(5000);
    }
    // A full disk (/dev/full as standard output): IO naming standard output.
    const full = await run('sh', ['-c', `exec "${process.execPath}" "${CLI_PATH}" --home "${f.home}" snapshot export v --name s0 -o - --json >/dev/full`]);
    expect(full.code).toBe(1);
    expect(full.stderr).toMatch(/^clonebox: error: cannot write bundle: no space left on device, \(standard output\)$/m);

    // A full file system (a 1 MiB tmpfs, where the test may mount one): IO naming the file, no temporary left.
    const mnt = path.join(f.dir, 'small');
    await run('mkdir', [mnt]);
    const mounted = await run('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt]);
    if (mounted.code === 0) {
      try {
        const r = await f.cb.cli(['snapshot', 'export', 'v', '-o', path.join(mnt, 'v.cbx'), '--json']);
        expect(r.code).toBe(1);
        expect(parseCliError(r, true).code).toBe('IO');
        expect(r.stderr).toContain(`no space left on device, ${path.join(mnt, 'v.cbx')}`);
        expect(await readdir(mnt)).toEqual([]);
      } finally {
        await run('umount', [mnt]);
      }
    }
  });

  it('SIGINT, SIGTERM, SIGHUP and a second SIGINT leave no temporary; one left by SIGKILL is swept by the next export', async () => {
    const f = await fixture();
    const out = path.join(f.dir, 'sig.cbx');
    for (const [signals, code] of [
      [['SIGINT'], 130],
      [['SIGTERM'], 143],
      [['SIGHUP'], 129],
      [['SIGINT', 'SIGINT'], 130],
    ] as [NodeJS.Signals[], number][]) {
      const { child, exited } = await slowExport(f, out);
      for (const [i, s] of signals.entries()) {
        // A second signal sent at once would merge into the first (POSIX signals do not queue).
        if (i > 0) await new Promise((r) => setTimeout(r, 50));
        child.kill(s);
      }
      expect(await exited, signals.join(',')).toBe(code);
      expect(await temps(f.dir), signals.join(',')).toEqual([]);
      expect(await stat(out).catch(() => null)).toBeNull();
    }
    const { child, exited } = await slowExport(f, out);
    child.kill('SIGKILL');
    await exited;
    const left = await temps(f.dir);
    expect(left).toHaveLength(1);
    // The next export to that name removes it (its pid is dead), and writes the bundle.
    await f.cb.ok(['snapshot', 'export', 'v', '--name', 's0', '-o', out]);
    expect(await temps(f.dir)).toEqual([]);
    const fh = await open(out, 'r');
    await fh.close();
  });
});
