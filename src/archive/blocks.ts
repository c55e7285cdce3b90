/**
 * Reading blocks back out of a repository (restore, export): a layer map's pieces with the bytes of
 * every block, in guest order, every block checked against its id.
 *
 * block id → index row (index-file.ts) → pack and frame → the frame entry read and opened alone →
 * decompressed and hashed on the worker pool → each block's SHA-256 (keyed, in encrypted repositories)
 * must give the frame's id for it, and the id asked for. Frames are decoded a few ahead of the piece
 * being written (the map is read ahead for that), and kept in a small cache, since neighbouring blocks
 * usually share a frame.
 */
import { blockId } from '../bundle/crypto.js';
import { LayerDigest } from '../content/digest.js';
import type { WorkerReply } from '../content/worker.js';
import type { WorkerPool } from '../content/workers.js';
import { archiveCorrupt } from './container.js';
import type { RepoIndex } from './index-file.js';
import type { LayerMapReader, MapPiece } from './layers.js';
import { type BlockLocation, PackFileReader } from './packs.js';
import type { Repo } from './repo.js';

type Decoded = { raw: Buffer; shas: Buffer; ids: Buffer[]; lengths: number[]; at: number[] };

/** Raw frames kept after use, by bytes. */
const CACHE_BYTES = 16 * 1024 * 1024;
/** Open pack files kept. */
const OPEN_PACKS = 16;
/** Map pieces read ahead of the one being handed out. */
const AHEAD_PIECES = 256;

export class BlockSource {
  private readonly packs = new Map<string, Promise<PackFileReader>>();
  private readonly closing: Promise<void>[] = [];
  private readonly frames = new Map<string, Promise<Decoded>>();
  private cachedBytes = 0;

  constructor(
    private readonly repo: Repo,
    private readonly index: RepoIndex,
    private readonly pool: WorkerPool,
  ) {}

  /** Open pack files, most recently used last (a promise each: two frames of one pack share one opening). */
  private pack(id: string): Promise<PackFileReader> {
    let p = this.packs.get(id);
    if (p) {
      this.packs.delete(id);
      this.packs.set(id, p);
      return p;
    }
    p = PackFileReader.open(this.repo, id);
    p.catch(() => undefined);
    this.packs.set(id, p);
    if (this.packs.size > OPEN_PACKS) {
      const [k, v] = this.packs.entries().next().value!;
      this.packs.delete(k);
      // Closed once the reads already started on it are done (they hold the promise, not the map).
      this.closing.push(
        v.then(
          async (r) => {
            await Promise.allSettled([...this.frames.values()]);
            await r.close();
          },
          () => undefined,
        ),
      );
    }
    return p;
  }

  private frame(loc: BlockLocation): Promise<Decoded> {
    const key = `${loc.pack}:${loc.frame}`;
    let d = this.frames.get(key);
    if (d) {
      this.frames.delete(key);
      this.frames.set(key, d);
      return d;
    }
    d = this.decode(loc);
    d.catch(() => undefined);
    this.frames.set(key, d);
    void d.then(
      (x) => {
        this.cachedBytes += x.raw.length;
        this.evict();
      },
      () => this.frames.delete(key),
    );
    return d;
  }

  private evict(): void {
    while (this.cachedBytes > CACHE_BYTES && this.frames.size > 1) {
      const [k, v] = this.frames.entries().next().value!;
      this.frames.delete(k);
      void v.then(
        (x) => {
          this.cachedBytes -= x.raw.length;
        },
        () => undefined,
      );
    }
  }

