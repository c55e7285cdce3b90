/**
 * Native qcow2 reader: enumerates what ONE image file holds (never its backing file) and reads those
 * bytes, with memory bounded by the L1 table plus a few L2 tables and the data being read.
 */
import { constants as fsc } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import path from 'node:path';
import { CloneboxError, ioError } from '../errors.js';
import { decodeCluster } from './compressed.js';
import {
  compressedLayout,
  HEADER_READ_MAX,
  type HeaderExtensions,
  L1E_OFFSET_MASK,
  L2E_COMPRESSED,
  L2E_ZERO,
  parseExtensions,
  parseHeader,
  type Qcow2Header,
} from './format.js';

type ExtentKind = 'data' | 'zero' | 'unallocated';

/** A guest range of one kind, as `image map` prints it. */
export interface Extent {
  offset: number;
  length: number;
  kind: ExtentKind;
}

/**
 * A guest range that is stored the same way throughout: either not data, or data that is contiguous
 * on the host (`hostOffset`), or exactly one compressed cluster.
 */
export interface Run extends Extent {
  hostOffset?: number;
  compressed?: { offset: number; maxBytes: number };
}

export interface ImageInfo {
  format: 'qcow2';
  version: 2 | 3;
  virtual_size: number;
  cluster_size: number;
  backing_file: string | null;
  backing_format: string | null;
  compression_type: 'zlib' | 'zstd';
  extended_l2: boolean;
  data_bytes: number;
  zero_bytes: number;
}

export interface OpenOptions {
  /** Called for conditions worth telling the user that do not stop the read (internal snapshots...). */
  warn?: (message: string) => void;
}

/** L2E_COMPRESSED and L2E_ZERO as bits of the entry's high and low 32-bit halves. */
const L2E_COMPRESSED_HI = Number(L2E_COMPRESSED >> 32n);
const L2E_ZERO_LO = Number(L2E_ZERO);

/** Data runs are cut at this length so that reading one never needs more than this much memory. */
const MAX_RUN_BYTES = 4 * 1024 * 1024;
/** Bytes of L2 tables kept in memory per open image (at least two tables whatever the cluster size). */
const L2_CACHE_BYTES = 8 * 1024 * 1024;

export class Qcow2Image {
  readonly path: string;
  readonly header: Qcow2Header;
  readonly extensions: HeaderExtensions;
  /** The backing file name exactly as stored in the image (often relative to the image's directory). */
  readonly backingFile: string | null;
  readonly fileSize: number;
  private readonly fh: FileHandle;
  private readonly l1: BigUint64Array;
  private readonly l2Cache = new Map<number, Buffer>();
  private readonly l2CacheMax: number;

  private constructor(p: string, fh: FileHandle, fileSize: number, header: Qcow2Header, ext: HeaderExtensions, backingFile: string | null, l1: BigUint64Array) {
    this.path = p;
    this.fh = fh;
    this.fileSize = fileSize;
    this.header = header;
    this.extensions = ext;
    this.backingFile = backingFile;
    this.l1 = l1;
    this.l2CacheMax = Math.max(2, Math.floor(L2_CACHE_BYTES / header.clusterSize));
  }

