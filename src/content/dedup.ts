/** The dedup index: which blocks (by id) an export or a sync has already stored, in little memory. */

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
