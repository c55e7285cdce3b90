/**
 * `archive push`: a VM's snapshots (the whole tree, or the line root..N) into a repository.
 *
 *  1. Under the VM lock: recover, resolve the snapshots, check each layer stands on its parent's, pin
 *     them (store/pins.ts) and let the lock go, as `snapshot export` does: a long push does not hold up
 *     a scheduled snapshot.
 *  2. Under the repository's shared lock (lock.ts): every record is read; a snapshot whose (trusted)
 *     content id the repository holds already, standing on the same parent, is reused as it is — its
 *     layers are not even read. So a push of an unchanged VM writes only its record.
 *  3. Other snapshots' layers are read and stored (ingest.ts): only blocks the repository lacks are
 *     compressed and written, whatever VM or push they came from; a layer whose content the repository
 *     holds (same digest) keeps its one map.
 *  4. Packs, index files and maps are in place; then the record is written. Content ids computed on the
 *     way are kept in the home, as export does.
 */
import path from 'node:path';
import { checkAborted } from '../abort.js';
import { Progress, type ProgressCallback } from '../bundle/progress.js';
import { nowIso } from '../clock.js';
import { openLayer } from '../content/layer.js';
import { WorkerPool } from '../content/workers.js';
import { driverStepHandlers } from '../drivers/registry.js';
import { CloneboxError } from '../errors.js';
import { pathExists } from '../fsutil.js';
import { checkName } from '../names.js';
import { type CheckedLayer, checkedLayers, keepContentIds, layersDataBytes, lineTo, snapshotNotFound } from '../snapshots/chain-read.js';
import { contentId, trustedContentId } from '../snapshots/identity.js';
import type { Home } from '../store/home.js';
import { recover } from '../store/journal.js';
import type { Lock } from '../store/lock.js';
import { type Pin, pinSnapshots } from '../store/pins.js';
import { loadVm, lockVm, type VmRecord } from '../store/registry.js';
import { listSnapshotRecords, type SnapshotRecord, snapshotMeta } from '../store/snapshots.js';
import type { PushRecord, RecordDisk, RecordSnapshot } from './format.js';
import { RepoIndex } from './index-file.js';
import { Ingest, type IngestStats, type StoredLayer } from './ingest.js';
import { lockShared } from './lock.js';
import { readAllRecords, writeRecord } from './records.js';
import { hostName, newFileId, type Repo } from './repo.js';

export interface PushOptions {
  /** Push only root..name (default: every snapshot of the VM). */
  name?: string | undefined;
  signal?: AbortSignal | undefined;
  /** Bytes of layer data read so far, of the total to read (counted first only when this is given). */
  onProgress?: ProgressCallback | undefined;
}

/** What a push did (the library API's ArchivePushResult). */
export interface PushResult {
  vm: string;
  /** The push record's id. */
  record: string;
  snapshots: string[];
  /** Snapshots the repository held already (their layers were not read). */
  reused: string[];
  read_bytes: number;
  new_blocks: number;
  new_raw_bytes: number;
  new_stored_bytes: number;
  /** Bytes of the files this push added: packs, index files, layer maps and the record. */
  written_bytes: number;
  packs: number;
  index_files: number;
  layers_stored: number;
  seconds: number;
}

interface SnapPlan {
  rec: SnapshotRecord;
  layers: CheckedLayer[];
}

/** The snapshots to push, parents first: the whole tree, or the line root..name. */
function selectSnapshots(vm: string, snaps: SnapshotRecord[], name: string | undefined): SnapshotRecord[] {
  const byName = new Map(snaps.map((s) => [s.name, s]));
  if (name !== undefined) {
    checkName('snapshot', name);
    if (!byName.has(name)) throw snapshotNotFound(vm, name);
    return lineTo(vm, byName, name);
  }
  const out: SnapshotRecord[] = [];
  const children = new Map<string | null, SnapshotRecord[]>();
  for (const s of snaps) {
    if (s.parent !== null && !byName.has(s.parent)) throw new CloneboxError('STORE_CORRUPT', `snapshot ${s.name} names a missing parent ${s.parent}, VM ${vm}`);
    const list = children.get(s.parent) ?? [];
    list.push(s);
    children.set(s.parent, list);
  }
  const walk = (p: string | null) => {
    const list = (children.get(p) ?? []).sort((a, b) => (a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1 : a.name < b.name ? -1 : 1));
    for (const s of list) {
      out.push(s);
      walk(s.name);
    }
  };
  walk(null);
  if (out.length !== snaps.length) throw new CloneboxError('STORE_CORRUPT', `snapshot parents form a loop, VM ${vm}`);
  return out;
}

