/**
 * Block id → index row, over a given set of index files, for what must know WHICH row answered (gc
 * marks rows; check names the file): RepoIndex (index-file.ts) answers with a location only. Memory is
 * RepoIndex's: the files' trailers and a small cache of chunks.
 */
import { INDEX_CHUNK_ROWS, INDEX_ROW_BYTES } from './format.js';
import type { IndexFile } from './index-file.js';
import type { BlockLocation } from './packs.js';

/** Rows are numbered chunk × INDEX_CHUNK_ROWS + row within the chunk (a chunk holds at most that many). */
export function rowNumber(chunk: number, row: number): number {
  return chunk * INDEX_CHUNK_ROWS + row;
}

export interface FoundRow {
  /** Position of the file in the lookup's list. */
  file: number;
  row: number;
  loc: BlockLocation;
}

const CACHE = 64;

function findRow(rows: Buffer, id: Uint8Array): number {
  let lo = 0;
  let hi = rows.length / INDEX_ROW_BYTES - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const c = Buffer.compare(rows.subarray(mid * INDEX_ROW_BYTES, mid * INDEX_ROW_BYTES + 32), id);
    if (c === 0) return mid;
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

export class RowLookup {
  private readonly cache = new Map<string, Buffer>();

  constructor(readonly files: readonly IndexFile[]) {}

  /** The row of `id` in the last file (of the list) that has it, or null. */
  async find(id: Uint8Array): Promise<FoundRow | null> {
    for (let k = this.files.length - 1; k >= 0; k--) {
      const f = this.files[k]!;
      if (!f.mayHave(id)) continue;
      const c = f.chunkFor(id);
      if (c < 0) continue;
      const key = `${k}:${c}`;
      let rows = this.cache.get(key);
      if (rows) this.cache.delete(key);
      else {
        rows = await f.chunk(c);
        if (this.cache.size >= CACHE) this.cache.delete(this.cache.keys().next().value!);
      }
      this.cache.set(key, rows);
      const r = findRow(rows, id);
      if (r >= 0) return { file: k, row: rowNumber(c, r), loc: f.location(rows, r) };
    }
    return null;
  }
}

/** One bit per row of an index file. */
export class RowBits {
  private readonly bits: Uint8Array;
  constructor(chunks: number) {
    this.bits = new Uint8Array(Math.ceil((chunks * INDEX_CHUNK_ROWS) / 8));
  }
  set(n: number): boolean {
    const was = (this.bits[n >>> 3]! & (1 << (n & 7))) !== 0;
    this.bits[n >>> 3]! |= 1 << (n & 7);
    return !was;
  }
  has(n: number): boolean {
    return (this.bits[n >>> 3]! & (1 << (n & 7))) !== 0;
  }
}
