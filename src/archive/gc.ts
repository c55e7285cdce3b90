/**
 * `archive gc`: removes what no record needs: layer maps no record names, blocks no kept layer names,
 * packs left with no such block, and it rewrites packs that hold some, so the repository shrinks by
 * exactly the blocks only forgotten snapshots held. It holds the exclusive lock (exclusive-lock.ts), so
 * no push runs meanwhile.
 *
 *   mark     every block of every layer a record names is looked up in the index files and its row
 *            marked (one bit per row); a block in no index, or a layer that is missing, stops gc before
 *            it deletes anything (ARCHIVE_CORRUPT: `archive check` says more)
 *   count    every marked row marks its slot in its pack (one bit per block of each pack)
 *   repack   packs with both kept and unused blocks: their kept blocks (each checked against its id
 *            once decompressed) go into new packs, in new frames
 *   index    new index files for every marked row, pointing into the new packs where blocks moved
 *   delete   then the old index files, then the packs with nothing kept and the repacked ones, then
 *            the layer maps no record names
 *
 * Crash safety: nothing is deleted before what replaces it is durable (new packs, then new index files,
 * each fsynced and linked into place by the container writer). Killed before the old index files go,
 * the repository has two index rows for some blocks, both pointing at packs that exist; killed after,
 * it has packs no index names. Neither loses a block a record needs, `check` passes (it notes the
 * unindexed packs), and the next gc finishes the work. Crash points: archive.gc.* (src/crash.ts).
 *
 * Memory: one bit per index row and per pack block (2 MiB per TiB of blocks each), the index files'
 * trailers (as a push: about 22 MiB per TiB), and the new locations of the blocks that move (about
 * 100 bytes each: only those of partly used packs).
 */