  private async decode(loc: BlockLocation): Promise<Decoded> {
    const p = await this.pack(loc.pack);
    const rec = await p.frame(loc);
    const pool = this.pool;
    const stored = new ArrayBuffer(rec.stored.length);
    Buffer.from(stored).set(rec.stored);
    const rep = await pool.request(
      pool.pick(),
      {
        op: 'decode',
        id: pool.newId(),
        codec: rec.codec,
        stored,
        offset: 0,
        length: rec.stored.length,
        rawLength: rec.rawLength,
        lengths: Uint32Array.from(rec.lengths),
      },
      [stored],
    );
    if ('bad' in rep) throw archiveCorrupt(`frame ${loc.frame} does not decompress to its ${rec.rawLength} bytes`, p.file);
    const r = rep as Extract<WorkerReply, { raw: ArrayBuffer }>;
    const raw = Buffer.from(r.raw, 0, r.rawLength);
    const shas = Buffer.from(r.shas);
    const at: number[] = [];
    let o = 0;
    for (const [i, len] of rec.lengths.entries()) {
      if (!blockId(shas.subarray(i * 32, i * 32 + 32), this.repo.idk).equals(rec.ids[i]!)) {
        throw archiveCorrupt(`frame ${loc.frame}: block ${i} does not match its id`, p.file);
      }
      at.push(o);
      o += len;
    }
    return { raw, shas, ids: rec.ids.map((x) => Buffer.from(x)), lengths: rec.lengths, at };
  }

  private async locate(id: Buffer, file: string): Promise<BlockLocation> {
    const loc = await this.index.get(id);
    if (!loc) throw archiveCorrupt(`block ${id.toString('hex').slice(0, 16)} is named by a layer map but in no index file`, file);
    return loc;
  }

  /**
   * The map's pieces with each block's bytes (valid until the next piece) and SHA-256, in guest order.
   * The layer's digest is recomputed on the way and must equal the map's (ARCHIVE_CORRUPT otherwise).
   */
  async *read(map: LayerMapReader): AsyncGenerator<MapPiece | { kind: 'block'; offset: number; length: number; id: Buffer; bytes: Buffer; sha: Buffer }> {
    const digest = new LayerDigest(map.trailer.virtual_size, map.trailer.cluster_size);
    const it = map.pieces();
    const ahead: { piece: MapPiece; frame: Promise<Decoded> | null; loc: BlockLocation | null }[] = [];
    let done = false;
    const fill = async () => {
      while (!done && ahead.length < AHEAD_PIECES) {
        const r = await it.next();
        if (r.done) {
          done = true;
          break;
        }
        const piece = r.value;
        if (piece.kind === 'zero') {
          ahead.push({ piece, frame: null, loc: null });
          continue;
        }
        const id = Buffer.from(piece.id);
        const loc = await this.locate(id, map.file);
        ahead.push({ piece: { ...piece, id }, frame: null, loc });
      }
    };
    // Frames needed by the next pieces start decoding now (the pool works while this thread writes).
    const startFrames = () => {
      let started = 0;
      for (const a of ahead) {
        if (!a.loc || a.frame) continue;
        a.frame = this.frame(a.loc);
        if (++started >= this.pool.size * 2) break;
      }
    };
    await fill();
    while (ahead.length) {
      startFrames();
      const a = ahead.shift()!;
      if (a.piece.kind === 'zero') {
        digest.addZero(a.piece.offset, a.piece.length);
        yield a.piece;
      } else {
        const d = await (a.frame ?? this.frame(a.loc!));
        const slot = a.loc!.slot;
        const f = `${a.loc!.pack}:${a.loc!.frame}`;
        if (slot >= d.ids.length || !d.ids[slot]!.equals(a.piece.id))
          throw archiveCorrupt(`index row for block ${a.piece.id.toString('hex').slice(0, 16)} points at another block (${f} slot ${slot})`, map.file);
        if (d.lengths[slot] !== a.piece.length)
          throw archiveCorrupt(`block at ${a.piece.offset} is ${d.lengths[slot]} bytes in its frame, the map says ${a.piece.length}`, map.file);
        const sha = d.shas.subarray(slot * 32, slot * 32 + 32);
        digest.addBlock(a.piece.offset, a.piece.length, sha);
        yield { ...a.piece, bytes: d.raw.subarray(d.at[slot]!, d.at[slot]! + a.piece.length), sha };
      }
      if (ahead.length < AHEAD_PIECES / 2) await fill();
    }
    if (digest.digest().toString('hex') !== map.trailer.digest) throw archiveCorrupt('layer content does not give its digest', map.file);
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.frames.values()]);
    for (const p of this.packs.values())
      await p.then(
        (r) => r.close(),
        () => undefined,
      );
    await Promise.allSettled(this.closing);
    this.packs.clear();
    this.frames.clear();
  }
}
