/**
 * placed.idx (src/sync/placed.ts), the index of blocks a pull wrote straight into its temporary
 * layers: what a pull records and reads back, what a failed pull salvages into the spool, and what the
 * next sync salvages after a kill from an index it must not trust: a torn tail, damaged entries,
 * offsets and lengths outside the file or above the block size, entries naming a file the temps list
 * does not name, a listed file that is gone, bytes that do not hash to the entry's block, no index.
 * Every salvaged block is checked in the spool; nothing else may be there.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readlinkSync, realpathSync } from 'node:fs';
import { appendFile, mkdir, open, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BLOCK_SIZE } from '../src/content/digest.js';
import { Qcow2Writer } from '../src/qcow2/writer.js';
import { resolveHome } from '../src/store/home.js';
import { decodeEntry, encodeEntry, PLACED_ENTRY, Placements, placedIndexPath, salvageKilled } from '../src/sync/placed.js';
import { Spool } from '../src/sync/spool.js';
import { qemuCheck } from './helpers/qemu.js';
import { makeTempDir } from './helpers/temp.js';

const K = 1024;
const M = 1024 * 1024;

const sha = (b: Buffer) => createHash('sha256').update(b).digest();

async function newHome() {
  const home = resolveHome(await makeTempDir('clonebox-placed-'));
  const spool = await Spool.open(home);
  return { home, spool, disks: path.join(home.root, 'disks') };
}

/** A fake layer: `blocks` laid out from `at`, the rest zeros. Returns each block's host offset. */
async function layerFile(file: string, blocks: Buffer[], at = 4 * K): Promise<number[]> {
  const hosts: number[] = [];
  let off = at;
  const fh = await open(file, 'w');
  for (const b of blocks) {
    await fh.write(b, 0, b.length, off);
    hosts.push(off);
    off += b.length;
  }
  await fh.close();
  return hosts;
}

async function openFds(): Promise<number> {
  return (await readdir('/proc/self/fd')).length;
}

