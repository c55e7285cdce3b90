/**
 * Native qcow2 v3 writer for new images (snapshot overlays, merged layers, imported layers).
 *
 * Layout it produces:
 *
 *   cluster 0          header (112 bytes), extensions (backing format, end), backing file name
 *   clusters 1..n      L1 table (sized for the virtual size)
 *   then, in order     data clusters and L2 tables, appended as the caller writes
 *   at finish()        refcount blocks, then the refcount table, all refcounts = 1
 *
 * Every cluster is referenced exactly once, so COPIED flags are set on every L1 and data L2 entry and
 * `qemu-img check` finds no leaks. The image is written under a temporary name in the target directory
 * and renamed into place only after fsync, so a crash never leaves a half-written image at `path`.
 */
import { type FileHandle, open, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import { CloneboxError, ioError } from '../errors.js';
import { fsyncDir, tempPathFor } from '../fsutil.js';
import { BlockingReads, preadSync } from './blocking-reads.js';
import { EXT_BACKING_FORMAT, L2E_COPIED, MAX_BACKING_FILE_NAME, MAX_L1_BYTES, MAX_VIRTUAL_SIZE, QCOW2_MAGIC } from './format.js';

export interface CreateOptions {
  virtualSize: number;
  /** Power of two from 512 B to 2 MiB; default 64 KiB. */
  clusterSize?: number;
  /** Stored as given: pass a path relative to the new image's directory so layers can move together. */
  backingFile?: string | null;
  backingFormat?: 'qcow2' | 'raw' | null;
  /**
   * File mode (default 0644). Layers made from someone else's data (imports, pulls) and the disks
   * clonebox makes for its own VMs are 0600; overlays a libvirt domain's qemu must open keep 0644.
   */
  mode?: number;
  /**
   * Write at `path` itself, not under a temporary name renamed at finish(): for a caller whose path is
   * a temporary already (a pull's layer, listed for removal), which names the file in an index of
   * placed blocks while it is being written (sync/placed.ts).
   */
  inPlace?: boolean;
}

const HEADER_LENGTH = 112;
const REFCOUNT_ORDER = 4; // 16-bit refcounts, QEMU's default
/** Contiguous data is gathered up to this size before one write() call. */
const WRITE_BATCH = 4 * 1024 * 1024;
/** Bytes of L2 tables kept in memory; older ones are written back and re-read if needed again. */
const L2_CACHE_BYTES = 16 * 1024 * 1024;
/**
 * Batch buffers of finished writers, for the next writer: an import writes layer after layer, and
 * fresh 4 MiB buffers cost a page fault per 4 KiB on first touch, a visible share of an import's
 * wall time (bench/README.md, "Figures behind the code").
 */
const batchPool: Buffer[] = [];
const BATCH_POOL_MAX = 4;
/** Data written between background datasyncs (see `syncing`). */
const BACKGROUND_SYNC_BYTES = 32 * 1024 * 1024;

export class Qcow2Writer {
  readonly path: string;
  readonly tmpPath: string;
  readonly clusterSize: number;
  readonly virtualSize: number;
  private readonly l2Entries: number;
  private readonly fh: FileHandle;
  private readonly l1: BigUint64Array;
  private readonly l1Offset: number;
  /** Next free host offset (the file only grows). */
  private next: number;
  private readonly l2Cache = new Map<number, { buf: Buffer; host: number; dirty: boolean }>();
  private readonly l2CacheMax: number;
  /**
   * Data clusters are copied once into the filling batch buffer; a full batch is written while the
   * next one fills (one write in flight at most, two buffers alternating).
   */
  private batchBuf: Buffer | null = null;
  private spareBuf: Buffer | null = null;
  private batchHost = 0;
  private batchLen = 0;
  private inflight: Promise<void> | null = null;
  /** The batch being written (its buffer is not reused before that write is done), for readBack(). */
  private flying: { buf: Buffer; host: number; len: number } | null = null;
  /** Reads back with a blocking pread while they come from the page cache (blocking-reads.ts). */
  private readonly backReads = new BlockingReads(WRITE_BATCH);
  private finished = false;
  /** Bytes of guest data written (data clusters only), for reports. */
  dataBytes = 0;
  /**
   * Every new data cluster below this host offset has been handed to the kernel (batches are written
   * in host order, one at a time), so another descriptor on the file reads it back: import uses that
   * to serve a block it placed before from the layer it wrote, instead of decoding its frame again.
   */
  flushedEnd = 0;
  /**
   * A datasync started in the background every BACKGROUND_SYNC_BYTES of data, so that the fsync in
   * finish() waits only for the tail (the last layer's fsync sat at the end of every import).
   */
  private syncing: Promise<void> | null = null;
  private syncedTo = 0;
  /** Datasyncs asked for by syncFlushed(), chained; finish() and abandon() wait for them. */
  private asked: Promise<unknown> = Promise.resolve();
  private readonly inPlace: boolean;

  private constructor(p: string, tmp: string, fh: FileHandle, clusterSize: number, virtualSize: number, l1Size: number, l1Offset: number, next: number) {
    this.path = p;
    this.inPlace = p === tmp;
    this.tmpPath = tmp;
    this.fh = fh;
    this.clusterSize = clusterSize;
    this.virtualSize = virtualSize;
    this.l2Entries = clusterSize / 8;
    this.l1 = new BigUint64Array(l1Size);
    this.l1Offset = l1Offset;
    this.next = next;
    this.l2CacheMax = Math.max(2, Math.floor(L2_CACHE_BYTES / clusterSize));
  }

  static async create(file: string, opts: CreateOptions): Promise<Qcow2Writer> {
    const abs = path.resolve(file);
    const cs = opts.clusterSize ?? 65536;
    if (!Number.isInteger(cs) || cs < 512 || cs > 2 * 1024 * 1024 || (cs & (cs - 1)) !== 0) {
      throw new CloneboxError('BAD_SIZE', `cluster size must be a power of two from 512 to 2M, got ${cs}`);
    }
    const vs = opts.virtualSize;
    if (!Number.isSafeInteger(vs) || vs < 0 || BigInt(vs) > MAX_VIRTUAL_SIZE) {
      throw new CloneboxError('BAD_SIZE', `virtual size ${vs} is out of range`);
    }
    if (vs % 512 !== 0) {
      // QEMU sees a qcow2 disk as whole 512-byte sectors (it rounds the header's size down), so any
      // other size would make QEMU and clonebox disagree about the last bytes of the disk.
      throw new CloneboxError('BAD_SIZE', `virtual size ${vs} is not a multiple of 512 bytes`);
    }
    const backing = opts.backingFile ?? null;
    if (backing !== null && Buffer.byteLength(backing) > MAX_BACKING_FILE_NAME) {
      throw new CloneboxError('USAGE', `backing file name is longer than ${MAX_BACKING_FILE_NAME} bytes, ${backing}`);
    }
    const l2Coverage = (cs / 8) * cs;
    const l1Size = Math.ceil(vs / l2Coverage);
    if (l1Size * 8 > MAX_L1_BYTES) {
      throw new CloneboxError('BAD_SIZE', `virtual size ${vs} needs an L1 table above 32 MiB with ${cs}-byte clusters; use a larger cluster size`);
    }
    const header = buildHeader(cs, vs, l1Size, backing, opts.backingFormat ?? (backing ? 'qcow2' : null));
    // A zero-sized disk has no L1 table (l1_table_offset 0): reserving a cluster for it anyway would
    // leave a cluster with refcount 1 that nothing references, which `qemu-img check` reports as a leak.
    const l1Clusters = Math.ceil((l1Size * 8) / cs);
    const tmp = opts.inPlace ? abs : tempPathFor(abs);
    let fh: FileHandle;
    try {
      fh = await open(tmp, 'wx+', opts.mode ?? 0o644);
    } catch (err) {
      throw ioError(err, 'cannot create image', tmp);
    }
    const w = new Qcow2Writer(abs, tmp, fh, cs, vs, l1Size, cs, cs * (1 + l1Clusters));
    try {
      await w.pwrite(header, 0);
    } catch (err) {
      await w.abort();
      throw err;
    }
    return w;
  }

  private async pwrite(buf: Buffer, pos: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      try {
        const { bytesWritten } = await this.fh.write(buf, done, buf.length - done, pos + done);
        done += bytesWritten;
      } catch (err) {
        throw ioError(err, 'cannot write image', this.tmpPath);
      }
    }
  }

  /** Starts writing the filling batch (waiting for the previous write first); `drain` waits for it too. */
  private async flushBatch(drain = true): Promise<void> {
    if (this.batchLen > 0) {
      if (this.inflight) await this.inflight;
      const buf = this.batchBuf!;
      const end = this.batchHost + this.batchLen;
      const write = this.pwrite(buf.subarray(0, this.batchLen), this.batchHost);
      const flying = { buf, host: this.batchHost, len: this.batchLen };
      this.flying = flying;
      // The buffer becomes the spare once its write is done; until then nobody touches it.
      this.inflight = write.then(() => {
        this.flushedEnd = end;
        if (this.flying === flying) this.flying = null;
        if (this.syncing === null && end - this.syncedTo >= BACKGROUND_SYNC_BYTES) {
          // Errors are left to finish()'s fsync, which reports them with the file's name.
          this.syncing = this.fh
            .datasync()
            .then(
              () => {
                this.syncedTo = end;
              },
              () => undefined,
            )
            .finally(() => {
              this.syncing = null;
            });
        }
        if (this.spareBuf === null) this.spareBuf = buf;
        else if (batchPool.length < BATCH_POOL_MAX) batchPool.push(buf);
      });
      this.inflight.catch(() => undefined); // surfaced by the next await of `inflight`
      this.batchBuf = null;
      this.batchLen = 0;
    }
    if (drain && this.inflight) {
      const p = this.inflight;
      this.inflight = null;
      await p;
    }
  }

  private batchBuffer(): Buffer {
    if (this.spareBuf) {
      const b = this.spareBuf;
      this.spareBuf = null;
      return b;
    }
    return batchPool.pop() ?? Buffer.allocUnsafe(WRITE_BATCH);
  }

  /** Gives the idle batch buffer to the next writer (no write is in flight when this is called). */
  private releaseBuffers(): void {
    if (this.spareBuf && batchPool.length < BATCH_POOL_MAX) batchPool.push(this.spareBuf);
    this.spareBuf = null;
  }

  /** Allocates a cluster at the end of the file (its bytes are written by the caller). */
  private allocCluster(): number {
    const host = this.next;
    this.next += this.clusterSize;
    return host;
  }

  private async l2For(guest: number, create: boolean): Promise<{ buf: Buffer; host: number; dirty: boolean } | null> {
    const l1i = Math.floor(guest / (this.l2Entries * this.clusterSize));
    const existing = this.l1[l1i]!;
    if (existing === 0n && !create) return null;
    let host = Number(existing & 0x00fffffffffffe00n);
    let hit = host ? this.l2Cache.get(host) : undefined;
    if (hit) {
      this.l2Cache.delete(host);
      this.l2Cache.set(host, hit);
      return hit;
    }
    if (this.l2Cache.size >= this.l2CacheMax) await this.evictL2();
    if (host === 0) {
      // The new table's cluster breaks the batch's contiguity; writeCluster starts a new batch then.
      host = this.allocCluster();
      this.l1[l1i] = BigInt(host) | L2E_COPIED;
      hit = { buf: Buffer.alloc(this.clusterSize), host, dirty: true };
    } else {
      // Evicted tables were written with an awaited write, and data batches never cover a table.
      const buf = Buffer.alloc(this.clusterSize);
      await this.fh.read(buf, 0, this.clusterSize, host);
      hit = { buf, host, dirty: false };
    }
    this.l2Cache.set(host, hit);
    return hit;
  }

  private async evictL2(): Promise<void> {
    const [host, t] = this.l2Cache.entries().next().value!;
    this.l2Cache.delete(host);
    if (t.dirty) {
      await this.pwrite(t.buf, t.host);
    }
  }

  private checkRange(guest: number, length: number): void {
    if (this.finished) throw new CloneboxError('INTERNAL', `image already finished, ${this.path}`);
    if (guest % this.clusterSize !== 0 || guest < 0) {
      throw new CloneboxError('INTERNAL', `write at ${guest} is not cluster aligned (${this.clusterSize}), ${this.path}`);
    }
    if (guest + length > this.virtualSize && guest + length - this.virtualSize >= this.clusterSize) {
      throw new CloneboxError('INTERNAL', `write of ${length} bytes at ${guest} is past the virtual size ${this.virtualSize}, ${this.path}`);
    }
  }

  /**
   * Writes guest data at a cluster-aligned offset. The length must be a whole number of clusters, except
   * that the final cluster of the disk may be short (it is zero-padded on disk). Returns the host offset
   * the data starts at when it went to new, contiguous clusters (readable there once below
   * `flushedEnd`), else -1.
   */
  async write(guest: number, data: Buffer): Promise<number> {
    this.checkRange(guest, data.length);
    const cs = this.clusterSize;
    let first = -1;
    let contiguous = true;
    for (let off = 0; off < data.length; off += cs) {
      let chunk = data.subarray(off, Math.min(off + cs, data.length));
      if (chunk.length < cs) {
        if (guest + off + chunk.length < this.virtualSize) {
          throw new CloneboxError('INTERNAL', `partial cluster write at ${guest + off}, ${this.path}`);
        }
        const padded = Buffer.alloc(cs);
        chunk.copy(padded);
        chunk = padded;
      }
      const host = await this.writeCluster(guest + off, chunk);
      if (off === 0) first = host;
      else if (host !== first + off) contiguous = false;
    }
    return contiguous ? first : -1;
  }

  /** Returns the new cluster's host offset, or -1 for a rewrite of an allocated cluster. */
  private async writeCluster(guest: number, chunk: Buffer): Promise<number> {
    const l2 = (await this.l2For(guest, true))!;
    const l2i = Math.floor(guest / this.clusterSize) % this.l2Entries;
    const old = l2.buf.readBigUInt64BE(l2i * 8);
    const oldHost = Number(old & 0x00fffffffffffe00n);
    this.dataBytes += chunk.length;
    if (oldHost !== 0) {
      // Rewriting a cluster: reuse its host cluster, keep the entry (clear a zero flag if any).
      if (this.batchLen > 0 && oldHost >= this.batchHost && oldHost < this.batchHost + this.batchLen) {
        chunk.copy(this.batchBuf!, oldHost - this.batchHost);
      } else {
        await this.flushBatch(); // a write in flight may hold this cluster: order matters
        await this.pwrite(chunk, oldHost);
      }
      if (old & 1n) {
        l2.buf.writeBigUInt64BE(BigInt(oldHost) | L2E_COPIED, l2i * 8);
        l2.dirty = true;
      }
      return -1;
    }
    const host = this.allocCluster();
    l2.buf.writeBigUInt64BE(BigInt(host) | L2E_COPIED, l2i * 8);
    l2.dirty = true;
    const cap = Math.max(WRITE_BATCH, this.clusterSize);
    if (!(this.batchLen > 0 && this.batchHost + this.batchLen === host && this.batchLen + chunk.length <= cap)) {
      await this.flushBatch(false);
      this.batchBuf = this.batchBuffer();
      this.batchHost = host;
    }
    // The one copy: the caller may reuse its buffer as soon as we return.
    chunk.copy(this.batchBuf!, this.batchLen);
    this.batchLen += chunk.length;
    if (this.batchLen >= cap) await this.flushBatch(false);
    return host;
  }

  /**
   * Marks a cluster-aligned range as reading zeros (v3 zero clusters, no host space). A previously
   * written cluster in the range becomes a preallocated zero cluster, which QEMU accepts.
   */
  async writeZero(guest: number, length: number): Promise<void> {
    this.checkRange(guest, length);
    const cs = this.clusterSize;
    const end = guest + length;
    for (let g = guest; g < end; g += cs) {
      const l2 = (await this.l2For(g, true))!;
      const l2i = Math.floor(g / cs) % this.l2Entries;
      const old = l2.buf.readBigUInt64BE(l2i * 8);
      const oldHost = old & 0x00fffffffffffe00n;
      l2.buf.writeBigUInt64BE(oldHost === 0n ? 1n : oldHost | L2E_COPIED | 1n, l2i * 8);
      l2.dirty = true;
    }
  }

  /**
   * Writes the L1 table and refcounts, fsyncs, and renames the image into place. `durable: false`
   * leaves both fsyncs (the image's and its directory's) to a caller that makes many images durable
   * together (syncFiles) before anything refers to them.
   */
  async finish(opts: { durable?: boolean } = {}): Promise<void> {
    const durable = opts.durable ?? true;
    try {
      await this.flushBatch();
      await this.syncing;
      await this.asked;
      this.releaseBuffers();
      for (const t of this.l2Cache.values()) if (t.dirty) await this.pwrite(t.buf, t.host);
      this.l2Cache.clear();
      const l1 = Buffer.alloc(this.l1.length * 8);
      for (let i = 0; i < this.l1.length; i++) l1.writeBigUInt64BE(this.l1[i]!, i * 8);
      if (l1.length) await this.pwrite(l1, this.l1Offset);
      await this.writeRefcounts();
      if (durable) await this.fh.sync();
      await this.fh.close();
      this.finished = true;
    } catch (err) {
      await this.abort();
      throw err;
    }
    try {
      if (!this.inPlace) await rename(this.tmpPath, this.path);
      if (durable) await fsyncDir(path.dirname(this.path));
    } catch (err) {
      await unlink(this.tmpPath).catch(() => undefined);
      throw ioError(err, 'cannot move image into place', this.path);
    }
  }

  /**
   * Every cluster below `next` is in use exactly once. The refcount blocks and table go after them; their
   * own count depends on the total, so iterate to the fixed point (converges in two or three rounds).
   */
  private async writeRefcounts(): Promise<void> {
    const cs = this.clusterSize;
    const perBlock = (cs * 8) / (1 << REFCOUNT_ORDER);
    const used = this.next / cs;
    let blocks = 0;
    let tableClusters = 0;
    for (;;) {
      const total = used + blocks + tableClusters;
      const nb = Math.ceil(total / perBlock);
      const nt = Math.ceil((nb * 8) / cs);
      if (nb === blocks && nt === tableClusters) break;
      blocks = nb;
      tableClusters = nt;
    }
    const total = used + blocks + tableClusters;
    const blocksAt = this.next;
    const tableAt = blocksAt + blocks * cs;
    // Refcount blocks: entries for clusters [0, total) are 1. Written block by block to bound memory.
    const block = Buffer.alloc(cs);
    for (let b = 0; b < blocks; b++) {
      const first = b * perBlock;
      const n = Math.min(perBlock, total - first);
      block.fill(0);
      for (let i = 0; i < n; i++) block.writeUInt16BE(1, i * 2);
      await this.pwrite(block, blocksAt + b * cs);
    }
    const table = Buffer.alloc(tableClusters * cs);
    for (let b = 0; b < blocks; b++) table.writeBigUInt64BE(BigInt(blocksAt + b * cs), b * 8);
    await this.pwrite(table, tableAt);
    this.next = tableAt + tableClusters * cs;
    const hdr = Buffer.alloc(12);
    hdr.writeBigUInt64BE(BigInt(tableAt), 0);
    hdr.writeUInt32BE(tableClusters, 8);
    await this.pwrite(hdr, 48);
  }

  /**
   * Makes every data cluster handed to the kernel so far durable (one datasync, started now) and
   * resolves with the host offset below which they all lie: a caller that noted where its blocks went
   * (write()'s host offsets) may vouch for those below it. Runs beside the writes, not in their way.
   */
  syncFlushed(): Promise<number> {
    if (this.finished) return Promise.reject(new CloneboxError('INTERNAL', `image already finished, ${this.path}`));
    const end = this.flushedEnd;
    const p = this.asked.then(async () => {
      try {
        await this.fh.datasync();
      } catch (err) {
        throw ioError(err, 'cannot sync image', this.tmpPath);
      }
      return end;
    });
    this.asked = p.catch(() => undefined);
    return p;
  }

  /**
   * Reads back `length` bytes of data written at host offset `host` (as write() returned it). What is
   * not on the file yet comes from memory: the filling batch and the batch being written (a block may
   * lie across both, or across the file and a batch), laid over what the file gives. Nothing is
   * drained: a sync pull reads back every block its chain uses twice, and draining the batch for each
   * made the writer wait for a 4 MiB write per block (bench/README.md, "The pull's read-backs").
   * Not to be called while a write() is pending.
   */
  async readBack(host: number, length: number): Promise<Buffer> {
    if (this.finished) throw new CloneboxError('INTERNAL', `image already finished, ${this.path}`);
    if (!Number.isSafeInteger(host) || host < 0 || !Number.isSafeInteger(length) || length < 0 || host + length > this.next) {
      throw new CloneboxError('INTERNAL', `read back of ${length} bytes at ${host} is outside the data written, ${this.path}`);
    }
    // Taken before any await: a write finishing meanwhile leaves its buffer as it is (no write() can
    // start a new batch before this returns), so laying these over the file's bytes stays right.
    const flying = this.flying;
    const batch = this.batchLen > 0 ? { buf: this.batchBuf!, host: this.batchHost, len: this.batchLen } : null;
    const buf = Buffer.allocUnsafe(length);
    const inMemory = (m: { host: number; len: number } | null) => m !== null && m.host <= host && host + length <= m.host + m.len;
    if (!inMemory(flying) && !inMemory(batch)) {
      // Past the end of the file reads as zeros here: those bytes are in a batch, laid over below.
      if (this.backReads.wants(length)) this.backReads.run(() => preadSync(this.fh.fd, buf, host, this.tmpPath));
      else {
        let got = 0;
        while (got < length) {
          let n: number;
          try {
            ({ bytesRead: n } = await this.fh.read(buf, got, length - got, host + got));
          } catch (err) {
            throw ioError(err, 'cannot read image', this.tmpPath);
          }
          if (n === 0) break;
          got += n;
        }
        buf.fill(0, got);
      }
    }
    for (const m of [flying, batch]) {
      if (!m) continue;
      const from = Math.max(host, m.host);
      const to = Math.min(host + length, m.host + m.len);
      if (from < to) m.buf.copy(buf, from - host, from - m.host, to - m.host);
    }
    return buf;
  }

  /**
   * Stops without finishing and leaves the file for the caller (its blocks may still be read back,
   * sync/placed.ts salvages them): the data handed in so far is written out, nothing else. Safe to
   * call more than once; the caller removes the file.
   */
  async abandon(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    await this.flushBatch(true).catch(() => undefined);
    await this.syncing?.catch(() => undefined);
    await this.asked;
    this.releaseBuffers();
    await this.fh.close().catch(() => undefined);
  }

  /** Removes the temporary file; safe to call more than once. */
  async abort(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    await this.fh.close().catch(() => undefined);
    await unlink(this.tmpPath).catch(() => undefined);
  }
}

