/**
 * decodeBundle: applies a bundle's packs, record by record, to a sink — and returns only once the seal
 * agrees with everything read. Three parts, each in its module:
 *
 *   map checks   (map-check.ts)   each zero and data record describes a valid layer map; the layer
 *                                 digests are recomputed on the way
 *   frame store  (frame-store.ts) frames decoded on the worker pool, every block checked against its
 *                                 id; the bytes of blocks placed again, for an import
 *   seal check   (seal-check.ts)  digests, totals and content ids against the seal
 *
 * A sink receives the checked pieces: import writes them, verify only counts.
 */
import type { WorkerPool } from '../content/workers.js';
import { type Codec, packEntryName, type Seal, type SealTotals } from './format.js';
import { type Decoded, FrameStore } from './frame-store.js';
import { MapChecker } from './map-check.js';
import { type PackRecord, parsePack } from './packs.js';
import { type BundleReader, corrupt } from './reader.js';
import { checkSeal } from './seal-check.js';

/** What a decoder hands over, in bundle order. Offsets and lengths are checked; data is verified. */
export interface BundleSink {
  /** Layers start in order; every layer starts (and ends) exactly once, even an empty one. */
  beginLayer?(layer: number): Promise<void>;
  endLayer?(layer: number): Promise<void>;
  /** A verified frame: its stored bytes and its raw bytes (all blocks concatenated). */
  frame?(frame: number, codec: Codec, stored: Buffer, raw: Buffer): Promise<void>;
  /** Block `block` (bytes `data`, when the sink asked for data) goes at `offset` of `layer`. */
  data?(layer: number, offset: number, block: number, length: number, data: Buffer | null): Promise<void>;
  zero?(layer: number, offset: number, length: number): Promise<void>;
  /**
   * The stored bytes of an earlier frame, when the decoder needs its blocks again and the bundle is not
   * a file it can read again (import from a pipe spools them).
   */
  storedBytes?(frame: number): Promise<Buffer>;
  /**
   * Block `block`'s `length` bytes read back from where the sink already wrote them (synchronously;
   * the buffer is valid until the next call), or null when they are not readable there yet. Cheaper
   * than decoding the block's frame again; the decoder checks them against the block's hash.
   */
  readBack?(block: number, length: number): Buffer | null;
  /** Whether the sink has placed `block` somewhere it may read it back from (for read-ahead). */
  canReadBack?(block: number): boolean;
}

export interface DecodeResult {
  seal: Seal;
  digests: Buffer[];
  totals: SealTotals;
  contentIds: string[];
  /** Per snapshot: whether its content id derives from its layers and a verified parent (seal-check.ts). */
  verified: boolean[];
}

type FrameRecord = Extract<PackRecord, { type: 'frame' }>;

export async function decodeBundle(
  r: BundleReader,
  pool: WorkerPool,
  sink: BundleSink,
  opts: { wantData: boolean; onPack?: () => void },
): Promise<DecodeResult> {
  const { meta, file } = r;
  const map = new MapChecker(meta, file, sink);
  const store = new FrameStore(r, pool, sink);
  const totals: SealTotals = { logical_bytes: 0, unique_bytes: 0, stored_bytes: 0, blocks: 0, unique_blocks: 0, frames: 0 };
  /** Frames decoded ahead of use, and earlier frames fetched ahead of the records that need them. */
  const DECODE_AHEAD = 2 * pool.size;
  const REFS_AHEAD = 3;

  let packNo = 0;
  for (;;) {
    const payload = await r.nextPack();
    if (payload === null) break;
    const where = packEntryName(packNo);
    const records = [...parsePack(payload, where, file)];
    const frameRecs = records.filter((x): x is FrameRecord => x.type === 'frame');
    const decoding: Promise<Decoded>[] = [];
    let consumed = 0;
    const decodeAhead = () => {
      while (decoding.length < frameRecs.length && decoding.length - consumed < DECODE_AHEAD) {
        const rec = frameRecs[decoding.length]!;
        const p = store.decode(rec.codec, rec.stored, rec.rawLength, Uint32Array.from(rec.lengths));
        p.catch(() => undefined);
        decoding.push(p);
      }
    };
    decodeAhead();
    // Earlier frames this pack's records use, in order of first use: fetched a few ahead.
    const known = store.blocks;
    const refOrder: number[] = [];
    const refIndex = new Map<number, number>();
    if (opts.wantData) {
      for (const rec of records) {
        if (rec.type !== 'data') continue;
        const end = Math.min(rec.first + rec.count, known);
        for (let n = rec.first; n < end; n++) {
          const f = store.frameOf(n);
          if (store.isNear(n)) continue;
          if (!refIndex.has(f)) {
            refIndex.set(f, refOrder.length);
            refOrder.push(f);
          }
        }
      }
    }
    let refNext = 0;
    const refsAhead = (upTo: number) => {
      for (let i = Math.max(refNext, upTo); i < Math.min(refOrder.length, upTo + REFS_AHEAD); i++) store.prefetch(refOrder[i]!);
      refNext = Math.max(refNext, upTo);
    };
    const beforeReload = (f: number) => {
      const ri = refIndex.get(f);
      if (ri !== undefined && ri >= refNext) refsAhead(ri);
    };
    refsAhead(0);
    for (const rec of records) {
      if (rec.type === 'frame') {
        const d = await decoding[consumed]!;
        consumed++;
        decodeAhead();
        if (!d) throw corrupt(`${where}: frame ${store.frames} does not decompress to its ${rec.rawLength} bytes`, file);
        store.addBlocks(rec, d, where);
        await sink.frame?.(store.frames, rec.codec, rec.stored, d.raw);
        totals.frames++;
        totals.unique_blocks += rec.lengths.length;
        totals.unique_bytes += rec.rawLength;
        totals.stored_bytes += rec.stored.length;
        store.endFrame(rec, d, opts.wantData, packNo, payload);
        continue;
      }
      if (rec.type === 'zero') {
        await map.zero(rec.layer, rec.offset, rec.length);
        await sink.zero?.(rec.layer, rec.offset, rec.length);
        continue;
      }
      // data
      await map.dataRecord(rec.layer, rec.first, rec.count, store.blocks, where);
      let o = rec.offset;
      for (let n = rec.first; n < rec.first + rec.count; n++) {
        const len = store.lengthOf(n);
        map.block(rec.layer, o, len, store.shaOf(n));
        totals.blocks++;
        totals.logical_bytes += len;
        const bytes = opts.wantData ? await store.blockBytes(n, len, beforeReload) : null;
        await sink.data?.(rec.layer, o, n, len, bytes);
        o += len;
      }
    }
    packNo++;
    opts.onPack?.();
  }
  await map.finish();
  // Everything is read: now the seal must agree with what we saw.
  const seal = r.seal!;
  const { digests, contentIds, verified } = checkSeal(meta, seal, map.digests, totals, file, (li) => map.layerName(li));
  return { seal, digests, totals, contentIds, verified };
}