  static async open(file: string, opts: OpenOptions = {}): Promise<Qcow2Image> {
    const abs = path.resolve(file);
    let fh: FileHandle;
    try {
      // O_NONBLOCK: opening a FIFO (a hostile backing file name can point anywhere) must not wait for a
      // writer forever; it is refused just below as not a regular file. No effect on regular files.
      fh = await open(abs, fsc.O_RDONLY | fsc.O_NONBLOCK);
    } catch (err) {
      throw ioError(err, 'cannot open image', abs);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile() && !st.isBlockDevice()) throw new CloneboxError('NOT_QCOW2', `not a regular file, ${abs}`);
      const fileSize = st.size;
      const head = Buffer.alloc(Math.min(HEADER_READ_MAX, Math.max(fileSize, 0)));
      await readFully(fh, head, 0, abs);
      const header = parseHeader(head, fileSize, abs);
      const ext = parseExtensions(head.subarray(0, Math.min(head.length, header.clusterSize)), header, abs);
      if (ext.dataFile !== null) {
        throw new CloneboxError('QCOW2_UNSUPPORTED', `unsupported qcow2 feature: external data file, ${abs}`);
      }
      let backingFile: string | null = null;
      if (header.backingFileOffset !== 0 && header.backingFileSize > 0) {
        backingFile = head.subarray(header.backingFileOffset, header.backingFileOffset + header.backingFileSize).toString('utf8');
      }
      if (header.nbSnapshots > 0) {
        opts.warn?.(`image has ${header.nbSnapshots} internal snapshot(s); clonebox reads only the active state, ${abs}`);
      }
      const l1Bytes = Buffer.alloc(header.l1Size * 8);
      if (header.l1Size > 0) await readFully(fh, l1Bytes, header.l1TableOffset, abs);
      const l1 = new BigUint64Array(header.l1Size);
      for (let i = 0; i < header.l1Size; i++) l1[i] = l1Bytes.readBigUInt64BE(i * 8);
      checkL1Aliasing(l1, abs);
      return new Qcow2Image(abs, fh, fileSize, header, ext, backingFile, l1);
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw err;
    }
  }

  get virtualSize(): number {
    return this.header.virtualSize;
  }

  get clusterSize(): number {
    return this.header.clusterSize;
  }

  /** The backing file's path resolved against this image's directory, as QEMU resolves it. */
  backingPath(): string | null {
    if (this.backingFile === null) return null;
    if (this.backingFile.startsWith('json:')) {
      throw new CloneboxError('QCOW2_UNSUPPORTED', `unsupported qcow2 feature: json: backing file name, ${this.path}`);
    }
    return path.resolve(path.dirname(this.path), this.backingFile);
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  private corrupt(what: string): CloneboxError {
    return new CloneboxError('QCOW2_CORRUPT', `corrupt qcow2 image: ${what}, ${this.path}`, {
      hint: 'the file is damaged; `qemu-img check` may tell more',
    });
  }

  /** The L2 table for L1 index `i`, or null when that L1 entry is unallocated. */
  private async l2Table(i: number): Promise<Buffer | null> {
    const entry = this.l1[i]!;
    const off = Number(entry & L1E_OFFSET_MASK);
    if (off === 0) return null;
    const cs = this.header.clusterSize;
    if (off % cs !== 0) throw this.corrupt(`L2 table offset 0x${off.toString(16)} is not cluster aligned`);
    if (off < cs) throw this.corrupt('L2 table points into the header');
    if (off + cs > this.fileSize) {
      throw new CloneboxError('QCOW2_TRUNCATED', `truncated qcow2 image: L2 table at 0x${off.toString(16)} is past the end of the file, ${this.path}`);
    }
    const hit = this.l2Cache.get(off);
    if (hit) {
      // Refresh recency: Map iteration order is insertion order, so re-insert to mark as newest.
      this.l2Cache.delete(off);
      this.l2Cache.set(off, hit);
      return hit;
    }
    const buf = Buffer.allocUnsafe(cs);
    await readFully(this.fh, buf, off, this.path);
    if (this.l2Cache.size >= this.l2CacheMax) this.l2Cache.delete(this.l2Cache.keys().next().value!);
    this.l2Cache.set(off, buf);
    return buf;
  }

  /**
   * Yields runs covering [start, end) in guest order. Adjacent units of the same kind are merged
   * (data only while host-contiguous and below MAX_RUN_BYTES); compressed clusters come one by one.
   */
  async *runs(start = 0, end = this.header.virtualSize): AsyncGenerator<Run> {
    const h = this.header;
    end = Math.min(end, h.virtualSize);
    if (start >= end) return;
    const cs = h.clusterSize;
    const scSize = cs / h.subclusters;
    let pending: Run | null = null;
    const emit = (r: Run): Run | null => {
      // Returns the run to yield (if the new one does not extend `pending`).
      if (pending) {
        const pEnd: number = pending.offset + pending.length;
        const mergeable =
          pEnd === r.offset &&
          pending.kind === r.kind &&
          !pending.compressed &&
          !r.compressed &&
          (r.kind !== 'data' || (pending.hostOffset! + pending.length === r.hostOffset && pending.length + r.length <= MAX_RUN_BYTES));
        if (mergeable) {
          pending.length += r.length;
          return null;
        }
      }
      const out = pending;
      pending = r;
      return out;
    };

    let guest = start - (start % scSize);
    while (guest < end) {
      const l1i = Math.floor(guest / h.l2Coverage);
      const l2 = await this.l2Table(l1i);
      const tableEnd = Math.min((l1i + 1) * h.l2Coverage, end);
      if (l2 === null) {
        const out = emit({ offset: guest, length: tableEnd - guest, kind: 'unallocated' });
        if (out) yield out;
        guest = tableEnd;
        continue;
      }
      while (guest < tableEnd) {
        const l2i = Math.floor((guest % h.l2Coverage) / cs);
        const clusterStart = guest - (guest % cs);
        const clusterEnd = Math.min(clusterStart + cs, h.virtualSize);
        // The entry as two 32-bit halves: plain numbers here, BigInt only for compressed descriptors
        // (a BigInt per entry made enumeration several times slower on big layers).
        const eo = l2i * h.l2EntryBytes;
        const hi = l2.readUInt32BE(eo);
        const lo = l2.readUInt32BE(eo + 4);
        if ((hi | lo) === 0 && clusterStart + cs <= tableEnd && (!h.extendedL2 || (l2.readUInt32BE(eo + 8) | l2.readUInt32BE(eo + 12)) === 0)) {
          // Unallocated clusters: take the whole stretch of them at once, not one Run per cluster. Only
          // clusters wholly before tableEnd: a last partial one goes the normal way below.
          let stop = clusterStart + cs;
          for (let o = eo + h.l2EntryBytes; stop + cs <= tableEnd; o += h.l2EntryBytes, stop += cs) {
            if ((l2.readUInt32BE(o) | l2.readUInt32BE(o + 4)) !== 0) break;
            if (h.extendedL2 && (l2.readUInt32BE(o + 8) | l2.readUInt32BE(o + 12)) !== 0) break;
          }
          const out = emit({ offset: guest, length: stop - guest, kind: 'unallocated' });
          if (out) yield out;
          guest = stop;
          continue;
        }
        if (hi & L2E_COMPRESSED_HI) {
          const c = compressedLayout(l2.readBigUInt64BE(eo), h.clusterBits);
          if (c.offset < cs) throw this.corrupt('compressed cluster points into the header');
          if (c.offset >= this.fileSize) {
            throw new CloneboxError(
              'QCOW2_TRUNCATED',
              `truncated qcow2 image: compressed cluster at 0x${c.offset.toString(16)} is past the end of the file, ${this.path}`,
            );
          }
          const out = emit({ offset: clusterStart, length: clusterEnd - clusterStart, kind: 'data', compressed: c });
          if (out) yield out;
          guest = clusterEnd;
          continue;
        }
        // The host offset: bits 9..55 of the L2 entry.
        const host = (hi & 0x00ffffff) * 0x100000000 + ((lo & 0xfffffe00) >>> 0);
        if (host !== 0) {
          if (host % cs !== 0) throw this.corrupt(`data cluster offset 0x${host.toString(16)} is not cluster aligned`);
          if (host < cs) throw this.corrupt('L2 entry points into the header');
        }
        if (!h.extendedL2) {
          let kind: ExtentKind;
          if (lo & L2E_ZERO_LO) kind = 'zero';
          else if (host !== 0) kind = 'data';
          else kind = 'unallocated';
          if (kind === 'data' && host >= this.fileSize) {
            throw new CloneboxError(
              'QCOW2_TRUNCATED',
              `truncated qcow2 image: data cluster at 0x${host.toString(16)} is past the end of the file, ${this.path}`,
            );
          }
          const r: Run = { offset: clusterStart, length: clusterEnd - clusterStart, kind };
          if (kind === 'data') r.hostOffset = host;
          const out = emit(r);
          if (out) yield out;
          guest = clusterEnd;
          continue;
        }
        // Extended L2: a 32-bit "allocated" mask and a 32-bit "reads as zero" mask, one bit per subcluster.
        const zero = l2.readUInt32BE(eo + 8);
        const alloc = l2.readUInt32BE(eo + 12);
        if (alloc & zero) throw this.corrupt('subcluster marked both allocated and zero');
        if (alloc !== 0 && host === 0) throw this.corrupt('allocated subclusters without a host cluster');
        if (alloc !== 0 && host >= this.fileSize) {
          throw new CloneboxError('QCOW2_TRUNCATED', `truncated qcow2 image: data cluster at 0x${host.toString(16)} is past the end of the file, ${this.path}`);
        }
        let sc = Math.floor((guest - clusterStart) / scSize);
        for (; sc < 32 && clusterStart + sc * scSize < tableEnd; sc++) {
          const bit = 1 << sc;
          const scStart = clusterStart + sc * scSize;
          const scEnd = Math.min(scStart + scSize, h.virtualSize);
          const kind: ExtentKind = alloc & bit ? 'data' : zero & bit ? 'zero' : 'unallocated';
          const r: Run = { offset: scStart, length: scEnd - scStart, kind };
          if (kind === 'data') r.hostOffset = host + sc * scSize;
          const out = emit(r);
          if (out) yield out;
        }
        guest = Math.min(clusterStart + cs, tableEnd);
      }
    }
    // Runs may extend past [start, end) to whole (sub)clusters; runsIn() clips them.
    if (pending) yield pending as Run;
  }

  /** Runs clipped to exactly [start, end). */
  async *runsIn(start: number, end: number): AsyncGenerator<Run> {
    for await (const r of this.runs(start, end)) {
      const s = Math.max(r.offset, start);
      const e = Math.min(r.offset + r.length, end);
      if (e <= s) continue;
      if (s === r.offset && e === r.offset + r.length) {
        yield r;
        continue;
      }
      const clipped: Run = { ...r, offset: s, length: e - s };
      if (r.hostOffset !== undefined) clipped.hostOffset = r.hostOffset + (s - r.offset);
      yield clipped;
    }
  }

  /** Extents of this file alone, adjacent extents of the same kind merged (what `image map` prints). */
  async *extents(start = 0, end = this.header.virtualSize): AsyncGenerator<Extent> {
    let cur: Extent | null = null;
    for await (const r of this.runsIn(start, end)) {
      if (cur && cur.kind === r.kind && cur.offset + cur.length === r.offset) {
        cur.length += r.length;
        continue;
      }
      if (cur) yield cur;
      cur = { offset: r.offset, length: r.length, kind: r.kind };
    }
    if (cur) yield cur;
  }

  /**
   * The guest bytes of a data run. For a compressed cluster `run` must be the whole cluster (or a
   * clipped part of it: the cluster is decompressed and sliced). Bytes past the end of the file read
   * as zeros, as QEMU reads them.
   */
  async readRun(run: Run): Promise<Buffer> {
    if (run.kind !== 'data') return Buffer.alloc(run.length);
    if (run.compressed) {
      const cs = this.header.clusterSize;
      const clusterStart = run.offset - (run.offset % cs);
      const full = await this.readCompressed(run.compressed);
      return full.subarray(run.offset - clusterStart, run.offset - clusterStart + run.length);
    }
    const buf = Buffer.allocUnsafe(run.length);
    await this.pread(buf, run.hostOffset!);
    return buf;
  }

  /** Reads `buf.length` bytes at `pos`, zero-filling whatever lies past the end of the file. */
  private async pread(buf: Buffer, pos: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.fh.read(buf, done, buf.length - done, pos + done).catch((err) => {
        throw ioError(err, 'cannot read image', this.path);
      });
      if (bytesRead === 0) {
        buf.fill(0, done);
        return;
      }
      done += bytesRead;
    }
  }

  private async readCompressed(c: { offset: number; maxBytes: number }): Promise<Buffer> {
    const cs = this.header.clusterSize;
    // A compressed cluster never needs more than cluster size + one sector of input; anything larger
    // is a lie in the descriptor, clamped here before we allocate.
    const len = Math.min(c.maxBytes, this.fileSize - c.offset, cs + 512 * 2);
    const src = Buffer.allocUnsafe(len);
    await this.pread(src, c.offset);
    // Fewer bytes than the descriptor promised because the file ended: a failure is truncation.
    const cut = len < c.maxBytes && len < cs + 512 * 2;
    return decodeCluster(this.header.compressionType, src, cs, { path: this.path, host: c.offset, cut });
  }

  /** The data of [offset, offset+length) as stored in this file alone; unallocated reads as zeros. */
  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    for await (const r of this.runsIn(offset, offset + length)) {
      if (r.kind !== 'data') continue;
      const data = await this.readRun(r);
      data.copy(out, r.offset - offset);
    }
    return out;
  }

  async info(): Promise<ImageInfo> {
    let data = 0;
    let zero = 0;
    for await (const r of this.runs()) {
      if (r.kind === 'data') data += r.length;
      else if (r.kind === 'zero') zero += r.length;
    }
    const h = this.header;
    return {
      format: 'qcow2',
      version: h.version,
      virtual_size: h.virtualSize,
      cluster_size: h.clusterSize,
      backing_file: this.backingFile,
      backing_format: this.extensions.backingFormat,
      compression_type: h.compressionType,
      extended_l2: h.extendedL2,
      data_bytes: data,
      zero_bytes: zero,
    };
  }
}

