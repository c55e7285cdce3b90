/**
 * The archive repository's files in-process (no qemu, no CLI): config and keys, index files of many
 * chunks with lookups across several files, layer maps, push records, and the binding of each file to
 * its name, type and repository (a file renamed, copied into another repository or given another
 * type's magic is refused).
 */
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, readdir, rename } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { PushRecord } from '../src/archive/format.js';
import { PendingRows, RepoIndex } from '../src/archive/index-file.js';
import { LayerMapReader, LayerMapWriter } from '../src/archive/layers.js';
import { readAllRecords, writeRecord } from '../src/archive/records.js';
import { Repo } from '../src/archive/repo.js';
import { BLOCK_SIZE, LayerDigest } from '../src/content/digest.js';
import { rejectionCode } from './helpers/errors.js';
import { makeTempDir } from './helpers/temp.js';

const keyOf = (b: Buffer) => ({ kind: 'keyfile' as const, key: b, file: 'k' });

describe('archive repository files', () => {
  it('finds every block among several index files of many chunks, and no block it lacks', async () => {
    const root = await makeTempDir('clonebox-archive-unit-');
    const repo = await Repo.init(path.join(root, 'r'), { key: null });
    const ids: Buffer[] = [];
    const packs = ['aa'.repeat(16), 'bb'.repeat(16)];
    for (let f = 0; f < 3; f++) {
      const rows = new PendingRows();
      for (let i = 0; i < 2500; i++) {
        const id = randomBytes(32);
        ids.push(id);
        rows.add(id, { pack: packs[i % 2]!, offset: 8 + i, length: 100 + f, frame: i % 7, slot: i % 32 });
      }
      expect(await rows.write(repo)).not.toBeNull();
    }
    const ix = await RepoIndex.open(repo);
    expect(ix.count).toBe(3);
    expect(ix.rows).toBe(7500);
    for (const [n, id] of ids.entries()) {
      const loc = await ix.get(id);
      const f = Math.floor(n / 2500);
      const i = n % 2500;
      expect(loc).toEqual({ pack: packs[i % 2], offset: 8 + i, length: 100 + f, frame: i % 7, slot: i % 32 });
    }
    for (let i = 0; i < 200; i++) expect(await ix.get(randomBytes(32))).toBeNull();
    await ix.close();
  });

  it('round-trips a layer map and binds every file to its repository, name and type', async () => {
    const root = await makeTempDir('clonebox-archive-unit-');
    const key = randomBytes(32);
    const repo = await Repo.init(path.join(root, 'r'), { key: keyOf(Buffer.from(key)) });
    // A map with a zero extent, a run split over chunks (more than a chunk's worth of ids), an unaligned start.
    const w = await LayerMapWriter.create(repo);
    const vs = 8 * 1024 * 1024 * 1024;
    const d = new LayerDigest(vs, 4096);
    const want: { offset: number; length: number; id: Buffer }[] = [];
    await w.addZero(0, 4096);
    d.addZero(0, 4096);
    let o = 4096;
    for (let i = 0; i < 40_000; i++) {
      const end = o - (o % BLOCK_SIZE) + BLOCK_SIZE;
      const id = randomBytes(32);
      want.push({ offset: o, length: end - o, id });
      await w.addBlock(o, end - o, id);
      d.addBlock(o, end - o, randomBytes(32));
      o = end;
    }
    const digest = d.digest();
    const { name, stored } = await w.finish({
      virtual_size: vs,
      cluster_size: 4096,
      digest: digest.toString('hex'),
      data_bytes: d.dataBytes,
      zero_bytes: d.zeroBytes,
      blocks: d.blocks,
    });
    expect(stored).toBe(true);
    const again = await Repo.open(repo.dir, keyOf(Buffer.from(key)));
    const r = await LayerMapReader.open(again, name);
    const got: { offset: number; length: number; id: Buffer }[] = [];
    for await (const p of r.pieces()) {
      if (p.kind === 'zero') expect(p).toEqual({ kind: 'zero', offset: 0, length: 4096 });
      else got.push({ offset: p.offset, length: p.length, id: Buffer.from(p.id) });
    }
    await r.close();
    // Compared as one string each: a deep equality of 40 000 objects with buffers took most of the test's time.
    const flat = (xs: { offset: number; length: number; id: Buffer }[]) => xs.map((x) => `${x.offset}+${x.length}:${x.id.toString('hex')}`).join('\n');
    expect(got.length).toBe(want.length);
    expect(flat(got) === flat(want)).toBe(true);
    expect(r.trailer.chunks).toBeGreaterThan(1);

    // A push record, read back.
    const rec: PushRecord = {
      format: 'clonebox-archive-snapshots',
      version: 1,
      id: 'cd'.repeat(16),
      created_at: '2026-12-02T10:00:00.000Z',
      vm: 'web',
      source: 'push',
      host: 'h',
      current: 's1',
      snapshots: [
        {
          name: 's1',
          parent: null,
          type: 'disk',
          created_at: '2026-12-02T09:00:00.000Z',
          description: null,
          tags: ['a'],
          auto_created: false,
          auto_policy: null,
          expires_at: null,
          content_id: 'ef'.repeat(32),
          disks: [{ target: 'vda', layer: name, digest: digest.toString('hex'), virtual_size: vs, cluster_size: 4096, data_bytes: d.dataBytes }],
        },
      ],
      stats: { read_bytes: 1, new_blocks: 2, new_raw_bytes: 3, new_stored_bytes: 4, pack_bytes: 5 },
    };
    await writeRecord(again, rec);
    expect(await readAllRecords(again)).toEqual([rec]);

    // A record renamed is not that record; a layer map under another name is not that layer.
    const snaps = again.snapshotsDir;
    await rename(path.join(snaps, rec.id), path.join(snaps, '12'.repeat(16)));
    expect(await rejectionCode(readAllRecords(again))).toBe('ARCHIVE_CORRUPT');
    await rename(path.join(snaps, '12'.repeat(16)), path.join(snaps, rec.id));
    const other = 'ab'.repeat(32);
    await mkdir(again.layerDir(other), { recursive: true });
    await copyFile(again.layerPath(name), again.layerPath(other));
    expect(await rejectionCode(LayerMapReader.open(again, other))).toBe('ARCHIVE_CORRUPT');

    // The same files copied into another repository with the same key are refused there.
    const repo2 = await Repo.init(path.join(root, 'r2'), { key: keyOf(Buffer.from(key)) });
    await copyFile(path.join(snaps, rec.id), path.join(repo2.snapshotsDir, rec.id));
    expect(await rejectionCode(readAllRecords(repo2))).toBe('ARCHIVE_CORRUPT');

    // Keys: none, another, and a passphrase for a key-file repository.
    expect(await rejectionCode(Repo.open(repo.dir, null))).toBe('KEY_REQUIRED');
    expect(await rejectionCode(Repo.open(repo.dir, keyOf(randomBytes(32))))).toBe('WRONG_KEY');
    expect(await rejectionCode(Repo.open(repo.dir, { kind: 'passphrase', passphrase: Buffer.from('x'.repeat(12)), file: 'p' }))).toBe('WRONG_KEY');
    expect(await rejectionCode(Repo.open(path.join(root, 'nothing'), null))).toBe('ARCHIVE_NOT_FOUND');
    expect(await rejectionCode(Repo.init(repo.dir, { key: null }))).toBe('ARCHIVE_EXISTS');
    expect((await readdir(repo.dir)).sort()).toEqual(['config', 'index', 'layers', 'locks', 'packs', 'snapshots']);
  });
});
