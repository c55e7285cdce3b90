/**
 * The frame store of bundle decoding (decode.ts): frames are decompressed and hashed by the worker
 * pool, every block checked against its id, and the block table kept (block number → frame, offset,
 * length, SHA-256). For an import, a block placed again later needs its bytes: from a cache of recent
 * raw frames, read back from where the sink wrote it, or by decoding its frame again (from the bundle
 * file, or from the import's spool when the bundle came through a pipe).
 */
import { createHash } from 'node:crypto';
import type { WorkerReply } from '../content/worker.js';
import type { WorkerPool } from '../content/workers.js';
import { CloneboxError } from '../errors.js';
import { blockId } from './crypto.js';
import { BLOCK_SIZE, type Codec, FRAME_TARGET } from './format.js';
import type { PackRecord } from './packs.js';
import { type BundleReader, corrupt } from './reader.js';

type FrameRecord = Extract<PackRecord, { type: 'frame' }>;

/** A frame's raw bytes and its blocks' SHA-256s, or null when it does not decode to its size. */
export type Decoded = { raw: Buffer; shas: Buffer } | null;

/** Where the frame store gets earlier frames back (a subset of BundleSink). */
export interface FrameSource {
  storedBytes?(frame: number): Promise<Buffer>;
  readBack?(block: number, length: number): Buffer | null;
  canReadBack?(block: number): boolean;
}

/** Recently used raw frames, newest last, within a byte budget. */
class FrameCache {
  private readonly map = new Map<number, Buffer>();
  private bytes = 0;
  constructor(
    private readonly budget: number,
    private readonly evicted: (raw: Buffer) => void,
  ) {}
  get(n: number): Buffer | undefined {
    const b = this.map.get(n);
    if (b) {
      this.map.delete(n);
      this.map.set(n, b);
    }
    return b;
  }
  has(n: number): boolean {
    return this.map.has(n);
  }
  put(n: number, raw: Buffer): void {
    this.map.set(n, raw);
    this.bytes += raw.length;
    while (this.bytes > this.budget && this.map.size > 1) {
      const [k, v] = this.map.entries().next().value!;
      this.map.delete(k);
      this.bytes -= v.length;
      this.evicted(v);
    }
  }
}

/** Growable table of 32-byte rows. */
class Rows32 {
  b = Buffer.alloc(32 * 1024);
  n = 0;
  push(v: Uint8Array): void {
    if ((this.n + 1) * 32 > this.b.length) {
      const c = Buffer.alloc(this.b.length * 2);
      this.b.copy(c);
      this.b = c;
    }
    this.b.set(v, this.n * 32);
    this.n++;
  }
  row(i: number): Buffer {
    return this.b.subarray(i * 32, i * 32 + 32);
  }
}

/** Growable u32 column. */
class U32s {
  a = new Uint32Array(1024);
  n = 0;
  push(v: number): void {
    if (this.n === this.a.length) {
      const b = new Uint32Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n++] = v;
  }
}

// Stored bytes and raw frames cross to a worker in buffers that come back and are used again.
const STORED_SIZE = 3 * 1024 * 1024;
const RAW_SIZE = FRAME_TARGET + BLOCK_SIZE;
// Pools as deep as the frames in flight: every fresh buffer costs a page fault per 4 KiB when first
// touched, and shallow pools made an import fault in a large share of its data again (bench/README.md).
const POOL_MAX = 12;
/** Budget of the raw-frame cache (import only). */
const CACHE_BYTES = 16 * 1024 * 1024;

export class FrameStore {
  /** Frames registered so far (the next frame's number). */
  frames = 0;
  private readonly blkFrame = new U32s();
  private readonly blkAt = new U32s();
  private readonly blkLen = new U32s();
  private readonly shas = new Rows32();
  private readonly storedPool: ArrayBuffer[] = [];
  private readonly rawPool: ArrayBuffer[] = [];
  private readonly cache: FrameCache;
  private readonly frameInfo: { codec: Codec; rawLength: number; lengths: Uint32Array; first: number; pack: number; at: number; stored: number }[] = [];
  private readonly pending = new Map<number, Promise<Buffer>>();

  constructor(
    private readonly r: BundleReader,
    private readonly pool: WorkerPool,
    private readonly source: FrameSource,
  ) {
    // Evicted frames' memory is reused, so evictions happen only in the record loop (put), never while
    // a sink is still using a block's bytes (reloads land in `pending` and enter the cache when used).
    this.cache = new FrameCache(CACHE_BYTES, (raw) => this.giveRaw(raw));
  }

  /** Blocks registered so far. */
  get blocks(): number {
    return this.blkLen.n;
  }

  frameOf(block: number): number {
    return this.blkFrame.a[block]!;
  }

  lengthOf(block: number): number {
    return this.blkLen.a[block]!;
  }

  shaOf(block: number): Buffer {
    return this.shas.row(block);
  }

