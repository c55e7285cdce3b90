/**
 * Index files (index/<id>) and the repository-wide lookup built from them.
 *
 * An index file maps block ids to their place in a pack. Its entries are chunks of at most
 * INDEX_CHUNK_ROWS rows, sorted by id across the whole file; a row is 48 bytes:
 *
 *   id (32) | pack (u32, position in the trailer's pack list) | frame entry offset (u32) |
 *   frame sealed length (u32) | frame number (u16) | slot (u16)
 *
 * Trailer:
 *
 *   u32 version = 1 | u32 rows R | u32 chunks C | u32 packs P | P × 16-byte pack id |
 *   C × { u64 entry offset, u32 sealed length, u32 rows, 32-byte first id } |
 *   u32 bloom bytes B | u8 hashes k | B bytes of bloom filter
 *
 * The bloom filter has m = 8B bits; an id sets bits (u32 at id bytes 4j..4j+3) mod m for j < k (ids
 * are hash outputs, so any four of their bytes are uniform). B = 8 × ceil(R × 10 / 64), k = 7: about 1%
 * false positives.
 *
 * Memory: a lookup holds per index file its trailer (the chunk table, 48 bytes per 1024 rows, and the
 * bloom filter, 1.25 bytes per row) and a small cache of opened chunks. A row stands for a 64 KiB block,
 * so a TiB of unique blocks (16.8 M rows) needs about 21 MiB + 0.8 MiB, whatever the number of files; a
 * lookup of a block the repository lacks costs no disk read in 99% of cases, one of a block it holds
 * one chunk read (48 KiB, usually cached: blocks of one layer come in runs).
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { CloneboxError, ioError } from '../errors.js';
import { archiveCorrupt, ContainerReader, ContainerWriter, readU64, writeU64 } from './container.js';
import {
  BLOOM_BITS_PER_ROW,
  BLOOM_HASHES,
  FileType,
  ID_RE,
  INDEX_CHUNK_ROWS,
  INDEX_ROW_BYTES,
  MAX_INDEX_CHUNK,
  MAX_INDEX_PACKS,
  MAX_INDEX_ROWS,
  MAX_TRAILER,
} from './format.js';
import type { BlockLocation } from './packs.js';
import { newFileId, type Repo } from './repo.js';

function bloomBytes(rows: number): number {
  return 8 * Math.max(1, Math.ceil((rows * BLOOM_BITS_PER_ROW) / 64));
}

function bloomSet(bloom: Buffer, id: Uint8Array): void {
  const m = bloom.length * 8;
  for (let j = 0; j < BLOOM_HASHES; j++) {
    const h = ((id[4 * j]! << 24) | (id[4 * j + 1]! << 16) | (id[4 * j + 2]! << 8) | id[4 * j + 3]!) >>> 0;
    const bit = h % m;
    bloom[bit >>> 3] = bloom[bit >>> 3]! | (1 << (bit & 7));
  }
}

function bloomHas(bloom: Buffer, id: Uint8Array): boolean {
  const m = bloom.length * 8;
  for (let j = 0; j < BLOOM_HASHES; j++) {
    const h = ((id[4 * j]! << 24) | (id[4 * j + 1]! << 16) | (id[4 * j + 2]! << 8) | id[4 * j + 3]!) >>> 0;
    const bit = h % m;
    if ((bloom[bit >>> 3]! & (1 << (bit & 7))) === 0) return false;
  }
  return true;
}

/** Rows an index file is written from: new blocks of committed packs, in any order. */
export class PendingRows {
  private ids: Buffer = Buffer.alloc(32 * 1024);
  private loc: Uint32Array = new Uint32Array(4 * 1024);
  private readonly packs: string[] = [];
  private readonly packNo = new Map<string, number>();
  size = 0;

  add(id: Uint8Array, l: BlockLocation): void {
    if ((this.size + 1) * 32 > this.ids.length) {
      const b = Buffer.alloc(this.ids.length * 2);
      this.ids.copy(b);
      this.ids = b;
      const c = new Uint32Array(this.loc.length * 2);
      c.set(this.loc);
      this.loc = c;
    }
    let p = this.packNo.get(l.pack);
    if (p === undefined) {
      p = this.packs.length;
      this.packs.push(l.pack);
      this.packNo.set(l.pack, p);
    }
    this.ids.set(id, this.size * 32);
    const o = this.size * 4;
    this.loc[o] = p;
    this.loc[o + 1] = l.offset;
    this.loc[o + 2] = l.length;
    this.loc[o + 3] = (l.frame << 16) | l.slot;
    this.size++;
  }

