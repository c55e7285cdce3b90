/**
 * Hostile guest filesystems: a real ext4 image (mke2fs -d) whose after state is damaged, by seeded
 * random mutations of its metadata (superblock, group descriptors, inode table, directory and extent
 * blocks) and by crafted cases (a directory loop, a `..` loop, a huge extent count, an extent past the
 * end, a file claiming an enormous size). `snapshot diff --files --packages --etc` must answer within
 * a time limit and a memory bound, exit 0 with the damage named on the partition (or compare what is
 * readable), never crash, and write nothing. Replay a failure with CLONEBOX_GUEST_SEED=<seed>.
 */
import { createHash } from 'node:crypto';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { DiffResult } from '../src/index.js';
import { CLI_PATH } from './helpers/cli.js';
import { blockOf, GuestVm, mkfs, pwrite, writeTree } from './helpers/guest.js';
import { run, runChecked } from './helpers/process.js';
import { rng, seedFromEnv } from './helpers/random.js';
import { makeTempDir } from './helpers/temp.js';

const SEED = seedFromEnv('CLONEBOX_GUEST_SEED', 1515);
const RANDOM_CASES = 16;
const TIME_LIMIT_MS = 20_000;
/** Peak RSS of the whole CLI process. */
const RSS_LIMIT_KIB = 256 * 1024;
const BS = 4096;
/** Preloaded into the CLI: prints its peak RSS (KiB) on stderr at exit. */
const REPORT_MAXRSS = 'data:text/javascript,process.on("exit",()=>process.stderr.write("maxrss="+process.resourceUsage().maxRSS+"\\n"))';

let root: string;
let base: string;
let vm: GuestVm;
/** Blocks worth damaging, by what they hold. */
const targets: { what: string; offset: number; length: number }[] = [];

async function inodeOffset(img: string, file: string): Promise<number> {
  const r = await runChecked('debugfs', ['-R', `imap ${file}`, img]);
  const m = /located at block (\d+), offset (0x[0-9a-f]+)/.exec(r.stdout);
  if (!m) throw new Error(`imap ${file}: ${r.stdout}`);
  return Number(m[1]) * BS + Number(m[2]);
}

async function sha(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
}

/** Runs the diff on the damaged state; checks the limits and that nothing was written. */
async function diffDamaged(damaged: string): Promise<DiffResult> {
  await vm.setCurrent(damaged);
  const layers = [vm.disk, path.join(root, 'guest@a.qcow2')];
  const before = await Promise.all(layers.map(sha));
  const r = await run(
    process.execPath,
    ['--import', REPORT_MAXRSS, CLI_PATH, 'snapshot', 'diff', 'guest', '--from', 'a', '--to', 'current', '--files', '--packages', '--etc', '--json'],
    { env: { ...process.env, CLONEBOX_HOME: vm.home }, timeoutMs: TIME_LIMIT_MS },
  );
  expect(r.signal, `timed out or killed: ${r.stderr}`).toBeNull();
  expect(r.code, r.stderr).toBe(0);
  const rss = Number(/maxrss=(\d+)/.exec(r.stderr)?.[1]);
  expect(rss, 'peak RSS (KiB)').toBeLessThan(RSS_LIMIT_KIB);
  expect(await Promise.all(layers.map(sha))).toEqual(before);
  return JSON.parse(r.stdout) as DiffResult;
}