function buildHeader(cs: number, vs: number, l1Size: number, backing: string | null, backingFormat: string | null): Buffer {
  const buf = Buffer.alloc(cs);
  buf.writeUInt32BE(QCOW2_MAGIC, 0);
  buf.writeUInt32BE(3, 4);
  buf.writeUInt32BE(Math.log2(cs), 20);
  buf.writeBigUInt64BE(BigInt(vs), 24);
  buf.writeUInt32BE(0, 32);
  buf.writeUInt32BE(l1Size, 36);
  buf.writeBigUInt64BE(BigInt(l1Size ? cs : 0), 40);
  // refcount table offset/clusters are filled in by finish().
  buf.writeBigUInt64BE(0n, 72); // incompatible
  buf.writeBigUInt64BE(0n, 80); // compatible
  buf.writeBigUInt64BE(0n, 88); // autoclear
  buf.writeUInt32BE(REFCOUNT_ORDER, 96);
  buf.writeUInt32BE(HEADER_LENGTH, 100);
  buf.writeUInt8(0, 104); // compression type zlib
  let off = HEADER_LENGTH;
  if (backing !== null && backingFormat) {
    const fmt = Buffer.from(backingFormat, 'utf8');
    buf.writeUInt32BE(EXT_BACKING_FORMAT, off);
    buf.writeUInt32BE(fmt.length, off + 4);
    fmt.copy(buf, off + 8);
    off += 8 + ((fmt.length + 7) & ~7);
  }
  buf.writeUInt32BE(0, off); // end of extensions
  buf.writeUInt32BE(0, off + 4);
  off += 8;
  if (backing !== null) {
    const name = Buffer.from(backing, 'utf8');
    if (off + name.length > cs) throw new CloneboxError('USAGE', `backing file name does not fit in the header cluster, ${backing}`);
    name.copy(buf, off);
    buf.writeBigUInt64BE(BigInt(off), 8);
    buf.writeUInt32BE(name.length, 16);
  }
  return buf;
}
