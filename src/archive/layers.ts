/**
 * Layer maps (layers/<xx>/<name>): what one qcow2 layer holds, in guest order, naming every block by
 * its id. A layer's map is that of src/content/layer.ts (whole clusters; no zero extents in a root), and
 * its blocks are cut as src/content/digest.ts cuts them, so the map and the blocks' SHA-256s give the
 * layer digest again, which names the file: a layer pushed twice (by any VM) is stored once.
 *
 * Entries: chunks of records, each chunk closed once it reaches LAYER_CHUNK_TARGET bytes:
 *   zero    u8 3, u64 offset, u64 length
 *   extent  u8 4, u64 offset, u64 length, then 32-byte ids of the blocks of [offset, offset+length) as
 *           cut at every multiple of BLOCK_SIZE: ceil(end / BLOCK_SIZE) - floor(offset / BLOCK_SIZE) ids
 * Records are in guest order and do not overlap; an extent may be continued by the next record (a long
 * run is split at a block boundary where a chunk ends).
 *
 * Trailer (JSON): { version: 1, virtual_size, cluster_size, digest (hex), data_bytes, zero_bytes,
 * blocks, chunks }. The file's Sealer context binds the type only (the name is known only once every
 * block was seen); the name is checked against the digest instead.
 */
import path from 'node:path';
import { BLOCK_SIZE } from '../content/digest.js';
import { archiveCorrupt, ContainerReader, ContainerWriter, readU64, writeU64 } from './container.js';
import {
  DIR_LAYERS,
  EXTENT_HEAD_BYTES,
  FileType,
  LAYER_CHUNK_TARGET,
  MAX_LAYER_CHUNKS,
  MAX_LAYER_ENTRY,
  MapRecord,
  NAME_RE64,
  ZERO_REC_BYTES,
} from './format.js';
import { newFileId, type Repo } from './repo.js';

export interface LayerTrailer {
  version: 1;
  virtual_size: number;
  cluster_size: number;
  digest: string;
  data_bytes: number;
  zero_bytes: number;
  blocks: number;
  chunks: number;
}

export type MapPiece = { kind: 'zero'; offset: number; length: number } | { kind: 'block'; offset: number; length: number; id: Buffer };

/** Blocks an extent [offset, end) is cut into. */
function blocksOf(offset: number, end: number): number {
  return Math.ceil(end / BLOCK_SIZE) - Math.floor(offset / BLOCK_SIZE);
}

/** Writes a layer map as its blocks come (guest order). */
export class LayerMapWriter {
  private chunk: Buffer = Buffer.alloc(LAYER_CHUNK_TARGET + 64 * 1024);
  private len = 0;
  private ext: { offset: number; end: number; at: number } | null = null;
  private zero: { offset: number; length: number } | null = null;
  private chunks = 0;

  private constructor(
    private readonly repo: Repo,
    private readonly w: ContainerWriter,
  ) {}

  /** Bytes of the file (complete once finish() ran). */
  get bytes(): number {
    return this.w.bytes;
  }

  static async create(repo: Repo): Promise<LayerMapWriter> {
    // A provisional name in layers/: the final one (from the digest) is linked at finish().
    const w = await ContainerWriter.create(path.join(repo.dir, DIR_LAYERS, `pending-${newFileId()}`), FileType.Layer, repo.sealer(FileType.Layer, ''));
    return new LayerMapWriter(repo, w);
  }

  private room(n: number): void {
    if (this.len + n > this.chunk.length) {
      const b = Buffer.alloc(Math.max(this.chunk.length * 2, this.len + n));
      this.chunk.copy(b, 0, 0, this.len);
      this.chunk = b;
    }
  }

  private closeExt(): void {
    const e = this.ext;
    if (!e) return;
    writeU64(this.chunk, e.end - e.offset, e.at + 9);
    this.ext = null;
  }

  private flushZero(): void {
    const z = this.zero;
    if (!z) return;
    this.zero = null;
    this.room(ZERO_REC_BYTES);
    const b = this.chunk;
    b.writeUInt8(MapRecord.Zero, this.len);
    writeU64(b, z.offset, this.len + 1);
    writeU64(b, z.length, this.len + 9);
    this.len += ZERO_REC_BYTES;
  }

  private async endChunkIfFull(): Promise<void> {
    if (this.len < LAYER_CHUNK_TARGET) return;
    this.closeExt();
    await this.w.add(this.chunk.subarray(0, this.len));
    this.chunks++;
    this.len = 0;
  }

  async addZero(offset: number, length: number): Promise<void> {
    this.closeExt();
    if (this.zero && this.zero.offset + this.zero.length === offset) {
      this.zero.length += length;
      return;
    }
    this.flushZero();
    this.zero = { offset, length };
    await this.endChunkIfFull();
  }

  async addBlock(offset: number, length: number, id: Uint8Array): Promise<void> {
    this.flushZero();
    if (!this.ext || this.ext.end !== offset) {
      this.closeExt();
      this.room(EXTENT_HEAD_BYTES);
      this.chunk.writeUInt8(MapRecord.Extent, this.len);
      writeU64(this.chunk, offset, this.len + 1);
      this.ext = { offset, end: offset, at: this.len };
      this.len += EXTENT_HEAD_BYTES;
    }
    this.room(32);
    this.chunk.set(id, this.len);
    this.len += 32;
    this.ext.end = offset + length;
    await this.endChunkIfFull();
  }

