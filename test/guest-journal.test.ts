/**
 * The guest diff on a state taken while mounted: real jbd2 transactions written by debugfs
 * (`journal_open`/`journal_write`/`journal_close`: a committed transaction, a revoke in a later one,
 * an uncommitted one, a block whose copy starts with the journal magic and is escaped), checked
 * against e2fsck's own replay of the same image and through `snapshot diff --files`.
 */
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ExtFs } from '../src/guest/ext.js';
import { blockOf, brief, debugfs, GuestVm, mkfs, pwrite, writeTree } from './helpers/guest.js';
import { memSource as mem } from './helpers/mem-source.js';
import { run } from './helpers/process.js';
import { rng } from './helpers/random.js';
import { makeTempDir } from './helpers/temp.js';

const JOURNAL_MAGIC = Buffer.from('c03b3998', 'hex');

async function fileBytes(fs: ExtFs, p: string): Promise<Buffer> {
  const i = await fs.lookup(p);
  if (!i) throw new Error(`${p} not found`);
  return fs.read(i, null, 0, i.size);
}

/** Before and after images: the after one has three transactions in its journal, left to replay. */
async function mountedState(type: 'ext3' | 'ext4', bs: number, open: string) {
  const root = await makeTempDir(`clonebox-journal-${type}-`);
  const r = rng(16);
  await writeTree(path.join(root, 'src'), {
    etc: { hostname: 'alpha\n' },
    srv: { keep: 'k', 'magic.bin': r.bytes(bs), notes: 'old notes\n' },
  });
  const a = path.join(root, 'a.raw');
  const b = path.join(root, 'b.raw');
  await mkfs(a, type, '16M', path.join(root, 'src'), bs);
  await copyFile(a, b);
  const host = await blockOf(a, '/etc/hostname', 0);
  const keep = await blockOf(a, '/srv/keep', 0);
  const magic = await blockOf(a, '/srv/magic.bin', 0);
  const notes = await blockOf(a, '/srv/notes', 0);
  const block = (head: Buffer) => Buffer.concat([head, Buffer.alloc(bs - head.length)]);
  const magicCopy = Buffer.concat([JOURNAL_MAGIC, r.bytes(bs - 4)]);
  const t1 = path.join(root, 't1');
  const t3 = path.join(root, 't3');
  await writeFile(t1, Buffer.concat([block(Buffer.from('omega\n')), block(Buffer.from('K')), magicCopy]));
  await writeFile(t3, block(Buffer.from('new notes\n')));
  await debugfs(b, [open, `jw -b ${host},${keep},${magic} ${t1}`, `jw -r ${keep} /dev/null`, `jw -b ${notes} -c ${t3}`, 'jc']);
  return { root, a, b, blocks: { host, keep, magic, notes }, magicCopy };
}

describe('guest diff: the journal of a state taken while mounted is replayed', () => {
  for (const [type, bs, open] of [
    ['ext4', 4096, 'jo'],
    ['ext4', 4096, 'jo -c'],
    ['ext3', 1024, 'jo'],
  ] as const) {
    it(`${type}, ${bs}-byte blocks, \`${open}\`: committed blocks replayed as e2fsck does, revoked and uncommitted ones not`, async () => {
      const s = await mountedState(type, bs, open);
      const raw = await readFile(s.b);
      const fs = await ExtFs.open(mem(raw));
      expect(fs.journal).toMatchObject({ replayed: true, transactions: 2, warnings: [] });
      expect(fs.journal.blocks).toEqual([s.blocks.host, s.blocks.magic].sort((x, y) => x - y));
      expect((await fileBytes(fs, '/etc/hostname')).toString()).toBe('omega\n');
      expect(await fileBytes(fs, '/srv/magic.bin')).toEqual(s.magicCopy); // the escaped magic restored
      expect((await fileBytes(fs, '/srv/keep')).toString()).toBe('k'); // revoked by the second transaction
      expect((await fileBytes(fs, '/srv/notes')).toString()).toBe('old notes\n'); // never committed

      // e2fsck replays the same journal on a copy: the blocks read the same.
      const fixed = path.join(s.root, 'fixed.raw');
      await copyFile(s.b, fixed);
      const fsck = await run('e2fsck', ['-fy', fixed]);
      expect(fsck.code, fsck.stdout + fsck.stderr).toBeLessThan(4);
      const ref = await ExtFs.open(mem(await readFile(fixed)));
      expect(ref.needsRecovery).toBe(false);
      for (const blk of Object.values(s.blocks)) expect(await fs.readBlock(blk)).toEqual(await ref.readBlock(blk));

      // Through the CLI: the changes only in the journal are seen, and nothing else.
      const vm = await GuestVm.create(s.root, s.a, s.b);
      const [p] = await vm.partitions();
      expect(p).toMatchObject({ status: 'compared', warnings: [] });
      expect(brief(p!.files).sort()).toEqual(['M /etc/hostname (file) [content]', 'M /srv/magic.bin (file) [content]']);
    });
  }

  it('a journal that cannot be read is named in a warning and the disk is compared as it is', async () => {
    const s = await mountedState('ext4', 4096, 'jo');
    const jsb = await blockOf(s.b, '<8>', 0);
    const start = Buffer.alloc(4);
    start.writeUInt32BE(1 << 30);
    await pwrite(s.b, jsb * 4096 + 28, start); // the log's start, far past its end
    const vm = await GuestVm.create(s.root, s.a, s.b);
    const [p] = await vm.partitions();
    expect(p!.status).toBe('compared');
    expect(p!.warnings).toEqual([
      expect.stringMatching(
        /^the after state: its journal to replay could not be read \(ext journal: log .* does not hold its start 1073741824\): changes still in the journal are not seen$/,
      ),
    ]);
    expect(p!.files).toEqual([]);
  });
});
