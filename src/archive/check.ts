/**
 * `archive check [--read-data]`: is every record, layer map, index file and pack whole and consistent?
 *
 *   records  each one opens and authenticates; every layer it names exists, authenticates, and its
 *            map's every block is in an index file
 *   index    each file opens, each chunk authenticates and is sorted; every row points at a pack that
 *            exists, at a frame and slot that pack's trailer has, holding the same block id
 *   packs    each trailer authenticates and tiles the file; with --read-data every frame is read,
 *            opened, decompressed, and every block hashed and compared with its id (what a plain
 *            repository's pack tags leave to the reader, as bundles do)
 *
 * Every problem is named with its file (and chunk, frame or block) and check goes on to the next file:
 * one flipped byte gives one clear line, not a stop at the first. What gc will reclaim (packs no index
 * names, layers no record names: what a killed push or gc leaves) is a note, not an error.
 *
 * Memory: the index files' trailers (as a push), and the block ids of the pack trailers (32 bytes per
 * block: 0.5 GiB per TiB of blocks; a check of a very large repository is a job for a big machine).
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { checkAborted } from '../abort.js';
import { blockId } from '../bundle/crypto.js';
import { decodeFrame } from '../content/codec.js';
import { CloneboxError, ioError } from '../errors.js';
import { listFanout } from './files.js';
import { DIR_LAYERS, DIR_PACKS, ID_RE, NAME_RE64 } from './format.js';
import { IndexFile } from './index-file.js';
import { LayerMapReader } from './layers.js';
import { lockShared } from './lock.js';
import { PackFileReader } from './packs.js';
import { listRecordIds, readRecord } from './records.js';
import type { Repo } from './repo.js';
import { RowLookup } from './row-lookup.js';

export interface CheckOptions {
  /** Read and verify every block. */
  readData?: boolean | undefined;
  signal?: AbortSignal | undefined;
}

export interface CheckProblem {
  file: string;
  message: string;
}

export interface CheckResult {
  ok: boolean;
  errors: CheckProblem[];
  /** What gc reclaims; not errors. */
  notes: CheckProblem[];
  records: number;
  snapshots: number;
  layers: number;
  index_files: number;
  packs: number;
  blocks: number;
  read_data: boolean;
  blocks_read: number;
  bytes_read: number;
  seconds: number;
}

/** At most this many problems are listed per file (then one line says how many more). */
const PER_FILE = 10;

interface PackTable {
  /** Per frame: entry offset, sealed length, first block number. */
  frames: { offset: number; length: number; first: number; n: number }[];
  ids: Buffer;
}

