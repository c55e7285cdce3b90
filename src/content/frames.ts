/**
 * The frame pipeline `snapshot export` (src/bundle/export.ts) and the archive's ingest
 * (src/archive/ingest.ts) share: a layer's pieces in, frames of new blocks out, in guest order.
 *
 *   this thread   cuts blocks into batches (batcher.ts), hashes every block (SHA-256), asks the
 *                 caller's dedup whether it is new (and under which id it is stored)
 *   worker        compresses the batch's new blocks into one zstd frame (workers.ts)
 *   this thread   hands each batch, with its frame, to the caller's emit, in batch order
 *
 * Batches in flight are bounded (two per worker), so memory does not grow with the disk; buffers cycle
 * between this thread and the workers.
 */
import { createHash } from 'node:crypto';
import { type Batch, Batcher } from './batcher.js';
import { Codec, compressBound } from './codec.js';
import { BLOCK_SIZE } from './digest.js';
import type { LayerSource } from './layer.js';
import type { WorkerReply } from './worker.js';
import type { WorkerPool } from './workers.js';

/** A batch's new blocks compressed as one frame (or kept raw when zstd did not pay). */
interface Frame {
  codec: Codec;
  stored: Buffer;
  rawLength: number;
}

/** A batch as emit() gets it: its items, each block item's SHA-256, the caller's per-batch state, its frame. */
export interface FramedBatch<S> {
  layer: number;
  items: Batch['items'];
  /** SHA-256 of each block item, in item order (32 bytes each). */
  shas: Buffer;
  state: S;
  /** Lengths and ids of the batch's new blocks, in frame order. */
  fresh: { length: number; id: Buffer }[];
  /** The frame of `fresh` (null when every block was known). Valid only until emit() returns. */
  frame: Frame | null;
}

export interface FrameSink<S> {
  /** A new batch of `blocks` block items: the caller's state for it (e.g. the blocks' numbers or ids). */
  begin(blocks: number): S;
  /**
   * The k-th block item of a batch and its SHA-256: the id to store it under when it is new (in this
   * run too: the caller remembers it), null when it is stored already.
   */
  block(state: S, k: number, sha: Buffer, length: number): Buffer | null | Promise<Buffer | null>;
  /** A batch, in batch order, with its frame. */
  emit(b: FramedBatch<S>): Promise<void>;
}

interface InFlight<S> {
  b: FramedBatch<S>;
  frame: Promise<Frame & { release: () => void }> | null;
}

/** ArrayBuffers that cycle between this thread and the workers (no page faults, no garbage). */
class BufferPool {
  private readonly free: ArrayBuffer[] = [];
  constructor(
    private readonly size: number,
    private readonly keep: number,
  ) {}
  take(): ArrayBuffer {
    return this.free.pop() ?? new ArrayBuffer(this.size);
  }
  give(b: ArrayBuffer): void {
    if (b.byteLength === this.size && this.free.length < this.keep) this.free.push(b);
  }
}

/** Hands a layer's pieces to a batcher, in guest order. */
export async function feedPieces(b: Batcher, src: LayerSource): Promise<void> {
  for await (const p of src.pieces()) {
    if (p.kind === 'zero') await b.zero(p.offset, p.length);
    else await b.data(p.offset, p.length, p.fill);
  }
}

export class FramePipeline<S> {
  private readonly queue: InFlight<S>[] = [];
  private readonly maxInFlight: number;
  private readonly inputs: BufferPool;
  private readonly outputs: BufferPool;

  constructor(
    private readonly pool: WorkerPool,
    private readonly sink: FrameSink<S>,
    private readonly frameTarget: number,
    private readonly level: number,
  ) {
    // Frames being compressed: enough to keep every worker busy while this thread reads and hashes.
    this.maxInFlight = pool.size * 2;
    // Pools as deep as the frames in flight (plus the batcher's and the one being emitted): a fresh
    // buffer costs a page fault per 4 KiB when first touched, and shallow pools kept faulting (bench/README.md).
    this.inputs = new BufferPool(frameTarget + BLOCK_SIZE, this.maxInFlight + 3);
    this.outputs = new BufferPool(compressBound(frameTarget + BLOCK_SIZE), this.maxInFlight + 2);
  }