/**
 * Two L1 entries never name the same L2 table in a valid image (each table has exactly one owner). A
 * hostile file could point millions of L1 entries at one table and make enumeration walk billions of
 * entries; refusing aliases bounds the work by the file's size (distinct tables must each fit in it).
 */
function checkL1Aliasing(l1: BigUint64Array, file: string): void {
  let n = 0;
  const offsets = new Float64Array(l1.length);
  for (let i = 0; i < l1.length; i++) {
    const off = Number(l1[i]! & L1E_OFFSET_MASK);
    if (off !== 0) offsets[n++] = off;
  }
  if (n < 2) return;
  const sorted = offsets.subarray(0, n).sort();
  for (let i = 1; i < n; i++) {
    if (sorted[i] === sorted[i - 1]) {
      throw new CloneboxError('QCOW2_CORRUPT', `corrupt qcow2 image: L2 table at 0x${sorted[i]!.toString(16)} is used by two L1 entries, ${file}`, {
        hint: 'the file is damaged; `qemu-img check` may tell more',
      });
    }
  }
}

/** True when a qcow2 file holds no cluster of its own (an overlay with no changes). */
export async function isEmptyImage(file: string): Promise<boolean> {
  const img = await Qcow2Image.open(file);
  try {
    for await (const r of img.runs()) if (r.kind !== 'unallocated') return false;
    return true;
  } finally {
    await img.close();
  }
}

async function readFully(fh: FileHandle, buf: Buffer, pos: number, file: string): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    let n: number;
    try {
      ({ bytesRead: n } = await fh.read(buf, done, buf.length - done, pos + done));
    } catch (err) {
      throw ioError(err, 'cannot read image', file);
    }
    if (n === 0) {
      throw new CloneboxError('QCOW2_TRUNCATED', `truncated qcow2 image: wanted ${buf.length} bytes at offset ${pos}, file ends first, ${file}`);
    }
    done += n;
  }
}