  /** Decompresses and hashes a frame on the pool. */
  decode(codec: Codec, stored: Buffer, rawLength: number, lengths: Uint32Array): Promise<Decoded> {
    // Frames of a pack lie in shared memory (BundleReader.turn) and are decoded in place; the pack's
    // buffer is not reused before every frame of it has come back. Re-read frames are copied over.
    let src: ArrayBuffer | SharedArrayBuffer;
    let offset = 0;
    const transfer: ArrayBuffer[] = [];
    if (stored.buffer instanceof SharedArrayBuffer) {
      src = stored.buffer;
      offset = stored.byteOffset;
    } else {
      const ab = stored.length <= STORED_SIZE ? (this.storedPool.pop() ?? new ArrayBuffer(STORED_SIZE)) : new ArrayBuffer(stored.length);
      stored.copy(Buffer.from(ab));
      src = ab;
      transfer.push(ab);
    }
    // Raw frames decode into pooled memory: given back on eviction (import) or at once (verify).
    const output = rawLength <= RAW_SIZE ? (this.rawPool.pop() ?? new ArrayBuffer(RAW_SIZE)) : undefined;
    if (output) transfer.push(output);
    const pool = this.pool;
    const msg = {
      op: 'decode' as const,
      id: pool.newId(),
      codec,
      stored: src,
      offset,
      length: stored.length,
      rawLength,
      lengths,
      ...(output ? { output } : {}),
    };
    return pool.request(pool.pick(), msg, transfer).then((rep) => {
      if ('stored' in rep && rep.stored instanceof ArrayBuffer && rep.stored.byteLength === STORED_SIZE && this.storedPool.length < POOL_MAX)
        this.storedPool.push(rep.stored);
      if ('bad' in rep) {
        if (rep.output) this.rawPool.push(rep.output);
        return null;
      }
      const r = rep as Extract<WorkerReply, { raw: ArrayBuffer }>;
      return { raw: Buffer.from(r.raw, 0, r.rawLength), shas: Buffer.from(r.shas) };
    });
  }

  /** Checks a decoded frame's blocks against their ids and numbers them on. */
  addBlocks(rec: FrameRecord, d: NonNullable<Decoded>, where: string): void {
    const sh = d.shas;
    let at = 0;
    for (let i = 0; i < rec.lengths.length; i++) {
      const sha = sh.subarray(i * 32, i * 32 + 32);
      if (!blockId(sha, this.r.idk).equals(rec.ids[i]!)) {
        throw corrupt(`${where}: block ${this.blkLen.n} does not match its id`, this.r.file);
      }
      if (this.blkLen.n >= 0xffffffff) throw corrupt('too many blocks', this.r.file);
      this.blkFrame.push(this.frames);
      this.blkAt.push(at);
      this.blkLen.push(rec.lengths[i]!);
      this.shas.push(sha);
      at += rec.lengths[i]!;
    }
  }

  /**
   * Ends the frame addBlocks() registered. `keep` (import): its raw bytes stay in the cache and where
   * to find it again is noted; else its memory goes back to the pool at once.
   */
  endFrame(rec: FrameRecord, d: NonNullable<Decoded>, keep: boolean, pack: number, payload: Buffer): void {
    if (keep) {
      this.frameInfo[this.frames] = {
        codec: rec.codec,
        rawLength: rec.rawLength,
        lengths: Uint32Array.from(rec.lengths),
        first: this.blkLen.n - rec.lengths.length,
        pack,
        at: rec.stored.byteOffset - payload.byteOffset,
        stored: rec.stored.length,
      };
      this.cache.put(this.frames, d.raw);
    } else {
      this.giveRaw(d.raw);
    }
    this.frames++;
  }

  /** Whether a block's bytes are at hand without decoding its frame again. */
  isNear(block: number): boolean {
    return this.source.canReadBack?.(block) ?? false;
  }

  /** Starts getting frame `f` back, when it is not cached (read-ahead of blocks placed again). */
  prefetch(f: number): void {
    if (!this.cache.has(f)) void this.reload(f);
  }

  /**
   * The bytes of block `n` (`len` bytes) for the sink. `beforeReload` runs when the frame must be
   * decoded again (the caller starts reading ahead from there).
   */
  async blockBytes(n: number, len: number, beforeReload: (frame: number) => void): Promise<Buffer> {
    const f = this.blkFrame.a[n]!;
    const hit = this.cache.get(f);
    if (hit) return hit.subarray(this.blkAt.a[n]!, this.blkAt.a[n]! + len);
    const back = this.source.readBack?.(n, len) ?? null;
    if (back) {
      if (!createHash('sha256').update(back).digest().equals(this.shas.row(n))) {
        throw new CloneboxError('BUNDLE_CHANGED', `a temporary file of this import changed while importing (block ${n} read back differs), ${this.r.file}`, {
          hint: 'nothing was imported; check the disk and that nothing else writes to the destination directory',
        });
      }
      return back;
    }
    beforeReload(f);
    const raw = await this.frameRaw(f);
    const at = this.blkAt.a[n]!;
    return raw.subarray(at, at + len);
  }

  private giveRaw(raw: Buffer): void {
    if (raw.buffer.byteLength === RAW_SIZE && this.rawPool.length < POOL_MAX) this.rawPool.push(raw.buffer as ArrayBuffer);
  }

  private reload(f: number): Promise<Buffer> {
    let p = this.pending.get(f);
    if (!p) {
      const info = this.frameInfo[f]!;
      const r = this.r;
      // From the bundle file itself when it is one, else from the import's spool; checked by block id.
      const stored = r.canReread ? r.reread(info.pack, info.at, info.stored) : this.source.storedBytes!(f);
      p = stored
        .then((b) => this.decode(info.codec, b, info.rawLength, info.lengths))
        .then((d) => {
          const changed = () =>
            new CloneboxError('BUNDLE_CHANGED', `the bundle (or a temporary file) changed while importing, ${r.file}`, {
              hint: 'nothing was imported; do not modify the bundle while it is being imported',
            });
          if (!d) throw changed();
          for (let i = 0; i < info.lengths.length; i++) {
            if (!d.shas.subarray(i * 32, i * 32 + 32).equals(this.shas.row(info.first + i))) throw changed();
          }
          return d.raw;
        });
      p.catch(() => undefined);
      this.pending.set(f, p);
    }
    return p;
  }

  private async frameRaw(f: number): Promise<Buffer> {
    const hit = this.cache.get(f);
    if (hit) return hit;
    const raw = await this.reload(f);
    this.pending.delete(f);
    this.cache.put(f, raw);
    return raw;
  }
}
