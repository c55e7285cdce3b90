/**
 * Guest writes for the demo: clonebox has no running VM, so the demo changes a disk's current state
 * the way a guest would, by producing a new version of the writable overlay (same backing file) with
 * the given clusters replaced, written under a temporary name and renamed over the disk.
 */
import { CloneboxError } from '../errors.js';
import { Qcow2Image } from '../qcow2/reader.js';
import { Qcow2Writer } from '../qcow2/writer.js';

export type GuestWrite = { offset: number; data: Buffer } | { offset: number; zero: number };

export async function guestWrite(disk: string, writes: GuestWrite[]): Promise<void> {
  const img = await Qcow2Image.open(disk);
  const cs = img.clusterSize;
  const replaced = new Set<number>();
  for (const w of writes) {
    const len = 'data' in w ? w.data.length : w.zero;
    if (w.offset % cs !== 0 || len % cs !== 0) throw new CloneboxError('INTERNAL', `demo writes must be cluster aligned (${cs})`);
    for (let o = w.offset; o < w.offset + len; o += cs) replaced.add(o / cs);
  }
  const out = await Qcow2Writer.create(disk, {
    virtualSize: img.virtualSize,
    clusterSize: cs,
    backingFile: img.backingFile,
    backingFormat: img.backingFile ? ((img.extensions.backingFormat as 'qcow2' | 'raw' | null) ?? 'qcow2') : null,
  });
  try {
    for await (const r of img.runs()) {
      if (r.kind === 'unallocated') continue;
      for (let o = r.offset; o < r.offset + r.length; o += cs) {
        if (replaced.has(o / cs)) continue;
        const len = Math.min(cs, r.offset + r.length - o);
        if (r.kind === 'zero') await out.writeZero(o, len);
        else await out.write(o, await img.read(o, len));
      }
    }
    for (const w of writes) {
      if ('data' in w) await out.write(w.offset, w.data);
      else await out.writeZero(w.offset, w.zero);
    }
    await img.close();
    await out.finish();
  } catch (err) {
    await out.abort();
    await img.close().catch(() => undefined);
    throw err;
  }
}
