/**
 * Guest disks for the guest-aware diff tests, built with the real e2fsprogs and util-linux tools:
 * `mke2fs -d DIR` populates a filesystem from a directory (no root needed), `debugfs -w` makes the
 * changes, `sfdisk` writes partition tables; `GuestVm` loads the before state as a clonebox VM with
 * snapshot `a` and the after state as its current disk (`qemu-img convert -B`: only the clusters that
 * differ from the snapshot are written to the overlay, as a guest's writes would be).
 */
import { mkdir, open, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { DiffResult, GuestFileChange, GuestPartitionDiff } from '../../src/index.js';
import { CliHome } from './cli.js';
import { run, runChecked } from './process.js';
import { qemuImg } from './qemu.js';

/** A directory tree: a string or Buffer is a file's content, an object a subdirectory. */
export interface Tree {
  [name: string]: string | Buffer | Tree;
}

export async function writeTree(dir: string, tree: Tree): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const [name, v] of Object.entries(tree)) {
    const p = path.join(dir, name);
    if (typeof v === 'string' || Buffer.isBuffer(v)) await writeFile(p, v);
    else await writeTree(p, v);
  }
}

/** `mke2fs -t TYPE -b BLOCK -d SRC OUT SIZE` (a new file). */
export async function mkfs(out: string, type: 'ext2' | 'ext3' | 'ext4', size: string, src: string, blockSize = 4096, extra: string[] = []): Promise<void> {
  await rm(out, { force: true });
  await runChecked('mke2fs', ['-q', '-F', '-t', type, '-b', String(blockSize), ...extra, '-d', src, out, size]);
}

/** Runs debugfs commands read-write on an image; any complaint on stderr (beyond its banner) fails. */
export async function debugfs(image: string, cmds: readonly string[]): Promise<string> {
  const r = await run('debugfs', ['-w', '-f', '-', image], { input: `${cmds.join('\n')}\n` });
  const complaints = r.stderr.split('\n').filter((l) => l.trim() !== '' && !/^debugfs \d/.test(l));
  if (r.code !== 0 || complaints.length > 0) throw new Error(`debugfs on ${image} failed: ${complaints.join('; ')}`);
  return r.stdout;
}

/** The physical block of a file's logical block (debugfs bmap). */
export async function blockOf(image: string, file: string, logical: number): Promise<number> {
  const r = await runChecked('debugfs', ['-R', `bmap ${file} ${logical}`, image]);
  const n = Number(r.stdout.trim());
  if (!Number.isInteger(n) || n <= 0) throw new Error(`bmap ${file} ${logical}: ${r.stdout}`);
  return n;
}

/** Writes `data` at `offset` of a file (in place). */
export async function pwrite(file: string, offset: number, data: Buffer): Promise<void> {
  const fh = await open(file, 'r+');
  try {
    await fh.write(data, 0, data.length, offset);
  } finally {
    await fh.close();
  }
}

/** Copies `src` whole into `disk` at byte `offset`. */
export async function place(disk: string, offset: number, src: string): Promise<void> {
  const { readFile } = await import('node:fs/promises');
  await pwrite(disk, offset, await readFile(src));
}

/** A raw disk of `size` bytes with the partition table an sfdisk script describes. */
export async function partitionedDisk(out: string, size: number, script: string): Promise<void> {
  await rm(out, { force: true });
  const fh = await open(out, 'w');
  await fh.truncate(size);
  await fh.close();
  await runChecked('sfdisk', ['-q', out], { input: script });
}

/**
 * The same with 4096-byte logical sectors (a 4Kn disk): sfdisk takes the sector size from the device,
 * so the file is attached as a loop device with `losetup --sector-size 4096` while sfdisk writes.
 */
export async function partitionedDisk4k(out: string, size: number, script: string): Promise<void> {
  await rm(out, { force: true });
  const fh = await open(out, 'w');
  await fh.truncate(size);
  await fh.close();
  const dev = (await runChecked('losetup', ['--sector-size', '4096', '--find', '--show', out])).stdout.trim();
  try {
    // sfdisk asks the kernel to re-read the table, which a loop device without partition scanning
    // refuses; the table itself is written and flushed by then.
    const r = await run('sfdisk', ['-q', '--no-reread', dev], { input: script });
    if (r.code !== 0) throw new Error(`sfdisk on ${dev} failed: ${r.stderr.trim()}`);
  } finally {
    await runChecked('losetup', ['--detach', dev]);
  }
}

export class GuestVm extends CliHome {
  readonly disk: string;

  private constructor(
    home: string,
    readonly dir: string,
  ) {
    super(home, { timeoutMs: 120_000 });
    this.disk = path.join(dir, 'guest.qcow2');
  }

  /** VM `guest` whose snapshot `a` holds the raw image `before` and whose current disk holds `after`. */
  static async create(root: string, before: string, after: string): Promise<GuestVm> {
    const vm = new GuestVm(path.join(root, 'home'), root);
    await qemuImg(['convert', '-O', 'qcow2', before, vm.disk]);
    await vm.ok(['vm', 'add', 'guest', '--disk', vm.disk]);
    await vm.ok(['snapshot', 'create', 'guest', '--name', 'a']);
    await vm.setCurrent(after);
    return vm;
  }

  /** The current disk becomes `raw` (only clusters differing from snapshot `a` are written). */
  async setCurrent(raw: string): Promise<void> {
    const tmp = `${this.disk}.new`;
    await qemuImg(['convert', '-O', 'qcow2', '-B', path.join(this.dir, 'guest@a.qcow2'), '-F', 'qcow2', raw, tmp]);
    await rename(tmp, this.disk);
  }

  diff(flags: string[]): Promise<DiffResult> {
    return this.json<DiffResult>(['snapshot', 'diff', 'guest', '--from', 'a', '--to', 'current', ...flags]);
  }

  async partitions(flags: string[] = ['--files']): Promise<GuestPartitionDiff[]> {
    const d = await this.diff(flags);
    const g = d.disks[0]?.guest;
    if (!g) throw new Error('no guest section in the diff');
    return g.partitions;
  }
}

/** The changes in a short comparable form: `+ /path (type)`, `M /path [content]`, ... */
export function brief(changes: readonly GuestFileChange[] | undefined): string[] {
  const mark = { added: '+', removed: '-', modified: 'M', metadata: 'm', renamed: 'R' } as const;
  return (changes ?? []).map(
    (c) =>
      `${mark[c.change]} ${c.path_before !== undefined ? `${c.path_before} -> ` : ''}${c.path} (${c.type})${c.fields ? ` [${c.fields.join(',')}]` : ''}${c.entries !== undefined ? ` {${c.entries}}` : ''}`,
  );
}