import { readdir, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { checkAborted } from '../abort.js';
import { blockId, type KeySource } from '../bundle/crypto.js';
import { Codec, compressBound, compressInto, decodeFrame, FRAME_TARGET } from '../content/codec.js';
import { crashPoint } from '../crash.js';
import { CloneboxError, ioError } from '../errors.js';
import { fsyncDir, sweepStaleTempsIn } from '../fsutil.js';
import { requireDeleteKey } from './append-only.js';
import { archiveCorrupt } from './container.js';
import { lockExclusive } from './exclusive-lock.js';
import { listFanout, treeBytes } from './files.js';
import { DIR_LAYERS, DIR_PACKS, ID_RE, INDEX_FLUSH_ROWS, NAME_RE64, PACK_TARGET } from './format.js';
import { IndexFile, PendingRows } from './index-file.js';
import { LayerMapReader } from './layers.js';
import { type BlockLocation, PackFileReader, PackFileWriter } from './packs.js';
import { readAllRecords } from './records.js';
import type { Repo } from './repo.js';
import { RowBits, RowLookup, rowNumber } from './row-lookup.js';

export interface GcOptions {
  /** Only count what would go. */
  dryRun?: boolean | undefined;
  /** The delete key of an append-only repository. */
  deleteKey?: KeySource | null | undefined;
  signal?: AbortSignal | undefined;
}

export interface GcResult {
  records: number;
  layers_kept: number;
  layers_removed: number;
  blocks_kept: number;
  blocks_removed: number;
  packs_removed: number;
  packs_rewritten: number;
  packs_written: number;
  index_files_removed: number;
  index_files_written: number;
  bytes_before: number;
  bytes_after: number;
  dry_run: boolean;
  seconds: number;
}

interface PackInfo {
  /** First block number of each frame, and the total. */
  firsts: number[];
  blocks: number;
  live: Uint8Array;
  liveCount: number;
  bytes: number;
}

/** Hidden temporaries of writers that died (a killed push or gc). */
async function sweepTemps(repo: Repo): Promise<void> {
  for (const top of [DIR_PACKS, DIR_LAYERS]) {
    const d = path.join(repo.dir, top);
    await sweepStaleTempsIn(d);
    for (const s of await readdir(d).catch(() => [] as string[])) if (/^[0-9a-f]{2}$/.test(s)) await sweepStaleTempsIn(path.join(d, s));
  }
  await sweepStaleTempsIn(repo.indexDir);
  await sweepStaleTempsIn(repo.snapshotsDir);
}

async function remove(file: string): Promise<void> {
  try {
    await unlink(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(err, 'cannot remove archive file', file);
  }
}

export async function collectGarbage(repo: Repo, opts: GcOptions = {}): Promise<GcResult> {
  const t0 = Date.now();
  const dryRun = Boolean(opts.dryRun);
  if (!dryRun) await requireDeleteKey(repo, opts.deleteKey ?? null, 'gc');
  const lock = await lockExclusive(repo, 'archive gc');
  const files: IndexFile[] = [];
  try {
    if (!dryRun) await sweepTemps(repo);
    const bytesBefore = await treeBytes(repo.dir);
    const records = await readAllRecords(repo);
    const liveLayers = new Set<string>();
    for (const r of records) for (const s of r.snapshots) for (const d of s.disks) liveLayers.add(d.layer);

    // mark
    const indexIds = (await readdir(repo.indexDir).catch((err) => Promise.reject(ioError(err, 'cannot read archive index', repo.indexDir))))
      .filter((n) => ID_RE.test(n))
      .sort();
    for (const id of indexIds) files.push(await IndexFile.open(repo, id));
    const marks = files.map((f) => new RowBits(f.chunks));
    const lookup = new RowLookup(files);
    let blocksKept = 0;
    for (const name of [...liveLayers].sort()) {
      checkAborted(opts.signal);
      const m = await LayerMapReader.open(repo, name);
      try {
        for await (const p of m.pieces()) {
          if (p.kind !== 'block') continue;
          const hit = await lookup.find(p.id);
          if (!hit) throw archiveCorrupt(`block ${p.id.toString('hex').slice(0, 16)} at ${p.offset} is in no index file; gc deleted nothing`, m.file);
          if (marks[hit.file]!.set(hit.row)) blocksKept++;
        }
      } finally {
        await m.close();
      }
    }
    crashPoint('archive.gc.marked');

    // count
    const packs = new Map<string, PackInfo>();
    for (const id of await listFanout(path.join(repo.dir, DIR_PACKS), ID_RE)) {
      let info: PackInfo;
      try {
        const r = await PackFileReader.open(repo, id);
        try {
          const firsts: number[] = [];
          let n = 0;
          for (const f of r.frames()) {
            firsts.push(n);
            n += f.blocks.length;
          }
          info = { firsts, blocks: n, live: new Uint8Array(Math.ceil(n / 8)), liveCount: 0, bytes: (await stat(r.file)).size };
        } finally {
          await r.close();
        }
      } catch (err) {
        // A damaged pack is garbage if no kept block is in it (checked below), else gc stops.
        if (!(err instanceof CloneboxError) || err.code !== 'ARCHIVE_CORRUPT') throw err;
        info = { firsts: [], blocks: 0, live: new Uint8Array(0), liveCount: 0, bytes: (await stat(repo.packPath(id))).size };
      }
      packs.set(id, info);
    }
    const liveSlot = (loc: BlockLocation, file: string): { info: PackInfo; n: number } => {
      const info = packs.get(loc.pack);
      const n = info && loc.frame < info.firsts.length ? info.firsts[loc.frame]! + loc.slot : -1;
      const end = info && loc.frame + 1 < info.firsts.length ? info.firsts[loc.frame + 1]! : (info?.blocks ?? 0);
      if (!info || n < 0 || n >= end)
        throw archiveCorrupt(`a kept block lies in pack ${loc.pack} frame ${loc.frame} slot ${loc.slot}, which is not there; gc deleted nothing`, file);
      return { info, n };
    };
    for (const [k, f] of files.entries()) {
      for (let c = 0; c < f.chunks; c++) {
        const rows = await f.chunk(c);
        const n = rows.length / 48;
        for (let r = 0; r < n; r++) {
          if (!marks[k]!.has(rowNumber(c, r))) continue;
          const { info, n: slot } = liveSlot(f.location(rows, r), f.file);
          if ((info.live[slot >>> 3]! & (1 << (slot & 7))) === 0) {
            info.live[slot >>> 3]! |= 1 << (slot & 7);
            info.liveCount++;
          }
        }
      }
    }
    const dead = [...packs].filter(([, p]) => p.liveCount === 0).map(([id]) => id);
    const partial = [...packs].filter(([, p]) => p.liveCount > 0 && p.liveCount < p.blocks).map(([id]) => id);
    const layersOnDisk = await listFanout(path.join(repo.dir, DIR_LAYERS), NAME_RE64);
    const deadLayers = layersOnDisk.filter((n) => !liveLayers.has(n));
    const result: GcResult = {
      records: records.length,
      layers_kept: liveLayers.size,
      layers_removed: deadLayers.length,
      blocks_kept: blocksKept,
      blocks_removed: [...packs.values()].reduce((a, p) => a + p.blocks - p.liveCount, 0),
      packs_removed: dead.length,
      packs_rewritten: partial.length,
      packs_written: 0,
      index_files_removed: 0,
      index_files_written: 0,
      bytes_before: bytesBefore,
      bytes_after: bytesBefore,
      dry_run: dryRun,
      seconds: 0,
    };
    if (dryRun) {
      result.index_files_removed = files.length;
      result.seconds = (Date.now() - t0) / 1000;
      return result;
    }

    // repack
    const moved = new Map<string, BlockLocation>();
    let writer: PackFileWriter | null = null;
    let batch: { id: Buffer; data: Buffer; key: string }[] = [];
    let batchBytes = 0;
    const flushFrame = async () => {
      if (batch.length === 0) return;
      const input = Buffer.concat(batch.map((b) => b.data));
      const out = Buffer.allocUnsafe(compressBound(input.length));
      const z = compressInto(input, out, repo.level);
      writer ??= await PackFileWriter.create(repo);
      const at = await writer.frame(
        z.codec,
        batch.map((b) => ({ length: b.data.length, id: b.id })),
        // Raw: zstd did not make it smaller, and the input itself is stored.
        z.codec === Codec.Raw ? input : Buffer.from(out.subarray(0, z.length)),
        input.length,
      );
      for (const [slot, b] of batch.entries()) moved.set(b.key, { pack: writer.id, offset: at.offset, length: at.length, frame: at.frame, slot });
      batch = [];
      batchBytes = 0;
      if (writer.bytes >= PACK_TARGET) await finishPack();
    };
    const finishPack = async () => {
      if (!writer) return;
      await writer.finish();
      writer = null;
      result.packs_written++;
      crashPoint('archive.gc.pack-written');
    };
    try {
      for (const id of partial) {
        checkAborted(opts.signal);
        const info = packs.get(id)!;
        const r = await PackFileReader.open(repo, id);
        try {
          for (const [fi, fr] of r.frames().entries()) {
            const first = info.firsts[fi]!;
            const liveHere = fr.blocks.some((_, s) => (info.live[(first + s) >>> 3]! & (1 << ((first + s) & 7))) !== 0);
            if (!liveHere) continue;
            const rec = await r.frame({ frame: fi, offset: fr.offset, length: fr.length });
            const lengths = Uint32Array.from(rec.lengths);
            const dec = decodeFrame(rec.codec, rec.stored, rec.rawLength, lengths);
            if (!dec) throw archiveCorrupt(`frame ${fi} does not decompress to ${rec.rawLength} bytes; gc deleted nothing`, r.file);
            let at = 0;
            for (let s = 0; s < rec.lengths.length; s++) {
              const len = rec.lengths[s]!;
              const n = first + s;
              if ((info.live[n >>> 3]! & (1 << (n & 7))) !== 0) {
                const want = rec.ids[s]!;
                if (!blockId(dec.shas.subarray(s * 32, s * 32 + 32), repo.idk).equals(want)) {
                  throw archiveCorrupt(`frame ${fi} block ${s} does not match its id; gc deleted nothing`, r.file);
                }
                batch.push({ id: Buffer.from(want), data: Buffer.from(dec.raw.subarray(at, at + len)), key: `${id}:${fi}:${s}` });
                batchBytes += len;
                if (batchBytes >= FRAME_TARGET) await flushFrame();
              }
              at += len;
            }
          }
        } finally {
          await r.close();
        }
      }
      await flushFrame();
      await finishPack();
    } catch (err) {
      await (writer as PackFileWriter | null)?.abort();
      throw err;
    }

    // index
    const repacked = new Set(partial);
    let pending = new PendingRows();
    const flushIndex = async () => {
      if ((await pending.write(repo)) !== null) {
        result.index_files_written++;
        crashPoint('archive.gc.index-written');
      }
      pending = new PendingRows();
    };
    for (const [k, f] of files.entries()) {
      for (let c = 0; c < f.chunks; c++) {
        const rows = await f.chunk(c);
        for (let r = 0; r < rows.length / 48; r++) {
          if (!marks[k]!.has(rowNumber(c, r))) continue;
          const loc = f.location(rows, r);
          const id = rows.subarray(r * 48, r * 48 + 32);
          if (repacked.has(loc.pack)) {
            const to = moved.get(`${loc.pack}:${loc.frame}:${loc.slot}`);
            if (!to) throw new CloneboxError('INTERNAL', `gc lost track of a kept block of pack ${loc.pack}`);
            pending.add(id, to);
          } else pending.add(id, loc);
          if (pending.size >= INDEX_FLUSH_ROWS) await flushIndex();
        }
      }
    }
    await flushIndex();

    // delete: old index files, then packs, then layer maps
    for (const f of files) await f.close();
    const old = files.splice(0);
    for (const f of old) {
      await remove(f.file);
      result.index_files_removed++;
      crashPoint('archive.gc.index-deleted');
    }
    await fsyncDir(repo.indexDir);
    for (const id of [...dead, ...partial]) {
      await remove(repo.packPath(id));
      await fsyncDir(repo.packDir(id));
      crashPoint('archive.gc.pack-deleted');
    }
    for (const name of deadLayers) {
      await remove(repo.layerPath(name));
      await fsyncDir(repo.layerDir(name));
      crashPoint('archive.gc.layer-deleted');
    }
    result.bytes_after = await treeBytes(repo.dir);
    result.seconds = (Date.now() - t0) / 1000;
    return result;
  } finally {
    for (const f of files) await f.close().catch(() => undefined);
    await lock.release();
  }
}