  /** Feeds one layer's pieces, in guest order, as layer number `layer`; its batches may still be in flight after. */
  layer(layer: number, src: LayerSource): Promise<void> {
    return this.feed(layer, (b) => feedPieces(b, src));
  }

  /** Like layer(), for pieces from elsewhere (a bundle being read): `fill` hands them to the batcher. */
  async feed(layer: number, fill: (b: Batcher) => Promise<void>): Promise<void> {
    const batcher = new Batcher(
      layer,
      this.frameTarget,
      (b) => this.submit(b),
      () => Buffer.from(this.inputs.take()),
    );
    await fill(batcher);
    await batcher.flush();
  }

  /** Emits every batch still in flight. */
  async drain(): Promise<void> {
    while (this.queue.length) await this.emit(this.queue.shift()!);
  }

  /** After a failure: waits for the frames in flight (their buffers come back), emits nothing. */
  async abort(): Promise<void> {
    await Promise.allSettled(this.queue.splice(0).map((f) => f.frame));
  }

  private async emit(f: InFlight<S>): Promise<void> {
    if (!f.frame) return this.sink.emit(f.b);
    const fr = await f.frame;
    try {
      await this.sink.emit({ ...f.b, frame: fr });
    } finally {
      fr.release();
    }
  }

  // Runs on this thread while the batch buffer is still ours: hash, dedup, copy the new blocks out.
  private async submit(batch: Batch): Promise<'kept' | undefined> {
    const shas = Buffer.allocUnsafe(batch.blocks * 32);
    const state = this.sink.begin(batch.blocks);
    const fresh: { length: number; id: Buffer }[] = [];
    const freshItems: { at: number; length: number }[] = [];
    let k = 0;
    for (const it of batch.items) {
      if (it.kind !== 'block') continue;
      const sha = shas.subarray(k * 32, k * 32 + 32);
      createHash('sha256')
        .update(batch.buf.subarray(it.at, it.at + it.length))
        .digest()
        .copy(sha);
      const r = this.sink.block(state, k, sha, it.length);
      const id = r instanceof Promise ? await r : r;
      if (id) {
        fresh.push({ length: it.length, id });
        freshItems.push(it);
      }
      k++;
    }
    const f: InFlight<S> = { b: { layer: batch.layer, items: batch.items, shas, state, fresh, frame: null }, frame: null };
    let input: Buffer | null = null;
    let rawLength = 0;
    let kept = false;
    if (fresh.length === batch.blocks && fresh.length > 0) {
      // Every block is new: the batch buffer itself goes to the worker (no copy); the batcher takes another.
      input = batch.buf;
      rawLength = batch.used;
      kept = true;
    } else if (fresh.length) {
      input = Buffer.from(this.inputs.take());
      for (const it of freshItems) {
        batch.buf.copy(input, rawLength, it.at, it.at + it.length);
        rawLength += it.length;
      }
    }
    if (input) {
      const pool = this.pool;
      const output = this.outputs.take();
      const inAb = input.buffer as ArrayBuffer;
      const raw = rawLength;
      f.frame = pool
        .request(pool.pick(), { op: 'compress', id: pool.newId(), input: inAb, length: raw, output, level: this.level }, [inAb, output])
        .then((rep) => {
          const r = rep as Extract<WorkerReply, { storedLength: number }>;
          // The stored bytes stay in their buffer until the batch is emitted (copied into the pack then).
          if (r.codec === Codec.Zstd) {
            this.inputs.give(r.input);
            return { codec: r.codec, stored: Buffer.from(r.output, 0, r.storedLength), rawLength: raw, release: () => this.outputs.give(r.output) };
          }
          this.outputs.give(r.output);
          return { codec: r.codec, stored: Buffer.from(r.input, 0, raw), rawLength: raw, release: () => this.inputs.give(r.input) };
        });
      f.frame.catch(() => undefined); // a failure surfaces when the batch is emitted
    }
    this.queue.push(f);
    while (this.queue.length > this.maxInFlight) await this.emit(this.queue.shift()!);
    return kept ? 'kept' : undefined;
  }
}
