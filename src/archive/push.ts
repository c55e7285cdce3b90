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
import { checkedBackingChain } from '../qcow2/backing.js';
import { Qcow2Image } from '../qcow2/reader.js';
import { contentId, trustedContentId } from '../snapshots/identity.js';
import type { Home } from '../store/home.js';
import { recover } from '../store/journal.js';
import type { Lock } from '../store/lock.js';
import { type Pin, pinSnapshots } from '../store/pins.js';
import { loadVm, lockVm } from '../store/registry.js';
import { listSnapshotRecords, type SnapshotRecord, saveSnapshotRecord } from '../store/snapshots.js';
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

export interface PushResult {
  vm: string;
  record: string;
  snapshots: string[];
  /** Snapshots the repository held already (their layers were not read). */
  reused: string[];
  read_bytes: number;
  new_blocks: number;
  new_raw_bytes: number;
  new_stored_bytes: number;
  /** Bytes of files this push added: packs, index files, layer maps and the record. */
  written_bytes: number;
  packs: number;
  index_files: number;
  layers_stored: number;
  seconds: number;
}

interface LayerPlan {
  target: string;
  path: string;
  resolved: boolean;
}

interface SnapPlan {
  rec: SnapshotRecord;
  layers: LayerPlan[];
}

function notFound(vm: string, name: string): CloneboxError {
  return new CloneboxError('SNAPSHOT_NOT_FOUND', `no such snapshot ${name}, VM ${vm}`, { hint: `see \`clonebox snapshot list ${vm}\`` });
}