async function planLayers(vmRec: VmRecord, chain: SnapshotRecord[]): Promise<SnapPlan[]> {
  const byName = new Map(chain.map((s) => [s.name, s]));
  const out: SnapPlan[] = [];
  for (const s of chain) {
    if (s.state !== 'ready') throw new CloneboxError('SNAPSHOT_NOT_READY', `snapshot ${s.name} is ${s.state}, not ready, VM ${vmRec.name}`);
    out.push({ rec: s, layers: await checkedLayers(vmRec, s, byName) });
  }
  return out;
}

/** Stores one qcow2 layer through `ingest`. */
async function ingestLayer(ingest: Ingest, file: string, resolved: boolean): Promise<StoredLayer> {
  const src = await openLayer(file, resolved);
  try {
    return await ingest.storeLayer(src);
  } finally {
    await src.close();
  }
}

/** Snapshots the repository holds, by content id (with their parent's content id). */
function knownSnapshots(records: PushRecord[]): Map<string, { snap: RecordSnapshot; parentId: string | null }> {
  const out = new Map<string, { snap: RecordSnapshot; parentId: string | null }>();
  for (const r of records) {
    const ids = new Map(r.snapshots.map((s) => [s.name, s.content_id]));
    for (const s of r.snapshots) out.set(s.content_id, { snap: s, parentId: s.parent === null ? null : (ids.get(s.parent) ?? null) });
  }
  return out;
}

export async function pushVm(home: Home, repo: Repo, vmName: string, opts: PushOptions = {}): Promise<PushResult> {
  checkName('VM', vmName);
  checkAborted(opts.signal);
  const t0 = Date.now();
  await loadVm(home, vmName);
  const starting = WorkerPool.start();
  starting.catch(() => undefined);
  let pool: WorkerPool | null = null;
  let lock: Lock | null = null;
  let pin: Pin | null = null;
  try {
    lock = await lockVm(home, vmName, 'archive push');
    await recover(home, vmName, driverStepHandlers);
    const vm = await loadVm(home, vmName);
    const snaps = await listSnapshotRecords(home, vmName);
    if (snaps.length === 0) {
      throw new CloneboxError('NO_SNAPSHOTS', `VM ${vmName} has no snapshot to push`, { hint: `create one with \`clonebox snapshot create ${vmName}\`` });
    }
    const chain = selectSnapshots(vmName, snaps, opts.name);
    const plans = await planLayers(vm, chain);
    pin = await pinSnapshots(
      home,
      vmName,
      chain.map((s) => s.name),
      'archive push',
    );
    await lock.release();
    lock = null;

    const repoLock = await lockShared(repo, `archive push ${vmName}`);
    let index: RepoIndex | null = null;
    let ingest: Ingest | null = null;
    try {
      await repo.sweepTemps();
      const known = knownSnapshots(await readAllRecords(repo));
      index = await RepoIndex.open(repo);
      pool = await starting;
      const progress = opts.onProgress ? new Progress('push', await layersDataBytes(plans.flatMap((p) => p.layers)), opts.onProgress) : null;
      ingest = new Ingest(repo, index, pool, progress, opts.signal);
      const ids = new Map<string, string>();
      const reused: string[] = [];
      const out: { rec: SnapshotRecord; disks: RecordDisk[] }[] = [];
      for (const p of plans) {
        const s = p.rec;
        const parentId = s.parent === null ? null : ids.get(s.parent)!;
        const trusted = trustedContentId(s);
        const k = trusted ? known.get(trusted) : undefined;
        if (k && k.parentId === parentId && (await layersPresent(repo, k.snap.disks)) && sameTargets(k.snap.disks, p.layers)) {
          ids.set(s.name, trusted!);
          reused.push(s.name);
          out.push({ rec: s, disks: k.snap.disks });
          if (progress) for (const d of k.snap.disks) progress.add(d.data_bytes);
          continue;
        }
        const disks: RecordDisk[] = [];
        for (const l of p.layers) disks.push(recordDisk(l.target, await ingestLayer(ingest, l.path, l.resolved)));
        ids.set(s.name, disksContentId(parentId, disks));
        out.push({ rec: s, disks });
      }
      await ingest.commit();
      const st = ingest.stats;
      const current = vm.current !== null && chain.some((s) => s.name === vm.current) ? vm.current : null;
      const rec = newRecord(
        vmName,
        'push',
        current,
        out.map(({ rec: s, disks }) => ({ ...snapshotMeta(s), content_id: ids.get(s.name)!, disks })),
        st,
      );
      checkAborted(opts.signal);
      await writeRecord(repo, rec);
      await keepContentIds(
        home,
        vmName,
        chain.map((s) => ({ rec: s, id: ids.get(s.name)! })),
        'archive push',
      );
      return {
        vm: vmName,
        record: rec.id,
        snapshots: chain.map((s) => s.name),
        reused,
        read_bytes: st.read_bytes,
        new_blocks: st.new_blocks,
        new_raw_bytes: st.new_raw_bytes,
        new_stored_bytes: st.new_stored_bytes,
        written_bytes: await writtenBytes(repo, rec.id, st),
        packs: st.packs,
        index_files: st.index_files,
        layers_stored: st.layers_stored,
        seconds: (Date.now() - t0) / 1000,
      };
    } catch (err) {
      await ingest?.abort();
      throw err;
    } finally {
      await index?.close();
      await repoLock.release();
    }
  } finally {
    await lock?.release();
    await pin?.release();
    await (pool ?? (await starting.catch(() => null)))?.close();
  }
}