  /** Writes them as one index file; returns its id and size (null when there was nothing to write). */
  async write(repo: Repo): Promise<{ id: string; bytes: number } | null> {
    if (this.size === 0) return null;
    const n = this.size;
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    const ids = this.ids;
    order.sort((a, b) => ids.compare(ids, b * 32, b * 32 + 32, a * 32, a * 32 + 32));
    const id = newFileId();
    const w = await ContainerWriter.create(path.join(repo.indexDir, id), FileType.Index, repo.sealer(FileType.Index, id));
    try {
      const chunks: { offset: number; length: number; rows: number; first: Buffer }[] = [];
      const bloom = Buffer.alloc(bloomBytes(n));
      let last: Buffer | null = null;
      for (let c = 0; c < n; c += INDEX_CHUNK_ROWS) {
        const rows = Math.min(INDEX_CHUNK_ROWS, n - c);
        const payload = Buffer.alloc(rows * INDEX_ROW_BYTES);
        let kept = 0;
        for (let r = 0; r < rows; r++) {
          const i = order[c + r]!;
          const bid = ids.subarray(i * 32, i * 32 + 32);
          if (last?.equals(bid)) continue; // the same block twice in one push: one row is enough
          last = bid;
          const o = kept * INDEX_ROW_BYTES;
          bid.copy(payload, o);
          payload.writeUInt32BE(this.loc[i * 4]!, o + 32);
          payload.writeUInt32BE(this.loc[i * 4 + 1]!, o + 36);
          payload.writeUInt32BE(this.loc[i * 4 + 2]!, o + 40);
          payload.writeUInt32BE(this.loc[i * 4 + 3]!, o + 44);
          bloomSet(bloom, bid);
          kept++;
        }
        if (kept === 0) continue;
        const at = await w.add(payload.subarray(0, kept * INDEX_ROW_BYTES));
        chunks.push({ offset: at.offset, length: at.length, rows: kept, first: Buffer.from(payload.subarray(0, 32)) });
      }
      const total = chunks.reduce((a, c) => a + c.rows, 0);
      const bl = total === n ? bloom : Buffer.alloc(bloomBytes(total));
      if (bl !== bloom) {
        // Duplicates were dropped: the filter is sized by the rows written.
        for (let i = 0; i < n; i++) bloomSet(bl, ids.subarray(i * 32, i * 32 + 32));
      }
      const t = Buffer.alloc(16 + this.packs.length * 16 + chunks.length * 48 + 5 + bl.length);
      t.writeUInt32BE(1, 0);
      t.writeUInt32BE(total, 4);
      t.writeUInt32BE(chunks.length, 8);
      t.writeUInt32BE(this.packs.length, 12);
      let o = 16;
      for (const p of this.packs) {
        Buffer.from(p, 'hex').copy(t, o);
        o += 16;
      }
      for (const c of chunks) {
        writeU64(t, c.offset, o);
        t.writeUInt32BE(c.length, o + 8);
        t.writeUInt32BE(c.rows, o + 12);
        c.first.copy(t, o + 16);
        o += 48;
      }
      t.writeUInt32BE(bl.length, o);
      t.writeUInt8(BLOOM_HASHES, o + 4);
      bl.copy(t, o + 5);
      if (!(await w.finish(t))) throw new CloneboxError('INTERNAL', `index id ${id} was taken`);
    } catch (err) {
      await w.abort();
      throw err;
    }
    return { id, bytes: w.bytes };
  }
}

/** One index file, open for lookups: its trailer in memory, its chunks read on demand. */
export class IndexFile {
  private constructor(
    readonly id: string,
    private readonly c: ContainerReader,
    readonly packs: string[],
    readonly rows: number,
    private readonly chunkOff: Float64Array,
    private readonly chunkLen: Uint32Array,
    private readonly chunkRows: Uint32Array,
    private readonly firsts: Buffer,
    private readonly bloom: Buffer,
  ) {}

  get file(): string {
    return this.c.file;
  }

  get chunks(): number {
    return this.chunkRows.length;
  }

