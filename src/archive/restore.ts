/**
 * `archive restore`: rebuilds the line root..SNAP of an archived VM as qcow2 layers and registers them
 * as a new VM (its name, or --as), all or nothing, as `snapshot import` lands a bundle
 * (src/snapshots/landing.ts):
 *
 *  1. the repository is read under its shared lock (so gc cannot take blocks away meanwhile); under the
 *     new VM's lock a journal operation starts;
 *  2. each layer is written by the native qcow2 writer under a hidden temporary name (announced to
 *     the journal first), block by block from its map (blocks.ts checks each block against its id and
 *     the layer against its digest); each snapshot's content id is recomputed and must be the record's;
 *  3. the journal commits: temporaries renamed into place, snapshot records, the VM record last.
 * A failure before 3 deletes everything written; a crash before 3 is rolled back by the next command
 * on that VM, one during 3 rolled forward.
 */
import { readdir, rm, rmdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { checkAborted } from '../abort.js';
import { Progress, type ProgressCallback } from '../bundle/progress.js';
import { nowIso } from '../clock.js';
import { WorkerPool } from '../content/workers.js';
import { layerPathFor, newDiskPath } from '../drivers/image.js';
import { driverStepHandlers } from '../drivers/registry.js';
import { CloneboxError } from '../errors.js';
import { ensureDir, pathExists } from '../fsutil.js';
import { checkName } from '../names.js';
import { checkVirtualSize, DEFAULT_MAX_VIRTUAL_SIZE } from '../qcow2/budget.js';
import { Qcow2Writer } from '../qcow2/writer.js';
import { contentId } from '../snapshots/identity.js';
import { commitLanding, type Landing, LayerAssembler, landingTemp, landOverlays, type OverlayPlan, refuseExisting } from '../snapshots/landing.js';
import { type Home, vmDir } from '../store/home.js';
import { Journal, journalPath, recover } from '../store/journal.js';
import { lockVm, type VmRecord, vmExists } from '../store/registry.js';
import type { SnapshotRecord } from '../store/snapshots.js';
import { BlockSource } from './blocks.js';
import { findArchived } from './catalog.js';
import { archiveCorrupt } from './container.js';
import type { RecordSnapshot } from './format.js';
import { RepoIndex } from './index-file.js';
import { LayerMapReader } from './layers.js';
import { lockShared } from './lock.js';
import { readAllRecords } from './records.js';
import type { Repo } from './repo.js';

export interface RestoreOptions {
  /** Name of the new VM (default: the archived VM's name). */
  as?: string | undefined;
  /** Directory for the new VM's disks (default <home>/disks/<vm>). */
  dir?: string | undefined;
  signal?: AbortSignal | undefined;
  /** Bytes of layer data written so far, of the line's total. */
  onProgress?: ProgressCallback | undefined;
  maxVirtualSize?: number | undefined;
}

export interface RestoreResult {
  vm: string;
  from_vm: string;
  snapshots: string[];
  current: string;
  content_id: string;
  bytes_written: number;
  seconds: number;
}

interface LayerFile extends Landing {
  target: string;
  snapshot: number;
  layer: string;
  digest: string;
  backing: string | null;
  virtualSize: number;
  clusterSize: number;
}

export async function restoreSnapshot(home: Home, repo: Repo, vm: string, snap: string, opts: RestoreOptions = {}): Promise<RestoreResult> {
  checkName('VM', vm);
  const newVm = opts.as ?? vm;
  checkName('VM', newVm);
  checkAborted(opts.signal);
  const t0 = Date.now();
  const starting = WorkerPool.start();
  starting.catch(() => undefined);
  const repoLock = await lockShared(repo, `archive restore ${vm} ${snap}`).catch(async (err: unknown) => {
    await (await starting.catch(() => null))?.close();
    throw err;
  });
  let index: RepoIndex | null = null;
  let src: BlockSource | null = null;
  try {
    const found = findArchived(await readAllRecords(repo), vm, snap);
    const line = found.line;
    for (const s of line)
      for (const d of s.disks) checkVirtualSize(d.virtual_size, opts.maxVirtualSize ?? DEFAULT_MAX_VIRTUAL_SIZE, `archived snapshot ${s.name}`);
    const targets = line[0]!.disks.map((d) => d.target).sort();
    for (const s of line) {
      const t = s.disks.map((d) => d.target).sort();
      if (t.join(',') !== targets.join(',')) {
        throw new CloneboxError(
          'UNSUPPORTED',
          `archived snapshot ${s.name} has other disks (${t.join(', ')}) than ${line[0]!.name} (${targets.join(', ')}), VM ${vm}`,
        );
      }
    }
    index = await RepoIndex.open(repo);
    const pool = await starting;
    src = new BlockSource(repo, index, pool);
    const total = line.reduce((a, s) => a + s.disks.reduce((b, d) => b + d.data_bytes, 0), 0);
    const progress = new Progress('restore', total, opts.onProgress);
    return await landVm(home, repo, src, vm, newVm, line, found.record, opts, progress, t0);
  } finally {
    await src?.close();
    await index?.close();
    await repoLock.release();
    await (await starting.catch(() => null))?.close();
  }
}

async function landVm(
  home: Home,
  repo: Repo,
  src: BlockSource,
  fromVm: string,
  vmName: string,
  line: RecordSnapshot[],
  recordId: string,
  opts: RestoreOptions,
  progress: Progress,
  t0: number,
): Promise<RestoreResult> {
  const hadDir = await pathExists(vmDir(home, vmName));
  const lock = await lockVm(home, vmName, 'archive restore');
  let committed = false;
  let madeDir: string | null = null;
  try {
    await recover(home, vmName, driverStepHandlers);
    if (await vmExists(home, vmName)) {
      throw new CloneboxError('VM_EXISTS', `VM already exists, ${vmName}`, { hint: 'restore under another name with --as NEWVM, or remove the VM first' });
    }
    const dir = path.resolve(opts.dir ?? path.join(home.disksDir, vmName));
    if (!(await pathExists(dir))) madeDir = dir;
    await ensureDir(dir);
    const diskPath = new Map(line[0]!.disks.map((d) => [d.target, newDiskPath(dir, vmName, d.target)]));
    const files: LayerFile[] = [];
    for (const [si, s] of line.entries()) {
      for (const d of [...s.disks].sort((a, b) => (a.target < b.target ? -1 : 1))) {
        const disk = diskPath.get(d.target)!;
        const final = layerPathFor(disk, s.name);
        const parent = si > 0 ? layerPathFor(disk, line[si - 1]!.name) : null;
        files.push({
          target: d.target,
          snapshot: si,
          layer: d.layer,
          digest: d.digest,
          final,
          temp: landingTemp(final, 'import'),
          backing: parent === null ? null : path.relative(path.dirname(final), parent),
          virtualSize: d.virtual_size,
          clusterSize: d.cluster_size,
        });
      }
    }
    const last = line[line.length - 1]!;
    const overlays: OverlayPlan[] = last.disks.map((d) => ({
      final: diskPath.get(d.target)!,
      backing: layerPathFor(diskPath.get(d.target)!, last.name),
      virtualSize: d.virtual_size,
      clusterSize: d.cluster_size,
    }));
    await refuseExisting(
      [...files, ...overlays].map((f) => f.final),
      'move it away, or restore with --dir DIR',
    );
    const j = await Journal.begin(home, vmName, `archive restore ${fromVm} ${last.name}`, driverStepHandlers);
    try {
      for (const f of files) await writeLayer(repo, src, j, f, progress, opts.signal);
      // Each snapshot's content id from the restored layers' digests and its parent's: the record's.
      let parentId: string | null = null;
      for (const s of line) {
        const id = contentId(
          parentId,
          s.disks.map((d) => ({ target: d.target, digest: Buffer.from(d.digest, 'hex') })),
        );
        if (id !== s.content_id) throw archiveCorrupt(`snapshot ${s.name}'s layers do not give its content id`, path.join(repo.snapshotsDir, recordId));
        parentId = id;
      }
      checkAborted(opts.signal);
      const landed = await landOverlays(j, overlays, 'import');
      let written = 0;
      for (const f of [...files, ...landed]) written += (await stat(f.temp)).size;
      const records: SnapshotRecord[] = line.map((s, si) => ({
        name: s.name,
        vm_name: vmName,
        type: s.type,
        state: 'ready',
        created_at: s.created_at,
        description: s.description,
        parent: s.parent,
        tags: s.tags,
        auto_created: s.auto_created,
        auto_policy: s.auto_policy,
        expires_at: s.expires_at,
        disks: files.filter((f) => f.snapshot === si).map((f) => ({ target: f.target, path: f.final })),
        size_bytes: s.disks.reduce((a, d) => a + d.data_bytes, 0),
        content_id: s.content_id,
        memory_path: null,
        origin: { kind: 'bundle', bundle: `archive ${path.basename(repo.dir)} record ${recordId}` },
      }));
      const vmRec: VmRecord = {
        format: 1,
        name: vmName,
        driver: 'image',
        created_at: nowIso(),
        disks: [...diskPath.entries()].sort().map(([target, p]) => ({ target, path: p })),
        current: last.name,
      };
      await commitLanding(j, home, vmName, [...files, ...landed], records, vmRec);
      committed = true;
      return {
        vm: vmName,
        from_vm: fromVm,
        snapshots: line.map((s) => s.name),
        current: last.name,
        content_id: last.content_id,
        bytes_written: written,
        seconds: (Date.now() - t0) / 1000,
      };
    } catch (err) {
      await j.rollback().catch(() => undefined);
      throw err;
    }
  } finally {
    await lock.release();
    if (!committed && !hadDir) await removeEmptyVmDir(home, vmName);
    if (!committed && madeDir) await rmdir(madeDir).catch(() => undefined);
  }
}

async function writeLayer(repo: Repo, src: BlockSource, j: Journal, f: LayerFile, progress: Progress, signal: AbortSignal | undefined): Promise<void> {
  const map = await LayerMapReader.open(repo, f.layer);
  let writer: Qcow2Writer | null = null;
  try {
    const t = map.trailer;
    if (t.virtual_size !== f.virtualSize || t.cluster_size !== f.clusterSize || t.digest !== f.digest) {
      throw archiveCorrupt(`layer ${f.layer.slice(0, 12)} is not what its record says (size or digest)`, map.file);
    }
    await j.willCreate(f.temp);
    writer = await Qcow2Writer.create(f.temp, {
      mode: 0o600,
      virtualSize: f.virtualSize,
      clusterSize: f.clusterSize,
      backingFile: f.backing,
      backingFormat: f.backing ? 'qcow2' : null,
    });
    const asm = new LayerAssembler(writer, () => archiveCorrupt('blocks of a cluster are not contiguous', map.file));
    let n = 0;
    for await (const p of src.read(map)) {
      if (p.kind === 'zero') {
        // A root reads as zero where nothing is allocated (and a root map has no zero extents).
        if (f.backing !== null) await writer.writeZero(p.offset, p.length);
        continue;
      }
      await asm.block(p.offset, (p as { bytes: Buffer }).bytes);
      progress.add(p.length);
      if (++n % 256 === 0) checkAborted(signal);
    }
    if (asm.pending) throw archiveCorrupt('a cluster was left half written', map.file);
    const w = writer;
    writer = null;
    await w.finish();
  } finally {
    await writer?.abort();
    await map.close();
  }
}

/** After a failed restore: the registry directory that locking created goes again. */
async function removeEmptyVmDir(home: Home, vm: string): Promise<void> {
  const dir = vmDir(home, vm);
  if (await vmExists(home, vm)) return;
  if (await pathExists(journalPath(home, vm))) return;
  const left = await readdir(path.join(dir, 'snapshots')).catch(() => [] as string[]);
  if (left.length) return;
  await rm(dir, { recursive: true, force: true });
}