describe('placed.idx', () => {
  it('entries round-trip; a flipped bit anywhere makes one unreadable', () => {
    const s = sha(Buffer.from('x'));
    const e = encodeEntry(s, '/a/.l.sync-1', 123 * 65536, 65536);
    expect(e.length).toBe(PLACED_ENTRY);
    const d = decodeEntry(e)!;
    expect(d.sha.equals(s)).toBe(true);
    expect([d.host, d.length]).toEqual([123 * 65536, 65536]);
    for (const bit of [0, 8 * 33, 8 * 50, 8 * 57, 8 * 62]) {
      const bad = Buffer.from(e);
      bad[bit >> 3]! ^= 1 << (bit & 7);
      expect(decodeEntry(bad), `bit ${bit}`).toBeNull();
    }
  });

  it('after a kill: salvages exactly the sound entries, whatever else the index holds', async () => {
    const { home, spool, disks } = await newHome();
    await mkdir(disks, { recursive: true });
    const layerA = path.join(disks, '.a.qcow2.sync-1-aa');
    const layerB = path.join(disks, '.b.qcow2.sync-1-bb');
    const unlisted = path.join(disks, '.c.qcow2.sync-1-cc'); // exists, holds the block, not listed
    const gone = path.join(disks, '.d.qcow2.sync-1-dd'); // listed, never written
    const blocks = Array.from({ length: 12 }, (_, i) => randomBytes(i === 11 ? 5000 : BLOCK_SIZE));
    // Blocks 0-5, then 128 KiB that hash to their entry but are larger than any block may be.
    const oversized = randomBytes(2 * BLOCK_SIZE);
    const hostsA = await layerFile(layerA, [...blocks.slice(0, 6), oversized]);
    const hostsB = await layerFile(layerB, blocks.slice(6, 9));
    const hostsC = await layerFile(unlisted, blocks.slice(9, 10));
    const sizeA = (await stat(layerA)).size;
    const entries: Buffer[] = [];
    const good: Buffer[] = [];
    for (let i = 0; i < 6; i++) {
      entries.push(encodeEntry(sha(blocks[i]!), layerA, hostsA[i]!, blocks[i]!.length));
      if (i !== 2) good.push(blocks[i]!); // block 2's entry is damaged below
    }
    for (let i = 0; i < 3; i++) {
      entries.push(encodeEntry(sha(blocks[6 + i]!), layerB, hostsB[i]!, blocks[6 + i]!.length));
      good.push(blocks[6 + i]!);
    }
    const damaged = entries[2]!;
    damaged[40]! ^= 0xff;
    const hostile = [
      encodeEntry(sha(blocks[9]!), unlisted, hostsC[0]!, BLOCK_SIZE), // a file not in the list
      encodeEntry(sha(blocks[10]!), gone, 0, BLOCK_SIZE), // a listed file that is missing
      encodeEntry(sha(blocks[10]!), layerA, sizeA - 100, BLOCK_SIZE), // runs past the end of the file
      encodeEntry(sha(blocks[10]!), layerA, 2 ** 52, BLOCK_SIZE), // far outside
      encodeEntry(sha(blocks[10]!), layerA, 0, 0xffffffff), // above the block size
      encodeEntry(sha(oversized), layerA, hostsA[6]!, oversized.length), // in the file, sound, too large
      encodeEntry(sha(blocks[10]!), layerA, hostsA[0]!, 0), // empty
      encodeEntry(sha(blocks[10]!), layerA, hostsA[1]!, BLOCK_SIZE), // bytes of another block
      encodeEntry(sha(blocks[11]!), layerA, hostsA[0]! + 7, 5000), // unaligned, wrong bytes
      Buffer.alloc(PLACED_ENTRY), // zeros
      randomBytes(PLACED_ENTRY), // noise
    ];
    // A u64 offset above 2^53 with a valid check (bytes as a hostile writer would make them).
    const huge = encodeEntry(sha(blocks[10]!), layerA, 0, BLOCK_SIZE);
    huge.writeBigUInt64BE(2n ** 63n + 5n, 48);
    createHash('sha256').update(huge.subarray(0, 60)).digest().copy(huge, 60, 0, 4);
    hostile.push(huge);
    const idx = placedIndexPath(home);
    await writeFile(idx, Buffer.concat([...entries.slice(0, 4), ...hostile, ...entries.slice(4)]));
    await appendFile(idx, encodeEntry(sha(blocks[10]!), layerA, 0, BLOCK_SIZE).subarray(0, 40)); // torn tail
    const fds = await openFds();
    const n = await salvageKilled(home, spool, [layerA, layerB, gone]);
    expect(await openFds()).toBe(fds);
    expect(n).toBe(good.length);
    expect(spool.size).toBe(good.length);
    for (const b of good) expect((await spool.read(sha(b)))?.equals(b)).toBe(true);
    for (const b of [blocks[2]!, blocks[9]!, blocks[10]!, blocks[11]!, oversized]) expect(spool.has(sha(b))).toBe(false);
    await expect(stat(idx)).rejects.toMatchObject({ code: 'ENOENT' }); // salvaged: the index goes
    // The spool is durable: a new run finds the blocks.
    await spool.close();
    const again = await Spool.open(home);
    expect(again.size).toBe(good.length);
    // No index (the common case): nothing to do.
    expect(await salvageKilled(home, again, [layerA])).toBe(0);
    await again.close();
  });

  it('reads blocks back from more layers than it keeps handles for', async () => {
    const { home, spool, disks } = await newHome();
    await mkdir(disks, { recursive: true });
    const files: string[] = [];
    const entries: Buffer[] = [];
    const all: Buffer[] = [];
    for (let f = 0; f < 20; f++) {
      const file = path.join(disks, `.l${f}.qcow2.sync-2-${f}`);
      const blocks = [randomBytes(BLOCK_SIZE), randomBytes(BLOCK_SIZE)];
      const hosts = await layerFile(file, blocks);
      files.push(file);
      for (const [i, b] of blocks.entries()) entries.push(encodeEntry(sha(b), file, hosts[i]!, b.length));
      all.push(...blocks);
    }
    // Interleaved, so that every read may need a file closed a moment ago.
    const order = entries.map((e, i) => [e, (i * 7) % entries.length] as const).sort((a, b) => a[1] - b[1]);
    await writeFile(placedIndexPath(home), Buffer.concat(order.map(([e]) => e)));
    // Only descriptors of the layers and of the home (the spool's, placed.idx) count: the test process
    // opens others of its own at any moment (a full CI run once showed one more than before).
    const realDisks = realpathSync(disks);
    const realHome = realpathSync(home.root);
    const ours = (under: string) => {
      let n = 0;
      for (const fd of readdirSync('/proc/self/fd')) {
        let target = '';
        try {
          target = readlinkSync(path.join('/proc/self/fd', fd));
        } catch {
          // closed meanwhile
        }
        if (target.startsWith(under + path.sep)) n++;
      }
      return n;
    };
    const before = ours(realHome); // the disks are inside it
    // Sampled between the salvage's reads: at most 8 layers open.
    let most = 0;
    let sampling = true;
    const sample = () => {
      most = Math.max(most, ours(realDisks));
      if (sampling) setImmediate(sample);
    };
    sample();
    expect(await salvageKilled(home, spool, files)).toBe(all.length);
    sampling = false;
    expect(most).toBeGreaterThan(1);
    expect(most).toBeLessThanOrEqual(8);
    expect(ours(realHome)).toBe(before);
    for (const b of all) expect((await spool.read(sha(b)))?.equals(b)).toBe(true);
    await spool.close();
  });

  it('a pull: blocks placed in the layer being written are read back, indexed once durable, salvaged on failure', async () => {
    const { home, spool, disks } = await newHome();
    await mkdir(disks, { recursive: true });
    const pl = await Placements.begin(home);
    const file = path.join(disks, '.one.qcow2.sync-3-aa');
    const w = await Qcow2Writer.create(file, { virtualSize: 64 * M, clusterSize: 64 * K, inPlace: true });
    pl.writing(file, w);
    const blocks = Array.from({ length: 400 }, () => randomBytes(BLOCK_SIZE)); // 25 MiB: one sync on the way
    for (const [i, b] of blocks.entries()) {
      const host = await w.write(i * BLOCK_SIZE, b);
      pl.placed(sha(b), host, b.length);
      if (i === 3 || i === 399) expect((await pl.read(sha(b)))?.equals(b)).toBe(true); // still in the batch
    }
    expect(pl.has(sha(blocks[10]!))).toBe(true);
    await w.finish({ durable: false });
    pl.done(file);
    expect((await qemuCheck(file)).code).toBe(0);
    expect((await pl.read(sha(blocks[200]!)))?.equals(blocks[200]!)).toBe(true); // from the file now
    await pl.settle();
    const idx = await readFile(placedIndexPath(home));
    expect(idx.length).toBe(blocks.length * PLACED_ENTRY); // each block indexed once
    const tags = new Set<string>();
    for (let i = 0; i < idx.length; i += PLACED_ENTRY) {
      const e = decodeEntry(idx.subarray(i, i + PLACED_ENTRY))!;
      expect(e).not.toBeNull();
      tags.add(e.tag);
    }
    expect(tags.size).toBe(1);
    // The pull fails: its blocks go to the spool before its layer is removed.
    expect(await pl.salvageTo(spool)).toBe(blocks.length);
    await pl.close();
    for (const b of [blocks[0]!, blocks[250]!, blocks[399]!]) expect((await spool.read(sha(b)))?.equals(b)).toBe(true);
    await spool.close();
  });
});