  /**
   * Ends the map. Returns the layer's name and whether this call stored it (false: the repository
   * held the same layer already, and the new copy was dropped).
   */
  async finish(t: Omit<LayerTrailer, 'version' | 'chunks'>): Promise<{ name: string; stored: boolean }> {
    this.flushZero();
    this.closeExt();
    if (this.len > 0) {
      await this.w.add(this.chunk.subarray(0, this.len));
      this.chunks++;
      this.len = 0;
    }
    const trailer: LayerTrailer = { version: 1, ...t, chunks: this.chunks };
    const name = this.repo.layerName(Buffer.from(t.digest, 'hex'));
    const stored = await this.w.finish(Buffer.from(JSON.stringify(trailer)), this.repo.layerPath(name));
    return { name, stored };
  }

  abort(): Promise<void> {
    return this.w.abort();
  }
}

function num(v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= min && v <= max;
}

/** Reads a layer map: its trailer at once, its pieces in guest order with every record checked. */
export class LayerMapReader {
  private constructor(
    readonly name: string,
    private readonly c: ContainerReader,
    readonly trailer: LayerTrailer,
  ) {}

  get file(): string {
    return this.c.file;
  }

  static async open(repo: Repo, name: string): Promise<LayerMapReader> {
    if (!NAME_RE64.test(name)) throw archiveCorrupt(`layer name ${JSON.stringify(name)} is not 64 hex digits`, repo.dir);
    const c = await ContainerReader.open(repo.layerPath(name), FileType.Layer, repo.sealer(FileType.Layer, ''), 64 * 1024);
    try {
      let t: Partial<LayerTrailer>;
      try {
        t = JSON.parse(c.trailer.toString('utf8')) as Partial<LayerTrailer>;
      } catch {
        throw archiveCorrupt('layer trailer is not JSON', c.file);
      }
      if (
        t?.version !== 1 ||
        !num(t.virtual_size, 1) ||
        !num(t.cluster_size, 512, 2 * 1024 * 1024) ||
        (t.cluster_size & (t.cluster_size - 1)) !== 0 ||
        typeof t.digest !== 'string' ||
        !NAME_RE64.test(t.digest) ||
        !num(t.data_bytes, 0, t.virtual_size) ||
        !num(t.zero_bytes, 0, t.virtual_size) ||
        !num(t.blocks, 0) ||
        !num(t.chunks, 0, MAX_LAYER_CHUNKS)
      ) {
        throw archiveCorrupt('layer trailer does not have the expected fields', c.file);
      }
      if (repo.layerName(Buffer.from(t.digest, 'hex')) !== name) throw archiveCorrupt('layer file name does not match its digest', c.file);
      return new LayerMapReader(name, c, t as LayerTrailer);
    } catch (err) {
      await c.close();
      throw err;
    }
  }

  /** The map, piece by piece, checked: order, bounds, cluster alignment, id counts, totals. */
  async *pieces(): AsyncGenerator<MapPiece> {
    const t = this.trailer;
    const f = this.c.file;
    const vs = t.virtual_size;
    const cs = t.cluster_size;
    const aligned = (o: number) => o % cs === 0 || o === vs;
    let end = 0;
    let chunks = 0;
    let data = 0;
    let zero = 0;
    let blocks = 0;
    for await (const p of this.c.entries(MAX_LAYER_ENTRY)) {
      let o = 0;
      while (o < p.length) {
        const at = o;
        const type = p[o]!;
        const bad = (what: string) => archiveCorrupt(`layer chunk ${chunks}, record at byte ${at}: ${what}`, f);
        if (type !== MapRecord.Zero && type !== MapRecord.Extent) throw bad(`unknown record type ${type}`);
        if (p.length - o < 17) throw bad('record runs past the end of the chunk');
        const off = readU64(p, o + 1);
        const len = readU64(p, o + 9);
        o += 17;
        if (len < 1 || off < end || off > vs || len > vs - off) throw bad(`extent ${off}+${len} is out of order or outside the disk (${vs} bytes)`);
        if (!aligned(off) || !aligned(off + len)) throw bad(`extent ${off}+${len} is not aligned to clusters of ${cs} bytes`);
        end = off + len;
        if (type === MapRecord.Zero) {
          zero += len;
          yield { kind: 'zero', offset: off, length: len };
          continue;
        }
        const n = blocksOf(off, off + len);
        if (n > (p.length - o) / 32) throw bad(`extent of ${n} blocks runs past the end of the chunk`);
        let bo = off;
        for (let k = 0; k < n; k++) {
          const be = Math.min(bo - (bo % BLOCK_SIZE) + BLOCK_SIZE, off + len);
          yield { kind: 'block', offset: bo, length: be - bo, id: p.subarray(o, o + 32) };
          data += be - bo;
          blocks++;
          bo = be;
          o += 32;
        }
      }
      chunks++;
    }
    if (chunks !== t.chunks || data !== t.data_bytes || zero !== t.zero_bytes || blocks !== t.blocks) {
      throw archiveCorrupt(`layer map holds ${chunks} chunks, ${blocks} blocks, ${data} data and ${zero} zero bytes, not what its trailer says`, f);
    }
  }

  close(): Promise<void> {
    return this.c.close();
  }
}
