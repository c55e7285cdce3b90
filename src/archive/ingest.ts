/**
 * Storing layers in a repository: what push (from qcow2 layers) and import (from a bundle) share.
 *
 * Per layer, in guest order, through the frame pipeline `snapshot export` uses (content/frames.ts):
 *   this thread   hashes every block and looks its id up: first among this run's new blocks, then in
 *                 the repository's index files
 *   worker        compresses the batch's new blocks into one zstd frame
 *   this thread   appends the frame to the open pack, notes the new blocks' places, and every block
 *                 (new or known) and zero extent in the layer's map
 * A full pack is finished (trailer, fsync, link) in the background while the next one fills (two at the
 * most); its blocks go into an index file only once it is in place.
 *
 * Durability order (docs/archive-format.md §1): a layer map is linked only once every block it names
 * is in a pack that is in place and in an index file that is in place. So layer maps are finished
 * (written, not linked) as layers end and linked in commit() — or earlier, after a flush, when many
 * wait — and the caller writes its record after commit().
 */
import { checkAborted } from '../abort.js';
import { blockId } from '../bundle/crypto.js';
import type { Progress } from '../bundle/progress.js';
import type { Batcher } from '../content/batcher.js';
import { FRAME_TARGET } from '../content/codec.js';
import { BlockIndex } from '../content/dedup.js';
import { BLOCK_SIZE, LayerDigest } from '../content/digest.js';
import { type FramedBatch, FramePipeline, feedPieces } from '../content/frames.js';
import type { LayerSource } from '../content/layer.js';
import type { WorkerPool } from '../content/workers.js';
import { INDEX_FLUSH_ROWS, PACK_TARGET } from './format.js';
import { PendingRows, type RepoIndex } from './index-file.js';
import { LayerMapWriter } from './layers.js';
import { type BlockLocation, PackFileWriter } from './packs.js';
import type { Repo } from './repo.js';

/** What a stored layer is, for the record. */
export interface StoredLayer {
  name: string;
  digest: Buffer;
  virtualSize: number;
  clusterSize: number;
  dataBytes: number;
  zeroBytes: number;
  blocks: number;
}

export interface IngestStats {
  read_bytes: number;
  new_blocks: number;
  new_raw_bytes: number;
  new_stored_bytes: number;
  pack_bytes: number;
  packs: number;
  index_files: number;
  layers_stored: number;
  layers_known: number;
  index_bytes: number;
  map_bytes: number;
}

/** Packs finished in the background at once (each holds only its rows in memory meanwhile). */
const MAX_CLOSING = 2;

/** Layer maps written but not yet linked (their blocks' index file is not written yet). */
const MAX_WAITING_MAPS = 32;

/** Test knob: smaller packs (to exercise multi-pack repositories with little data). */
function packTarget(): number {
  const v = Number(process.env.CLONEBOX_ARCHIVE_PACK_BYTES);
  return Number.isInteger(v) && v >= BLOCK_SIZE && v <= PACK_TARGET ? v : PACK_TARGET;
}

export class Ingest {
  readonly stats: IngestStats = {
    read_bytes: 0,
    new_blocks: 0,
    new_raw_bytes: 0,
    new_stored_bytes: 0,
    pack_bytes: 0,
    packs: 0,
    index_files: 0,
    layers_stored: 0,
    layers_known: 0,
    index_bytes: 0,
    map_bytes: 0,
  };
  /** New blocks of this run not yet in an index file: id → number (ids kept by the BlockIndex). */
  private fresh = new BlockIndex();
  private pack: PackFileWriter | null = null;
  /** Rows of the open pack (moved to `pending` when it is in place). */
  private packRows: { id: Buffer; loc: BlockLocation }[] = [];
  /**
   * Packs being finished (trailer, fsync, link) while the next one fills, oldest first: their fsyncs wait
   * for the disk, not for this thread (bench/README.md, "archive push against snapshot export").
   */
  private readonly closing: Promise<void>[] = [];
  private pending = new PendingRows();
  private readonly waiting: { w: LayerMapWriter; layer: StoredLayer }[] = [];
  private readonly target = packTarget();
  private readonly pipeline: FramePipeline<Buffer>;
  /** The layer being stored: its map and digest (emit() adds every batch to them). */
  private cur: { map: LayerMapWriter; digest: LayerDigest } | null = null;

  constructor(
    private readonly repo: Repo,
    private readonly index: RepoIndex,
    pool: WorkerPool,
    private readonly progress: Progress | null,
    private readonly signal: AbortSignal | undefined,
  ) {
    // Per batch: the id of each block item (the map names blocks by id).
    this.pipeline = new FramePipeline<Buffer>(
      pool,
      {
        begin: (blocks) => Buffer.allocUnsafe(blocks * 32),
        block: (ids, k, sha) => {
          const bid = blockId(sha, this.repo.idk);
          bid.copy(ids, k * 32);
          if (this.fresh.get(bid) >= 0) return null;
          return this.index.get(bid).then((loc) => (loc === null ? Buffer.from(this.fresh.idOf(this.fresh.add(bid))) : null));
        },
        emit: (b) => this.emit(b),
      },
      FRAME_TARGET,
      repo.level,
    );
  }

