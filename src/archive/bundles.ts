/**
 * Bundles in and out of a repository.
 *
 * `archive import F`: a bundle's chain is decoded (src/bundle/decode.ts checks every block, map and
 * the seal) and its layers are stored as a push stores them (ingest.ts), under the bundle's VM name (or
 * `as`); the record is written only once the seal has verified, so a damaged bundle leaves at most
 * blocks no record names. A `--since` bundle is refused: its base is not a snapshot of the archive.
 *
 * `archive export VM SNAP -o F`: the line root..SNAP is restored into a private temporary home beside
 * the output (no VM of any home is touched) and exported from there by `snapshot export`, so the bundle
 * is a normal one, byte for byte what an export of that chain writes; the temporary home is removed
 * whatever happens. It costs the layers' size in temporary disk space (see docs/archive.md).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { checkAborted } from '../abort.js';
import type { KeySource } from '../bundle/crypto.js';
import { type BundleSink, decodeBundle } from '../bundle/decode.js';
import { type ExportResult, exportBundle } from '../bundle/export.js';
import { openInput } from '../bundle/input.js';
import { Progress, type ProgressCallback } from '../bundle/progress.js';
import { BundleReader } from '../bundle/reader.js';
import type { Batcher } from '../content/batcher.js';
import { WorkerPool } from '../content/workers.js';
import { CloneboxError } from '../errors.js';
import { checkName } from '../names.js';
import { resolveHome } from '../store/home.js';
import { snapshotMeta } from '../store/snapshots.js';
import type { RecordDisk, RecordSnapshot } from './format.js';
import { RepoIndex } from './index-file.js';
import { Ingest, type StoredLayer } from './ingest.js';
import { lockShared } from './lock.js';
import { disksContentId, newRecord, recordDisk } from './push.js';
import { writeRecord } from './records.js';
import type { Repo } from './repo.js';
import { restoreSnapshot } from './restore.js';

export interface ArchiveImportOptions {
  /** The bundle's key, when it is encrypted. */
  bundleKey: KeySource | null;
  /** Store the chain under this VM name (default: the bundle's). */
  as?: string | undefined;
  allowPlain?: boolean | undefined;
  signal?: AbortSignal | undefined;
  onProgress?: ProgressCallback | undefined;
}

export interface ArchiveImportResult {
  vm: string;
  record: string;
  snapshots: string[];
  new_blocks: number;
  new_raw_bytes: number;
  new_stored_bytes: number;
  seconds: number;
}

type Ev = { kind: 'zero'; offset: number; length: number } | { kind: 'data'; offset: number; length: number; bytes: Buffer } | { kind: 'end' };

/**
 * One layer handed from the decoder (which pushes pieces) to the ingest (which pulls them): each
 * put() resolves once the piece was taken and its bytes copied, so a decoder buffer is never used later.
 */
class LayerChannel {
  private waiter: ((e: { ev: Ev; taken: () => void }) => void) | null = null;
  private offered: { ev: Ev; taken: () => void } | null = null;
  done: Promise<StoredLayer>;

  constructor(ingest: Ingest, vs: number, cs: number) {
    this.done = ingest.layer(vs, cs, (b) => this.drain(b));
    this.done.catch(() => undefined);
  }

  private next(): Promise<{ ev: Ev; taken: () => void }> {
    if (this.offered) {
      const o = this.offered;
      this.offered = null;
      return Promise.resolve(o);
    }
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  private async drain(b: Batcher): Promise<void> {
    for (;;) {
      const { ev, taken } = await this.next();
      if (ev.kind === 'end') {
        taken();
        return;
      }
      if (ev.kind === 'zero') await b.zero(ev.offset, ev.length);
      else await b.data(ev.offset, ev.length, async (buf, at, skip, len) => void ev.bytes.copy(buf, at, skip, skip + len));
      taken();
    }
  }

  put(ev: Ev): Promise<void> {
    const taken = new Promise<void>((resolve) => {
      const o = { ev, taken: resolve };
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = null;
        w(o);
      } else this.offered = o;
    });
    // An ingest that failed takes nothing more: its error is the answer.
    return Promise.race([taken, this.done.then(() => undefined)]);
  }
}

