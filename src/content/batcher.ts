/**
 * Cuts a layer's data into blocks (digest.ts) and groups them into batches, the unit that is hashed,
 * looked up in the dedup index and compressed as one frame.
 */
import { BLOCK_SIZE, blockEnd } from './digest.js';
import type { Fill } from './layer.js';

type BatchItem = { kind: 'zero'; offset: number; length: number } | { kind: 'block'; offset: number; length: number; at: number };

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
  constructor(
    private readonly layer: number,
    private readonly target: number,
    private readonly submit: (b: Batch) => Promise<'kept' | undefined>,
    private readonly take: () => Buffer = () => Buffer.allocUnsafe(target + BLOCK_SIZE),
  ) {
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
