/**
 * ChainReader with blocking reads (blocking-reads.ts), as the sync's sharer reads frames: a real
 * two-layer chain made with qemu-img / qemu-io reads the same bytes (overlay data, the base's data
 * through the overlay's holes, zeros past the base) with blocking preads as through the thread pool,
 * and keeps reading them the same once the reads turned asynchronous. The switching rule itself is
 * fed which reads went to the disk; test/qcow2-host-reader.test.ts drops a real page cache.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BlockingReads } from '../src/qcow2/blocking-reads.js';
import { Chain } from '../src/qcow2/chain.js';
import { ChainReader } from '../src/qcow2/chain-reader.js';
import { qemuCreate, qemuIo } from './helpers/qemu.js';
import { useTempDir } from './helpers/temp.js';

const M = 1024 * 1024;
const tmp = useTempDir('clonebox-chain-reader-');

/** Records the blocking reads it lets through. */
class CountingReads extends BlockingReads {
  blocked = 0;
  override took(disk: boolean): void {
    this.blocked++;
    super.took(disk);
  }
}

describe('ChainReader with blocking reads', () => {
  it('reads the same bytes as through the thread pool, before and after reads turn asynchronous', async () => {
    const dir = tmp();
    const base = path.join(dir, 'base.qcow2');
    const top = path.join(dir, 'top.qcow2');
    await qemuCreate(base, 8 * M);
    await qemuIo(base, ['write -P 0x11 0 3M', 'write -P 0x22 5M 1M']);
    await qemuCreate(top, 12 * M, { backing: 'base.qcow2' });
    await qemuIo(top, ['write -P 0x33 1M 1M', 'write -P 0x44 5M 64k', 'write -P 0x55 9M 2M']);

    const chain = await Chain.open(top);
    const plain = new ChainReader(chain);
    const reads = new CountingReads(4 * M);
    const blocking = new ChainReader(chain, reads);
    const ranges: [number, number][] = [
      [0, 4 * M],
      [512 * 1024, 2 * M],
      [5 * M - 4096, 1 * M + 8192],
      [7 * M, 5 * M], // past the base's end (zeros), into the overlay's own data
      [0, 12 * M], // larger than blocking reads take: the thread pool
    ];
    try {
      for (const [off, len] of ranges) {
        const a = Buffer.alloc(len, 0xee);
        const b = Buffer.alloc(len, 0xee);
        await plain.readInto(off, len, a);
        await blocking.readInto(off, len, b);
        expect(b.equals(a), `range ${off}+${len}`).toBe(true);
      }
      expect(reads.blocked).toBeGreaterThan(0);
      expect(reads.active).toBe(true);
      // Reads from the disk: four, and a quarter of all, turn reads asynchronous for good.
      const slow = 4 + reads.blocked;
      for (let i = 0; i < slow; i++) reads.took(true);
      expect(reads.active).toBe(false);
      const before = reads.blocked;
      for (const [off, len] of ranges) {
        const a = Buffer.alloc(len, 0xee);
        const b = Buffer.alloc(len, 0xee);
        await plain.readInto(off, len, a);
        await blocking.readInto(off, len, b);
        expect(b.equals(a), `range ${off}+${len} after the switch`).toBe(true);
      }
      expect(reads.blocked).toBe(before); // no blocking read after the switch
    } finally {
      await plain.close();
      await blocking.close();
      await chain.close();
    }
  });

  it('turns asynchronous only when at least four reads, and a quarter of them, went to the disk', () => {
    const r = new BlockingReads(2 * M);
    expect(r.wants(2 * M)).toBe(true);
    expect(r.wants(2 * M + 1)).toBe(false);
    for (let i = 0; i < 12; i++) r.took(false);
    expect(r.active).toBe(true);
    // Three reads from the disk in 15: not enough of them.
    for (let i = 0; i < 3; i++) r.took(true);
    expect(r.active).toBe(true);
    // Four, but fewer than a quarter of all reads: the kernel's read-ahead serving the rest.
    for (let i = 0; i < 40; i++) r.took(false);
    r.took(true);
    expect(r.active).toBe(true);
    // Reads from the disk until they are a quarter of all.
    let n = 0;
    while (r.active && n < 100) {
      r.took(true);
      n++;
    }
    expect(r.active).toBe(false);
    expect(n).toBe(14); // 18 disk reads of 70
    expect(r.wants(4096)).toBe(false);
    expect(new BlockingReads(0).wants(1)).toBe(false);
  });
});
