/**
 * From layers to blocks: what a layer holds (its map, normalised to whole clusters), how data is cut
 * into blocks, the layer digest those blocks define, and the dedup index.
 *
 * A layer's map is a list of extents in guest order, each `data` or `zero`, starting at a multiple of
 * the layer's cluster size and ending at one (or at the virtual size); unallocated ranges are absent.
 * Data extents are cut into blocks at every multiple of BLOCK_SIZE (in guest offsets) and at the
 * extent's ends. This is exactly what an imported layer holds, so export, import and
 * src/snapshots/identity.ts all see the same map and compute the same digest.
 *
 * Normalisation: a plain layer's own runs are already whole clusters. Two cases are not:
 *  - extended L2 (subclusters): a cluster with any data, or a mix of zero and unallocated subclusters,
 *    becomes one data cluster whose bytes are read through the backing chain;
 *  - a root snapshot whose layer has a backing file outside clonebox (`resolved`): the layer stands for
 *    the whole disk, so the map is taken from the resolved chain, cluster by cluster the same way.
 */
import { createHash, type Hash } from 'node:crypto';
import { Chain } from '../qcow2/chain.js';
import { Qcow2Image } from '../qcow2/reader.js';
import { readData, type DataChunk } from '../qcow2/stream.js';
import { CloneboxError } from '../errors.js';
import { BLOCK_SIZE } from './format.js';

// ------------------------------------------------------------------------------------ layer digest

/**
 * SHA-256 over: "clonebox-layer-v1\n", u64 virtual size, u32 cluster size, then per extent in guest
 * order: zero → 'Z' u64 offset u64 length (adjacent zero extents merged), block → 'D' u64 offset
 * u32 length SHA-256(bytes).
 */
export class LayerDigest {
  private readonly h: Hash = createHash('sha256');
  private zero: { offset: number; length: number } | null = null;
  private readonly rec = Buffer.alloc(1 + 8 + 8 + 32);
  dataBytes = 0;
  zeroBytes = 0;
  blocks = 0;

  constructor(virtualSize: number, clusterSize: number) {
    const head = Buffer.alloc(18 + 12);
    head.write('clonebox-layer-v1\n', 0, 'latin1');
    writeU64(head, virtualSize, 18);
    head.writeUInt32BE(clusterSize, 26);
    this.h.update(head);
  }

  private flushZero(): void {
    const z = this.zero;
    if (!z) return;
    this.zero = null;
    const r = this.rec;
    r[0] = 0x5a; // 'Z'
    writeU64(r, z.offset, 1);
    writeU64(r, z.length, 9);
    this.h.update(r.subarray(0, 17));
  }

  addZero(offset: number, length: number): void {
    this.zeroBytes += length;
    if (this.zero && this.zero.offset + this.zero.length === offset) {
      this.zero.length += length;
      return;
    }
    this.flushZero();
    this.zero = { offset, length };
  }

  addBlock(offset: number, length: number, sha: Uint8Array): void {
    this.flushZero();
    this.dataBytes += length;
    this.blocks++;
    const r = this.rec;
    r[0] = 0x44; // 'D'
    writeU64(r, offset, 1);
    r.writeUInt32BE(length, 9);
    r.set(sha, 13);
    this.h.update(r.subarray(0, 45));
  }

  private done: Buffer | null = null;

  /** The digest (the same buffer on every later call; nothing may be added after the first). */
  digest(): Buffer {
    if (!this.done) {
      this.flushZero();
      this.done = this.h.digest();
    }
    return this.done;
  }
}

export function writeU64(b: Buffer, v: number, off: number): void {
  b.writeUInt32BE(Math.floor(v / 0x100000000), off);
  b.writeUInt32BE(v >>> 0, off + 4);
}

/** The canonical cut: a block starting at `offset` ends at the next multiple of BLOCK_SIZE (or earlier at the extent's end). */
export function blockEnd(offset: number): number {
  return offset - (offset % BLOCK_SIZE) + BLOCK_SIZE;
}

// ------------------------------------------------------------------------------------ dedup index

/**
 * Block id → block number, for millions of blocks in little memory: ids live in one growing buffer
 * (32 bytes per block, indexed by block number) and an open-addressing table of u32 slots points into
 * it. About 48 bytes per unique block; a JS Map of hex strings would take four times that.
 */
