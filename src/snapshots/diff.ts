/**
 * Content diff between two states of a VM (snapshots, or "current"), per disk, at cluster
 * granularity. Only clusters allocated in the layers between each state and their common ancestor
 * can differ, so only those are read; content decides (identical rewrites are no change, a zeroed
 * cluster is one).
 */
import type { GuestDiff, GuestDiffOptions } from '../guest/diff.js';
import { Chain } from '../qcow2/chain.js';
import { ChainReader } from '../qcow2/chain-reader.js';
import { Qcow2Image } from '../qcow2/reader.js';

interface Range {
  offset: number;
  length: number;
}

export interface DiskDiff {
  target: string;
  granularity: number;
  changed_bytes: number;
  ranges: Range[];
  /** Files, packages and /etc as the guest sees them (only when asked for). */
  guest?: GuestDiff;
}

/**
 * Compared in slices of this many bytes, or of one cluster when clusters are larger (2 MiB), so a
 * slice is always a whole number of clusters. Small slices keep the buffers in the CPU cache between
 * the read and the compare: 1 MiB slices were faster than 4 MiB ones on page-cached layers
 * (bench/README.md, "Figures behind the code").
 */
const SLICE = 1024 * 1024;
/** Slices being read at once (each read is one pread per piece, both states in parallel). */
const DEPTH = 4;

/** Sorted, merged union of ranges (aligned outward to `g`). */
function unionAligned(ranges: Range[], g: number, limit: number): Range[] {
  const aligned = ranges
    .map((r) => {
      const s = r.offset - (r.offset % g);
      const e = Math.min(limit, Math.ceil((r.offset + r.length) / g) * g);
      return { offset: s, length: e - s };
    })
    .sort((a, b) => a.offset - b.offset);
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
 * everything either chain holds. With `guest`, the changed ranges then drive the guest-aware diff
 * (src/guest/), read through the same chain readers.
 */
export async function diffDisk(target: string, a: string, b: string, between: string[] | null, guest?: GuestDiffOptions): Promise<DiskDiff> {
  const ca = await Chain.open(a);
  const cb = await Chain.open(b);
  const ra = new ChainReader(ca);
  const rb = new ChainReader(cb);
  const inFlight: Promise<unknown>[] = [];
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
    const sliceBytes = Math.max(SLICE, g);
    const slices: Range[] = [];
    for (const r of candidates) {
      for (let off = r.offset; off < r.offset + r.length; off += sliceBytes)
        slices.push({ offset: off, length: Math.min(sliceBytes, r.offset + r.length - off) });
    }
    // DEPTH buffer pairs: the next slices are read while the current one is compared.
    const bufs = Array.from({ length: DEPTH }, () => [Buffer.allocUnsafe(sliceBytes), Buffer.allocUnsafe(sliceBytes)] as const);
    const readSlice = (i: number) => {
      const s = slices[i]!;
      const [da, db] = bufs[i % DEPTH]!;
      const p = Promise.all([ra.readInto(s.offset, s.length, da), rb.readInto(s.offset, s.length, db)]);
      p.catch(() => undefined); // observed when its turn comes; an earlier failure must not leave it unhandled
      return p;
    };
    for (let i = 0; i < Math.min(DEPTH - 1, slices.length); i++) inFlight.push(readSlice(i));
    for (let i = 0; i < slices.length; i++) {
      await inFlight.shift();
      if (i + DEPTH - 1 < slices.length) inFlight.push(readSlice(i + DEPTH - 1));
      const { offset: off, length: len } = slices[i]!;
      const [da, db] = bufs[i % DEPTH]!;
      if (da.compare(db, 0, len, 0, len) === 0) continue;
      for (let c = 0; c < len; c += g) {
        const n = Math.min(g, len - c);
        if (da.compare(db, c, c + n, c, c + n) !== 0) push(off + c, n);
      }
    }
    const result: DiskDiff = { target, granularity: g, changed_bytes: changedBytes, ranges: changed };
    if (guest && (guest.files || guest.packages || guest.etc)) {
      const { diffGuest } = await import('../guest/diff.js');
      result.guest = await diffGuest(ra, ca.virtualSize, rb, cb.virtualSize, changed, guest);
    }
    return result;
  } finally {
    // Reads still in flight after an error finish before their files are closed.
    await Promise.allSettled(inFlight);
    await ra.close();
    await rb.close();
    await ca.close();
    await cb.close();
  }
}