export async function importBundleToArchive(repo: Repo, input: string | Readable, opts: ArchiveImportOptions): Promise<ArchiveImportResult> {
  checkAborted(opts.signal);
  const t0 = Date.now();
  const src = await openInput(input);
  const pool = await WorkerPool.start();
  let reader: BundleReader | null = null;
  let ingest: Ingest | null = null;
  let index: RepoIndex | null = null;
  const lock = await lockShared(repo, 'archive import').catch(async (err: unknown) => {
    await pool.close();
    throw err;
  });
  try {
    reader = await BundleReader.open(src.stream, src.label, opts.bundleKey, { allowPlain: Boolean(opts.allowPlain) });
    if (src.file) reader.setSeekable(src.file);
    const meta = reader.meta;
    const chain = meta.chains[0]!;
    if (meta.group !== null || meta.chains.length !== 1) {
      throw new CloneboxError(
        'UNSUPPORTED',
        `${src.label} is a group bundle (VMs ${meta.chains.map((c) => c.vm).join(', ')}); the archive imports one VM's bundle`,
        {
          hint: 'import the group with `snapshot import --group`, then `archive push` each member',
        },
      );
    }
    const vm = opts.as ?? chain.vm;
    checkName('VM', vm);
    if (chain.since !== null) {
      throw new CloneboxError('UNSUPPORTED', `the bundle holds only the snapshots after ${chain.since.name}; the archive stores whole lines, ${src.label}`, {
        hint: 'export the whole chain (without --since) and import that',
      });
    }
    await repo.sweepTemps();
    index = await RepoIndex.open(repo);
    const progress = new Progress('import', src.size, opts.onProgress);
    ingest = new Ingest(repo, index, pool, null, opts.signal);
    const ing = ingest;
    const stored: StoredLayer[] = [];
    let ch: LayerChannel | null = null;
    const r = reader;
    const sink: BundleSink = {
      beginLayer: async (li) => {
        const l = meta.layers[li]!;
        ch = new LayerChannel(ing, l.virtual_size, l.cluster_size);
      },
      endLayer: async () => {
        await ch!.put({ kind: 'end' });
        stored.push(await ch!.done);
        ch = null;
      },
      data: async (_l, offset, _block, length, data) => {
        await ch!.put({ kind: 'data', offset, length, bytes: data! });
      },
      zero: async (_l, offset, length) => {
        await ch!.put({ kind: 'zero', offset, length });
      },
    };
    await decodeBundle(reader, pool, sink, {
      wantData: true,
      onPack: () => {
        progress.set(r.bytesIn);
        checkAborted(opts.signal);
      },
    });
    await ingest.commit();
    const snaps: RecordSnapshot[] = [];
    let parentId: string | null = null;
    for (const [si, s] of meta.snapshots.entries()) {
      const disks: RecordDisk[] = meta.layers.flatMap((l, li) => (l.snapshot === si ? [recordDisk(l.target, stored[li]!)] : []));
      const id = disksContentId(parentId, disks);
      snaps.push({ ...snapshotMeta(s), content_id: id, disks });
      parentId = id;
    }
    const rec = newRecord(vm, 'import', snaps[snaps.length - 1]!.name, snaps, ingest.stats);
    checkAborted(opts.signal);
    await writeRecord(repo, rec);
    const st = ingest.stats;
    return {
      vm,
      record: rec.id,
      snapshots: snaps.map((s) => s.name),
      new_blocks: st.new_blocks,
      new_raw_bytes: st.new_raw_bytes,
      new_stored_bytes: st.new_stored_bytes,
      seconds: (Date.now() - t0) / 1000,
    };
  } catch (err) {
    await ingest?.abort();
    throw err;
  } finally {
    reader?.destroy();
    await index?.close();
    await lock.release();
    await pool.close();
  }
}

export interface ArchiveExportOptions {
  output: string;
  key: KeySource | null;
  level?: number | undefined;
  force?: boolean | undefined;
  signal?: AbortSignal | undefined;
  onProgress?: ProgressCallback | undefined;
}

export async function exportArchived(repo: Repo, vm: string, snap: string, opts: ArchiveExportOptions): Promise<ExportResult> {
  const out = path.resolve(opts.output);
  // Beside the output: same file system, and the user chose a place with room for the bundle.
  const tmp = await mkdtemp(path.join(path.dirname(out), '.clonebox-archive-export-'));
  try {
    const home = resolveHome(path.join(tmp, 'home'));
    const restored = await restoreSnapshot(home, repo, vm, snap, { as: vm, dir: path.join(tmp, 'disks'), signal: opts.signal });
    return await exportBundle(home, restored.vm, {
      name: restored.current,
      output: out,
      key: opts.key,
      ...(opts.level !== undefined ? { level: opts.level } : {}),
      force: opts.force,
      signal: opts.signal,
      onProgress: opts.onProgress,
    });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}