/** A new record of what a push or an import stored (written once the ingest committed). */
export function newRecord(vm: string, source: PushRecord['source'], current: string | null, snapshots: RecordSnapshot[], st: IngestStats): PushRecord {
  return {
    format: 'clonebox-archive-snapshots',
    version: 1,
    id: newFileId(),
    created_at: nowIso(),
    vm,
    source,
    host: hostName(),
    current,
    snapshots,
    stats: {
      read_bytes: st.read_bytes,
      new_blocks: st.new_blocks,
      new_raw_bytes: st.new_raw_bytes,
      new_stored_bytes: st.new_stored_bytes,
      pack_bytes: st.pack_bytes,
    },
  };
}

/** Bytes of the files a push added: packs (counted as written), index files and layer maps (counted by the ingest), and the record. */
async function writtenBytes(repo: Repo, recordId: string, st: IngestStats): Promise<number> {
  const { stat } = await import('node:fs/promises');
  const recBytes = (await stat(path.join(repo.snapshotsDir, recordId))).size;
  return st.pack_bytes + st.index_bytes + st.map_bytes + recBytes;
}

/** A snapshot's content id from its parent's and its disks' layer digests (snapshots/identity.ts). */
export function disksContentId(parentId: string | null, disks: RecordDisk[]): string {
  return contentId(
    parentId,
    disks.map((d) => ({ target: d.target, digest: Buffer.from(d.digest, 'hex') })),
  );
}

export function recordDisk(target: string, l: StoredLayer): RecordDisk {
  return {
    target,
    layer: l.name,
    digest: l.digest.toString('hex'),
    virtual_size: l.virtualSize,
    cluster_size: l.clusterSize,
    data_bytes: l.dataBytes,
  };
}

function sameTargets(disks: RecordDisk[], layers: CheckedLayer[]): boolean {
  return disks.length === layers.length && disks.every((d, i) => d.target === layers[i]!.target);
}

async function layersPresent(repo: Repo, disks: RecordDisk[]): Promise<boolean> {
  for (const d of disks) if (!(await pathExists(repo.layerPath(d.layer)))) return false;
  return true;
}