  static async open(repo: Repo, id: string): Promise<IndexFile> {
    const c = await ContainerReader.open(path.join(repo.indexDir, id), FileType.Index, repo.sealer(FileType.Index, id), MAX_TRAILER);
    try {
      const t = c.trailer;
      const f = c.file;
      if (t.length < 16 || t.readUInt32BE(0) !== 1) throw archiveCorrupt('index trailer has no version 1 header', f);
      const rows = t.readUInt32BE(4);
      const nc = t.readUInt32BE(8);
      const np = t.readUInt32BE(12);
      if (rows < 1 || rows > MAX_INDEX_ROWS) throw archiveCorrupt(`index claims ${rows} rows`, f);
      if (np < 1 || np > MAX_INDEX_PACKS || np > rows) throw archiveCorrupt(`index claims ${np} packs`, f);
      if (nc < Math.ceil(rows / INDEX_CHUNK_ROWS) || nc > rows) throw archiveCorrupt(`index claims ${nc} chunks for ${rows} rows`, f);
      const bloomAt = 16 + np * 16 + nc * 48;
      if (t.length < bloomAt + 5) throw archiveCorrupt('index trailer is shorter than its tables', f);
      const bl = t.readUInt32BE(bloomAt);
      if (bl !== bloomBytes(rows) || t.readUInt8(bloomAt + 4) !== BLOOM_HASHES || t.length !== bloomAt + 5 + bl) {
        throw archiveCorrupt('index bloom filter does not have its size', f);
      }
      const packs: string[] = [];
      for (let i = 0; i < np; i++) packs.push(t.subarray(16 + i * 16, 32 + i * 16).toString('hex'));
      const off = new Float64Array(nc);
      const len = new Uint32Array(nc);
      const cr = new Uint32Array(nc);
      const firsts = Buffer.alloc(nc * 32);
      let sum = 0;
      let expect = 8;
      for (let i = 0; i < nc; i++) {
        const o = 16 + np * 16 + i * 48;
        off[i] = readU64(t, o);
        len[i] = t.readUInt32BE(o + 8);
        cr[i] = t.readUInt32BE(o + 12);
        t.copy(firsts, i * 32, o + 16, o + 48);
        if (off[i] !== expect) throw archiveCorrupt(`index chunk ${i} is at ${off[i]}, not ${expect}`, f);
        if (cr[i]! < 1 || cr[i]! > INDEX_CHUNK_ROWS) throw archiveCorrupt(`index chunk ${i} claims ${cr[i]} rows`, f);
        if (i > 0 && firsts.compare(firsts, (i - 1) * 32, i * 32, i * 32, i * 32 + 32) <= 0) throw archiveCorrupt(`index chunk ${i} is out of order`, f);
        expect = off[i]! + 4 + len[i]!;
        sum += cr[i]!;
      }
      if (sum !== rows) throw archiveCorrupt(`index chunks hold ${sum} rows, the trailer says ${rows}`, f);
      if (expect !== c.trailerOffset) throw archiveCorrupt('index chunks do not end where the trailer starts', f);
      return new IndexFile(id, c, packs, rows, off, len, cr, firsts, Buffer.from(t.subarray(bloomAt + 5)));
    } catch (err) {
      await c.close();
      throw err;
    }
  }

  mayHave(id: Uint8Array): boolean {
    return bloomHas(this.bloom, id);
  }