export class BlockIndex {
  private ids: Buffer = Buffer.alloc(32 * 1024);
  private table: Uint32Array = new Uint32Array(2048);
  private mask = 2047;
  size = 0;

  private slotHash(id: Uint8Array, at = 0): number {
    // Ids are hash outputs: any 4 of their bytes are uniformly distributed.
    return ((id[at]! << 24) | (id[at + 1]! << 16) | (id[at + 2]! << 8) | id[at + 3]!) >>> 0;
  }

  private equalsAt(n: number, id: Uint8Array): boolean {
    const base = n * 32;
    for (let i = 0; i < 32; i++) if (this.ids[base + i] !== id[i]) return false;
    return true;
  }

  /** The block number of `id`, or -1. */
  get(id: Uint8Array): number {
    let s = this.slotHash(id) & this.mask;
    for (;;) {
      const v = this.table[s]!;
      if (v === 0) return -1;
      if (this.equalsAt(v - 1, id)) return v - 1;
      s = (s + 1) & this.mask;
    }
  }

  /** Adds a new id (the caller checked it is absent) and returns its number. */
  add(id: Uint8Array): number {
    const n = this.size;
    if ((n + 1) * 32 > this.ids.length) {
      const bigger = Buffer.alloc(this.ids.length * 2);
      this.ids.copy(bigger);
      this.ids = bigger;
    }
    this.ids.set(id, n * 32);
    this.size++;
    if (this.size * 2 > this.table.length) this.grow();
    else this.insert(n);
    return n;
  }

  idOf(n: number): Buffer {
    return this.ids.subarray(n * 32, n * 32 + 32);
  }

  private insert(n: number): void {
    let s = this.slotHash(this.ids, n * 32) & this.mask;
    while (this.table[s] !== 0) s = (s + 1) & this.mask;
    this.table[s] = n + 1;
  }

  private grow(): void {
    this.table = new Uint32Array(this.table.length * 2);
    this.mask = this.table.length - 1;
    for (let n = 0; n < this.size; n++) this.insert(n);
  }
}

// ------------------------------------------------------------------------------------ layer reading

/**
 * Copies bytes [piece.offset + skip, + len) of a data piece into `buf` at `at`. Calls must come in
 * guest order (each piece's bytes from its start to its end, pieces one after the other).
 */
export type Fill = (buf: Buffer, at: number, skip: number, len: number) => Promise<void>;

export type Piece =
  | { kind: 'zero'; offset: number; length: number }
  | { kind: 'data'; offset: number; length: number; fill: Fill };

/** Slow-path data pieces are at most this long, so one chain read never needs more memory. */
const MAX_PIECE = 4 * 1024 * 1024;

export interface LayerSource {
  readonly virtualSize: number;
  readonly clusterSize: number;
  /** The layer's normalised map in guest order; data pieces' bytes are read through `fill`, in order. */
  pieces(): AsyncGenerator<Piece>;
  close(): Promise<void>;
}

/**
 * Opens a layer for reading its map. `resolved`: the layer stands for its whole backing chain (a root
 * snapshot on an external base image).
 */