export async function checkRepository(repo: Repo, opts: CheckOptions = {}): Promise<CheckResult> {
  const t0 = Date.now();
  const errors: CheckProblem[] = [];
  const notes: CheckProblem[] = [];
  const perFile = new Map<string, number>();
  const problem = (file: string, message: string) => {
    const n = (perFile.get(file) ?? 0) + 1;
    perFile.set(file, n);
    if (n <= PER_FILE) errors.push({ file, message });
    else if (n === PER_FILE + 1) errors.push({ file, message: 'more problems in this file are not listed' });
  };
  const caught = (file: string, err: unknown) => {
    if (err instanceof CloneboxError && (err.code === 'ARCHIVE_CORRUPT' || err.code === 'IO')) problem(file, err.message);
    else throw err;
  };
  const result: CheckResult = {
    ok: false,
    errors,
    notes,
    records: 0,
    snapshots: 0,
    layers: 0,
    index_files: 0,
    packs: 0,
    blocks: 0,
    read_data: Boolean(opts.readData),
    blocks_read: 0,
    bytes_read: 0,
    seconds: 0,
  };
  // A gc deletes; a check beside one would report what it is deleting. Pushes may run beside a check.
  const lock = await lockShared(repo, 'archive check');
  const files: IndexFile[] = [];
  try {
    // packs: trailers
    const packs = new Map<string, PackTable | null>();
    for (const id of await listFanout(path.join(repo.dir, DIR_PACKS), ID_RE)) {
      checkAborted(opts.signal);
      result.packs++;
      try {
        const r = await PackFileReader.open(repo, id);
        try {
          const frames: PackTable['frames'] = [];
          const ids: Buffer[] = [];
          let n = 0;
          for (const f of r.frames()) {
            frames.push({ offset: f.offset, length: f.length, first: n, n: f.blocks.length });
            for (const b of f.blocks) ids.push(b.id);
            n += f.blocks.length;
          }
          packs.set(id, { frames, ids: Buffer.concat(ids) });
          result.blocks += n;
        } finally {
          await r.close();
        }
      } catch (err) {
        packs.set(id, null);
        caught(repo.packPath(id), err);
      }
    }

    // index files: every row against the pack trailers
    const indexed = new Set<string>();
    let names: string[];
    try {
      names = (await readdir(repo.indexDir)).filter((n) => ID_RE.test(n)).sort();
    } catch (err) {
      throw ioError(err, 'cannot read archive index', repo.indexDir);
    }
    for (const id of names) {
      checkAborted(opts.signal);
      result.index_files++;
      const file = path.join(repo.indexDir, id);
      let f: IndexFile;
      try {
        f = await IndexFile.open(repo, id);
      } catch (err) {
        caught(file, err);
        continue;
      }
      files.push(f);
      try {
        for (let c = 0; c < f.chunks; c++) {
          const rows = await f.chunk(c);
          for (let r = 0; r < rows.length / 48; r++) {
            const loc = f.location(rows, r);
            const id = rows.subarray(r * 48, r * 48 + 32);
            indexed.add(loc.pack);
            const p = packs.get(loc.pack);
            const where = `chunk ${c} row ${r} (block ${id.toString('hex').slice(0, 16)})`;
            if (p === undefined) {
              problem(file, `${where} points at pack ${loc.pack}, which is missing`);
              continue;
            }
            if (p === null) continue; // the damaged pack is reported already
            const fr = p.frames[loc.frame];
            if (!fr || loc.slot >= fr.n || fr.offset !== loc.offset || fr.length !== loc.length) {
              problem(file, `${where} points at frame ${loc.frame} slot ${loc.slot} of pack ${loc.pack}, which its trailer does not have`);
              continue;
            }
            const at = (fr.first + loc.slot) * 32;
            if (!p.ids.subarray(at, at + 32).equals(id)) problem(file, `${where}: pack ${loc.pack} holds another block at frame ${loc.frame} slot ${loc.slot}`);
          }
        }
      } catch (err) {
        caught(file, err);
      }
    }
    for (const [id, p] of packs)
      if (p && !indexed.has(id)) notes.push({ file: repo.packPath(id), message: 'no index file names this pack (left by a killed push or gc): gc removes it' });

    // records and the layers they name
    const lookup = new RowLookup(files);
    const layerOwner = new Map<string, string>();
    for (const id of await listRecordIds(repo)) {
      checkAborted(opts.signal);
      result.records++;
      try {
        const rec = await readRecord(repo, id);
        for (const s of rec.snapshots) {
          result.snapshots++;
          for (const d of s.disks) if (!layerOwner.has(d.layer)) layerOwner.set(d.layer, `snapshot ${s.name} of VM ${rec.vm} (disk ${d.target})`);
        }
      } catch (err) {
        caught(path.join(repo.snapshotsDir, id), err);
      }
    }
    for (const [name, owner] of layerOwner) {
      checkAborted(opts.signal);
      result.layers++;
      const file = repo.layerPath(name);
      let m: LayerMapReader;
      try {
        m = await LayerMapReader.open(repo, name);
      } catch (err) {
        caught(file, err instanceof CloneboxError ? Object.assign(err, { message: `${err.message} (layer of ${owner})` }) : err);
        continue;
      }
      try {
        for await (const p of m.pieces()) {
          if (p.kind !== 'block') continue;
          if (!(await lookup.find(p.id))) problem(file, `block ${p.id.toString('hex').slice(0, 16)} at ${p.offset} (layer of ${owner}) is in no index file`);
        }
      } catch (err) {
        caught(file, err);
      } finally {
        await m.close();
      }
    }
    for (const name of await listFanout(path.join(repo.dir, DIR_LAYERS), NAME_RE64)) {
      if (!layerOwner.has(name))
        notes.push({ file: repo.layerPath(name), message: 'no record names this layer map (forgotten, or left by a killed push): gc removes it' });
    }

    // every block
    if (opts.readData) {
      for (const [id, p] of packs) {
        if (!p) continue;
        const file = repo.packPath(id);
        let r: PackFileReader;
        try {
          r = await PackFileReader.open(repo, id);
        } catch (err) {
          caught(file, err);
          continue;
        }
        try {
          for (const [fi, fr] of p.frames.entries()) {
            checkAborted(opts.signal);
            try {
              const rec = await r.frame({ frame: fi, offset: fr.offset, length: fr.length });
              result.bytes_read += fr.length;
              const dec = decodeFrame(rec.codec, rec.stored, rec.rawLength, Uint32Array.from(rec.lengths));
              if (!dec) {
                problem(file, `frame ${fi} does not decompress to its ${rec.rawLength} bytes`);
                continue;
              }
              for (let s = 0; s < rec.lengths.length; s++) {
                result.blocks_read++;
                const want = p.ids.subarray((fr.first + s) * 32, (fr.first + s + 1) * 32);
                if (!rec.ids[s]!.equals(want)) problem(file, `frame ${fi} block ${s}: the frame names another block than the trailer`);
                else if (!blockId(dec.shas.subarray(s * 32, s * 32 + 32), repo.idk).equals(want)) {
                  problem(file, `frame ${fi} block ${s} (${want.toString('hex').slice(0, 16)}): its bytes do not match its id`);
                }
              }
            } catch (err) {
              caught(file, err);
            }
          }
        } finally {
          await r.close();
        }
      }
    }
    result.ok = errors.length === 0;
    result.seconds = (Date.now() - t0) / 1000;
    return result;
  } finally {
    for (const f of files) await f.close().catch(() => undefined);
    await lock.release();
  }
}