beforeAll(async () => {
  root = await makeTempDir('clonebox-guest-hostile-');
  const r = rng(7);
  const tree: Record<string, Record<string, string | Buffer>> = {};
  for (let d = 0; d < 8; d++) {
    tree[`d${d}`] = {};
    for (let f = 0; f < 40; f++) tree[`d${d}`]![`f${f}`] = f % 10 === 0 ? r.bytes(300 * 1024) : `file ${d}/${f}\n`;
  }
  await writeTree(path.join(root, 'src'), {
    ...tree,
    etc: { 'a.conf': 'x = 1\n' },
    var: { lib: { dpkg: { status: 'Package: a\nStatus: install ok installed\nVersion: 1\n' } } },
  });
  base = path.join(root, 'base.raw');
  await mkfs(base, 'ext4', '32M', path.join(root, 'src'));
  // Slight changes in the after state, so that every structure below is on the diff's path.
  const after = path.join(root, 'after.raw');
  await copyFile(base, after);
  await writeFile(path.join(root, 'n'), 'changed\n');
  const { debugfs } = await import('./helpers/guest.js');
  await debugfs(after, ['rm /d1/f1', `write ${path.join(root, 'n')} /d1/f1`, 'sif /d2/f0 mode 0100600', `write ${path.join(root, 'n')} /d3/new`]);
  base = after; // the damage is applied on top of these changes
  vm = await GuestVm.create(root, path.join(root, 'base.raw'), after);
  targets.push({ what: 'superblock', offset: 1024, length: 1024 });
  targets.push({ what: 'group descriptors', offset: BS, length: BS });
  targets.push({ what: 'inode table (d1/f1)', offset: (await inodeOffset(after, '/d1/f1')) & ~(BS - 1), length: BS });
  targets.push({ what: 'directory d1', offset: (await blockOf(after, '/d1', 0)) * BS, length: BS });
  targets.push({ what: 'directory d3', offset: (await blockOf(after, '/d3', 0)) * BS, length: BS });
  targets.push({ what: 'root directory', offset: (await blockOf(after, '/', 0)) * BS, length: BS });
  targets.push({ what: 'inode of a large file', offset: await inodeOffset(after, '/d1/f0'), length: 256 });
}, 120_000);

