/**
 * Streaming read of all data ONE qcow2 file holds (never its backing file), in guest order, for the
 * pipelines that consume whole layers (export, dedup statistics, the benches).
 *
 * `Qcow2Image.runs()` + `readRun()` issue one read per run and wait for it. That is right for random
 * access but slow for whole layers: a layer a VM wrote to is thousands of scattered clusters, every
 * compressed cluster is a run of its own, and each asynchronous read is a round trip through the libuv
 * thread pool that costs more CPU than copying a 64 KiB cluster. This module plans the reads instead:
 *
 *  - consecutive pieces (in guest order) whose bytes follow each other on the host, possibly with a
 *    small gap, are fetched with ONE read: compressed clusters written by `qemu-img convert -c`, and
 *    data clusters separated only by holes in the guest, are usually host-adjacent;
 *  - large reads go to the thread pool and may run ahead of the consumer (`readAheadBytes`), so the
 *    copy overlaps with decompression and with whatever the consumer does; small reads (scattered
 *    clusters) are done in place with a blocking pread, which is cheaper than a thread-pool round trip
 *    when the data is in the page cache (see `syncReadMaxBytes`);
 *  - compressed clusters are decompressed on the calling thread as soon as their batch is read:
 *    deflate with one output buffer per cluster, zstd with one reused context straight into the
 *    batch's output buffer;
 *  - optionally (`reuseBuffers`), batches live in one ring buffer instead of fresh memory.
 *
 * Memory is bounded by the options, not by the image: the batches in flight (the one being consumed
 * included) hold at most `readAheadBytes`, or one batch when that is more; one batch is at most
 * `maxBatchBytes` of host bytes plus at most `maxBatchBytes` of decompressed clusters.
 *
 * Validation is the reader's: every run comes from `Qcow2Image.runs()`, which checks each L1/L2 entry
 * against the file; compressed input is clamped to the file and to cluster size + 2 sectors as in
 * `readRun()`; bytes past the end of the file read as zeros (as QEMU reads them); a compressed cluster
 * that does not decompress to exactly one cluster is a QCOW2_CORRUPT error naming the file, or
 * QCOW2_TRUNCATED when the file ends inside the cluster's compressed bytes.
 */
import { close as closeFile, read as fsRead, open as openFile } from 'node:fs';
import { ioError } from '../errors.js';
import { BlockingReads, preadSync } from './blocking-reads.js';
import { decodeCluster } from './compressed.js';
import type { Qcow2Image, Run } from './reader.js';

export interface DataChunk {
  /** Guest offset of the first byte. */
  offset: number;
  /** The guest bytes at [offset, offset + data.length). */
  data: Buffer;
}

export interface StreamOptions {
  /** Guest range to read (default: the whole disk). Runs are clipped to it. */
  start?: number;
  end?: number;
  /** Largest host read, and most decompressed bytes, of one batch (default 4 MiB; at least 2 clusters + 1 KiB). */
  maxBatchBytes?: number;
  /** Unwanted host bytes one read may span to join two pieces (default 64 KiB; 0 joins only touching pieces). */
  maxGapBytes?: number;
  /**
   * Bytes of batches in flight, the one being consumed included (default 4 MiB; one batch is always
   * allowed). More lets reads run further ahead of a slow consumer, at the cost of memory: with fresh
   * buffers every extra MiB in flight is new memory to fault in, and 16 MiB measured slower than 4.
   */
  readAheadBytes?: number;
  /**
   * Batches of at most this many host bytes are read with a blocking pread on the calling thread
   * instead of through the libuv thread pool (default 256 KiB; 0: never). A thread-pool round trip
   * costs more CPU than copying a few hundred KiB from the page cache, and a layer's scattered
   * clusters make thousands of such reads; large batches still go to the pool, where the copy overlaps
   * with the consumer. Once enough blocking reads went to the disk, not the page cache, the stream
   * stops using them: from the disk, several reads in flight beat one at a time (blocking-reads.ts).
   * Set 0 in a process whose event loop must never wait for the disk.
   */
  syncReadMaxBytes?: number;
  /**
   * Keep batches in one ring buffer reused for the whole stream instead of fresh memory for each batch
   * (faster: no page faults on new memory, no garbage). A chunk's `data` is then only valid until the
   * next chunk is requested (the next loop iteration): copy what you keep, and do not hand it to
   * anything asynchronous that outlives the iteration. Default false: chunks stay valid for good
   * (they may be views into a larger batch buffer, which a kept chunk keeps alive).
   */
  reuseBuffers?: boolean;
  /**
   * Yield compressed clusters only, skipping plain data runs (a caller that reads plain runs itself,
   * straight into its own buffers, with `HostReader`).
   */
  compressedOnly?: boolean;
}

