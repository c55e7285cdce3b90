/**
 * `clonebox vm create|add|list|show|remove` through the real CLI (image driver): JSON shapes, exit codes,
 * refusals, confirmation without a TTY, and the choice of home (--home vs CLONEBOX_HOME).
 */
import { mkdir, readdir, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseCliError, parseJsonOutput, runCli } from './helpers/cli.js';
import type { RunResult } from './helpers/process.js';
import { qemuCheck, qemuImg } from './helpers/qemu.js';
import { makeTempDir } from './helpers/temp.js';

const M = 1024 * 1024;

interface VmShow {
  name: string;
  driver: string;
  current: string | null;
  snapshot_count: number;
  disks: Array<{ target: string; path: string; virtual_size: number }>;
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** A fresh home and a helper running the CLI in it. */
async function setup(): Promise<{ home: string; dir: string; cli: (...args: string[]) => Promise<RunResult> }> {
  const dir = await makeTempDir('clonebox-vmcli-');
  const home = path.join(dir, 'home');
  return { home, dir, cli: (...args) => runCli(args, { home }) };
}

function expectShowShape(v: VmShow): void {
  expect(Object.keys(v).sort()).toEqual(['current', 'disks', 'driver', 'name', 'snapshot_count']);
  for (const d of v.disks) expect(Object.keys(d).sort()).toEqual(['path', 'target', 'virtual_size']);
}

/** Asserts a failed command: exit code, error format, and (with --json) the code. */
function expectError(r: RunResult, exit: 1 | 2, code?: string): void {
  expect(r.code, `stderr: ${r.stderr}\nstdout: ${r.stdout}`).toBe(exit);
  const json = r.stdout.trim().startsWith('{');
  const e = parseCliError(r, json);
  if (code !== undefined) {
    expect(json, 'the command was run with --json').toBe(true);
    expect(e.code).toBe(code);
  }
}

describe('vm create', () => {
  it('creates a registered qcow2 disk that passes qemu-img check; vm show --json has the contract shape', async () => {
    const { home, cli } = await setup();
    const r = await cli('vm', 'create', 'web', '--size', '1G', '--json');
    expect(r.code, r.stderr).toBe(0);
    const created = parseJsonOutput<VmShow>(r);
    expectShowShape(created);
    const disk = path.join(home, 'disks', 'web', 'web.qcow2');
    expect(created).toEqual({
      name: 'web',
      driver: 'image',
      current: null,
      snapshot_count: 0,
      disks: [{ target: 'vda', path: disk, virtual_size: 1024 * M }],
    });
    const chk = await qemuCheck(disk);
    expect(chk.code, chk.stdout + chk.stderr).toBe(0);
    expect(chk.result.leaks ?? 0).toBe(0);
    const info = JSON.parse((await qemuImg(['info', '--output=json', disk])).stdout);
    expect(info['virtual-size']).toBe(1024 * M);
    expect(info['cluster-size']).toBe(65536);
    const show = await cli('vm', 'show', 'web', '--json');
    expect(show.code, show.stderr).toBe(0);
    const v = parseJsonOutput<VmShow>(show);
    expectShowShape(v);
    expect(v).toEqual(created);
    // Human output works too, and stdout carries no JSON then.
    const human = await cli('vm', 'show', 'web');
    expect(human.code).toBe(0);
    expect(human.stdout).toContain('web');
    expect(() => JSON.parse(human.stdout)).toThrow();
  });

  it('--dir, --cluster-size and sizes with suffixes (rounded up to 512 bytes as qemu-img does)', async () => {
    const { dir, cli } = await setup();
    const disks = path.join(dir, 'mydisks');
    for (const [name, size, cs, want] of [
      ['a', '20M', '512', 20 * M],
      ['b', '3G', '2M', 3 * 1024 * M],
      ['c', '1000', '4K', 1024],
    ] as const) {
      const r = await cli('vm', 'create', name, '--size', size, '--cluster-size', cs, '--dir', disks, '--json');
      expect(r.code, r.stderr).toBe(0);
      const v = parseJsonOutput<VmShow>(r);
      expect(v.disks[0]!.path).toBe(path.join(disks, `${name}.qcow2`));
      expect(v.disks[0]!.virtual_size).toBe(want);
      const chk = await qemuCheck(v.disks[0]!.path);
      expect(chk.code, chk.stdout).toBe(0);
      const info = JSON.parse((await qemuImg(['info', '--output=json', v.disks[0]!.path])).stdout);
      expect(info['virtual-size']).toBe(want);
      expect(info['cluster-size']).toBe(cs === '512' ? 512 : cs === '2M' ? 2 * M : 4096);
    }
    expect((await readdir(disks)).sort()).toEqual(['a.qcow2', 'b.qcow2', 'c.qcow2']);
  });

  it('refuses a duplicate name (exit 1) and leaves the first VM intact', async () => {
    const { cli } = await setup();
    expect((await cli('vm', 'create', 'dup', '--size', '10M')).code).toBe(0);
    const before = parseJsonOutput<VmShow>(await cli('vm', 'show', 'dup', '--json'));
    expectError(await cli('vm', 'create', 'dup', '--size', '20M', '--json'), 1, 'VM_EXISTS');
    expectError(await cli('vm', 'create', 'dup', '--size', '20M'), 1);
    expect(parseJsonOutput<VmShow>(await cli('vm', 'show', 'dup', '--json'))).toEqual(before);
  });

  it('invalid names, sizes and cluster sizes are usage errors (exit 2) and create nothing', async () => {
    const { home, cli } = await setup();
    for (const bad of ['.hidden', 'a/b', 'a b', 'x'.repeat(129), '_under', 'ü', '', '..']) {
      expectError(await cli('vm', 'create', bad, '--size', '10M', '--json'), 2, 'BAD_NAME');
    }
    expect((await cli('vm', 'create', 'x'.repeat(128), '--size', '1M')).code).toBe(0); // the longest valid name
    expectError(await cli('vm', 'create', 'ok', '--size', 'lots', '--json'), 2, 'BAD_SIZE');
    expectError(await cli('vm', 'create', 'ok', '--size', '10M', '--cluster-size', '3000', '--json'), 2, 'BAD_SIZE');
    expectError(await cli('vm', 'create', 'ok', '--size', '10M', '--cluster-size', '4M', '--json'), 2, 'BAD_SIZE');
    expectError(await cli('vm', 'create', 'ok', '--json'), 2); // --size is required
    const list = parseJsonOutput<VmShow[]>(await cli('vm', 'list', '--json'));
    expect(list.map((v) => v.name)).toEqual(['x'.repeat(128)]);
    expect(await exists(path.join(home, 'disks', 'ok'))).toBe(false);
  });
});

describe('vm add', () => {
  async function disk(dir: string, name: string, size = '16M'): Promise<string> {
    const f = path.join(dir, name);
    await qemuImg(['create', '-f', 'qcow2', f, size]);
    return f;
  }

  it('registers existing disks in order as vda, vdb, vdc', async () => {
    const { dir, cli } = await setup();
    const a = await disk(dir, 'a.qcow2', '16M');
    const b = await disk(dir, 'b.qcow2', '32M');
    const c = await disk(dir, 'c.qcow2', '1G');
    const r = await cli('vm', 'add', 'db', '--disk', a, '--disk', b, '--disk', c, '--json');
    expect(r.code, r.stderr).toBe(0);
    // vm add adds each disk's backing chain (here: the disk alone) to the vm show object.
    type Added = Omit<VmShow, 'disks'> & { disks: (VmShow['disks'][number] & { backing_chain?: unknown[] })[] };
    const added = parseJsonOutput<Added>(r);
    expect(added.disks.map((d) => d.backing_chain)).toEqual(
      [a, b, c].map((p) => [{ path: p, format: 'qcow2', backing_file: null, backing_format: null, allowed_because: null, refused: null }]),
    );
    const v = { ...added, disks: added.disks.map(({ backing_chain: _, ...d }) => d) };
    expectShowShape(v);
    expect(v).toEqual({
      name: 'db',
      driver: 'image',
      current: null,
      snapshot_count: 0,
      disks: [
        { target: 'vda', path: a, virtual_size: 16 * M },
        { target: 'vdb', path: b, virtual_size: 32 * M },
        { target: 'vdc', path: c, virtual_size: 1024 * M },
      ],
    });
    expect(parseJsonOutput<VmShow>(await cli('vm', 'show', 'db', '--json'))).toEqual(v);
  });

  it('relative --disk paths are stored absolute', async () => {
    const { dir, home } = await setup();
    await disk(dir, 'rel.qcow2');
    const r = await runCli(['vm', 'add', 'rel', '--disk', 'rel.qcow2', '--json'], { home, cwd: dir });
    expect(r.code, r.stderr).toBe(0);
    expect(parseJsonOutput<VmShow>(r).disks[0]!.path).toBe(path.join(dir, 'rel.qcow2'));
  });

  it('refuses a duplicate VM name, a non-qcow2 file, a missing file, the same disk twice, a disk of another VM', async () => {
    const { dir, cli } = await setup();
    const a = await disk(dir, 'a.qcow2');
    const b = await disk(dir, 'b.qcow2');
    expect((await cli('vm', 'add', 'first', '--disk', a)).code).toBe(0);
    expectError(await cli('vm', 'add', 'first', '--disk', b, '--json'), 1, 'VM_EXISTS');
    const raw = path.join(dir, 'disk.raw');
    await writeFile(raw, Buffer.alloc(1 * M));
    expectError(await cli('vm', 'add', 'rawvm', '--disk', raw, '--json'), 1, 'NOT_QCOW2');
    expectError(await cli('vm', 'add', 'missing', '--disk', path.join(dir, 'nope.qcow2'), '--json'), 1, 'IO');
    expectError(await cli('vm', 'add', 'twice', '--disk', b, '--disk', b, '--json'), 2, 'USAGE');
    expectError(await cli('vm', 'add', 'second', '--disk', a, '--json'), 1, 'DISK_IN_USE');
    // The same file under another name (a symlink) is still the same disk.
    await symlink(a, path.join(dir, 'a-link.qcow2'));
    expectError(await cli('vm', 'add', 'third', '--disk', path.join(dir, 'a-link.qcow2'), '--json'), 1, 'DISK_IN_USE');
    // A good disk followed by a bad one registers nothing.
    expectError(await cli('vm', 'add', 'partial', '--disk', b, '--disk', raw, '--json'), 1, 'NOT_QCOW2');
    expectError(await cli('vm', 'add', 'nodisk', '--json'), 2, 'USAGE');
    const list = parseJsonOutput<VmShow[]>(await cli('vm', 'list', '--json'));
    expect(list.map((v) => v.name)).toEqual(['first']);
  });

  it('a disk made by vm create in a directory reached through a symlink cannot be registered again', async () => {
    const { dir, cli } = await setup();
    await mkdir(path.join(dir, 'real'));
    await symlink(path.join(dir, 'real'), path.join(dir, 'via-link'));
    const r = await cli('vm', 'create', 'orig', '--size', '10M', '--dir', path.join(dir, 'via-link'), '--json');
    expect(r.code, r.stderr).toBe(0);
    expectError(await cli('vm', 'add', 'copycat', '--disk', path.join(dir, 'real', 'orig.qcow2'), '--json'), 1, 'DISK_IN_USE');
    expectError(await cli('vm', 'add', 'copycat', '--disk', path.join(dir, 'via-link', 'orig.qcow2'), '--json'), 1, 'DISK_IN_USE');
  });
});

describe('vm list / show / remove', () => {
  it('vm list --json lists every VM (sorted) with the show shape; an empty home lists nothing', async () => {
    const { cli } = await setup();
    const empty = await cli('vm', 'list', '--json');
    expect(empty.code, empty.stderr).toBe(0);
    expect(parseJsonOutput(empty)).toEqual([]);
    for (const n of ['zeta', 'alpha', 'mid-1']) expect((await cli('vm', 'create', n, '--size', '2M')).code).toBe(0);
    const r = await cli('vm', 'list', '--json');
    expect(r.code).toBe(0);
    const list = parseJsonOutput<VmShow[]>(r);
    expect(list.map((v) => v.name)).toEqual(['alpha', 'mid-1', 'zeta']);
    for (const v of list) {
      expectShowShape(v);
      expect(v).toEqual(parseJsonOutput<VmShow>(await cli('vm', 'show', v.name, '--json')));
    }
    const human = await cli('vm', 'list');
    expect(human.code).toBe(0);
    for (const n of ['zeta', 'alpha', 'mid-1']) expect(human.stdout).toContain(n);
  });

  it('vm show of an unknown VM is VM_NOT_FOUND (exit 1); an invalid name is exit 2', async () => {
    const { cli } = await setup();
    expectError(await cli('vm', 'show', 'ghost', '--json'), 1, 'VM_NOT_FOUND');
    expectError(await cli('vm', 'show', 'ghost'), 1);
    expectError(await cli('vm', 'show', 'bad/name', '--json'), 2, 'BAD_NAME');
    expectError(await cli('vm', 'remove', 'ghost', '--json'), 1, 'VM_NOT_FOUND');
  });

  it('vm remove --delete-files without --yes and without a TTY refuses (exit 1) and deletes nothing', async () => {
    const { cli } = await setup();
    const v = parseJsonOutput<VmShow>(await cli('vm', 'create', 'keep', '--size', '4M', '--json'));
    const r = await cli('vm', 'remove', 'keep', '--delete-files', '--json');
    expectError(r, 1, 'NEEDS_CONFIRMATION');
    expect(await exists(v.disks[0]!.path)).toBe(true);
    expect(parseJsonOutput<VmShow>(await cli('vm', 'show', 'keep', '--json'))).toEqual(v);
    // Answering on a pipe is not a terminal either: still refused.
    const piped = await runCli(['vm', 'remove', 'keep', '--delete-files'], {
      home: path.dirname(path.dirname(path.dirname(path.dirname(v.disks[0]!.path)))),
      input: 'y\n',
    });
    expectError(piped, 1);
    expect(await exists(v.disks[0]!.path)).toBe(true);
  });

  it('vm remove --yes --delete-files unregisters the VM and deletes its disks', async () => {
    const { dir, cli } = await setup();
    const v = parseJsonOutput<VmShow>(await cli('vm', 'create', 'gone', '--size', '4M', '--json'));
    const a = path.join(dir, 'extra-a.qcow2');
    const b = path.join(dir, 'extra-b.qcow2');
    await qemuImg(['create', '-f', 'qcow2', a, '1M']);
    await qemuImg(['create', '-f', 'qcow2', b, '1M']);
    expect((await cli('vm', 'add', 'gone2', '--disk', a, '--disk', b)).code).toBe(0);
    const r = await cli('vm', 'remove', 'gone', '--yes', '--delete-files', '--json');
    expect(r.code, r.stderr).toBe(0);
    parseJsonOutput(r);
    expect(await exists(v.disks[0]!.path)).toBe(false);
    expectError(await cli('vm', 'show', 'gone', '--json'), 1, 'VM_NOT_FOUND');
    const r2 = await cli('vm', 'remove', 'gone2', '--delete-files', '--yes');
    expect(r2.code, r2.stderr).toBe(0);
    expect(await exists(a)).toBe(false);
    expect(await exists(b)).toBe(false);
    expect(parseJsonOutput(await cli('vm', 'list', '--json'))).toEqual([]);
  });

  it('vm remove without --delete-files keeps the files; the disk can then be registered again', async () => {
    const { cli } = await setup();
    const v = parseJsonOutput<VmShow>(await cli('vm', 'create', 'kept', '--size', '4M', '--json'));
    const r = await cli('vm', 'remove', 'kept');
    expect(r.code, r.stderr).toBe(0);
    expect(await exists(v.disks[0]!.path)).toBe(true);
    expect(parseJsonOutput(await cli('vm', 'list', '--json'))).toEqual([]);
    const again = await cli('vm', 'add', 'kept-again', '--disk', v.disks[0]!.path, '--json');
    expect(again.code, again.stderr).toBe(0);
    expect(parseJsonOutput<VmShow>(again).disks[0]!.path).toBe(v.disks[0]!.path);
  });
});

describe('home selection and usage errors', () => {
  it('--home wins over CLONEBOX_HOME; CLONEBOX_HOME is used without --home; two homes are independent', async () => {
    const dir = await makeTempDir('clonebox-vmcli-');
    const envHome = path.join(dir, 'env-home');
    const flagHome = path.join(dir, 'flag-home');
    const fakeHome = path.join(dir, 'user');
    await mkdir(fakeHome);
    const env = { HOME: fakeHome };
    // Global option before the command, and after it.
    expect((await runCli(['--home', flagHome, 'vm', 'create', 'one', '--size', '1M'], { home: envHome, env })).code).toBe(0);
    expect((await runCli(['vm', 'create', 'two', '--size', '1M', '--home', flagHome], { home: envHome, env })).code).toBe(0);
    expect((await runCli(['vm', 'create', 'three', '--size', '1M'], { home: envHome, env })).code).toBe(0);
    const inFlag = parseJsonOutput<VmShow[]>(await runCli(['vm', 'list', '--json', '--home', flagHome], { home: null, env }));
    const inEnv = parseJsonOutput<VmShow[]>(await runCli(['vm', 'list', '--json'], { home: envHome, env }));
    expect(inFlag.map((v) => v.name)).toEqual(['one', 'two']);
    expect(inEnv.map((v) => v.name)).toEqual(['three']);
    expect(inFlag[0]!.disks[0]!.path.startsWith(flagHome + path.sep)).toBe(true);
    expect(inEnv[0]!.disks[0]!.path.startsWith(envHome + path.sep)).toBe(true);
    // Neither: the default is ~/.clonebox (HOME points at a scratch directory here).
    const dflt = await runCli(['vm', 'create', 'four', '--size', '1M', '--json'], { home: null, env });
    expect(dflt.code, dflt.stderr).toBe(0);
    expect(parseJsonOutput<VmShow>(dflt).disks[0]!.path.startsWith(path.join(fakeHome, '.clonebox') + path.sep)).toBe(true);
    expect(parseJsonOutput<VmShow[]>(await runCli(['vm', 'list', '--json'], { home: null, env })).map((v) => v.name)).toEqual(['four']);
  });

  it('unknown flags and commands are usage errors (exit 2) in the contract format', async () => {
    const { cli } = await setup();
    for (const args of [
      ['vm', 'create', 'x', '--size', '1M', '--bogus'],
      ['vm', 'list', '--frobnicate', '--json'],
      ['vm', 'frobnicate'],
      ['--no-such-global', 'vm', 'list'],
      ['vm', 'show'],
    ]) {
      const r = await cli(...args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      const e = parseCliError(r, args.includes('--json'));
      if (args.includes('--json')) expect(e.code).toBe('USAGE');
    }
    expect(parseJsonOutput(await cli('vm', 'list', '--json'))).toEqual([]);
  });
});
