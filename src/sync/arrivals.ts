/**
 * Blocks on their way from a pull's fetch to its layer writer (pull.ts, steps 4 and 5 overlap): the
 * layers are written while the blocks arrive, in the order the layers need them (the order asked),
 * each verified block handed over in memory. Once `max` bytes wait for the writer, the fetch waits
 * for it (backpressure): a block let through (`spill`: to the spool) costs a write, a read back and a
 * second SHA-256 (bench/README.md, "Receiver profile": 3578 of 4608 block uses read back before). The fetch
 * never waits while the writer waits for a block (it may be one not asked for yet, or asked again of
 * another teammate) nor once the writer stopped, so neither side can hold the other for good.
 */
import { BLOCK_SIZE } from '../content/digest.js';

export class Arrivals {
  /** Hashes (hex) asked for and not arrived yet. */
  private readonly waiting: Set<string>;
  private readonly wakers = new Map<string, () => void>();
  private readonly held = new Map<string, Buffer>();
  private heldBytes = 0;
  private fetchOver: boolean;
  private writerOver = false;
  private roomWaiter: (() => void) | null = null;
  /** Blocks the writer got in memory, and the ones it had to find elsewhere (trace). */
  fromMemory = 0;
  elsewhere = 0;

  constructor(
    hashes: Buffer[],
    private readonly max: number,
    /** Where a verified block goes when it is not held (memory full): it must not be lost. */
    private readonly spill: (hash: Buffer, data: Buffer) => Promise<void> | void = () => undefined,
  ) {
    this.waiting = new Set(hashes.map((h) => h.toString('hex')));
    this.fetchOver = hashes.length === 0;
  }

  /** Bytes held for the writer now. */
  get bytes(): number {
    return this.heldBytes;
  }

  /** A verified block arrived (the fetch waits for the promise: room for the next one). */
  async arrive(hash: Buffer, data: Buffer): Promise<void> {
    const hex = hash.toString('hex');
    if (!this.waiting.delete(hex)) return;
    if (this.heldBytes + data.length <= this.max) {
      this.held.set(hex, data);
      this.heldBytes += data.length;
    } else await this.spill(hash, data);
    this.wakers.get(hex)?.();
    this.wakers.delete(hex);
    while (this.full()) await new Promise<void>((r) => (this.roomWaiter = r));
  }

  /**
   * The writer's next block: waits while it is on its way; null when it is not held here (needed a
   * second time, let through while memory was full, or never arrived): the caller reads it elsewhere.
   */
  async take(hash: Buffer): Promise<Buffer | null> {
    const hex = hash.toString('hex');
    if (this.waiting.has(hex) && !this.fetchOver) {
      const got = new Promise<void>((r) => this.wakers.set(hex, r));
      this.room(); // what is held is not what the writer needs: let the fetch go on
      await got;
    }
    const mem = this.held.get(hex);
    if (!mem) {
      this.elsewhere++;
      return null;
    }
    this.fromMemory++;
    this.held.delete(hex);
    this.heldBytes -= mem.length;
    this.room();
    return mem;
  }

  /** Nothing more will come: a writer still waiting finds its block missing (and fails). */
  endFetch(): void {
    this.fetchOver = true;
    for (const w of this.wakers.values()) w();
    this.wakers.clear();
  }

  /** Hands every block held (for a pull that failed: they go to the spool) and forgets them. */
  takeAll(): [Buffer, Buffer][] {
    const all = [...this.held].map(([hex, data]): [Buffer, Buffer] => [Buffer.from(hex, 'hex'), data]);
    this.held.clear();
    this.heldBytes = 0;
    this.room();
    return all;
  }

  /** The writer stopped (every layer written, or failed): the fetch no longer waits for it. */
  endWriter(): void {
    this.writerOver = true;
    this.room();
  }

  private full(): boolean {
    return this.heldBytes + BLOCK_SIZE > this.max && this.wakers.size === 0 && !this.writerOver;
  }

  private room(): void {
    const r = this.roomWaiter;
    this.roomWaiter = null;
    r?.();
  }
}