const STREAM_DEFAULTS = {
  maxBatchBytes: 4 * 1024 * 1024,
  maxGapBytes: 64 * 1024,
  readAheadBytes: 4 * 1024 * 1024,
  syncReadMaxBytes: 256 * 1024,
} as const;

/** One data run and where its bytes are on the host. */
interface Piece {
  offset: number;
  length: number;
  host: number;
  hostLength: number;
  /** For a compressed cluster: where the run starts inside the decompressed cluster; else -1. */
  skip: number;
  /** For a compressed cluster: the file ends inside the descriptor's range (a failure means truncation). */
  cut: boolean;
}

/** Pieces fetched with one read. */
interface Batch {
  host: number;
  hostEnd: number;
  /** Bytes for decompressed clusters (one cluster per compressed piece). */
  outBytes: number;
  /** Guest bytes the batch yields. */
  guestBytes: number;
  pieces: Piece[];
}

interface Launched {
  done: Promise<DataChunk[]>;
  /** Bytes of memory the batch holds (host span + decompressed clusters). */
  bytes: number;
}

/**
 * Yields every data byte of `img` in guest order: one chunk per data run (zero and unallocated ranges
 * hold no bytes and are skipped; `img.extents()` / `img.runs()` tell where they are). See
 * `StreamOptions.reuseBuffers` for how long a chunk's bytes stay valid. Breaking out of the loop early
 * is fine: reads still in flight are awaited before the generator returns.
 */
export async function* readData(img: Qcow2Image, opts: StreamOptions = {}): AsyncGenerator<DataChunk> {
  const cs = img.clusterSize;
  const start = Math.max(0, opts.start ?? 0);
  const end = Math.min(opts.end ?? img.virtualSize, img.virtualSize);
  const maxBatch = Math.max(opts.maxBatchBytes ?? STREAM_DEFAULTS.maxBatchBytes, 2 * cs + 1024);
  const maxGap = Math.max(0, opts.maxGapBytes ?? STREAM_DEFAULTS.maxGapBytes);
  const readAhead = Math.max(0, opts.readAheadBytes ?? STREAM_DEFAULTS.readAheadBytes);
  const syncReadMax = Math.max(0, opts.syncReadMaxBytes ?? STREAM_DEFAULTS.syncReadMaxBytes);
  // A batch needs at most maxBatch host bytes + maxBatch decompressed bytes. The ring holds the batches
  // in flight (the read-ahead, or one batch) and what wrapping around can waste.
  const ring = opts.reuseBuffers ? new Ring(readAhead + 2 * 2 * maxBatch) : null;
  const fileSize = img.fileSize;
  const io = await HostReader.open(img, syncReadMax);
  const compressedOnly = opts.compressedOnly === true;

  const inFlight: Launched[] = [];
  let inFlightBytes = 0;

  /** Starts reading `b` if the read-ahead budget allows it (always when nothing is in flight). */
  const tryLaunch = (b: Batch): boolean => {
    const bytes = b.hostEnd - b.host + b.outBytes;
    if (inFlight.length > 0 && inFlightBytes + bytes > readAhead) return false;
    let mem: Buffer | null = null;
    if (ring) {
      mem = ring.alloc(bytes);
      // Cannot happen with the ring's size; if it did, consuming a batch frees room, and with nothing
      // in flight fresh memory does.
      if (!mem && inFlight.length > 0) return false;
    }
    const done = runBatch(img, io, b, mem);
    done.catch(() => undefined); // awaited in order below; this only keeps a failure from being "unhandled"
    inFlight.push({ done, bytes });
    inFlightBytes += bytes;
    return true;
  };

  try {
    // runs() itself when the whole disk is wanted (one async generator less per run), else clipped runs.
    const source = start === 0 && end === img.virtualSize ? img.runs() : img.runsIn(start, end);
    let batch: Batch | null = null;
    for await (const r of source) {
      if (r.kind !== 'data' || (compressedOnly && !r.compressed)) continue;
      for (const p of piecesOf(r, cs, fileSize, maxBatch)) {
        const pOut = p.skip >= 0 ? cs : 0;
        if (batch) {
          const last = batch.pieces[batch.pieces.length - 1]!;
          const newEnd = Math.max(batch.hostEnd, p.host + p.hostLength);
          if (
            p.host >= last.host &&
            p.host <= batch.hostEnd + maxGap &&
            newEnd - batch.host <= maxBatch &&
            batch.outBytes + pOut <= maxBatch &&
            batch.guestBytes + p.length <= maxBatch
          ) {
            batch.pieces.push(p);
            batch.hostEnd = newEnd;
            batch.outBytes += pOut;
            batch.guestBytes += p.length;
            continue;
          }
          while (!tryLaunch(batch)) yield* consumeHead();
        }
        batch = { host: p.host, hostEnd: p.host + p.hostLength, outBytes: pOut, guestBytes: p.length, pieces: [p] };
      }
    }
    if (batch) while (!tryLaunch(batch)) yield* consumeHead();
    while (inFlight.length) yield* consumeHead();
  } finally {
    // Early exit (break, error): let reads still in flight finish before the caller may close the file.
    await Promise.allSettled(inFlight.map((f) => f.done));
    await io.close();
  }

  async function* consumeHead(): AsyncGenerator<DataChunk> {
    const head = inFlight[0]!;
    const chunks = await head.done;
    yield* chunks;
    // The consumer asked for the chunk after this batch's last one: the batch's memory is free.
    inFlight.shift();
    inFlightBytes -= head.bytes;
    ring?.release();
  }
}

