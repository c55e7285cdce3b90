/**
 * Storing layers in a repository: what push (from qcow2 layers) and import (from a bundle) share.
 *
 * Per layer, in guest order (as `snapshot export` does it, src/bundle/export.ts):
 *   this thread   cuts blocks into batches (content/batcher.ts), hashes every block, looks its id up:
 *                 first among this run's new blocks, then in the repository's index files
 *   worker        compresses the batch's new blocks into one zstd frame (content/workers.ts)
 *   this thread   appends the frame to the open pack, notes the new blocks' places, and every block
 *                 (new or known) and zero extent in the layer's map
 * Batches in flight are bounded (two per worker), so memory does not grow with the disk.
 *
 * Durability order (docs/archive-format.md §1): a layer map is linked only once every block it names
 * is in a pack that is in place and in an index file that is in place. So layer maps are finished
 * (written, not linked) as layers end and linked in commit() — or earlier, after a flush, when many
 * wait — and the caller writes its record after commit().
 */
import { createHash } from 'node:crypto';
import { checkAborted } from '../abort.js';
import { blockId } from '../bundle/crypto.js';
import type { Progress } from '../bundle/progress.js';
import { type Batch, Batcher } from '../content/batcher.js';
import { Codec, compressBound, FRAME_TARGET } from '../content/codec.js';
import { BlockIndex } from '../content/dedup.js';
import { BLOCK_SIZE, LayerDigest } from '../content/digest.js';
import type { WorkerReply } from '../content/worker.js';
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

interface InFlight {
  items: Batch['items'];
  shas: Buffer;
  ids: Buffer;
  /** Per block item: index into `fresh` when it is new here, else -1. */
  freshAt: Int32Array;
  fresh: { length: number; id: Buffer }[];
  frame: Promise<{ codec: Codec; stored: Buffer; rawLength: number; release: () => void }> | null;
}

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
  private pending = new PendingRows();
  private readonly waiting: { w: LayerMapWriter; layer: StoredLayer }[] = [];
  private readonly maxInFlight: number;
  private readonly inputs: BufferPool;
  private readonly outputs: BufferPool;
  private readonly target = packTarget();

  constructor(
    private readonly repo: Repo,
    private readonly index: RepoIndex,
    private readonly pool: WorkerPool,
    private readonly progress: Progress | null,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.maxInFlight = pool.size * 2;
    this.inputs = new BufferPool(FRAME_TARGET + BLOCK_SIZE, this.maxInFlight + 3);
    this.outputs = new BufferPool(compressBound(FRAME_TARGET + BLOCK_SIZE), this.maxInFlight + 2);
  }

  /**
   * Stores one layer: `feed` gives its pieces to the batcher in guest order. The map is put in place
   * by a later flush() or commit(), after the blocks it names.
   */
  async layer(virtualSize: number, clusterSize: number, feed: (b: Batcher) => Promise<void>): Promise<StoredLayer> {
    const map = await LayerMapWriter.create(this.repo);
    const digest = new LayerDigest(virtualSize, clusterSize);
    const queue: InFlight[] = [];
    try {
      const emit = async (f: InFlight) => {
        let locs: { frame: number; offset: number; length: number } | null = null;
        if (f.frame) {
          const fr = await f.frame;
          this.pack ??= await PackFileWriter.create(this.repo);
          locs = await this.pack.frame(fr.codec, f.fresh, fr.stored, fr.rawLength);
          fr.release();
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
          await map.addBlock(it.offset, it.length, f.ids.subarray(k * 32, k * 32 + 32));
          bytes += it.length;
          k++;
        }
        this.stats.read_bytes += bytes;
        this.progress?.add(bytes);
        if (this.pack && this.pack.bytes >= this.target) await this.closePack();
        checkAborted(this.signal);
      };
      const submit = async (batch: Batch): Promise<'kept' | undefined> => {
        const shas = Buffer.allocUnsafe(batch.blocks * 32);
        const ids = Buffer.allocUnsafe(batch.blocks * 32);
        const freshAt = new Int32Array(batch.blocks).fill(-1);
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
          const bid = blockId(sha, this.repo.idk);
          bid.copy(ids, k * 32);
          if (this.fresh.get(bid) < 0 && (await this.index.get(bid)) === null) {
            const n = this.fresh.add(bid);
            freshAt[k] = fresh.length;
            fresh.push({ length: it.length, id: Buffer.from(this.fresh.idOf(n)) });
            freshItems.push(it);
          }
          k++;
        }
        const f: InFlight = { items: batch.items, shas, ids, freshAt, fresh, frame: null };
        let input: Buffer | null = null;
        let rawLength = 0;
        let kept = false;
        if (fresh.length === batch.blocks && fresh.length > 0) {
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
          const output = this.outputs.take();
          const inAb = input.buffer as ArrayBuffer;
          const raw = rawLength;
          const pool = this.pool;
          f.frame = pool
            .request(pool.pick(), { op: 'compress', id: pool.newId(), input: inAb, length: raw, output, level: this.repo.level }, [inAb, output])
            .then((rep) => {
              const r = rep as Extract<WorkerReply, { storedLength: number }>;
              if (r.codec === Codec.Zstd) {
                this.inputs.give(r.input);
                return { codec: r.codec, stored: Buffer.from(r.output, 0, r.storedLength), rawLength: raw, release: () => this.outputs.give(r.output) };
              }
              this.outputs.give(r.output);
              return { codec: r.codec, stored: Buffer.from(r.input, 0, raw), rawLength: raw, release: () => this.inputs.give(r.input) };
            });
          f.frame.catch(() => undefined);
        }
        queue.push(f);
        while (queue.length > this.maxInFlight) await emit(queue.shift()!);
        return kept ? 'kept' : undefined;
      };
      const batcher = new Batcher(0, FRAME_TARGET, submit, () => Buffer.from(this.inputs.take()));
      await feed(batcher);
      await batcher.flush();
      while (queue.length) await emit(queue.shift()!);
    } catch (err) {
      await Promise.allSettled(queue.map((f) => f.frame));
      await map.abort();
      throw err;
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

  private async closePack(): Promise<void> {
    const p = this.pack;
    if (!p) return;
    this.pack = null;
    await p.finish();
    this.stats.packs++;
    this.stats.pack_bytes += p.bytes;
    for (const r of this.packRows) this.pending.add(r.id, r.loc);
    this.packRows = [];
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
    if (!this.pack && this.packRows.length === 0) this.fresh = new BlockIndex();
  }

  /** Puts every block written so far in place (pack, index), then links the waiting layer maps. */
  async flush(): Promise<void> {
    await this.closePack();
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
    await this.pack?.abort();
    this.pack = null;
    for (const x of this.waiting.splice(0)) await x.w.abort();
  }
}