export async function openLayer(file: string, resolved: boolean): Promise<LayerSource> {
  const img = await Qcow2Image.open(file);
  const vs = img.virtualSize;
  const cs = img.clusterSize;
  if (!resolved && !img.header.extendedL2) {
    // Fast path: the map from the layer's own runs, the bytes from the streaming reader (batched host
    // reads with read-ahead, one reused ring of buffers), copied straight into the caller's buffer.
    let chunks: AsyncGenerator<DataChunk> | null = null;
    let cur: DataChunk | null = null;
    const fillAt = async (buf: Buffer, at: number, from: number, len: number): Promise<void> => {
      chunks ??= readData(img, { reuseBuffers: true, maxBatchBytes: 1024 * 1024, readAheadBytes: 4 * 1024 * 1024 });
      let done = 0;
      while (done < len) {
        const g = from + done;
        while (!cur || g >= cur.offset + cur.data.length) {
          const r = await chunks.next();
          if (r.done) throw new CloneboxError('INTERNAL', `layer data ends before ${g}, ${file}`);
          cur = r.value;
        }
        if (g < cur.offset) throw new CloneboxError('INTERNAL', `layer data out of step at ${g}, ${file}`);
        const s = g - cur.offset;
        const n = Math.min(len - done, cur.data.length - s);
        cur.data.copy(buf, at + done, s, s + n);
        done += n;
      }
    };
    return {
      virtualSize: vs,
      clusterSize: cs,
      async *pieces() {
        for await (const r of img.runs()) {
          if (r.kind === 'zero') yield { kind: 'zero', offset: r.offset, length: r.length };
          else if (r.kind === 'data') {
            const base = r.offset;
            yield { kind: 'data', offset: r.offset, length: r.length, fill: (buf, at, skip, len) => fillAt(buf, at, base + skip, len) };
          }
        }
      },
      close: async () => {
        await chunks?.return(undefined);
        await img.close();
      },
    };
  }
  // Slow path: classify every cluster from a finer or deeper view, read data through the chain.
  let chain: Chain;
  try {
    chain = await Chain.open(file);
  } catch (err) {
    await img.close();
    throw err;
  }
  const fine = async function* (): AsyncGenerator<{ offset: number; length: number; kind: 'data' | 'zero' | 'unallocated' }> {
    if (resolved) {
      for await (const r of chain.resolve(0, vs)) {
        yield { offset: r.offset, length: r.length, kind: r.layer < 0 || r.run === null ? 'unallocated' : r.run.kind };
      }
    } else {
      for await (const r of img.runs()) yield { offset: r.offset, length: r.length, kind: r.kind };
    }
  };
  return {
    virtualSize: vs,
    clusterSize: cs,
    async *pieces() {
      for await (const e of normalise(fine(), cs, vs)) {
        if (e.kind === 'zero') {
          yield { kind: 'zero', offset: e.offset, length: e.length };
          continue;
        }
        for (let o = e.offset; o < e.offset + e.length; o += MAX_PIECE) {
          const base = o;
          const len = Math.min(MAX_PIECE, e.offset + e.length - o);
          yield {
            kind: 'data', offset: o, length: len,
            fill: async (buf, at, skip, n) => {
              (await chain.read(base + skip, n)).copy(buf, at);
            },
          };
        }
      }
    },
    close: async () => {
      await chain.close();
      await img.close();
    },
  };
}

/**
 * Turns a fine-grained, contiguous, sorted description of [0, vs) into whole-cluster extents: a
 * cluster entirely unallocated is dropped, entirely zero is zero, anything else is data. Adjacent
 * extents of one kind are merged. Ranges spanning many clusters are handled in one step.
 */
export async function* normalise(
  src: AsyncIterable<{ offset: number; length: number; kind: 'data' | 'zero' | 'unallocated' }>, cs: number, vs: number,
): AsyncGenerator<{ offset: number; length: number; kind: 'data' | 'zero' }> {
  let out: { offset: number; length: number; kind: 'data' | 'zero' } | null = null;
  const emit = function* (offset: number, length: number, kind: 'data' | 'zero' | 'unallocated') {
    if (kind === 'unallocated' || length === 0) return;
    if (out && out.kind === kind && out.offset + out.length === offset) {
      out.length += length;
      return;
    }
    if (out) yield out;
    out = { offset, length, kind };
  };
  // The cluster being assembled from partial pieces.
  let cur = -1;
  let mix = 0; // bit 1 data, 2 zero, 4 unallocated
  const classOf = (m: number): 'data' | 'zero' | 'unallocated' => (m & 1 || m === 6 ? 'data' : m === 2 ? 'zero' : 'unallocated');
  const bit = (k: string) => (k === 'data' ? 1 : k === 'zero' ? 2 : 4);
  for await (const p of src) {
    let off = p.offset;
    const end = Math.min(p.offset + p.length, vs);
    while (off < end) {
      const cStart = off - (off % cs);
      const cEnd = Math.min(cStart + cs, vs);
      if (off === cStart && end >= cEnd) {
        // Whole clusters from here: as many as the piece covers.
        const wholeEnd = end >= vs ? vs : end - (end % cs);
        yield* emit(cStart, wholeEnd - cStart, p.kind);
        off = wholeEnd;
        continue;
      }
      const c = cStart / cs;
      if (c !== cur) {
        cur = c;
        mix = 0;
      }
      const stop = Math.min(end, cEnd);
      mix |= bit(p.kind);
      off = stop;
      if (off === cEnd) {
        yield* emit(cStart, cEnd - cStart, classOf(mix));
        cur = -1;
        mix = 0;
      }
    }
  }
  if (out) yield out;
}