/** The pieces of a data run: the run itself, or for a plain run longer than `max`, slices of `max`. */
function piecesOf(r: Run, cs: number, fileSize: number, max: number): Piece[] {
  if (r.compressed) {
    const c = r.compressed;
    // As Qcow2Image.readRun: the descriptor's length is clamped to the file and to what one cluster
    // can need, before anything is allocated.
    const hostLength = Math.max(0, Math.min(c.maxBytes, fileSize - c.offset, cs + 512 * 2));
    const cut = hostLength < c.maxBytes && hostLength < cs + 512 * 2;
    return [{ offset: r.offset, length: r.length, host: c.offset, hostLength, skip: r.offset % cs, cut }];
  }
  const out: Piece[] = [];
  for (let o = 0; o < r.length; o += max) {
    const n = Math.min(max, r.length - o);
    out.push({ offset: r.offset + o, length: n, host: r.hostOffset! + o, hostLength: n, skip: -1, cut: false });
  }
  return out;
}

/** Reads one batch (into `mem` when given) and decompresses its compressed clusters. */
async function runBatch(img: Qcow2Image, io: HostReader, b: Batch, mem: Buffer | null): Promise<DataChunk[]> {
  const cs = img.clusterSize;
  const span = b.hostEnd - b.host;
  const buf = mem ? mem.subarray(0, span) : Buffer.allocUnsafe(span);
  await io.read(buf, b.host);
  const zstd = img.header.compressionType === 'zstd';
  let outBuf: Buffer | null = null;
  let outPos = 0;
  if (b.outBytes > 0 && zstd) outBuf = mem ? mem.subarray(span, span + b.outBytes) : Buffer.allocUnsafe(b.outBytes);
  const out: DataChunk[] = new Array(b.pieces.length);
  for (let i = 0; i < b.pieces.length; i++) {
    const p = b.pieces[i]!;
    const src = buf.subarray(p.host - b.host, p.host - b.host + p.hostLength);
    let data: Buffer;
    if (p.skip < 0) {
      data = src;
    } else {
      // zstd decompresses into the batch's memory; deflate hands back fresh memory for each cluster
      // (nothing to put in the ring).
      let dst: Buffer | undefined;
      if (outBuf) {
        dst = outBuf.subarray(outPos, outPos + cs);
        outPos += cs;
      }
      const cluster = decodeCluster(img.header.compressionType, src, cs, { path: img.path, host: p.host, cut: p.cut }, dst);
      data = cluster.subarray(p.skip, p.skip + p.length);
    }
    out[i] = { offset: p.offset, data };
  }
  return out;
}

