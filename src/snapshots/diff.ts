/**
 * Content diff between two states of a VM (snapshots, or "current"), per disk, at cluster
 * granularity. Only clusters allocated in the layers between each state and their common ancestor
 * can differ, so only those are read; content decides (identical rewrites are no change, a zeroed
 * cluster is one).
 */
import { Chain } from '../qcow2/chain.js';
import { Qcow2Image } from '../qcow2/reader.js';

export interface Range {
  offset: number;
  length: number;
}

export interface DiskDiff {
  target: string;
  granularity: number;
  changed_bytes: number;
  ranges: Range[];
}

/** Compared in slices of this many bytes (a multiple of every cluster size). */
const SLICE = 4 * 1024 * 1024;

/** Sorted, merged union of ranges (aligned outward to `g`). */
export function unionAligned(ranges: Range[], g: number, limit: number): Range[] {
  const aligned = ranges.map((r) => {
    const s = r.offset - (r.offset % g);
    const e = Math.min(limit, Math.ceil((r.offset + r.length) / g) * g);
    return { offset: s, length: e - s };
  }).sort((a, b) => a.offset - b.offset);
  const out: Range[] = [];
  for (const r of aligned) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else out.push({ ...r });
  }
  return out;
}

/** Ranges a set of image files hold (data or zero) themselves. */
async function allocatedIn(files: string[]): Promise<Range[]> {
  const out: Range[] = [];
  for (const f of files) {
    const img = await Qcow2Image.open(f);
    try {
      for await (const e of img.extents()) if (e.kind !== 'unallocated') out.push({ offset: e.offset, length: e.length });
    } finally {
      await img.close();
    }
  }
  return out;
}

/**
 * `a` and `b` are the top images of the two states; `between` lists every image file whose content
 * may separate them (the layers above the common ancestor on both sides), or null to compare
 * everything either chain holds.
 */
export async function diffDisk(target: string, a: string, b: string, between: string[] | null): Promise<DiskDiff> {
  const ca = await Chain.open(a);
  const cb = await Chain.open(b);
  try {
    const g = ca.top.clusterSize;
    const size = Math.max(ca.virtualSize, cb.virtualSize);
    let files = between;
    if (files === null) files = [...ca.layers, ...cb.layers].filter((l) => l instanceof Qcow2Image).map((l) => l.path);
    const candidates = unionAligned(await allocatedIn([...new Set(files)]), g, size);
    const changed: Range[] = [];
    let changedBytes = 0;
    const push = (offset: number, length: number) => {
      changedBytes += length;
      const last = changed[changed.length - 1];
      if (last && last.offset + last.length === offset) last.length += length;
      else changed.push({ offset, length });
    };
    for (const r of candidates) {
      for (let off = r.offset; off < r.offset + r.length; off += SLICE) {
        const len = Math.min(SLICE, r.offset + r.length - off);
        const [da, db] = await Promise.all([ca.read(off, len), cb.read(off, len)]);
        for (let c = 0; c < len; c += g) {
          const n = Math.min(g, len - c);
          if (da.compare(db, c, c + n, c, c + n) !== 0) push(off + c, n);
        }
      }
    }
    return { target, granularity: g, changed_bytes: changedBytes, ranges: changed };
  } finally {
    await ca.close();
    await cb.close();
  }
}
