/**
 * HostReader (src/qcow2/stream.ts) reads with blocking preads while the image is in the page cache and
 * goes asynchronous once its reads go to the disk. Real files: the cache is dropped with GNU dd's
 * `iflag=nocache` (posix_fadvise DONTNEED), so the reads really hit the disk. On a file system without
 * a page cache to drop (tmpfs) the cold half is skipped: nothing there reads from a disk.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Qcow2Image } from '../src/qcow2/reader.js';
import { HostReader } from '../src/qcow2/stream.js';
import { runChecked } from './helpers/process.js';
import { qemuCreate, qemuIo } from './helpers/qemu.js';
import { useTempDir } from './helpers/temp.js';

const M = 1024 * 1024;
const tmp = useTempDir('clonebox-hostreader-');

/**
 * Reads the whole file through `r` in 1 MiB reads, last first (the kernel's read-ahead follows only
 * forward reads, so a cold file's reads all wait for the disk), and checks them against `want`.
 */
async function readAll(r: HostReader, want: Buffer): Promise<void> {
  const buf = Buffer.alloc(M);
  for (let at = Math.floor((want.length - 1) / M) * M; at >= 0; at -= M) {
    const n = Math.min(M, want.length - at);
    await r.read(buf.subarray(0, n), at);
    expect(buf.subarray(0, n).equals(want.subarray(at, at + n))).toBe(true);
  }
}

describe('HostReader', () => {
  it('keeps blocking reads from the page cache, and goes asynchronous when the reads go to the disk', async () => {
    const file = path.join(tmp(), 'l.qcow2');
    await qemuCreate(file, 64 * M);
    await qemuIo(file, [`write -P 0x5a 0 ${48 * M}`]);

    // Warm: the file was just written and read back whole.
    const want = await readFile(file);
    const img = await Qcow2Image.open(file);
    try {
      const warm = await HostReader.open(img, 4 * M);
      await readAll(warm, want);
      expect(warm.blocking).toBe(true);
      await warm.close();

      await runChecked('sync', []);
      await runChecked('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
      const cold = await HostReader.open(img, 4 * M);
      const before = process.resourceUsage().fsRead;
      await readAll(cold, want);
      if (process.resourceUsage().fsRead === before) return; // no disk under this file (tmpfs)
      expect(cold.blocking).toBe(false);
      await cold.close();
    } finally {
      await img.close();
    }
  });
});