/**
 * A FIFO ring of memory: batches take slices in launch order and give them back in the same order.
 * `alloc` returns null when the slice does not fit until older batches are released.
 */
class Ring {
  private buf: Buffer | null = null;
  private readonly live: { start: number; end: number }[] = [];
  constructor(private readonly size: number) {}

  alloc(n: number): Buffer | null {
    if (n > this.size) return null;
    this.buf ??= Buffer.allocUnsafe(this.size);
    let s: number;
    if (this.live.length === 0) {
      s = 0;
    } else {
      const tail = this.live[0]!.start;
      const last = this.live[this.live.length - 1]!;
      const wrapped = last.start < tail;
      if (wrapped) {
        if (last.end + n > tail) return null;
        s = last.end;
      } else if (last.end + n <= this.size) {
        s = last.end;
      } else if (n <= tail) {
        s = 0;
      } else {
        return null;
      }
    }
    this.live.push({ start: s, end: s + n });
    return this.buf.subarray(s, s + n);
  }

  /** Frees the oldest slice. */
  release(): void {
    this.live.shift();
  }
}

/**
 * Reads host bytes of one image: small reads with a blocking pread on the calling thread, large ones in
 * the thread pool (see `StreamOptions.syncReadMaxBytes`). What lies past the end of the file reads as
 * zeros, as QEMU reads it.
 */
export class HostReader {
  private readonly blockingReads: BlockingReads;

  private constructor(
    private readonly file: string,
    private readonly fd: number,
    syncReadMax: number,
    private readonly closeFd: (() => Promise<void>) | null,
  ) {
    this.blockingReads = new BlockingReads(syncReadMax);
  }

  /** On the image's own descriptor when it exposes one, else on a descriptor of our own (closed by `close`). */
  static async open(img: Qcow2Image, syncReadMax: number = STREAM_DEFAULTS.syncReadMaxBytes): Promise<HostReader> {
    const fh = (img as unknown as { fh?: { fd?: unknown } }).fh;
    if (fh && typeof fh.fd === 'number' && fh.fd >= 0) return new HostReader(img.path, fh.fd, syncReadMax, null);
    const fd = await new Promise<number>((resolve, reject) => {
      openFile(img.path, 'r', (err, d) => (err ? reject(ioError(err, 'cannot open image', img.path)) : resolve(d)));
    });
    return new HostReader(img.path, fd, syncReadMax, () => new Promise<void>((resolve) => closeFile(fd, () => resolve())));
  }

  /** Whether reads up to the limit still block (false once the image proved not to be in the page cache). */
  get blocking(): boolean {
    return this.blockingReads.active;
  }

  /**
   * Fills `buf` with the bytes at host offset `pos`: blocking while the image is page-cached (once its
   * reads go to the disk, several in flight beat one at a time: blocking-reads.ts).
   */
  async read(buf: Buffer, pos: number): Promise<void> {
    if (!this.blockingReads.wants(buf.length)) return pread(this.fd, buf, pos, this.file);
    this.blockingReads.run(() => preadSync(this.fd, buf, pos, this.file));
  }

  async close(): Promise<void> {
    await this.closeFd?.();
  }
}

/** Reads `buf.length` bytes at `pos` in the thread pool; what lies past the end of the file reads as zeros. */
function pread(fd: number, buf: Buffer, pos: number, file: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      fsRead(fd, buf, done, buf.length - done, pos + done, (err, n) => {
        if (err) return reject(ioError(err, 'cannot read image', file));
        if (n === 0) {
          buf.fill(0, done);
          return resolve();
        }
        done += n;
        if (done >= buf.length) resolve();
        else step();
      });
    };
    if (buf.length === 0) resolve();
    else step();
  });
}