describe('hostile ext4 after-states', () => {
  it(`seeded mutations of metadata blocks (seed ${SEED}) never crash, hang or exceed the memory bound`, async () => {
    const r = rng(SEED);
    for (let k = 0; k < RANDOM_CASES; k++) {
      const t = r.pick(targets);
      const img = path.join(root, `m${k}.raw`);
      await copyFile(base, img);
      const buf = await readFile(img);
      const flips = r.int(1, 16);
      for (let n = 0; n < flips; n++) buf[t.offset + r.int(0, t.length)] = r.u32() & 0xff;
      await writeFile(img, buf);
      const d = await diffDamaged(img).catch((err: Error) => {
        throw new Error(`seed ${SEED}, case ${k} (${flips} bytes of ${t.what}): ${err.message}`);
      });
      for (const p of d.disks[0]!.guest!.partitions) if (p.status === 'error') expect(p.message).toMatch(/^partition \d+: .+; files not compared$/);
    }
  }, 600_000);

  it(`seeded mutations of a journal left to replay (seed ${SEED}) never crash, hang or exceed the memory bound`, async () => {
    // The after state taken while mounted: two committed transactions (one revoking a block of the
    // other) wait in the journal; the damage goes to its superblock, descriptor, revoke and commit blocks.
    const mounted = path.join(root, 'mounted.raw');
    await copyFile(base, mounted);
    const x = await blockOf(mounted, '/d4/f3', 0);
    const y = await blockOf(mounted, '/d1', 0);
    await writeFile(path.join(root, 'j'), Buffer.alloc(2 * BS, 0x6a));
    const { debugfs } = await import('./helpers/guest.js');
    await debugfs(mounted, ['jo', `jw -b ${x},${y} ${path.join(root, 'j')}`, `jw -r ${y} /dev/null`, 'jc']);
    const intact = (await diffDamaged(mounted)).disks[0]!.guest!.partitions[0]!;
    expect(intact.warnings).toEqual([]);
    expect(intact.files?.find((f) => f.path === '/d4/f3')).toMatchObject({ change: 'modified', fields: ['content'] });
    const log = ['journal superblock', 'descriptor', 'data', 'data', 'commit', 'revoke', 'commit'];
    const journal: { what: string; offset: number }[] = [];
    for (const [n, what] of log.entries()) if (what !== 'data') journal.push({ what, offset: (await blockOf(mounted, '<8>', n)) * BS });
    const r = rng(SEED + 1);
    for (let k = 0; k < RANDOM_CASES; k++) {
      const t = r.pick(journal);
      const img = path.join(root, `j${k}.raw`);
      const buf = await readFile(mounted);
      const flips = r.int(1, 8);
      // Most of what matters sits in the first 64 bytes of a log block (header, counts, first tags).
      for (let n = 0; n < flips; n++) buf[t.offset + r.int(0, r.int(0, 2) === 0 ? BS : 64)] = r.u32() & 0xff;
      await writeFile(img, buf);
      const d = await diffDamaged(img).catch((err: Error) => {
        throw new Error(`seed ${SEED}, journal case ${k} (${flips} bytes of the ${t.what}): ${err.message}`);
      });
      for (const p of d.disks[0]!.guest!.partitions) if (p.status === 'error') expect(p.message).toMatch(/^partition \d+: .+; files not compared$/);
    }
  }, 600_000);

  it('a directory loop (a subdirectory entry naming the root) is walked once', async () => {
    const img = path.join(root, 'loop.raw');
    await copyFile(base, img);
    const { debugfs } = await import('./helpers/guest.js');
    // /d2/up -> inode 2 (the root), as a directory entry: a cycle for any walk that follows it
    await debugfs(img, ['cd /d2', 'link / up']);
    const d = await diffDamaged(img);
    const p = d.disks[0]!.guest!.partitions[0]!;
    expect(p.status).toBe('compared');
    expect(p.files!.map((c) => c.path)).toContain('/d2/up');
  }, 60_000);

  it('a `..` loop (a directory whose parent is its own child) is named, not followed forever', async () => {
    const img = path.join(root, 'dotdot.raw');
    await copyFile(base, img);
    const { debugfs } = await import('./helpers/guest.js');
    await debugfs(img, ['mkdir /d4/x', 'mkdir /d4/x/y']);
    // x's ".." -> y and y's ".." -> x (the second entry of each directory's first block)
    const inoOf = async (p: string) => Number(/Inode: (\d+)/.exec((await runChecked('debugfs', ['-R', `stat ${p}`, img])).stdout)![1]);
    const [x, y] = [await inoOf('/d4/x'), await inoOf('/d4/x/y')];
    const [bx, by] = [await blockOf(img, '/d4/x', 0), await blockOf(img, '/d4/x/y', 0)];
    const setDotDot = async (block: number, to: number) => {
      const v = Buffer.alloc(4);
      v.writeUInt32LE(to);
      await pwrite(img, block * BS + 12, v);
    };
    await setDotDot(bx, y);
    await setDotDot(by, x);
    const d = await diffDamaged(img);
    expect(d.disks[0]!.guest!.partitions[0]!.status).toBe('compared');
  }, 60_000);

  it('a huge extent count, an extent past the end and an enormous size are refused for that file only', async () => {
    for (const [name, patch] of [
      ['entries', (ib: Buffer) => ib.writeUInt16LE(0xffff, 2)],
      ['past end', (ib: Buffer) => ib.writeUInt32LE(0x7fffffff, 12 + 8)],
      ['depth', (ib: Buffer) => ib.writeUInt16LE(40, 6)],
    ] as const) {
      const img = path.join(root, `ext-${name.replace(' ', '')}.raw`);
      await copyFile(base, img);
      const off = await inodeOffset(img, '/d1/f1');
      const buf = await readFile(img);
      patch(buf.subarray(off + 40, off + 100));
      await writeFile(img, buf);
      const d = await diffDamaged(img);
      const p = d.disks[0]!.guest!.partitions[0]!;
      expect(p.status, name).toBe('compared');
      expect(p.warnings.join('\n'), name).toMatch(/extent/);
    }
    // i_size of 2^50 bytes on a file whose blocks changed: compared by its map, not by its size
    const img = path.join(root, 'huge.raw');
    await copyFile(base, img);
    const off = await inodeOffset(img, '/d1/f1');
    const buf = await readFile(img);
    buf.writeUInt32LE(2 ** 18, off + 108);
    await writeFile(img, buf);
    const d = await diffDamaged(img);
    expect(d.disks[0]!.guest!.partitions[0]!.files!.find((c) => c.path === '/d1/f1')).toMatchObject({ size_after: 2 ** 50 + 8 });
  }, 120_000);
});