/** The snapshots to push, parents first: the whole tree, or the line root..name. */
function selectSnapshots(vm: string, snaps: SnapshotRecord[], name: string | undefined): SnapshotRecord[] {
  const byName = new Map(snaps.map((s) => [s.name, s]));
  if (name !== undefined) {
    checkName('snapshot', name);
    if (!byName.has(name)) throw notFound(vm, name);
    const line: SnapshotRecord[] = [];
    for (let cur: string | null = name; cur !== null; cur = byName.get(cur)?.parent ?? null) {
      const rec = byName.get(cur);
      if (!rec) throw new CloneboxError('STORE_CORRUPT', `snapshot ${line[line.length - 1]?.name} names a missing parent ${cur}, VM ${vm}`);
      if (line.length > snaps.length) throw new CloneboxError('STORE_CORRUPT', `snapshot parents form a loop, VM ${vm}`);
      line.push(rec);
    }
    return line.reverse();
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

async function planLayers(vmRec: Awaited<ReturnType<typeof loadVm>>, chain: SnapshotRecord[]): Promise<SnapPlan[]> {
  const byName = new Map(chain.map((s) => [s.name, s]));
  const out: SnapPlan[] = [];
  for (const s of chain) {
    if (s.state !== 'ready') throw new CloneboxError('SNAPSHOT_NOT_READY', `snapshot ${s.name} is ${s.state}, not ready, VM ${vmRec.name}`);
    const layers: LayerPlan[] = [];
    for (const d of [...s.disks].sort((a, b) => (a.target < b.target ? -1 : 1))) {
      const img = await Qcow2Image.open(d.path);
      try {
        const backing = img.backingPath();
        let resolved = false;
        if (s.parent === null) {
          resolved = backing !== null;
          if (resolved && vmRec.driver === 'image') await checkedBackingChain(d.path, vmRec.allowed_backing ?? []);
        } else {
          const want = byName.get(s.parent)?.disks.find((x) => x.target === d.target)?.path ?? null;
          if (want === null || backing === null || path.resolve(backing) !== path.resolve(want)) {
            throw new CloneboxError('STORE_CORRUPT', `layer ${d.path} stands on ${backing ?? 'nothing'}, not on its parent's layer ${want}`);
          }
        }
        layers.push({ target: d.target, path: d.path, resolved });
      } finally {
        await img.close();
      }
    }
    out.push({ rec: s, layers });
  }
  return out;
}

async function totalData(plans: SnapPlan[]): Promise<number> {
  let n = 0;
  for (const p of plans) {
    for (const l of p.layers) {
      const src = await openLayer(l.path, l.resolved);
      try {
        for await (const x of src.pieces()) if (x.kind === 'data') n += x.length;
      } finally {
        await src.close();
      }
    }
  }
  return n;
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
      const progress = opts.onProgress ? new Progress('push', await totalData(plans), opts.onProgress) : null;
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
        ids.set(
          s.name,
          contentId(
            parentId,
            disks.map((d) => ({ target: d.target, digest: Buffer.from(d.digest, 'hex') })),
          ),
        );
        out.push({ rec: s, disks });
      }
      await ingest.commit();
      const recSnaps: RecordSnapshot[] = [];
      for (const { rec: s, disks } of out) {
        recSnaps.push({
          name: s.name,
          parent: s.parent,
          type: s.type,
          created_at: s.created_at,
          description: s.description,
          tags: s.tags,
          auto_created: s.auto_created,
          auto_policy: s.auto_policy,
          expires_at: s.expires_at,
          content_id: ids.get(s.name)!,
          disks,
        });
      }
      const st = ingest.stats;
      const rec: PushRecord = {
        format: 'clonebox-archive-snapshots',
        version: 1,
        id: newFileId(),
        created_at: nowIso(),
        vm: vmName,
        source: 'push',
        host: hostName(),
        current: vm.current !== null && chain.some((s) => s.name === vm.current) ? vm.current : null,
        snapshots: recSnaps,
        stats: statsOf(st),
      };
      checkAborted(opts.signal);
      await writeRecord(repo, rec);
      await keepContentIds(
        home,
        vmName,
        chain.map((s) => ({ rec: s, id: ids.get(s.name)! })),
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

export function statsOf(st: IngestStats): PushRecord['stats'] {
  return {
    read_bytes: st.read_bytes,
    new_blocks: st.new_blocks,
    new_raw_bytes: st.new_raw_bytes,
    new_stored_bytes: st.new_stored_bytes,
    pack_bytes: st.pack_bytes,
  };
}

/** Bytes of the files a push added: packs (counted as written), index files and layer maps (counted by the ingest), and the record. */
async function writtenBytes(repo: Repo, recordId: string, st: IngestStats): Promise<number> {
  const { stat } = await import('node:fs/promises');
  const recBytes = (await stat(path.join(repo.snapshotsDir, recordId))).size;
  return st.pack_bytes + st.index_bytes + st.map_bytes + recBytes;
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

function sameTargets(disks: RecordDisk[], layers: LayerPlan[]): boolean {
  return disks.length === layers.length && disks.every((d, i) => d.target === layers[i]!.target);
}

async function layersPresent(repo: Repo, disks: RecordDisk[]): Promise<boolean> {
  for (const d of disks) if (!(await pathExists(repo.layerPath(d.layer)))) return false;
  return true;
}

/**
 * Records the content ids a push computed, for snapshots that had none, under the VM lock again (the
 * pin kept them from being merged meanwhile); a VM busy past the lock wait is left as it is.
 */
async function keepContentIds(home: Home, vm: string, computed: { rec: SnapshotRecord; id: string }[]): Promise<void> {
  const missing = computed.filter((c) => !c.rec.content_id);
  if (missing.length === 0) return;
  let lock: Lock;
  try {
    lock = await lockVm(home, vm, 'archive push');
  } catch (err) {
    if (err instanceof CloneboxError && err.code === 'VM_BUSY') return;
    throw err;
  }
  try {
    const now = new Map((await listSnapshotRecords(home, vm)).map((r) => [r.name, r]));
    for (const { rec, id } of missing) {
      const cur = now.get(rec.name);
      if (!cur || cur.content_id || JSON.stringify(cur.disks) !== JSON.stringify(rec.disks)) continue;
      await saveSnapshotRecord(home, { ...cur, content_id: id });
    }
  } finally {
    await lock.release();
  }
}