  /**
   * Stores one layer: `feed` gives its pieces to the batcher in guest order. The map is put in place
   * by a later flush() or commit(), after the blocks it names.
   */
  async layer(virtualSize: number, clusterSize: number, feed: (b: Batcher) => Promise<void>): Promise<StoredLayer> {
    const map = await LayerMapWriter.create(this.repo);
    const digest = new LayerDigest(virtualSize, clusterSize);
    this.cur = { map, digest };
    try {
      await this.pipeline.feed(0, feed);
      await this.pipeline.drain();
    } catch (err) {
      await this.pipeline.abort();
      await map.abort();
      throw err;
    } finally {
      this.cur = null;
    }
    const d = digest.digest();
    const layer: StoredLayer = {
      name: this.repo.layerName(d),
      digest: d,
      virtualSize,
      clusterSize,
      dataBytes: digest.dataBytes,
      zeroBytes: digest.zeroBytes,
      blocks: digest.blocks,
    };
    this.waiting.push({ w: map, layer });
    if (this.waiting.length >= MAX_WAITING_MAPS) await this.flush();
    return layer;
  }

  /** Stores one qcow2 layer (content/layer.ts's pieces, in guest order). */
  storeLayer(src: LayerSource): Promise<StoredLayer> {
    return this.layer(src.virtualSize, src.clusterSize, (b) => feedPieces(b, src));
  }

  private async emit(f: FramedBatch<Buffer>): Promise<void> {
    const { map, digest } = this.cur!;
    if (f.frame) {
      const fr = f.frame;
      this.pack ??= await PackFileWriter.create(this.repo);
      const locs = await this.pack.frame(fr.codec, f.fresh, fr.stored, fr.rawLength);
      this.stats.new_blocks += f.fresh.length;
      this.stats.new_raw_bytes += fr.rawLength;
      this.stats.new_stored_bytes += fr.stored.length;
      for (const [slot, b] of f.fresh.entries()) this.packRows.push({ id: b.id, loc: { pack: this.pack.id, ...locs, slot } });
    }
    let k = 0;
    let bytes = 0;
    for (const it of f.items) {
      if (it.kind === 'zero') {
        digest.addZero(it.offset, it.length);
        await map.addZero(it.offset, it.length);
        continue;
      }
      digest.addBlock(it.offset, it.length, f.shas.subarray(k * 32, k * 32 + 32));
      await map.addBlock(it.offset, it.length, f.state.subarray(k * 32, k * 32 + 32));
      bytes += it.length;
      k++;
    }
    this.stats.read_bytes += bytes;
    this.progress?.add(bytes);
    if (this.pack && this.pack.bytes >= this.target) await this.closePack();
    checkAborted(this.signal);
  }

  /** Starts finishing the open pack in the background (after the oldest one, when MAX_CLOSING are). */
  private async closePack(): Promise<void> {
    if (!this.pack) return;
    // (the open pack keeps the fresh blocks in memory while an index file may be written here)
    while (this.closing.length >= MAX_CLOSING) await this.settleOne();
    const p = this.pack;
    const rows = this.packRows;
    this.pack = null;
    this.packRows = [];
    const done = p.finish().then(() => {
      this.stats.packs++;
      this.stats.pack_bytes += p.bytes;
      for (const r of rows) this.pending.add(r.id, r.loc);
    });
    done.catch(() => undefined); // a failure surfaces when it is settled
    this.closing.push(done);
  }

  /** Waits for the oldest pack being finished; its rows are pending then (an index file is written once they are many). */
  private async settleOne(): Promise<void> {
    await this.closing[0];
    this.closing.shift();
    if (this.pending.size >= INDEX_FLUSH_ROWS) await this.writeIndex();
  }

  private async writeIndex(): Promise<void> {
    const written = await this.pending.write(this.repo);
    this.pending = new PendingRows();
    if (written) {
      this.stats.index_files++;
      this.stats.index_bytes += written.bytes;
      await this.index.add(written.id);
    }
    // Blocks in an index file are found there now; only blocks still on their way stay in memory.
    if (!this.pack && this.closing.length === 0 && this.packRows.length === 0) this.fresh = new BlockIndex();
  }

  /** Puts every block written so far in place (pack, index), then links the waiting layer maps. */
  async flush(): Promise<void> {
    await this.closePack();
    while (this.closing.length) await this.settleOne();
    await this.writeIndex();
    for (const x of this.waiting.splice(0)) {
      const stored = await x.w.finish({
        virtual_size: x.layer.virtualSize,
        cluster_size: x.layer.clusterSize,
        digest: x.layer.digest.toString('hex'),
        data_bytes: x.layer.dataBytes,
        zero_bytes: x.layer.zeroBytes,
        blocks: x.layer.blocks,
      });
      if (stored.stored) {
        this.stats.layers_stored++;
        this.stats.map_bytes += x.w.bytes;
      } else this.stats.layers_known++;
    }
  }

  /** Everything written is in place: the caller may write its record now. */
  commit(): Promise<void> {
    return this.flush();
  }

  /** Drops what was not put in place (packs and maps in progress); files already in place stay (gc reclaims them). */
  async abort(): Promise<void> {
    await Promise.allSettled(this.closing.splice(0));
    await this.pack?.abort();
    this.pack = null;
    for (const x of this.waiting.splice(0)) await x.w.abort();
  }
}