// ------------------------------------------------------------------------------------ batches

export type BatchItem =
  | { kind: 'zero'; offset: number; length: number }
  | { kind: 'block'; offset: number; length: number; at: number };

/** A run of items in guest order, with the bytes of its blocks packed into one buffer. */
export interface Batch {
  layer: number;
  buf: Buffer;
  used: number;
  items: BatchItem[];
  blocks: number;
}

/**
 * Cuts a layer's pieces into blocks and groups them into batches of about `target` bytes, reading each
 * piece's bytes straight into the batch buffer. A block only starts with a whole block of room left,
 * so it never straddles two batches. The submit callback must be done with `buf` when it returns: the
 * batcher's one buffer is then reused for the next batch.
 */
export class Batcher {
  private cur: Batch | null = null;
  private open: { offset: number; length: number; at: number } | null = null;
  private buf: Buffer;

  /**
   * `submit` may keep the batch's buffer (it returns 'kept', e.g. to hand it to a worker); the next
   * batch then gets a buffer from `take` (target + BLOCK_SIZE bytes).
   */
  constructor(private readonly layer: number, private readonly target: number, private readonly submit: (b: Batch) => Promise<'kept' | undefined>,
    private readonly take: () => Buffer = () => Buffer.allocUnsafe(target + BLOCK_SIZE)) {
    this.buf = take();
  }

  private batch(): Batch {
    this.cur ??= { layer: this.layer, buf: this.buf, used: 0, items: [], blocks: 0 };
    return this.cur;
  }

  async zero(offset: number, length: number): Promise<void> {
    this.open = null;
    this.batch().items.push({ kind: 'zero', offset, length });
  }

  async data(offset: number, length: number, fill: Fill): Promise<void> {
    let p = 0;
    while (p < length) {
      const o = offset + p;
      const open = this.open;
      this.open = null;
      if (open && open.offset + open.length === o && o % BLOCK_SIZE !== 0) {
        // Continue a block the previous piece left short (it started with a whole block of room).
        const b = this.cur!;
        const n = Math.min(blockEnd(open.offset) - o, length - p);
        await fill(b.buf, b.used, p, n);
        b.used += n;
        open.length += n;
        p += n;
        if ((o + n) % BLOCK_SIZE !== 0) this.open = open;
        else if (b.used >= this.target) await this.flush();
        continue;
      }
      if (this.cur && (this.cur.used >= this.target || this.cur.used + BLOCK_SIZE > this.buf.length)) await this.flush();
      const b = this.batch();
      // A span of blocks, each starting with a whole block of room, read in one go.
      const start = b.used;
      let q = p;
      let last: { kind: 'block'; offset: number; length: number; at: number } | null = null;
      while (q < length && start + (q - p) < this.target && start + (q - p) + BLOCK_SIZE <= this.buf.length) {
        const bo = offset + q;
        const n = Math.min(blockEnd(bo) - bo, length - q);
        last = { kind: 'block', offset: bo, length: n, at: start + (q - p) };
        b.items.push(last);
        b.blocks++;
        q += n;
      }
      await fill(b.buf, start, p, q - p);
      b.used += q - p;
      p = q;
      // Only the piece's last block can stop short of its boundary; it may go on in the next piece.
      if ((last!.offset + last!.length) % BLOCK_SIZE !== 0) this.open = last;
      else if (b.used >= this.target) await this.flush();
    }
  }

  /** Ends the data extent in progress (the next data starts a new block). */
  gap(): void {
    this.open = null;
  }

  async flush(): Promise<void> {
    const b = this.cur;
    this.cur = null;
    this.open = null;
    if (b?.items.length && (await this.submit(b)) === 'kept') this.buf = this.take();
  }
}
