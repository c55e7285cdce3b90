/**
 * The index of local blocks a sync may reuse (src/sync/layermap.ts, local-blocks.index): a later scan
 * takes unchanged layers from it without opening their maps, reads a layer again when its file
 * changed, forgets layers no longer usable, and survives a damaged index. Real qcow2 layers made by
 * `snapshot create` and written with qemu-io.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Clonebox } from '../src/index.js';
import { type Home, resolveHome } from '../src/store/home.js';
import { listSnapshotRecords } from '../src/store/snapshots.js';
import { computeLayerMap, LocalBlocks } from '../src/sync/layermap.js';
import { qemuIo } from './helpers/qemu.js';
import { cleanupTempDirs, makeTempDir } from './helpers/temp.js';

const KiB = 1024;
const shaOf = (fill: number) =>
  createHash('sha256')
    .update(Buffer.alloc(64 * KiB, fill))
    .digest();

let home: Home;
let layers: Map<string, string>; // snapshot name -> its layer
const mapsDir = () => path.join(home.root, 'sync', 'maps');
const indexFile = () => path.join(mapsDir(), 'local-blocks.index');
const mapFiles = async () => (await readdir(mapsDir()).catch(() => [] as string[])).filter((n) => n.endsWith('.map'));

/** s3 stands in for a layer a pull writes during a sync: not in the scans until the last test. */
async function scan(usable: (name: string) => boolean = (n) => n !== 's3'): Promise<LocalBlocks> {
  return LocalBlocks.scan(home, (_vm, s) => usable(s.name));
}

beforeAll(async () => {
  const root = await makeTempDir('clonebox-local-index-');
  home = resolveHome(path.join(root, 'home'));
  const cb = await Clonebox.open({ home: home.root });
  try {
    await cb.vms.create('dev', { size: '8M' });
    const disk = (await cb.vms.show('dev')).disks[0]!.path;
    await qemuIo(disk, 'write -P 0x11 0 64k');
    await cb.snapshots.create('dev', { name: 's1' });
    await qemuIo(disk, 'write -P 0x22 1M 64k');
    await cb.snapshots.create('dev', { name: 's2' });
    await qemuIo(disk, 'write -P 0x44 2M 64k');
    await cb.snapshots.create('dev', { name: 's3' });
  } finally {
    await cb.close();
  }
  layers = new Map((await listSnapshotRecords(home, 'dev')).map((s) => [s.name, s.disks[0]!.path]));
}, 60_000);

afterAll(async () => {
  await cleanupTempDirs();
});

describe('the index of local blocks', () => {
  it('is written by a first scan, and a later scan reads no layer map', async () => {
    const first = await scan();
    expect(first.has(shaOf(0x11))).toBe(true);
    expect(first.has(shaOf(0x22))).toBe(true);
    await first.close();
    expect((await stat(indexFile())).mode & 0o777).toBe(0o600);
    expect(await mapFiles()).toHaveLength(2);
    // Without the per-layer maps, a scan that went past the index would compute and cache them again.
    for (const n of await mapFiles()) await rm(path.join(mapsDir(), n));
    const index = await readFile(indexFile());
    const second = await scan();
    expect(second.has(shaOf(0x11))).toBe(true);
    expect(second.has(shaOf(0x22))).toBe(true);
    expect((await second.read(shaOf(0x22)))?.equals(Buffer.alloc(64 * KiB, 0x22))).toBe(true);
    await second.close();
    expect(await mapFiles()).toEqual([]);
    expect((await readFile(indexFile())).equals(index)).toBe(true);
  });

  it('reads a layer again when its file changed', async () => {
    await qemuIo(layers.get('s2')!, 'write -P 0x33 1M 64k');
    const lb = await scan();
    expect(lb.has(shaOf(0x33))).toBe(true);
    expect(lb.has(shaOf(0x22))).toBe(false);
    expect(lb.has(shaOf(0x11))).toBe(true);
    await lb.close();
    expect(await mapFiles()).toHaveLength(1); // s2's only
  });

  it('forgets a layer no longer usable, and keeps it out of the index', async () => {
    const lb = await scan((n) => n !== 's2');
    expect(lb.has(shaOf(0x33))).toBe(false);
    expect(lb.has(shaOf(0x11))).toBe(true);
    await lb.close();
    const text = (await readFile(indexFile())).toString('latin1');
    expect(text).toContain(layers.get('s1')!);
    expect(text).not.toContain(layers.get('s2')!);
  });

  it('ignores a damaged or truncated index and writes a good one', async () => {
    const good = await readFile(indexFile());
    for (const bad of [Buffer.from('not an index'), good.subarray(0, good.length - 1), Buffer.concat([good, Buffer.alloc(1)])]) {
      await writeFile(indexFile(), bad);
      const lb = await scan();
      expect(lb.has(shaOf(0x11))).toBe(true);
      expect(lb.has(shaOf(0x33))).toBe(true);
      await lb.close();
      expect((await readFile(indexFile())).equals(bad)).toBe(false);
    }
  });

  it('holds a layer a pull added once the sync closes, so the next scan opens no map for it either', async () => {
    const lb = await scan();
    const s3 = layers.get('s3')!;
    await lb.addPulled(s3, await computeLayerMap(s3, false));
    expect(lb.has(shaOf(0x44))).toBe(true);
    await lb.close();
    for (const n of await mapFiles()) await rm(path.join(mapsDir(), n));
    const next = await scan(() => true);
    expect(next.has(shaOf(0x44))).toBe(true);
    expect((await next.read(shaOf(0x44)))?.equals(Buffer.alloc(64 * KiB, 0x44))).toBe(true);
    await next.close();
    expect(await mapFiles()).toEqual([]);
  });
});