  /** The chunk that would hold `id` (binary search on first ids), or -1. */
  chunkFor(id: Uint8Array): number {
    let lo = 0;
    let hi = this.chunkRows.length - 1;
    if (Buffer.compare(id, this.firsts.subarray(0, 32)) < 0) return -1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (Buffer.compare(this.firsts.subarray(mid * 32, mid * 32 + 32), id) <= 0) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Chunk `i`'s rows, checked (length, order, first id, pack references). */
  async chunk(i: number): Promise<Buffer> {
    const f = this.c.file;
    const { payload } = await this.c.entryAt(this.chunkOff[i]!, i, MAX_INDEX_CHUNK, this.chunkLen[i]!);
    const n = this.chunkRows[i]!;
    if (payload.length !== n * INDEX_ROW_BYTES) throw archiveCorrupt(`index chunk ${i} is ${payload.length} bytes, not ${n} rows`, f);
    if (!payload.subarray(0, 32).equals(this.firsts.subarray(i * 32, i * 32 + 32)))
      throw archiveCorrupt(`index chunk ${i} does not start with its first id`, f);
    for (let r = 0; r < n; r++) {
      const o = r * INDEX_ROW_BYTES;
      if (r > 0 && payload.compare(payload, o - INDEX_ROW_BYTES, o - INDEX_ROW_BYTES + 32, o, o + 32) <= 0)
        throw archiveCorrupt(`index chunk ${i} row ${r} is out of order`, f);
      if (payload.readUInt32BE(o + 32) >= this.packs.length) throw archiveCorrupt(`index chunk ${i} row ${r} names pack ${payload.readUInt32BE(o + 32)}`, f);
    }
    if (
      i + 1 < this.chunkRows.length &&
      payload.compare(this.firsts, (i + 1) * 32, (i + 2) * 32, (n - 1) * INDEX_ROW_BYTES, (n - 1) * INDEX_ROW_BYTES + 32) >= 0
    ) {
      throw archiveCorrupt(`index chunk ${i} overlaps chunk ${i + 1}`, f);
    }
    return payload;
  }

  /** Row `r` of a chunk as a location. */
  location(rows: Buffer, r: number): BlockLocation {
    const o = r * INDEX_ROW_BYTES;
    const fs = rows.readUInt32BE(o + 44);
    return {
      pack: this.packs[rows.readUInt32BE(o + 32)]!,
      offset: rows.readUInt32BE(o + 36),
      length: rows.readUInt32BE(o + 40),
      frame: fs >>> 16,
      slot: fs & 0xffff,
    };
  }

  /** Every row, chunk by chunk (for check and gc): id and location. */
  async *entries(): AsyncGenerator<{ id: Buffer; loc: BlockLocation }> {
    for (let i = 0; i < this.chunkRows.length; i++) {
      const rows = await this.chunk(i);
      for (let r = 0; r < this.chunkRows[i]!; r++) yield { id: rows.subarray(r * INDEX_ROW_BYTES, r * INDEX_ROW_BYTES + 32), loc: this.location(rows, r) };
    }
  }

  close(): Promise<void> {
    return this.c.close();
  }
}

/** Binary search of `id` in a chunk's rows; the row number or -1. */
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

/** Opened chunks kept for the next lookups (blocks of a layer come in runs). */
const CHUNK_CACHE = 64;

/** Every index file of a repository, for lookups by block id. */
export class RepoIndex {
  private readonly files: IndexFile[] = [];
  private readonly cache = new Map<string, Buffer>();

  private constructor(private readonly repo: Repo) {}

  static async open(repo: Repo): Promise<RepoIndex> {
    const ix = new RepoIndex(repo);
    let names: string[];
    try {
      names = await readdir(repo.indexDir);
    } catch (err) {
      throw ioError(err, 'cannot read archive index directory', repo.indexDir);
    }
    try {
      for (const n of names.sort()) if (ID_RE.test(n)) ix.files.push(await IndexFile.open(repo, n));
    } catch (err) {
      await ix.close();
      throw err;
    }
    return ix;
  }

  /** Index files in use. */
  get count(): number {
    return this.files.length;
  }

  /** Total rows (blocks) over all index files (a block in two files counts twice). */
  get rows(): number {
    return this.files.reduce((a, f) => a + f.rows, 0);
  }

  /** Adds a file this process has just written (it is read back: what is used is what is on disk). */
  async add(id: string): Promise<void> {
    this.files.push(await IndexFile.open(this.repo, id));
  }

  async get(id: Uint8Array): Promise<BlockLocation | null> {
    for (let k = this.files.length - 1; k >= 0; k--) {
      const f = this.files[k]!;
      if (!f.mayHave(id)) continue;
      const c = f.chunkFor(id);
      if (c < 0) continue;
      const key = `${f.id}:${c}`;
      let rows = this.cache.get(key);
      if (rows) {
        this.cache.delete(key);
      } else {
        rows = await f.chunk(c);
        if (this.cache.size >= CHUNK_CACHE) this.cache.delete(this.cache.keys().next().value!);
      }
      this.cache.set(key, rows);
      const r = findRow(rows, id);
      if (r >= 0) return f.location(rows, r);
    }
    return null;
  }

  async close(): Promise<void> {
    await Promise.all(this.files.map((f) => f.close()));
    this.files.length = 0;
    this.cache.clear();
  }
}
